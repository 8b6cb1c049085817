"""Kaldi-style data directories (``wav.scp``, ``utt2spk``, ``spk2gender``, ...).

Layout: ``<data_folder>/<split_dir>/`` per split, each holding

* ``wav.scp``: ``<recording-id> <path>``; paths are absolute or relative to
  ``data_folder`` (the corpus root, parent of the split dirs). Piped commands
  (``... |``) are rejected: convert the audio to files first.
* ``utt2spk``: ``<utt-id> <speaker-id>``.
* ``spk2gender``: ``<speaker-id> m|f``.
* ``spk2age`` (optional, not standard Kaldi): ``<speaker-id> <age in years>``;
  speakers missing from it get an empty age.
* ``segments`` (optional): ``<utt-id> <recording-id> <start> <end>`` in seconds
  (``end = -1``: end of the recording); without it utterance id = recording id.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .common import PrepareError, Utterance, audio_duration, parse_age, read_key_value

logger = logging.getLogger(__name__)

_KALDI_GENDER = {"m": "male", "f": "female"}


def read_kaldi_dir(split_dir: Path, root: Path) -> list[Utterance]:
    """Read one Kaldi data directory.

    Parameters
    ----------
    split_dir : Path
        The data directory (holding ``wav.scp`` etc.).
    root : Path
        Folder relative ``wav.scp`` paths are resolved against.

    Returns
    -------
    list of Utterance
        One row per utterance (sorted by id), ages/genders from the speaker tables.

    Raises
    ------
    PrepareError
        Missing files, malformed lines, piped commands, inconsistent tables.
    """
    wav_scp = split_dir / "wav.scp"
    recordings: dict[str, tuple[int, Path]] = {}
    for rec, (number, (value,)) in read_key_value(wav_scp, max_fields=None).items():
        value = value.strip()
        if value.endswith("|") or value.startswith("|"):
            raise PrepareError(
                f"piped command in wav.scp is not supported: {value!r}; "
                "convert the audio to files and list their paths",
                wav_scp,
                number,
            )
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = root / path
        path = path.resolve()
        if not path.is_file():
            raise PrepareError(f"audio file not found: {path}", wav_scp, number)
        recordings[rec] = (number, path)

    utt2spk_file = split_dir / "utt2spk"
    utt2spk = read_key_value(utt2spk_file)

    gender_file = split_dir / "spk2gender"
    genders: dict[str, str] = {}
    for spk, (number, (value,)) in read_key_value(gender_file).items():
        if value.lower() not in _KALDI_GENDER:
            raise PrepareError(f"gender must be m or f, got {value!r}", gender_file, number)
        genders[spk] = _KALDI_GENDER[value.lower()]

    age_file = split_dir / "spk2age"
    ages: dict[str, float | None] = {}
    if age_file.is_file():
        for spk, (number, (value,)) in read_key_value(age_file).items():
            ages[spk] = parse_age(value, age_file, number)
    else:
        logger.info("%s: no spk2age, ages left empty", split_dir)

    segments_file = split_dir / "segments"
    segments: dict[str, tuple[str, float | None, float | None, int | None]] = {}
    if segments_file.is_file():
        for utt, (number, fields) in read_key_value(segments_file, 4, 4).items():
            rec, start_s, end_s = fields
            try:
                start, end = float(start_s), float(end_s)
            except ValueError:
                raise PrepareError("start/end must be numbers", segments_file, number) from None
            if rec not in recordings:
                raise PrepareError(f"recording {rec!r} not in wav.scp", segments_file, number)
            if start < 0 or (end != -1 and end <= start):
                raise PrepareError(f"invalid segment {start}-{end}", segments_file, number)
            segments[utt] = (rec, start, None if end == -1 else end, number)
    else:
        segments = {rec: (rec, None, None, None) for rec in recordings}

    durations: dict[str, float] = {}
    utts = []
    for utt in sorted(segments):
        rec, start, stop, seg_line = segments[utt]
        if utt not in utt2spk:
            raise PrepareError(f"utterance {utt!r} missing from utt2spk", utt2spk_file)
        spk = utt2spk[utt][1][0]
        if spk not in genders:
            raise PrepareError(f"speaker {spk!r} missing from spk2gender", gender_file)
        wav = recordings[rec][1]
        if rec not in durations:
            durations[rec] = audio_duration(wav)
        file_dur = durations[rec]
        if start is None:
            duration = file_dur
        else:
            if stop is None:
                stop = file_dur
            if stop > file_dur + 0.05 or stop <= start:
                raise PrepareError(
                    f"segment {utt!r} ({start}-{stop} s) does not fit in {wav} "
                    f"({file_dur:.3f} s)",
                    segments_file,
                    seg_line,
                )
            duration = stop - start
        utts.append(
            Utterance(
                id=utt,
                wav=wav,
                duration=duration,
                speaker=spk,
                age=ages.get(spk),
                gender=genders[spk],
                start=start,
                stop=stop,
            )
        )
    extra = set(utt2spk) - set(segments)
    if extra:
        raise PrepareError(
            f"{len(extra)} utterances in utt2spk have no audio (e.g. {sorted(extra)[0]!r})",
            utt2spk_file,
        )
    missing_age = {u.speaker for u in utts if u.age is None}
    if ages and missing_age:
        logger.warning("%s: %d speakers have no age in spk2age", split_dir, len(missing_age))
    return utts


def read_kaldi(
    data_folder: str | Path,
    train_dir: str = "train",
    valid_dir: str | None = None,
    test_dir: str = "test",
) -> dict[str, list[Utterance]]:
    """Read Kaldi data directories for the train/valid/test splits.

    Parameters
    ----------
    data_folder : path-like
        Corpus root; split dirs are relative to it, and so are relative ``wav.scp`` paths.
    train_dir, test_dir : str
        Split directory names (required).
    valid_dir : str, optional
        Validation directory. ``None`` uses ``valid`` if it exists, else no valid split
        is returned (``prepare`` then carves one speaker-disjointly from train). A name
        given explicitly must exist.

    Returns
    -------
    dict
        ``split -> rows``.
    """
    root = Path(data_folder).resolve()
    dirs = {"train": train_dir, "test": test_dir}
    if valid_dir is not None:
        dirs["valid"] = valid_dir
    elif (root / "valid").is_dir():
        dirs["valid"] = "valid"
    out = {}
    for split, name in dirs.items():
        split_dir = root / name
        if not split_dir.is_dir():
            raise PrepareError(f"{split} data directory not found", split_dir)
        out[split] = read_kaldi_dir(split_dir, root)
    return out


#: The files of a Kaldi data directory that ``read_kaldi_dir`` reads (when present).
KALDI_FILES = ("wav.scp", "utt2spk", "spk2gender", "spk2age", "segments")


def label_files(
    data_folder: str | Path,
    train_dir: str = "train",
    valid_dir: str | None = None,
    test_dir: str = "test",
    **_options,
) -> list[Path]:
    """The label files ``read_kaldi`` reads or looks for (present or not).

    >>> [p.name for p in label_files("/c", test_dir="ev")][:2]
    ['wav.scp', 'utt2spk']
    >>> sorted({p.parent.name for p in label_files("/c", test_dir="ev")})
    ['ev', 'train', 'valid']
    """
    root = Path(data_folder).resolve()
    dirs = dict.fromkeys([train_dir, valid_dir or "valid", test_dir])
    return [root / name / file for name in dirs for file in KALDI_FILES]
