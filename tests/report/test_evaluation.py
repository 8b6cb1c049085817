"""The evaluation: every metric against a plain-Python computation, groups against subsets,
and the bootstrap interval's coverage on simulated data (speakers resampled, and what
resampling rows would miss)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agegender_sb.report.evaluation import evaluate, evaluate_pairs, summary_lines

LABELS = ("female", "male", "child")


def _data(rng, n=120):
    true_age = rng.uniform(5, 80, n)
    pred_age = true_age + rng.normal(2, 9, n)
    true_age[rng.random(n) < 0.1] = np.nan  # unknown ages
    true_g = rng.integers(0, 3, n)
    true_g[rng.random(n) < 0.1] = -1  # unknown genders
    probs = rng.dirichlet([2, 2, 2], n)
    low, high = pred_age - 10, pred_age + 10
    return true_age, pred_age, true_g, probs, low, high


def _independent(true_age, pred_age, true_g, probs, low, high):
    """Plain-Python loops, written from the definitions."""
    aged = [i for i in range(len(pred_age)) if not math.isnan(true_age[i])]
    err = [pred_age[i] - true_age[i] for i in aged]
    out = {"mae": sum(abs(e) for e in err) / len(err),
           "rmse": math.sqrt(sum(e * e for e in err) / len(err)),
           "bias": sum(err) / len(err),
           "coverage": sum(low[i] <= true_age[i] <= high[i] for i in aged) / len(aged),
           "width": sum(high[i] - low[i] for i in aged) / len(aged)}
    known = [i for i in range(len(pred_age)) if true_g[i] >= 0]
    pred_g = [max(range(3), key=lambda c, i=i: probs[i][c]) for i in range(len(pred_age))]
    out["acc"] = sum(pred_g[i] == true_g[i] for i in known) / len(known)
    recalls = []
    for c in range(3):
        of_c = [i for i in known if true_g[i] == c]
        if of_c:
            recalls.append(sum(pred_g[i] == c for i in of_c) / len(of_c))
    out["uar"] = sum(recalls) / len(recalls)
    bins = {}
    for i in known:
        conf = max(probs[i])
        b = min(int(conf * 10), 9)
        bins.setdefault(b, []).append((pred_g[i] == true_g[i], conf))
    out["ece"] = sum(abs(sum(a for a, _ in v) / len(v) - sum(c for _, c in v) / len(v))
                     * len(v) for v in bins.values()) / len(known)
    out["brier"] = sum(sum((probs[i][c] - (c == true_g[i])) ** 2 for c in range(3))
                       for i in known) / len(known)
    out["nll"] = -sum(math.log(max(probs[i][true_g[i]], 5e-5)) for i in known) / len(known)
    out["n_age"], out["n_gender"] = len(aged), len(known)
    return out


def test_metrics_equal_an_independent_computation():
    data = _data(np.random.default_rng(0))
    true_age, pred_age, true_g, probs, low, high = data
    r = evaluate(pred_age, true_age, probs, true_g, LABELS, age_low=low, age_high=high,
                 replicates=200)
    want = _independent(*data)
    for m in ("mae", "rmse", "bias", "coverage", "width", "acc", "uar", "ece", "brier", "nll"):
        assert r["overall"][m]["value"] == pytest.approx(want[m], abs=1e-12), m
        assert r["overall"][m]["n"] == (want["n_age"] if m in ("mae", "rmse", "bias",
                                                                "coverage", "width")
                                        else want["n_gender"])
    # groups: the same computation on the subset
    for c, lab in enumerate(LABELS):
        sub = true_g == c
        got = r["groups"][f"gender={lab}"]["metrics"]
        w = _independent(*(np.asarray(x)[sub] for x in data))
        assert got["mae"]["value"] == pytest.approx(w["mae"], abs=1e-12)
        assert got["uar"]["value"] == pytest.approx(w["uar"], abs=1e-12)
    band = (true_age >= 15) & (true_age < 30) & (true_g == 1)
    got = r["groups"]["gender=male, age_band=15-30"]["metrics"]["mae"]["value"]
    assert got == pytest.approx(np.mean(np.abs(pred_age - true_age)[band]), abs=1e-12)


def test_every_value_inside_its_interval_and_the_summary():
    r = evaluate(*(lambda t, p, g, pr, lo, hi: (p, t, pr, g, LABELS, None, lo, hi))(
        *_data(np.random.default_rng(1), 60)), replicates=300)
    groups = [r["overall"], *(g["metrics"] for g in r["groups"].values())]
    assert sum(len(g) for g in groups) > 100
    for g in groups:
        for m in g.values():
            assert m["low"] <= m["value"] <= m["high"]
    lines = summary_lines(r)
    assert lines[2].startswith("overall") and any("gender=child" in x for x in lines)


def _clustered(rng, speakers=40, per=5):
    """Errors with a strong speaker effect: u_s ~ N(0, 6^2), v_i ~ N(0, 3^2); the
    population MAE is sqrt(45) sqrt(2/pi)."""
    u = rng.normal(0, 6, speakers).repeat(per)
    err = u + rng.normal(0, 3, speakers * per)
    true = rng.uniform(10, 70, speakers * per)
    return true + err, true, np.arange(speakers).repeat(per)


def test_bootstrap_interval_coverage_on_simulated_data():
    """Over 300 simulated corpora the 95 % interval of the MAE resampling speakers holds the
    population MAE 90-99 % of the time; resampling rows, blind to the speaker effect, much
    less often."""
    rng = np.random.default_rng(42)
    mae = math.sqrt(45) * math.sqrt(2 / math.pi)
    hits = {"speaker": 0, "row": 0}
    reps = 300
    for i in range(reps):
        pred, true, spk = _clustered(rng)
        for unit, speakers in (("speaker", spk.tolist()), ("row", None)):
            m = evaluate(pred, true, speakers=speakers, by=(), replicates=400,
                         seed=i)["overall"]["mae"]
            hits[unit] += m["low"] <= mae <= m["high"]
    assert 0.90 <= hits["speaker"] / reps <= 0.99, hits
    assert hits["row"] / reps < 0.85, hits


def test_bootstrap_coverage_of_a_proportion():
    """Accuracy of iid rows (p = 0.8, n = 150): the 95 % interval covers 0.8 in 90-99 %."""
    rng = np.random.default_rng(9)
    hits, reps = 0, 300
    for i in range(reps):
        true_g = rng.integers(0, 2, 150)
        correct = rng.random(150) < 0.8
        pred_g = np.where(correct, true_g, 1 - true_g)
        m = evaluate(true_gender=true_g, pred_gender=pred_g, labels=("f", "m"), by=(),
                     replicates=400, seed=i)["overall"]["acc"]
        hits += m["low"] <= 0.8 <= m["high"]
    assert 0.90 <= hits / reps <= 0.99, hits


def test_pairs_use_calibrated_probabilities_and_skip_failures():
    row = {"path": "a.wav", "age": 30.0, "gender": "male", "female": 0.2, "male": 0.7,
           "child": 0.1, "p_female": 0.3, "p_male": 0.6, "p_child": 0.1, "error": None}
    pairs = [(row, {"age": 25.0, "gender": "male"}),
             (dict(row, age=50.0), {"age": 60.0, "gender": "female"}),
             ({"path": "b.wav", "age": None, "error": "b.wav: unreadable"},
              {"age": 40.0, "gender": "male"})]
    r = evaluate_pairs(pairs, LABELS, replicates=50)
    assert r["probabilities"] == "calibrated" and r["n_without_prediction"] == 1
    assert r["overall"]["mae"]["value"] == pytest.approx(7.5)
    assert r["overall"]["nll"]["value"] == pytest.approx(-(math.log(0.6) + math.log(0.3)) / 2)


def test_interval_widened_to_hold_a_biased_estimate():
    """Calibrated probabilities: resamples with repeated rows have a larger ECE than the
    data, and the percentile interval would miss the estimate; it is widened to hold it."""
    rng = np.random.default_rng(0)
    p1 = rng.uniform(0.5, 1, 400)
    y = (rng.random(400) < p1).astype(int)
    m = evaluate(probs=np.stack([1 - p1, p1], 1), true_gender=y, labels=("a", "b"), by=(),
                 replicates=300, seed=0)["overall"]["ece"]
    assert m["low"] == m["value"] < m["high"]
