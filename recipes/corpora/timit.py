"""TIMIT in the two layouts people have: LDC's release and NLTK's sample.

* **LDC** (``TRAIN/DR1/FCJF0/SA1.WAV``, ``TEST/...``, ``DOC/SPKRINFO.TXT``; any letter
  case): ``TRAIN`` -> train, ``TEST`` -> test; ``prepare`` carves valid from train.
* **NLTK sample** (``nltk_data/corpora/timit``): speaker folders at the top named
  ``dr<region>-<sex><ID>`` (``dr1-fvmh0/`` holding ``sa1.wav``, ``sa1.phn``, ...), with
  ``spkrinfo.txt`` (same format as ``SPKRINFO.TXT``) beside them and no split: all
  rows come back as ``all`` and ``prepare`` carves valid and test by speaker, balanced
  by sex. The folder ``dr1-fvmh0`` is speaker ``FVMH0``, as in the LDC layout.

Audio: the ``.WAV``/``.wav`` files are NIST SPHERE despite the name (NLTK's reader
documents the same for its sample); soundfile reads them, and RIFF conversions too.
Only files whose name ends exactly in ``.wav``, any case, are taken, so converted
copies such as ``SA1.WAV.wav`` next to the originals would be listed as well -- keep
one kind only.

Labels from ``DOC/SPKRINFO.TXT``: lines starting with ``;`` are comments; fields
``ID Sex DR Use RecDate BirthDate Ht Race Edu [Comments]``, where ``ID`` lacks the
sex letter (``CJF0``; the speaker folder is ``<sex><ID>``, e.g. ``FCJF0``). Age is
the completed years between ``BirthDate`` and ``RecDate`` (``MM/DD/YY``, years read
as 19YY); a date with ``??`` or otherwise unparsable gives an empty age.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import NamedTuple

from .common import PrepareError, Utterance, audio_duration, read_lines

logger = logging.getLogger(__name__)


def parse_timit_date(value: str) -> dt.date | None:
    """Parse a TIMIT ``MM/DD/YY`` date (19YY); ``None`` if unknown/unparsable.

    Parameters
    ----------
    value : str
        E.g. ``"03/03/86"`` or ``"??/??/??"``.

    Returns
    -------
    datetime.date or None
        The date.
    """
    parts = value.strip().split("/")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    month, day, year = (int(p) for p in parts)
    if year < 100:
        year += 1900
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


def age_at(birth: dt.date | None, recorded: dt.date | None) -> float | None:
    """Completed years between two dates (``None`` if either is unknown or order is wrong).

    Parameters
    ----------
    birth, recorded : datetime.date or None
        Birth and recording dates.

    Returns
    -------
    float or None
        Age in whole years.
    """
    if birth is None or recorded is None or recorded < birth:
        return None
    years = recorded.year - birth.year
    if (recorded.month, recorded.day) < (birth.month, birth.day):
        years -= 1
    return float(years)


class Speaker(NamedTuple):
    """One speaker of ``SPKRINFO.TXT``: ``gender`` (``male``/``female``), ``age`` (years or
    ``None``) and dialect ``region`` (``"1"`` to ``"8"``)."""

    gender: str
    age: float | None
    region: str


def read_spkrinfo(path: Path) -> dict[str, Speaker]:
    """Read ``SPKRINFO.TXT`` into ``speaker folder name (upper case) -> Speaker``.

    Parameters
    ----------
    path : Path
        The speaker table.

    Returns
    -------
    dict
        E.g. ``{"FCJF0": Speaker("female", 25.0, "1")}``.

    Raises
    ------
    PrepareError
        Malformed lines, unknown sex, duplicates (naming file and line).
    """
    table: dict[str, Speaker] = {}
    for number, line in read_lines(path):
        if line.startswith(";"):
            continue
        fields = line.split()
        if len(fields) < 6:
            raise PrepareError(f"malformed speaker line {line!r}", path, number)
        spk_id, sex, region, use, rec_date, birth_date = fields[:6]
        sex = sex.upper()
        if sex not in ("M", "F"):
            raise PrepareError(f"sex must be M or F, got {fields[1]!r}", path, number)
        if use.upper() not in ("TRN", "TST"):
            raise PrepareError(f"Use must be TRN or TST, got {use!r}", path, number)
        key = (sex + spk_id).upper()
        if key in table:
            raise PrepareError(f"duplicate speaker {key}", path, number)
        age = age_at(parse_timit_date(birth_date), parse_timit_date(rec_date))
        if age is None:
            logger.info("%s line %d: unknown age for %s", path, number, key)
        table[key] = Speaker("male" if sex == "M" else "female", age, region)
    return table


def _child(folder: Path, name: str) -> Path | None:
    """The entry of ``folder`` named ``name`` in any letter case."""
    for entry in sorted(folder.iterdir()):
        if entry.name.lower() == name.lower():
            return entry
    return None


#: NLTK sample speaker folder: ``dr<region>-<sex letter><speaker id>``, e.g. ``dr1-fvmh0``.
_NLTK_SPEAKER = re.compile(r"dr(\d)-([mf][a-z0-9]+)", re.IGNORECASE)

LAYOUTS = (
    "LDC: TRAIN/ and TEST/ (DR<n>/<speaker>/*.WAV) with DOC/SPKRINFO.TXT, any letter case",
    "NLTK sample: speaker folders like dr1-fvmh0/ (sa1.wav, ...) with spkrinfo.txt, at the top",
)


def _nltk_speakers(root: Path) -> list[Path]:
    return [p for p in sorted(root.iterdir()) if p.is_dir() and _NLTK_SPEAKER.fullmatch(p.name)]


def _detect(root: Path) -> str | None:
    """``"ldc"``, ``"nltk"`` or ``None`` from the folder's entries alone."""
    if any(_child(root, name) is not None for name in ("TRAIN", "TEST")):
        return "ldc"
    return "nltk" if _nltk_speakers(root) else None


def find_layout(data_folder: str | Path) -> tuple[str, Path]:
    """Recognise the TIMIT layout of a folder.

    Parameters
    ----------
    data_folder : path-like
        The TIMIT root.

    Returns
    -------
    tuple of (str, Path)
        ``("ldc", SPKRINFO.TXT)`` or ``("nltk", spkrinfo.txt)``.

    Raises
    ------
    PrepareError
        Missing folder or speaker table, or no recognised layout (the message lists
        the layouts accepted, what the folder holds, and a sub-folder that does look
        like TIMIT, if any).
    """
    root = Path(data_folder).resolve()
    if not root.is_dir():
        raise PrepareError("data folder not found", root)
    layout = _detect(root)
    if layout == "ldc":
        doc = _child(root, "DOC")
        info = _child(doc, "SPKRINFO.TXT") if doc is not None and doc.is_dir() else None
        if info is None:
            raise PrepareError("required file is missing", root / "DOC" / "SPKRINFO.TXT")
        return "ldc", info
    if layout == "nltk":
        info = _child(root, "spkrinfo.txt")
        if info is None:
            raise PrepareError("required file is missing (NLTK sample layout)",
                               root / "spkrinfo.txt")  # fmt: skip
        return "nltk", info
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    found = ", ".join(entries[:10]) or "nothing"
    if len(entries) > 10:
        found += f", ... ({len(entries)} entries)"
    nested = [p for p in sorted(root.iterdir()) if p.is_dir() and _detect(p)]
    hint = f"; {nested[0]} looks like TIMIT: pass it as the data folder" if nested else ""
    raise PrepareError(
        "no TIMIT layout recognised; accepted: "
        + "; ".join(f"({i}) {text}" for i, text in enumerate(LAYOUTS, 1))
        + f"; found: {found}{hint}",
        root,
    )


def label_files(data_folder: str | Path, **_options) -> list[Path]:
    """The label files ``read_timit`` reads: the speaker table of the layout found."""
    return [find_layout(data_folder)[1]]


def _speaker_rows(spk_dir: Path, spk: str, info: Speaker) -> list[Utterance]:
    """One row per ``*.wav`` (any case) of a speaker folder, IDs ``<speaker>_<UTTERANCE>``."""
    return [
        Utterance(
            id=f"{spk}_{wav.stem.upper()}",
            wav=wav,
            duration=audio_duration(wav),
            speaker=spk,
            age=info.age,
            gender=info.gender,
        )  # fmt: skip
        for wav in sorted(spk_dir.iterdir())
        if wav.suffix.lower() == ".wav" and wav.is_file()
    ]


def _lookup(speakers: dict[str, Speaker], spk: str, spk_dir: Path, info_file: Path) -> Speaker:
    if spk not in speakers:
        raise PrepareError(f"speaker {spk} ({spk_dir}) not listed", info_file)
    return speakers[spk]


def read_timit(data_folder: str | Path) -> dict[str, list[Utterance]]:
    """Read TIMIT (LDC layout or NLTK sample, see the module docstring).

    Parameters
    ----------
    data_folder : path-like
        The TIMIT root.

    Returns
    -------
    dict
        LDC: ``{"train": rows, "test": rows}``; NLTK sample: ``{"all": rows}``. IDs are
        ``<speaker>_<utterance>`` (e.g. ``FCJF0_SA1``), speakers the upper-case
        ``<sex><ID>`` (``FCJF0``).
    """
    root = Path(data_folder).resolve()
    layout, info_file = find_layout(root)
    speakers = read_spkrinfo(info_file)
    if layout == "nltk":
        utts = []
        for spk_dir in _nltk_speakers(root):
            region, spk = _NLTK_SPEAKER.fullmatch(spk_dir.name).groups()
            spk = spk.upper()
            info = _lookup(speakers, spk, spk_dir, info_file)
            if info.region != region:
                raise PrepareError(f"folder {spk_dir} disagrees with the listed dialect "
                                   f"region {info.region}", info_file)  # fmt: skip
            utts += _speaker_rows(spk_dir, spk, info)
        if not utts:
            raise PrepareError("no .wav files in the speaker folders", root)
        return {"all": utts}

    out: dict[str, list[Utterance]] = {}
    for split, name in (("train", "TRAIN"), ("test", "TEST")):
        split_dir = _child(root, name)
        if split_dir is None or not split_dir.is_dir():
            raise PrepareError(f"{name} folder not found", root / name)
        utts = []
        for region in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for spk_dir in sorted(p for p in region.iterdir() if p.is_dir()):
                spk = spk_dir.name.upper()
                info = _lookup(speakers, spk, spk_dir, info_file)
                if spk[0] != ("M" if info.gender == "male" else "F"):
                    raise PrepareError(f"folder {spk_dir} disagrees with the listed sex", info_file)
                utts += _speaker_rows(spk_dir, spk, info)
        if not utts:
            raise PrepareError("no .WAV files found", split_dir)
        out[split] = utts
    return out
