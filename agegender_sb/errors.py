"""Every error this package raises on purpose, under one base class.

``except AgeGenderError`` catches them all; each also keeps the built-in base that says what
kind of problem it is (``ValueError`` for bad values, ``OSError`` for a source that cannot be
fetched, ``RuntimeError`` for a checkpoint that does not fit), so code written against those
keeps working. Messages name the file (and line) and the problem, on one line.

Example
-------
>>> issubclass(TableError, AgeGenderError), issubclass(TableError, ValueError)
(True, True)
"""

from __future__ import annotations

__all__ = [
    "AgeGenderError",
    "AudioError",
    "NoSpeechError",
    "CheckpointError",
    "UnsafeModelError",
    "SourceError",
    "InputError",
    "TurnError",
    "SettingsError",
    "TableError",
    "OutputError",
    "ReportError",
]


class AgeGenderError(Exception):
    """Base class of this package's errors."""


class AudioError(AgeGenderError, ValueError):
    """Audio that cannot be used: unreadable, empty, too short, not finite."""


class NoSpeechError(AudioError):
    """No speech was detected where a prediction was asked for (no age and no gender)."""


class CheckpointError(AgeGenderError, RuntimeError):
    """A checkpoint or model folder that does not fit the model (the message says where)."""


class UnsafeModelError(CheckpointError):
    """A ``hyperparams.yaml`` that would run code this package did not write."""


class SourceError(AgeGenderError, OSError):
    """A model source that cannot be found or fetched; the message says what to do."""


class InputError(AgeGenderError, ValueError):
    """An input list, speaker file or set of inputs that cannot be used (a usage error)."""


class TurnError(InputError):
    """Bad speaker turns: the message names the file (and line) or source and the problem."""


class SettingsError(AgeGenderError, ValueError):
    """An analysis setting that is out of range or would make a run meaningless."""


class TableError(AgeGenderError, ValueError):
    """An output table that cannot be written or resumed (the message says why)."""


class OutputError(AgeGenderError, ValueError):
    """An output that would overwrite something the run reads, or cannot be written."""


class ReportError(AgeGenderError, ValueError):
    """A table or truth file that cannot be reported on (the message names the file)."""
