"""LDC TIMIT (``TRAIN/DR1/FCJF0/SA1.WAV``, ``DOC/SPKRINFO.TXT``; lowercase variants too).

Audio: the ``.WAV`` files are NIST SPHERE despite the name; soundfile reads them
(only files whose name ends exactly in ``.wav``, any case, are taken, so converted
copies such as ``SA1.WAV.wav`` next to the originals would be listed as well -- keep
one kind only).

Labels from ``DOC/SPKRINFO.TXT``: lines starting with ``;`` are comments; fields
``ID Sex DR Use RecDate BirthDate Ht Race Edu [Comments]``, where ``ID`` lacks the
sex letter (``CJF0``; the speaker folder is ``<sex><ID>``, e.g. ``FCJF0``). Age is
the completed years between ``BirthDate`` and ``RecDate`` (``MM/DD/YY``, years read
as 19YY); a date with ``??`` or otherwise unparsable gives an empty age.

Splits: ``TRAIN`` -> train, ``TEST`` -> test; ``prepare`` carves valid
speaker-disjointly from train.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

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


def read_spkrinfo(path: Path) -> dict[str, tuple[str, float | None]]:
    """Read ``SPKRINFO.TXT`` into ``speaker folder name (upper case) -> (gender, age)``.

    Parameters
    ----------
    path : Path
        The speaker table.

    Returns
    -------
    dict
        E.g. ``{"FCJF0": ("female", 25.0)}``.

    Raises
    ------
    PrepareError
        Malformed lines, unknown sex, duplicates (naming file and line).
    """
    table: dict[str, tuple[str, float | None]] = {}
    for number, line in read_lines(path):
        if line.startswith(";"):
            continue
        fields = line.split()
        if len(fields) < 6:
            raise PrepareError(f"malformed speaker line {line!r}", path, number)
        spk_id, sex, _dr, use, rec_date, birth_date = fields[:6]
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
        table[key] = ("male" if sex == "M" else "female", age)
    return table


def _child(folder: Path, name: str) -> Path | None:
    """The entry of ``folder`` named ``name`` in any letter case."""
    for entry in sorted(folder.iterdir()):
        if entry.name.lower() == name.lower():
            return entry
    return None


def read_timit(data_folder: str | Path) -> dict[str, list[Utterance]]:
    """Read TIMIT into train and test rows.

    Parameters
    ----------
    data_folder : path-like
        The TIMIT root (holding ``TRAIN``, ``TEST`` and ``DOC``, any case).

    Returns
    -------
    dict
        ``{"train": rows, "test": rows}``; IDs are ``<speaker>_<utterance>``
        (e.g. ``FCJF0_SA1``), speakers the folder names in upper case.
    """
    root = Path(data_folder).resolve()
    if not root.is_dir():
        raise PrepareError("data folder not found", root)
    doc = _child(root, "DOC")
    info_file = _child(doc, "SPKRINFO.TXT") if doc is not None else None
    if info_file is None:
        raise PrepareError("required file is missing", root / "DOC" / "SPKRINFO.TXT")
    speakers = read_spkrinfo(info_file)

    out: dict[str, list[Utterance]] = {}
    for split, name in (("train", "TRAIN"), ("test", "TEST")):
        split_dir = _child(root, name)
        if split_dir is None or not split_dir.is_dir():
            raise PrepareError(f"{name} folder not found", root / name)
        utts = []
        for region in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for spk_dir in sorted(p for p in region.iterdir() if p.is_dir()):
                spk = spk_dir.name.upper()
                if spk not in speakers:
                    raise PrepareError(f"speaker {spk} ({spk_dir}) not listed", info_file)
                gender, age = speakers[spk]
                if spk[0] != ("M" if gender == "male" else "F"):
                    raise PrepareError(f"folder {spk_dir} disagrees with the listed sex", info_file)
                for wav in sorted(spk_dir.iterdir()):
                    if wav.suffix.lower() != ".wav" or not wav.is_file():
                        continue
                    utts.append(
                        Utterance(
                            id=f"{spk}_{wav.stem.upper()}",
                            wav=wav,
                            duration=audio_duration(wav),
                            speaker=spk,
                            age=age,
                            gender=gender,
                        )
                    )
        if not utts:
            raise PrepareError("no .WAV files found", split_dir)
        out[split] = utts
    return out
