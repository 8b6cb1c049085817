"""The calibration methods on simulated data: split-conformal coverage at several levels and
sample sizes (averaged over many seeded splits, against the exact finite-sample value),
per-gender groups and the pooled fallback, the temperature against a brute-force likelihood,
age-band probabilities against a direct count, the file format and the model check."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from agegender_sb.report.calibration import (
    Calibration,
    CalibrationError,
    band_columns,
    conformal_quantile,
    fit_temperature,
)

LABELS = ("female", "male", "child")


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
@pytest.mark.parametrize("n", [19, 50, 200])
def test_conformal_coverage_on_simulated_data(level, n):
    """Over 4000 random splits of heavy-tailed errors, the mean coverage of a new point is
    ceil((n+1) L) / (n+1), within 4 Monte Carlo standard errors; never below L."""
    rng = np.random.default_rng(1000 * n + int(level * 100))
    reps, m = 4000, 50
    cal = np.abs(rng.standard_t(3, size=(reps, n)) * 8)
    test = np.abs(rng.standard_t(3, size=(reps, m)) * 8)
    q = np.array([conformal_quantile(row, level) for row in cal])
    per_split = (test <= q[:, None]).mean(axis=1)
    expected = math.ceil((n + 1) * level) / (n + 1)  # exchangeable, distinct scores
    se = per_split.std() / math.sqrt(reps)
    assert abs(per_split.mean() - expected) < 4 * se + 1e-4, (per_split.mean(), expected, se)
    assert per_split.mean() > level - 4 * se


def test_conformal_refuses_too_few_rows():
    conformal_quantile(range(9), 0.9)  # ceil(10 * 0.9) = 9 <= 9
    with pytest.raises(CalibrationError, match="too few"):
        conformal_quantile(range(8), 0.9)


def _simulate(rng, n):
    """Rows whose error scale depends on the predicted gender (children err most)."""
    scale = {"female": 5.0, "male": 8.0, "child": 15.0}
    g = rng.choice(LABELS, size=n, p=[0.45, 0.45, 0.1])
    true = rng.uniform(5, 80, size=n)
    pred = true + rng.normal(0, [scale[x] for x in g])
    pairs = []
    for i in range(n):
        probs = dict(zip(LABELS, [0.1, 0.1, 0.1]))
        probs[g[i]] = 0.8
        pairs.append(({"path": f"{i}.wav", "speaker": None, "start": None,
                       "age": float(pred[i]), "gender": str(g[i]), "error": None, **probs},
                      {"age": float(true[i]), "gender": str(g[i])}))
    return pairs


def test_per_gender_intervals_and_pooled_fallback():
    """Calibrated on half, covered on the other half, averaged over 150 splits: each
    predicted gender with its own group is covered at 0.9; with min_group above the child
    count the children share the pooled interval (and are under-covered: the reason for
    groups)."""
    rng = np.random.default_rng(7)
    cover = {"grouped": {g: [] for g in LABELS}, "pooled": {g: [] for g in LABELS}}
    for _ in range(150):
        pairs = _simulate(rng, 800)
        fit, test = pairs[:400], pairs[400:]
        for mode, min_group in (("grouped", 20), ("pooled", 10_000)):
            cal = Calibration.fit({"file": fit}, LABELS, "fp", (0.9,), min_group=min_group)
            assert ("child" in cal.kinds["file"]["groups"]) == (mode == "grouped")
            for r, t in test:
                row = cal.calibrated_row(r)
                cover[mode][r["gender"]].append(row["age_low"] <= t["age"] <= row["age_high"])
    for g in LABELS:
        assert np.mean(cover["grouped"][g]) == pytest.approx(0.9, abs=0.015), g
    assert np.mean(cover["pooled"]["child"]) < 0.75
    overall = np.mean([x for g in LABELS for x in cover["pooled"][g]])
    assert overall == pytest.approx(0.9, abs=0.01)


def test_temperature_maximises_the_likelihood():
    """Labels drawn from softmax(z / 2): the fitted T is the brute-force likelihood maximum
    (a grid of 4001 values) and near 2."""
    rng = np.random.default_rng(3)
    z = rng.normal(0, 3, size=(6000, 3))
    p_true = np.exp(z / 2) / np.exp(z / 2).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in p_true])
    written = np.round(np.exp(z) / np.exp(z).sum(1, keepdims=True), 4)  # as a table has them
    logp = np.log(np.maximum(written, 5e-5))
    t = fit_temperature(logp, y)

    def nll(temp):
        s = logp / temp
        s = s - s.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(s).sum(1)) - s[np.arange(len(y)), y]))

    grid = np.linspace(0.5, 6, 4001)
    best = grid[np.argmin([nll(g) for g in grid])]
    assert t == pytest.approx(best, abs=2e-3)
    assert t == pytest.approx(2.0, abs=0.15)


def test_band_probabilities_count_the_residuals():
    rng = np.random.default_rng(11)
    pairs = _simulate(rng, 300)
    cal = Calibration.fit({"file": pairs}, LABELS, "fp", (0.9,), min_group=50)
    cal = cal.with_options(bands=(0, 13, 20, 40, 65, 120))
    for r, _ in pairs[:20]:
        group = r["gender"] if r["gender"] in cal.kinds["file"]["groups"] else "all"
        resid = [t["age"] - s["age"] for s, t in pairs if group == "all" or s["gender"] == group]
        row = cal.calibrated_row(r)
        for (lo, hi), col in zip([(0, 13), (13, 20), (20, 40), (40, 65), (65, 120)],
                                 band_columns(cal.bands)):
            want = sum(lo <= r["age"] + e < hi for e in resid) / len(resid)
            assert row[col] == pytest.approx(want, abs=1e-9), col


def test_file_round_trip_and_model_check(tmp_path):
    pairs = _simulate(np.random.default_rng(0), 200)
    cal = Calibration.fit({"file": pairs}, LABELS, "abc", (0.9, 0.8), corpus={"table": "t"})
    path = cal.save(tmp_path / "c.json")
    back = Calibration.load(path)
    assert back.digest() == cal.digest() and back.levels == (0.9, 0.8)
    r = pairs[0][0]
    assert back.calibrated_row(r) == cal.calibrated_row(r)
    assert back.calibrated_row(back.calibrated_row(r)) == back.calibrated_row(r)  # idempotent
    at80 = back.with_options(level=0.8).calibrated_row(r)
    assert at80["age_high"] - at80["age_low"] < back.calibrated_row(r)["age_high"] - \
        back.calibrated_row(r)["age_low"]
    back.check_model("abc", LABELS)
    with pytest.raises(CalibrationError, match="not this model xyz"):
        back.check_model("xyz", LABELS)
    with pytest.raises(CalibrationError, match="not this model"):
        back.check_model("abc", ("male", "female", "child"))
    data = json.loads(path.read_text())
    data["kinds"]["file"]["temperature"] = -1
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="bad.json: not a valid calibration"):
        Calibration.load(tmp_path / "bad.json")


def test_rows_without_prediction_or_of_an_unseen_kind_stay_empty():
    cal = Calibration.fit({"file": _simulate(np.random.default_rng(2), 100)}, LABELS, "f")
    speaker_row = {"path": None, "speaker": "s1", "age": 30.0, "gender": "male",
                   "female": 0.1, "male": 0.8, "child": 0.1, "error": None}
    failed = {"path": "x.wav", "error": "x.wav: cannot be read"}
    for row in (speaker_row, failed):
        out = cal.calibrated_row(row)
        assert all(out[c] is None for c in cal.extra_columns())
