"""Label a Hugging Face ``datasets.Dataset`` with age and gender: ``dataset.map(labeller(clf),
batched=True)``.

:func:`labeller` returns a callable that takes a batch (``{column: [values]}``, as
``Dataset.map(..., batched=True)`` passes it) and returns the new columns: ``age``, ``gender``,
one probability column per gender label, ``speech`` (seconds of speech the result rests on)
and ``error`` (None, ``no speech detected``, or why the example failed). Each example is
analysed exactly as :meth:`AgeGenderClassifier.predict_file` analyses a file holding its
audio: any sampling rate (resampled by the package), speech detection, windows for long
examples; the examples of a batch are predicted in length-sorted batches (``batch_size``).

The audio column may hold what any version of ``datasets`` gives:

- ``{"array": ..., "sampling_rate": ...}`` (``Audio()`` decoding in ``datasets`` < 4, or
  dicts built by hand; a 2-D array is ``[channels, time]`` or ``[time, channels]``,
  whichever axis is shorter being the channels);
- decoder objects with ``get_all_samples()`` (``Audio()`` decoding with torchcodec,
  ``datasets`` >= 4: ``.data`` ``[channels, time]``, ``.sample_rate``);
- ``{"bytes": ..., "path": ...}`` (``Audio(decode=False)``): the encoded file (any format
  soundfile reads), or the file at ``path`` when ``bytes`` is empty.

``datasets`` itself is not needed by :func:`labeller`. A decoded ``Audio()`` column (what
``load_dataset`` gives) is decoded by ``datasets`` before ``map`` calls the labeller, which
needs torchcodec and FFmpeg (``datasets`` >= 4); :func:`label_dataset` avoids that: it reads the
column undecoded (``Audio(decode=False)``: bytes or paths, read with soundfile) and gives the
dataset back with the column as it was.

Example
-------
>>> import numpy as np
>>> from agegender_sb import AgeGenderClassifier
>>> clf = AgeGenderClassifier.from_hparams(source=getfixture("tiny_checkpoint"))
>>> label = labeller(clf, vad=None)
>>> batch = {"audio": [{"array": np.random.RandomState(0).randn(8000) * 0.1,
...                     "sampling_rate": 8000}, None]}
>>> out = label(batch)
>>> sorted(out)
['age', 'child', 'error', 'female', 'gender', 'male', 'speech']
>>> out["speech"], out["error"]
([1.0, 0.0], [None, 'audio[1]: no audio'])
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["Labeller", "labeller", "label_dataset", "example_audio"]


def example_audio(value, name: str) -> tuple[np.ndarray | None, int | None, bytes | str | None]:
    """``(samples [time] or [time, channels], sampling rate, encoded bytes or a path)`` of one
    audio cell: samples and rate for decoded audio, else the bytes or the path.

    Raises
    ------
    ValueError
        Naming the example: no audio, or a value of an unknown shape.
    """
    if value is None:
        raise ValueError(f"{name}: no audio")
    if hasattr(value, "get_all_samples"):  # torchcodec's AudioDecoder (datasets >= 4)
        samples = value.get_all_samples()
        data = np.asarray(samples.data, dtype=np.float32)
        return (data.T if data.ndim == 2 else data), int(samples.sample_rate), None
    if isinstance(value, dict):
        if value.get("array") is not None:
            if not value.get("sampling_rate"):
                raise ValueError(f"{name}: an audio array without 'sampling_rate'")
            data = np.asarray(value["array"], dtype=np.float32)
            if data.ndim == 2 and data.shape[0] < data.shape[1]:
                data = data.T  # datasets' multichannel arrays are [channels, time]
            return data, int(value["sampling_rate"]), None
        if value.get("bytes"):
            return None, None, bytes(value["bytes"])
        if value.get("path"):
            return None, None, os.fspath(value["path"])
    raise ValueError(f"{name}: not audio as datasets gives it (a dict with 'array' and "
                     f"'sampling_rate', or 'bytes'/'path', or a decoder); got "
                     f"{type(value).__name__}")


class Labeller:
    """The callable :func:`labeller` returns (see the module's docstring).

    When ``datasets`` fingerprints a ``map`` for its cache, it pickles the function: a
    Labeller pickles as the model's fingerprint, labels and settings only (cheap, and the
    cache key changes with the weights). It does not travel to worker processes
    (``num_proc > 1``): make one per process instead.
    """

    def __init__(self, clf, audio_column: str = "audio", **settings):
        self.clf = clf
        self.audio_column = audio_column
        self.settings = settings
        self.labels = tuple(clf.labels)
        self.analyzer = clf.analyzer(**settings)

    def columns(self) -> list[str]:
        """The new columns, in order."""
        return ["age", "gender", *self.labels, "speech", "error"]

    def __call__(self, batch: dict) -> dict:
        from agegender_sb.batch.rows import file_rows

        if getattr(self, "clf", None) is None:
            raise RuntimeError("this Labeller was unpickled without its model (datasets' "
                               "map with num_proc > 1?): make one labeller per process")
        if self.audio_column not in batch:
            raise KeyError(f"no column {self.audio_column!r} in the batch (columns: "
                           f"{sorted(batch)}); pass audio_column=")
        values = batch[self.audio_column]
        out = {c: [None] * len(values) for c in self.columns()}
        out["speech"] = [0.0] * len(values)
        with tempfile.TemporaryDirectory(prefix="agegender-") as tmp:
            items, names = [], {}
            for i, value in enumerate(values):
                name = f"{self.audio_column}[{i}]"
                try:
                    path = self._as_file(value, name, Path(tmp) / f"{i}.wav")
                except (ValueError, OSError) as err:
                    out["error"][i] = str(err)
                    continue
                items.append((path, None))
                names[path] = (i, name)
            for path, res in self.analyzer.analyse_many(items):
                i, name = names[path]
                if isinstance(res, Exception):
                    out["error"][i] = str(res).replace(path, name)
                    continue
                row = file_rows(path, res)[-1]
                for col in self.columns():
                    value = row.get(col)
                    out[col][i] = (value.replace(path, name) if isinstance(value, str)
                                   and col == "error" else value)
                out["speech"][i] = float(row.get("speech") or 0.0)
        return out

    @staticmethod
    def _as_file(value, name: str, target: Path) -> str:
        """The example as a file the analysis reads (decoded arrays written losslessly as
        32-bit float WAV at their own rate; encoded bytes as they are; paths as given)."""
        import soundfile as sf

        data, rate, raw = example_audio(value, name)
        if data is not None:
            if data.ndim not in (1, 2) or data.size == 0:
                raise ValueError(f"{name}: expected a non-empty [time] or [time, channels] "
                                 f"array, got shape {data.shape}")
            sf.write(str(target), data, rate, subtype="FLOAT", format="WAV")
            return str(target)
        if isinstance(raw, bytes):
            target = target.with_suffix(".audio")
            target.write_bytes(raw)
            return str(target)
        return raw

    def __getstate__(self):
        clf = getattr(self, "clf", None)
        return {"model": getattr(clf, "fingerprint", None) if clf is not None else None,
                "labels": self.labels, "audio_column": self.audio_column,
                "settings": {k: repr(v) for k, v in sorted(self.settings.items())}}

    def __setstate__(self, state):
        self.clf = None
        self.labels, self.audio_column = state["labels"], state["audio_column"]
        self.settings = state["settings"]


def labeller(clf, audio_column: str = "audio", **settings) -> Labeller:
    """A function for ``dataset.map(fn, batched=True)`` adding age and gender columns.

    Parameters
    ----------
    clf : AgeGenderClassifier
    audio_column : str
        The column holding the audio (see the module's docstring for the forms it takes).
    **settings
        As :meth:`AgeGenderClassifier.analyzer`: ``vad`` (default Silero; None analyses
        every sample), ``window``, ``max_whole``, ``batch_size``, ...

    Returns
    -------
    Labeller
        ``fn(batch) -> {"age": [...], "gender": [...], <label>: [...], "speech": [...],
        "error": [...]}``; ages in years, probabilities of each label, None where an
        example has no result (``error`` says why).
    """
    return Labeller(clf, audio_column, **settings)


def label_dataset(dataset, clf, audio_column: str = "audio", batch_size: int = 16,
                  map_kwargs: dict | None = None, **settings):
    """``dataset`` with age and gender columns, decoded ``Audio()`` columns included, without
    torchcodec or FFmpeg.

    A decoded ``Audio()`` column is cast to ``Audio(decode=False)`` for the labelling (the
    encoded bytes or the files are read with soundfile, at their own sampling rate, and
    resampled by the package), then cast back, so the result has the column's original
    feature. Other columns (undecoded audio, arrays, paths in dicts) go to :func:`labeller`
    as they are.

    Parameters
    ----------
    dataset : datasets.Dataset
    clf : AgeGenderClassifier
    audio_column : str
    batch_size : int
        Examples per ``map`` batch.
    map_kwargs : dict, optional
        More keyword arguments of ``Dataset.map`` (``new_fingerprint``, ``desc``, ...).
    **settings
        As :func:`labeller`.
    """
    import datasets

    feature = dataset.features.get(audio_column)
    undecoded = dataset
    if isinstance(feature, datasets.Audio) and feature.decode:
        undecoded = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    out = undecoded.map(labeller(clf, audio_column, **settings), batched=True,
                        batch_size=batch_size, **(map_kwargs or {}))
    if undecoded is not dataset:
        out = out.cast_column(audio_column, feature)
    return out
