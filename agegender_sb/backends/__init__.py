"""Ways to run the model other than the reference path: ONNX Runtime and the CPU speed modules."""
