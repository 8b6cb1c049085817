"""agegender_sb: speaker age and gender from speech with audEERING's wav2vec2 model, in SpeechBrain.

Example
-------
>>> from agegender_sb import AgeGenderClassifier
>>> clf = AgeGenderClassifier.from_hparams(source=getfixture("tiny_checkpoint"))
>>> clf.labels
('female', 'male', 'child')
"""

from .audio import AudioError, load_audio
from .checkpoint import CheckpointError, convert_audeering_checkpoint
from .interface import DEFAULT_SOURCE, AgeGenderClassifier, AgeGenderPrediction

__version__ = "0.1.0"

__all__ = [
    "AgeGenderClassifier",
    "AgeGenderPrediction",
    "AudioError",
    "CheckpointError",
    "DEFAULT_SOURCE",
    "convert_audeering_checkpoint",
    "load_audio",
]
