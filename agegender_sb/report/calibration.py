"""Calibrated age intervals, gender probabilities and age-band probabilities.

A :class:`Calibration` is fitted on a labelled table ``agegender predict`` wrote (``agegender
calibrate``) and applied to new rows (``agegender predict --calibration``):

- **age intervals** by split conformal prediction: for each kind of row (files, windows,
  turn speakers, speakers: :mod:`agegender_sb.report.matching`) and each predicted gender with at
  least ``min_group`` calibration rows (else the kind's pooled rows), the score of a row is
  ``|true age - predicted age|`` and the interval half-width at level ``L`` is the
  ``ceil((n + 1) L)``-th smallest of the ``n`` scores. For a new row exchangeable with the
  calibration rows (drawn from the same corpus the same way), ``[age - q, age + q]`` holds
  the true age with probability at least ``L`` (and below ``L + 1/(n + 1)`` for distinct
  scores). On another corpus the coverage is whatever ``agegender evaluate`` measures.
  ``age_low`` is clipped at 0 (no true age lies below).
- **gender probabilities** by temperature scaling: one temperature ``T`` per kind, fitted
  by likelihood on the rows with a true gender; ``p_<label> = softmax(log p / T)``. The
  most probable label does not change. Written probabilities below 5e-5 count as 5e-5.
- **age-band probabilities** from the residuals ``true - predicted`` of the same group:
  ``P(lo <= age < hi)`` is the share of residuals ``r`` with ``lo <= age + r < hi``
  (at most 1000 quantiles of the residuals are kept).

The file records the model's fingerprint (applying it to another model is refused), the
levels, the counts and the corpus it came from.

Example
-------
>>> rows = [({"path": f"{i}.wav", "speaker": None, "start": None, "age": 30.0 + i % 7,
...           "gender": "male", "female": 0.2, "male": 0.8}, {"age": 30.0, "gender": "male"})
...         for i in range(99)]
>>> cal = Calibration.fit({"file": rows}, ("female", "male"), "f1", levels=(0.9,))
>>> cal.kinds["file"]["groups"]["all"]["half_width"]
{'0.9': 6.0}
>>> row = cal.calibrated_row(rows[0][0])
>>> row["age_low"], row["age_high"], row["p_male"] > 0.8
(24.0, 36.0, True)
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from agegender_sb.errors import ReportError
from agegender_sb.report.scoring import row_kind

__all__ = ["CalibrationError", "Calibration", "conformal_quantile", "fit_temperature",
           "band_columns", "parse_age_bands", "DEFAULT_LEVELS", "MIN_GROUP"]

FORMAT, VERSION = "agegender-calibration", 1
DEFAULT_LEVELS = (0.9,)
#: Fewest calibration rows a predicted gender needs for intervals of its own.
MIN_GROUP = 30
#: Most residual quantiles kept per group (for the age-band probabilities).
MAX_ATOMS = 1000
PROB_FLOOR = 5e-5  # probabilities are written with 4 decimals


class CalibrationError(ReportError):
    """A calibration that cannot be fitted, read or applied (the message says why)."""


# ---------------------------------------------------------------------------- the methods
def conformal_quantile(scores, level: float) -> float:
    """The split-conformal quantile: the ``ceil((n + 1) level)``-th smallest score.

    Raises
    ------
    CalibrationError
        When ``n`` is too small for the level (``ceil((n + 1) level) > n``).

    Example
    -------
    >>> conformal_quantile(range(1, 20), 0.9)  # ceil(20 * 0.9) = 18th smallest
    18.0
    """
    s = np.sort(np.asarray(list(scores), dtype=np.float64))
    n = len(s)
    k = math.ceil(round((n + 1) * level, 9))
    if not 0 < level < 1 or k > n:
        raise CalibrationError(f"{n} calibration row(s) are too few for coverage {level:g} "
                               f"(at least {math.ceil(level / (1 - level))} needed)")
    return float(s[k - 1])


def _nll(beta: float, logp: np.ndarray, target: np.ndarray) -> float:
    z = beta * logp
    m = z.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))
    return float(np.mean(lse - z[np.arange(len(target)), target]))


def fit_temperature(logp, target) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of
    ``softmax(logp / T)`` for the classes ``target`` (golden-section search over
    ``log(1/T)`` in [-7, 7]: the likelihood is concave in ``1/T``).

    Example
    -------
    >>> logp = np.log([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])
    >>> round(fit_temperature(logp, [0, 0, 1, 1]), 3)  # 3 of 4 right: 1 / (1 + 9^-1/T) = 0.75
    2.0
    """
    logp = np.asarray(logp, dtype=np.float64)
    target = np.asarray(target, dtype=np.int64)
    lo, hi = -7.0, 7.0
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(math.exp(a), logp, target), _nll(math.exp(b), logp, target)
    for _ in range(80):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(math.exp(a), logp, target)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(math.exp(b), logp, target)
    return float(1.0 / math.exp((lo + hi) / 2))


def _atoms(residuals: np.ndarray) -> list[float]:
    r = np.sort(residuals)
    if len(r) > MAX_ATOMS:
        r = np.quantile(r, (np.arange(MAX_ATOMS) + 0.5) / MAX_ATOMS)
    return [round(float(x), 4) for x in r]


def parse_age_bands(text: str) -> tuple[float, ...]:
    """Band edges ``"0,13,20,40,65,120"`` → ``(0.0, 13.0, ...)``: increasing, at least two.

    Example
    -------
    >>> parse_age_bands("0, 13,20")
    (0.0, 13.0, 20.0)
    """
    try:
        edges = tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        edges = ()
    if (len(edges) < 2 or not all(math.isfinite(e) and e >= 0 for e in edges)
            or any(b <= a for a, b in zip(edges, edges[1:]))):
        raise ValueError(f"age bands {text!r}: give increasing edges in years, e.g. "
                         "0,13,20,40,65,120")
    return edges


def band_columns(edges) -> list[str]:
    """``p_age_<lo>_<hi>`` for each band.

    Example
    -------
    >>> band_columns((0, 12.5, 20))
    ['p_age_0_12.5', 'p_age_12.5_20']
    """
    return [f"p_age_{a:g}_{b:g}" for a, b in zip(edges, edges[1:])]


# ---------------------------------------------------------------------------- the file
class Calibration:
    """A fitted calibration (see the module docstring): fit, save, load, apply.

    Attributes
    ----------
    fingerprint : str
        The model's (:attr:`AgeGenderClassifier.fingerprint`).
    labels : tuple of str
    levels : tuple of float
        Coverage levels fitted; ``level`` (default the first) is the one applied.
    kinds : dict
        Per row kind: ``n``, ``n_gender``, ``temperature`` (or None), ``groups`` (``all``
        and each predicted gender with enough rows: ``n``, ``half_width`` per level,
        ``residuals``).
    corpus : dict
        Where it came from (table, truth, when).
    bands : tuple of float
        Edges of the age bands whose probabilities :meth:`calibrated_row` adds.
    """

    def __init__(self, fingerprint, labels, levels, kinds, corpus=None, level=None,
                 bands=(), source=None):
        self.fingerprint, self.labels = str(fingerprint), tuple(labels)
        self.levels = tuple(float(v) for v in levels)
        self.kinds, self.corpus = kinds, dict(corpus or {})
        self.level = float(self.levels[0] if level is None else level)
        self.bands = tuple(bands)
        self.source = source
        if self.level not in self.levels:
            raise CalibrationError(f"{self._name()}: level {self.level:g} was not fitted "
                                   f"(levels: {', '.join(f'{v:g}' for v in self.levels)})")

    def _name(self) -> str:
        return str(self.source) if self.source else "calibration"

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, pairs_by_kind: dict, labels, fingerprint: str, levels=DEFAULT_LEVELS,
            min_group: int = MIN_GROUP, corpus: dict | None = None) -> Calibration:
        """Fit from ``{kind: [(table row, truth entry)]}``
        (:func:`agegender_sb.report.matching.match_by_kind`). Rows without a prediction or a true
        age add nothing to the intervals; rows with a true gender fit the temperature.

        Raises
        ------
        CalibrationError
            When no kind has enough rows with a predicted and a true age for the levels.
        """
        labels = tuple(labels)
        levels = tuple(sorted({float(v) for v in levels}, key=list(levels).index))
        kinds, problems = {}, []
        for kind, pairs in pairs_by_kind.items():
            try:
                kinds[kind] = _fit_kind(pairs, labels, levels, min_group)
            except CalibrationError as err:
                problems.append(f"{kind} rows: {err}")
        if not kinds:
            raise CalibrationError("; ".join(problems) or "no rows matched the truth")
        return cls(fingerprint, labels, levels, kinds, corpus)

    # ------------------------------------------------------------------ reading, writing
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION,
                "model": {"fingerprint": self.fingerprint, "labels": list(self.labels)},
                "levels": list(self.levels), "corpus": self.corpus, "kinds": self.kinds}

    def digest(self) -> str:
        """Short hash of the fitted content (names the calibration in a table's record)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON file (atomically: a temporary file, then renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        """Read a file :meth:`save` wrote.

        Raises
        ------
        CalibrationError
            Naming the file: unreadable, not a calibration, or malformed.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CalibrationError(f"{path}: cannot read the calibration ({err})") from err
        try:
            if data.get("format") != FORMAT or data.get("version") != VERSION:
                raise ValueError(f"not an {FORMAT} file of version {VERSION}")
            cal = cls(data["model"]["fingerprint"], data["model"]["labels"], data["levels"],
                      data["kinds"], data.get("corpus"), source=str(path))
            cal._validate()
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise CalibrationError(f"{path}: not a valid calibration ({err})") from None
        return cal

    def _validate(self) -> None:
        for kind, k in self.kinds.items():
            if kind not in ("file", "segment", "file-speaker", "speaker"):
                raise ValueError(f"unknown row kind {kind!r}")
            t = k.get("temperature")
            if t is not None and not (math.isfinite(float(t)) and float(t) > 0):
                raise ValueError(f"{kind}: temperature {t!r}")
            for name, g in k["groups"].items():
                if name != "all" and name not in self.labels:
                    raise ValueError(f"{kind}: group {name!r} is no label")
                for level in self.levels:
                    q = float(g["half_width"][f"{level:g}"])
                    if not (math.isfinite(q) and q >= 0):
                        raise ValueError(f"{kind}/{name}: half width {q!r}")
                if not g["residuals"] or not all(math.isfinite(float(r))
                                                 for r in g["residuals"]):
                    raise ValueError(f"{kind}/{name}: residuals")

    def check_model(self, fingerprint: str, labels) -> None:
        """Refuse a model other than the one this calibration was fitted for.

        Raises
        ------
        CalibrationError
            Naming the file and both fingerprints.
        """
        if str(fingerprint) != self.fingerprint or tuple(labels) != self.labels:
            raise CalibrationError(
                f"{self._name()}: fitted for model {self.fingerprint} (labels "
                f"{', '.join(self.labels)}), not this model {fingerprint} (labels "
                f"{', '.join(labels)}); calibrate this model on labelled data first")

    def with_options(self, level: float | None = None, bands=None) -> Calibration:
        """A copy applying another fitted ``level`` and/or adding age ``bands`` (edges)."""
        out = copy.copy(self)
        if level is not None:
            out = Calibration(self.fingerprint, self.labels, self.levels, self.kinds,
                              self.corpus, level, self.bands, self.source)
        if bands is not None:
            out.bands = parse_age_bands(",".join(str(b) for b in bands))
        return out

    def record(self) -> dict:
        """What a table's provenance record says about the calibration applied."""
        return {"digest": self.digest(), "level": self.level, "bands": list(self.bands)}

    # ------------------------------------------------------------------ applying
    def has_temperature(self) -> bool:
        return any(k.get("temperature") is not None for k in self.kinds.values())

    def extra_columns(self) -> tuple[str, ...]:
        """The columns :meth:`calibrated_row` adds (:func:`agegender_sb.batch.tables.columns`)."""
        probs = tuple(f"p_{lab}" for lab in self.labels) if self.has_temperature() else ()
        return ("age_low", "age_high", *probs, *band_columns(self.bands))

    def _group(self, kind: str, gender) -> dict | None:
        k = self.kinds.get(kind)
        if k is None:
            return None
        return k["groups"].get(gender) or k["groups"]["all"]

    def interval(self, kind: str, gender: str, age: float) -> tuple[float, float] | None:
        """``(age_low, age_high)`` at :attr:`level` for a row of ``kind`` with predicted
        ``gender`` and ``age``; None for a kind this calibration has not seen."""
        group = self._group(kind, gender)
        if group is None:
            return None
        q = float(group["half_width"][f"{self.level:g}"])
        return max(0.0, age - q), age + q

    def band_probabilities(self, kind: str, gender: str, age: float) -> list | None:
        group = self._group(kind, gender)
        if group is None:
            return None
        r = np.asarray(group["residuals"], dtype=np.float64)  # sorted
        edges = np.asarray(self.bands, dtype=np.float64) - age
        counts = np.searchsorted(r, edges, side="left")
        return [float(c) / len(r) for c in np.diff(counts)]

    def calibrated_row(self, row: dict) -> dict:
        """``row`` with the columns of :meth:`extra_columns` filled (empty for a row
        without a prediction or of a kind this calibration has not seen). Computed from
        the row's ``age`` and raw probabilities only, so applying it twice changes
        nothing."""
        out = dict(row)
        out.update(dict.fromkeys(self.extra_columns()))
        age, gender = row.get("age"), row.get("gender")
        if row.get("error") is not None or age is None or not math.isfinite(age):
            return out
        kind = row_kind(row)
        span = self.interval(kind, gender, float(age))
        if span is None:
            return out
        out["age_low"], out["age_high"] = span
        t = self.kinds[kind].get("temperature")
        if t is not None and all(row.get(lab) is not None for lab in self.labels):
            logp = np.log(np.maximum([float(row[lab]) for lab in self.labels], PROB_FLOOR))
            z = logp / float(t)
            p = np.exp(z - z.max())
            p /= p.sum()
            out.update({f"p_{lab}": float(v) for lab, v in zip(self.labels, p)})
        if self.bands:
            probs = self.band_probabilities(kind, gender, float(age))
            out.update(dict(zip(band_columns(self.bands), probs)))
        return out


def _fit_kind(pairs, labels, levels, min_group) -> dict:
    scored = [(r, t) for r, t in pairs if r.get("age") is not None
              and math.isfinite(r["age"]) and r.get("error") is None]
    aged = [(r, t) for r, t in scored if t.get("age") is not None]
    if not aged:
        raise CalibrationError(f"none of the {len(pairs)} matched row(s) has both a "
                               "predicted and a true age")
    resid = np.array([t["age"] - r["age"] for r, t in aged])
    gender = np.array([r["gender"] for r, _ in aged], dtype=object)

    def group(mask) -> dict:
        scores = np.abs(resid[mask])
        return {"n": int(mask.sum()),
                "half_width": {f"{v:g}": round(conformal_quantile(scores, v), 4)
                               for v in levels},
                "residuals": _atoms(resid[mask])}

    groups = {"all": group(np.ones(len(aged), dtype=bool))}
    for lab in labels:
        mask = gender == lab
        if mask.sum() >= min_group:
            try:
                groups[lab] = group(mask)
            except CalibrationError:  # too few for the highest level: pooled
                pass
    known = [(r, t) for r, t in scored if t.get("gender") is not None
             and all(r.get(lab) is not None for lab in labels)]
    temperature = None
    if known:
        logp = np.log(np.maximum([[float(r[lab]) for lab in labels] for r, _ in known],
                                 PROB_FLOOR))
        temperature = round(fit_temperature(logp, [labels.index(t["gender"])
                                                   for _, t in known]), 4)
    return {"n": len(aged), "n_without_prediction": len(pairs) - len(scored),
            "n_gender": len(known), "temperature": temperature, "groups": groups}


# ---------------------------------------------------------------------------- tables
def table_model(table: str | os.PathLike) -> dict:
    """The ``model`` entry (``fingerprint``, ``labels``) of a table's provenance record.

    Raises
    ------
    CalibrationError
        Without a readable record (a table written to stdout has none).
    """
    from agegender_sb.batch.provenance import provenance_path

    path = provenance_path(table)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return {"fingerprint": str(record["model"]["fingerprint"]),
                "labels": list(record["model"]["labels"])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CalibrationError(f"{table}: no readable record of the model that made it "
                               f"({path.name}: {err}); write the table with agegender "
                               "predict -o FILE") from None


def calibrate_table(table, truth, levels=DEFAULT_LEVELS, min_group: int = MIN_GROUP,
                    fingerprint: str | None = None, rows=None, labels=None) -> Calibration:
    """Fit a :class:`Calibration` from a table ``agegender predict`` wrote and a truth CSV.

    ``fingerprint``: the model's (checked against the table's record when it has one;
    read from the record when not given). ``rows``/``labels``: the table's rows already in
    memory (e.g. from :meth:`AgeGenderClassifier.predict_table`).

    Raises
    ------
    CalibrationError, agegender_sb.report.scoring.PlotError
        Naming the file and the problem.
    """
    from agegender_sb.report.matching import match_by_kind
    from agegender_sb.report.scoring import read_predictions, read_truth

    made_by = None
    if rows is None:
        rows, labels = read_predictions(table)
        try:
            made_by = table_model(table)
        except CalibrationError:
            if fingerprint is None:
                raise
    if made_by is not None:
        if fingerprint is not None and made_by["fingerprint"] != fingerprint:
            raise CalibrationError(f"{table}: made by model {made_by['fingerprint']}, not "
                                   f"this model {fingerprint}")
        fingerprint = made_by["fingerprint"]
    key, entries = read_truth(truth, labels)
    matched = match_by_kind(rows, key, entries, Path(truth).resolve().parent)
    if not matched:
        raise CalibrationError(f"{truth}: no {key} of the truth table matches a row of "
                               f"{table}")
    corpus = {"table": str(table), "truth": str(truth), "key": key,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds")}
    return Calibration.fit(matched, labels, fingerprint, levels, min_group, corpus)


def model_calibration(choice, default_path, fingerprint: str, labels) -> Calibration | None:
    """The calibration a model applies: ``choice`` ``"default"`` → the model folder's
    ``calibration.json`` (``default_path``, may be None); None → none; a path or a
    :class:`Calibration` → that one. Checked against the model.

    Raises
    ------
    CalibrationError
        For another model's calibration or an unreadable file.
    """
    if isinstance(choice, str) and choice == "default":
        choice = default_path
    if choice is None:
        return None
    cal = choice if isinstance(choice, Calibration) else Calibration.load(choice)
    cal.check_model(fingerprint, labels)
    return cal
