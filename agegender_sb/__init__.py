"""agegender_sb: speaker age and gender from speech with audEERING's wav2vec2 model, in SpeechBrain.

Example
-------
>>> from agegender_sb import AgeGenderClassifier
>>> clf = AgeGenderClassifier.from_hparams(source=getfixture("tiny_checkpoint"))
>>> clf.labels
('female', 'male', 'child')
"""

from .audio import AudioError, load_audio
from .checkpoint import CheckpointError
from .interface import DEFAULT_SOURCE, AgeGenderClassifier
from .results import AgeGenderPrediction
from .sources import SourceError, UnsafeModelError, convert

__version__ = "0.2.0"

#: Former name of :func:`agegender_sb.sources.convert`.
convert_audeering_checkpoint = convert

__all__ = [
    "AgeGenderClassifier",
    "AgeGenderPrediction",
    "AudioError",
    "CheckpointError",
    "DEFAULT_SOURCE",
    "SourceError",
    "UnsafeModelError",
    "convert",
    "convert_audeering_checkpoint",
    "load_audio",
]
