"""Exporting the model: ONNX with audEERING's input and output names."""
