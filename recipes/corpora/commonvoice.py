"""Mozilla Common Voice language folder (``<lang>/{train,dev,test,validated}.tsv``, ``clips/``).

Splits: CV's own ``train.tsv``/``dev.tsv``/``test.tsv`` (``dev`` -> ``valid``; they are
speaker-disjoint by construction) when all three exist, otherwise ``validated.tsv``
(or when ``use_validated=True``), which ``prepare`` splits speaker-disjointly by
``client_id``.

Age: CV only gives self-declared age *bands*; each is mapped to the middle of the
band, in years (:data:`CV_AGE_YEARS`): teens -> 16, twenties -> 25, thirties -> 35,
fourties/forties -> 45, fifties -> 55, sixties -> 65, seventies -> 75,
eighties -> 85, nineties -> 95. (``fourties`` is the corpus's own spelling.) The
exact boundaries shown on the CV form have shifted by a year between releases
(e.g. "< 19", "19 - 29"), so the error of this mapping is about +-5 years; "teens"
is taken as roughly 13-19. With the default child threshold (< 15) no CV clip
becomes ``child``.

Gender: read from the ``gender`` column (or ``sex`` if a release names it so).
Old values ``male``/``female`` and new values ``male_masculine``/``female_feminine``
map to male/female; ``other``, ``intersex``, ``transgender``, ``non-binary``,
``do_not_wish_to_say`` and empty stay empty (never guessed). Missing ``age``/
``gender`` columns give empty labels.

Durations come from the mp3 header (soundfile / libsndfile >= 1.1 reads mp3). A clip
that is missing or unreadable raises an error naming it, unless ``skip_unreadable``
is set, in which case skipped clips are listed in ``skipped_clips.txt`` in the
output folder.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from .common import PrepareError, Utterance, audio_duration, normalise_gender

logger = logging.getLogger(__name__)

#: Age band -> years (middle of the band).
CV_AGE_YEARS = {
    "teens": 16.0,
    "twenties": 25.0,
    "thirties": 35.0,
    "fourties": 45.0,
    "forties": 45.0,
    "fifties": 55.0,
    "sixties": 65.0,
    "seventies": 75.0,
    "eighties": 85.0,
    "nineties": 95.0,
}

_CV_SPLIT_FILES = {"train": "train.tsv", "valid": "dev.tsv", "test": "test.tsv"}


def cv_age(value: str | None, path=None, line=None) -> float | None:
    """Map a Common Voice age band to years (``None`` for empty).

    Parameters
    ----------
    value : str or None
        Band name, e.g. ``"fourties"``.
    path, line : optional
        Location, for the error message.

    Returns
    -------
    float or None
        Years (see :data:`CV_AGE_YEARS`).

    Raises
    ------
    PrepareError
        For an unknown band name.
    """
    if value is None or not value.strip():
        return None
    key = value.strip().lower()
    if key not in CV_AGE_YEARS:
        raise PrepareError(f"unknown Common Voice age band {value!r}", path, line)
    return CV_AGE_YEARS[key]


def read_cv_tsv(tsv: Path, clips: Path) -> list[tuple[int, str, Path, float | None, str | None]]:
    """Parse a CV tsv into ``(line, client_id, clip_path, age, gender)`` tuples.

    Parameters
    ----------
    tsv : Path
        ``train.tsv``, ``validated.tsv``, ...
    clips : Path
        The ``clips`` folder.

    Returns
    -------
    list of tuple
        One entry per row, labels normalised.
    """
    if not tsv.is_file():
        raise PrepareError("required file is missing", tsv)
    rows = []
    with open(tsv, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise PrepareError("empty file (no header)", tsv, 1)
        header = [h.strip() for h in header]
        for needed in ("client_id", "path"):
            if needed not in header:
                raise PrepareError(f"no {needed!r} column in header {header}", tsv, 1)
        col = {name: i for i, name in enumerate(header)}
        gender_col = col.get("gender", col.get("sex"))
        age_col = col.get("age")
        for fields in reader:
            number = reader.line_num
            if not any(x.strip() for x in fields):
                continue
            if len(fields) != len(header):
                raise PrepareError(
                    f"expected {len(header)} tab-separated fields, got {len(fields)}",
                    tsv,
                    number,
                )
            client = fields[col["client_id"]].strip()
            clip = fields[col["path"]].strip()
            if not client or not clip:
                raise PrepareError("empty client_id or path", tsv, number)
            age = cv_age(fields[age_col], tsv, number) if age_col is not None else None
            gender = normalise_gender(fields[gender_col]) if gender_col is not None else None
            if gender == "child":  # not a CV value; never guess
                gender = None
            rows.append((number, client, clips / clip, age, gender))
    return rows


def read_commonvoice(
    data_folder: str | Path,
    use_validated: bool = False,
    keep_unlabelled: bool = False,
    skip_unreadable: bool = False,
    skipped_log: str | Path | None = None,
) -> dict[str, list[Utterance]]:
    """Read a Common Voice language folder.

    Parameters
    ----------
    data_folder : path-like
        The language folder (holding ``clips/`` and the tsv files).
    use_validated : bool
        Use ``validated.tsv`` (split later by speaker) even if train/dev/test exist.
    keep_unlabelled : bool
        Keep clips with neither age nor gender (dropped by default, count logged).
    skip_unreadable : bool
        Skip missing/unreadable clips instead of raising; they are listed in
        ``skipped_log``.
    skipped_log : path-like, optional
        File listing skipped clips (written only when some were skipped).

    Returns
    -------
    dict
        ``{"train", "valid", "test"} -> rows``, or ``{"all": rows}`` from validated.tsv.
    """
    root = Path(data_folder).resolve()
    if not root.is_dir():
        raise PrepareError("data folder not found", root)
    clips = root / "clips"
    have_splits = all((root / name).is_file() for name in _CV_SPLIT_FILES.values())
    if have_splits and not use_validated:
        files = {split: root / name for split, name in _CV_SPLIT_FILES.items()}
    else:
        if not (root / "validated.tsv").is_file():
            raise PrepareError(
                "need train.tsv, dev.tsv and test.tsv, or validated.tsv", root / "validated.tsv"
            )
        logger.info("%s: using validated.tsv, split by client_id", root)
        files = {"all": root / "validated.tsv"}

    out: dict[str, list[Utterance]] = {}
    skipped: list[str] = []
    seen: dict[str, Path] = {}
    for split, tsv in files.items():
        utts = []
        dropped = 0
        for number, client, clip, age, gender in read_cv_tsv(tsv, clips):
            if age is None and gender is None and not keep_unlabelled:
                dropped += 1
                continue
            utt_id = clip.stem
            if utt_id in seen:
                raise PrepareError(
                    f"clip {clip.name!r} listed twice (also in {seen[utt_id].name})", tsv, number
                )
            seen[utt_id] = tsv
            try:
                duration = audio_duration(clip)
            except PrepareError as err:
                if not skip_unreadable:
                    raise PrepareError(
                        f"unreadable clip {clip} ({err}); use --skip_unreadable to skip",
                        tsv,
                        number,
                    ) from err
                skipped.append(f"{clip}\t{tsv.name}:{number}\t{err}")
                continue
            utts.append(
                Utterance(
                    id=utt_id, wav=clip, duration=duration, speaker=client, age=age, gender=gender
                )
            )
        if dropped:
            logger.info("%s: dropped %d clips with neither age nor gender", tsv.name, dropped)
        out[split] = utts
    if skipped:
        logger.warning("skipped %d unreadable clips", len(skipped))
        if skipped_log is not None:
            Path(skipped_log).parent.mkdir(parents=True, exist_ok=True)
            Path(skipped_log).write_text("\n".join(skipped) + "\n", encoding="utf-8")
    return out


def label_files(data_folder: str | Path, **_options) -> list[Path]:
    """The tsv files ``read_commonvoice`` reads or looks for (present or not)."""
    root = Path(data_folder).resolve()
    return [root / name for name in (*_CV_SPLIT_FILES.values(), "validated.tsv")]
