"""Evaluation with bootstrap confidence intervals: overall and per group.

Metrics (each ``{"value", "low", "high", "n"}``; ``n`` the rows it rests on):

- age, over rows with a true age: ``mae``, ``rmse``, ``bias`` (mean of predicted - true);
  with intervals (``age_low``/``age_high``): ``coverage`` (share of true ages inside) and
  ``width`` (mean ``age_high - age_low``);
- gender, over rows with a true gender: ``acc``, ``uar`` (mean recall of the classes
  present, the paper's metric), ``ece`` (expected calibration error of the most probable
  label's probability, 10 equal-width bins), ``brier`` (sum over labels of the squared
  difference to the one-hot truth) and ``nll`` (negative log-probability of the true
  label, probabilities floored at 5e-5).

``low``/``high`` are a percentile bootstrap interval (``replicates`` resamples, 95 % by
default). When speakers are known, whole speakers are resampled (their rows are not
independent); otherwise rows. Each group is resampled on its own. A percentile interval
can miss its estimate when the bootstrap distribution is biased (the ECE of resamples with
repeated rows is biased upwards); the interval is then widened to include the estimate.

Groups (``by``): the true gender, the true age band, and both crossed: ``gender=female``,
``age_band=15-30`` (15 <= age < 30), ``gender=female, age_band=15-30``.

Example
-------
>>> r = evaluate(pred_age=[30.0, 40.0, 52.0], true_age=[32.0, 40.0, 50.0], replicates=200)
>>> r["overall"]["mae"]["value"], r["overall"]["mae"]["n"]
(1.3333333333333333, 3)
"""

from __future__ import annotations

import math

import numpy as np

from agegender_sb.defaults import AGE_BANDS

__all__ = [
    "json_safe", "evaluate", "evaluate_pairs", "summary_lines", "band_names", "DEFAULT_EDGES",
           "METRICS"]

#: Default age band edges (years); the last band is open.
#: Age bands of the evaluation: the package's bands (defaults.AGE_BANDS) from 0 to no end.
DEFAULT_EDGES = (0.0, *(float(e) for e in AGE_BANDS), math.inf)
METRICS = ("mae", "rmse", "bias", "coverage", "width", "acc", "uar", "ece", "brier", "nll")
PROB_FLOOR = 5e-5
_CELLS = 4_000_000  # replicates x rows per chunk


def band_names(edges) -> list[str]:
    """``lo-hi`` (``lo`` included) per band, ``lo+`` for an open last band.

    Example
    -------
    >>> band_names((0, 15, 30, float("inf")))
    ['0-15', '15-30', '30+']
    """
    return [f"{a:g}+" if math.isinf(b) else f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:])]


class _Data:
    """The arrays of one evaluation, with the quantities the metrics sum."""

    def __init__(self, pred_age, true_age, probs, pred_gender, true_gender, low, high):
        n = len(pred_age)
        self.n = n
        t = np.asarray(true_age, dtype=np.float64)
        p = np.asarray(pred_age, dtype=np.float64)
        self.aged = np.isfinite(t) & np.isfinite(p)
        e = np.where(self.aged, p - t, 0.0)
        self.cols = {"age": self.aged.astype(float), "abs": np.abs(e), "sq": e * e, "err": e}
        self.has_intervals = low is not None and high is not None
        if self.has_intervals:
            lo, hi = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
            iv = self.aged & np.isfinite(lo) & np.isfinite(hi)
            self.cols["iv"] = iv.astype(float)
            self.cols["in"] = (iv & (lo <= t) & (t <= hi)).astype(float)
            self.cols["width"] = np.where(iv, hi - lo, 0.0)
        g = np.asarray(true_gender, dtype=np.int64)
        self.gendered = g >= 0
        self.classes = sorted(set(g[self.gendered].tolist()))
        if self.gendered.any():
            pg = np.asarray(pred_gender, dtype=np.int64)
            ok = (pg == g) & self.gendered
            self.cols["gen"] = self.gendered.astype(float)
            self.cols["ok"] = ok.astype(float)
            for c in self.classes:
                self.cols[f"sup{c}"] = (g == c).astype(float)
                self.cols[f"hit{c}"] = (ok & (g == c)).astype(float)
            if probs is not None:
                pr = np.asarray(probs, dtype=np.float64)
                gi = np.where(self.gendered, g, 0)
                conf = pr.max(axis=1)
                onehot = np.eye(pr.shape[1])[gi]
                self.cols["brier"] = np.where(self.gendered, ((pr - onehot) ** 2).sum(1), 0)
                self.cols["nll"] = np.where(self.gendered, -np.log(np.maximum(
                    pr[np.arange(n), gi], PROB_FLOOR)), 0)
                bins = np.minimum((conf * 10).astype(int), 9)
                gap = np.where(self.gendered, ok - conf, 0.0)
                for b in range(10):
                    self.cols[f"ece{b}"] = np.where(bins == b, gap, 0.0)
        self.names = list(self.cols)
        self.matrix = np.stack([self.cols[k] for k in self.names], axis=1) if n else \
            np.zeros((0, len(self.names)))

    def metrics(self, w: np.ndarray) -> dict:
        """Each metric for weight rows ``w`` ``[B, n]`` → ``{name: [B] values}``."""
        s = w @ self.matrix
        col = {k: s[:, i] for i, k in enumerate(self.names)}
        out = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.aged.any():
                na = col["age"]
                out["mae"] = col["abs"] / na
                out["rmse"] = np.sqrt(col["sq"] / na)
                out["bias"] = col["err"] / na
                if self.has_intervals and self.cols["iv"].any():
                    out["coverage"] = col["in"] / col["iv"]
                    out["width"] = col["width"] / col["iv"]
            if self.gendered.any():
                ng = col["gen"]
                out["acc"] = col["ok"] / ng
                recalls = np.stack([np.where(col[f"sup{c}"] > 0,
                                             col[f"hit{c}"] / col[f"sup{c}"], np.nan)
                                    for c in self.classes], axis=1)
                out["uar"] = np.nanmean(recalls, axis=1)
                if "brier" in col:
                    out["ece"] = sum(np.abs(col[f"ece{b}"]) for b in range(10)) / ng
                    out["brier"] = col["brier"] / ng
                    out["nll"] = col["nll"] / ng
        return out

    def counts(self) -> dict:
        n = {"mae": int(self.aged.sum()), "acc": int(self.gendered.sum())}
        for k in ("rmse", "bias"):
            n[k] = n["mae"]
        for k in ("uar", "ece", "brier", "nll"):
            n[k] = n["acc"]
        if self.has_intervals:
            n["coverage"] = n["width"] = int(self.cols["iv"].sum())
        return n


def _bootstrap(data: _Data, clusters: np.ndarray, replicates: int, confidence: float,
               rng) -> dict:
    """``{metric: {"value", "low", "high", "n"}}`` for one group."""
    point = data.metrics(np.ones((1, data.n)))
    units, index = np.unique(clusters, return_inverse=True)
    k = len(units)
    draws = {m: [] for m in point}
    chunk = max(1, _CELLS // max(data.n, 1))
    done = 0
    while done < replicates:
        b = min(chunk, replicates - done)
        counts = rng.multinomial(k, np.full(k, 1.0 / k), size=b)
        for m, v in data.metrics(counts[:, index].astype(np.float64)).items():
            draws[m].append(v)
        done += b
    alpha = (1 - confidence) / 2
    n = data.counts()
    out = {}
    for m in METRICS:
        if m not in point or not math.isfinite(float(point[m][0])):
            continue
        value = float(point[m][0])
        d = np.concatenate(draws[m])
        d = d[np.isfinite(d)]
        lo, hi = (np.quantile(d, [alpha, 1 - alpha]) if len(d) else (value, value))
        out[m] = {"value": value, "low": min(float(lo), value), "high": max(float(hi), value),
                  "n": n[m]}
    return out


def evaluate(pred_age=None, true_age=None, probs=None, true_gender=None, labels=None,
             pred_gender=None, age_low=None, age_high=None, speakers=None,
             by=("gender", "age_band"), age_bands=DEFAULT_EDGES, replicates: int = 1000,
             confidence: float = 0.95, seed: int = 0) -> dict:
    """Metrics with bootstrap intervals, overall and per group (see the module docstring).

    Parameters
    ----------
    pred_age, true_age : sequence of float, optional
        Years; NaN where the truth is unknown.
    probs : ``[n, labels]`` array, optional
        Gender probabilities (for ECE, Brier, NLL).
    true_gender, pred_gender : sequence of int, optional
        Label indices; -1 where the truth is unknown (``pred_gender`` defaults to the
        argmax of ``probs``).
    labels : sequence of str, optional
        Label names (group names; default ``"0", "1", ...``).
    age_low, age_high : sequence of float, optional
        Intervals (coverage, width).
    speakers : sequence, optional
        A speaker per row (None: unknown): speakers are resampled instead of rows.
    by : sequence of {"gender", "age_band"}
    age_bands : sequence of float
        Band edges, increasing (rows outside belong to no band).
    replicates, confidence, seed
        The bootstrap.

    Returns
    -------
    dict
        ``{"n", "bootstrap": {...}, "age_bands", "overall": {metric: {...}}, "groups":
        {name: {"n", "metrics": {...}}}}``.
    """
    n = len(pred_age) if pred_age is not None else len(true_gender)
    nan = np.full(n, np.nan)
    pred_age = nan if pred_age is None else np.asarray(pred_age, dtype=np.float64)
    true_age = nan if true_age is None else np.asarray(true_age, dtype=np.float64)
    tg = np.full(n, -1) if true_gender is None else np.asarray(true_gender, dtype=np.int64)
    if pred_gender is None:
        pred_gender = (np.asarray(probs).argmax(axis=1) if probs is not None
                       else np.full(n, -1))
    pg = np.asarray(pred_gender, dtype=np.int64)
    if labels is None:
        labels = [str(i) for i in range(max([*tg.tolist(), *pg.tolist(), 0]) + 1)]
    known = [s for s in (speakers if speakers is not None else []) if s is not None]
    unit = "speaker" if known else "row"
    clusters = np.array([f"s:{s}" if s is not None else f"r:{i}" for i, s in
                         enumerate(speakers if speakers is not None else [None] * n)])
    edges = np.asarray(age_bands, dtype=np.float64)
    band = np.full(n, -1)
    if len(edges) >= 2:
        inside = np.isfinite(true_age) & (true_age >= edges[0]) & (true_age < edges[-1])
        band = np.where(inside, np.searchsorted(edges, np.where(inside, true_age, 0),
                                                side="right") - 1, -1)
    names = band_names(edges) if len(edges) >= 2 else []
    probs = None if probs is None else np.asarray(probs, dtype=np.float64)

    def take(mask):
        return (_Data(pred_age[mask], true_age[mask], None if probs is None else probs[mask],
                      pg[mask], tg[mask], None if age_low is None else
                      np.asarray(age_low, dtype=np.float64)[mask],
                      None if age_high is None else np.asarray(age_high, dtype=np.float64)[mask]),
                clusters[mask])

    masks = []
    genders = [(f"gender={labels[c]}", tg == c) for c in sorted(set(tg[tg >= 0].tolist()))]
    bands = [(f"age_band={names[b]}", band == b) for b in sorted(set(band[band >= 0].tolist()))]
    if "gender" in by:
        masks += genders
    if "age_band" in by:
        masks += bands
    if "gender" in by and "age_band" in by:
        masks += [(f"{g}, {b}", gm & bm) for g, gm in genders for b, bm in bands]
    result = {"n": n, "bootstrap": {"replicates": replicates, "confidence": confidence,
                                    "seed": seed, "unit": unit,
                                    "n_units": len(np.unique(clusters))},
              "age_bands": names, "labels": list(labels)}
    data, cl = take(np.ones(n, dtype=bool))
    result["overall"] = _bootstrap(data, cl, replicates, confidence,
                                   np.random.default_rng([seed, 0]))
    result["groups"] = {}
    for i, (name, mask) in enumerate(masks, start=1):
        if mask.any():
            data, cl = take(mask)
            result["groups"][name] = {"n": int(mask.sum()), "metrics": _bootstrap(
                data, cl, replicates, confidence, np.random.default_rng([seed, i]))}
    return result


def evaluate_pairs(pairs: list, labels, speakers=None, **options) -> dict:
    """:func:`evaluate` on matched ``(table row, truth entry)`` pairs
    (:func:`agegender_sb.report.matching.match_by_kind`). Rows without a prediction are left out
    (counted as ``n_without_prediction``). Gender probabilities are the calibrated
    ``p_<label>`` columns where the table has them, else the raw ones; ``speakers`` a
    speaker (or None) per pair."""
    labels = list(labels)
    keep = [i for i, (r, _) in enumerate(pairs) if r.get("age") is not None
            and math.isfinite(r["age"]) and r.get("error") is None]
    rows = [pairs[i] for i in keep]
    cal = bool(rows) and all(rows[0][0].get(f"p_{lab}") is not None for lab in labels)
    cols = [f"p_{lab}" for lab in labels] if cal else labels
    has_iv = any(r.get("age_low") is not None for r, _ in rows)
    nan = math.nan

    def num(v):
        return nan if v is None else float(v)

    out = evaluate(
        pred_age=[r["age"] for r, _ in rows],
        true_age=[num(t.get("age")) for _, t in rows],
        probs=[[num(r.get(c)) if r.get(c) is not None else 0.0 for c in cols]
               for r, _ in rows] if rows else None,
        pred_gender=[labels.index(r["gender"]) if r.get("gender") in labels else -1
                     for r, _ in rows],
        true_gender=[labels.index(t["gender"]) if t.get("gender") else -1 for _, t in rows],
        labels=labels,
        age_low=[num(r.get("age_low")) for r, _ in rows] if has_iv else None,
        age_high=[num(r.get("age_high")) for r, _ in rows] if has_iv else None,
        speakers=None if speakers is None else [speakers[i] for i in keep], **options)
    out["n_without_prediction"] = len(pairs) - len(rows)
    out["probabilities"] = "calibrated" if cal else "raw"
    return out


def _cell(m: dict | None, digits: int) -> str:
    if m is None:
        return "-"
    return f"{m['value']:.{digits}f} [{m['low']:.{digits}f}, {m['high']:.{digits}f}]"


def summary_lines(result: dict, metrics=("mae", "coverage", "acc", "uar", "ece")) -> list:
    """A human-readable table: one line per group, ``value [low, high]`` per metric."""
    digits = {"mae": 2, "rmse": 2, "bias": 2, "width": 2}
    shown = [m for m in metrics if m in result["overall"]
             or any(m in g["metrics"] for g in result["groups"].values())]
    b = result["bootstrap"]
    lines = [f"{b['confidence']:.0%} bootstrap intervals, {b['replicates']} resamples of "
             f"{b['n_units']} {b['unit']}(s)",
             f"{'group':<30} {'n':>5}  " + "  ".join(f"{m:<21}" for m in shown)]
    entries = [("overall", result["n"], result["overall"])]
    entries += [(k, g["n"], g["metrics"]) for k, g in result["groups"].items()]
    for name, n, ms in entries:
        cells = "  ".join(f"{_cell(ms.get(m), digits.get(m, 3)):<21}" for m in shown)
        lines.append(f"{name:<30} {n:>5}  {cells}".rstrip())
    return lines


def json_safe(x):
    """``x`` with non-finite floats as None, recursively through dicts and lists (JSON has
    no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return x
