"""Defaults a user sees in the command line and the API, importable without torch.

Example
-------
>>> MAX_WHOLE_SECONDS, DEFAULT_WINDOW, DEFAULT_VAD
(30.0, 4.0, 'silero')
"""

__all__ = [
    "SAMPLE_RATE",
    "MIN_SAMPLES",
    "NORM_EPS",
    "AGE_BANDS",
    "DEFAULT_SOURCE",
    "MAX_WHOLE_SECONDS",
    "DEFAULT_WINDOW",
    "MIN_TAIL",
    "DEFAULT_VAD",
    "VAD_CHOICES",
    "DEFAULT_CONTEXT",
    "AUDIO_EXTENSIONS",
]

#: Sample rate the model was trained on (Hz): every signal is converted to it.
SAMPLE_RATE = 16000
#: The convolutional feature encoder's receptive field: shorter inputs yield no frame.
MIN_SAMPLES = 400
#: Epsilon of ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm``.
NORM_EPS = 1e-7
#: Upper edges (years) of the age bands reports and training metrics use: <15, 15-30, ...
AGE_BANDS = (15, 30, 45, 60)
#: The published 24-layer model (the 6-layer sibling: ``...-6-ft-age-gender``).
DEFAULT_SOURCE = "audeering/wav2vec2-large-robust-24-ft-age-gender"
#: Spans up to this many seconds are analysed in one pass, as the reference does.
MAX_WHOLE_SECONDS = 30.0
#: Window length in seconds for longer spans (audEERING: trained on 2-6 s segments).
DEFAULT_WINDOW = 4.0
#: A final window shorter than this (seconds) is merged into the previous window.
MIN_TAIL = 3.0
#: Seconds of audio kept around detected speech where speech is cut out of a recording.
DEFAULT_CONTEXT = 0.5
#: The speech detector used unless told otherwise (``none`` analyses every sample).
DEFAULT_VAD = "silero"
VAD_CHOICES = ("silero", "energy", "none")
#: File name extensions (lower case) taken as audio in folders, matched in any case: the
#: formats libsndfile reads, and compressed ones it may not (those get an error row naming
#: the problem instead of being skipped).
AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".sph", ".nist", ".aif",
    ".aiff", ".aifc", ".au", ".snd", ".w64", ".rf64", ".caf", ".voc", ".m4a", ".aac", ".wma",
    ".webm",
})
