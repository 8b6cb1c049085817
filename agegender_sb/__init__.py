"""agegender_sb: speaker age and gender from speech with audEERING's wav2vec2 model, in SpeechBrain.

Names are imported on first use, so that ``agegender --help`` starts without torch.

Example
-------
>>> from agegender_sb import AgeGenderClassifier
>>> clf = AgeGenderClassifier.from_hparams(source=getfixture("tiny_checkpoint"))
>>> clf.labels
('female', 'male', 'child')
"""

import importlib

__version__ = "0.2.0"

_WHERE = {
    "AgeGenderClassifier": "inference.classifier",
    "AgeGenderPrediction": "inference.results",
    "AgeGenderError": "errors",
    "AudioError": "errors",
    "CheckpointError": "errors",
    "DEFAULT_SOURCE": "defaults",
    "SourceError": "errors",
    "UnsafeModelError": "errors",
    "convert": "loading.folders",
    "load_audio": "audio",
    "NoSpeechError": "errors",
    "Turn": "speech.turns",
}

__all__ = [*_WHERE, "convert_audeering_checkpoint"]


def __getattr__(name):
    if name == "convert_audeering_checkpoint":  # former name of convert
        name = "convert"
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
