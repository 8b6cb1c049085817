"""``agegender calibrate`` / ``predict --calibration`` / ``evaluate`` on the tiny checkpoint:
the round trip, the numbers against an independent computation from the written CSV, the
provenance and ``--resume``, a model folder's ``calibration.json``, and bad input (exit 2,
one line)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agegender_sb.cli import main
from agegender_sb.report.calibration import Calibration, CalibrationError

LABELS = ("female", "male", "child")
N_FILES = 24


def _noise(path, seconds, seed):
    rng = np.random.RandomState(seed)
    n = int(seconds * 16000)
    x = (0.05 + 0.1 * rng.rand()) * rng.randn(n) * (1 + np.sin(np.arange(n) / (300 + 40 * seed)))
    sf.write(str(path), x.astype(np.float32), 16000)
    return str(path)


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_checkpoint):
    """24 files of 8 speakers, a truth by path (with speakers) and a first, raw table."""
    d = tmp_path_factory.mktemp("cal")
    rng = np.random.RandomState(5)
    files = [_noise(d / f"u{i:02d}.wav", 0.6 + 0.05 * i, seed=i) for i in range(N_FILES)]
    truth = d / "truth.csv"
    ages = {f: float(rng.randint(8, 70)) for f in files}
    genders = {f: LABELS[i % 3] for i, f in enumerate(files)}
    truth.write_text("path,speaker,age,gender\n" + "".join(
        f"{Path(f).name},s{i // 3},{ages[f]:g},{genders[f]}\n" for i, f in enumerate(files)))
    table = d / "raw.csv"
    assert main(["predict", *files, "--source", tiny_checkpoint, "--vad", "none", "-o",
                 str(table), "-q"]) == 0
    return {"dir": d, "files": files, "truth": truth, "table": table, "ages": ages,
            "genders": genders}


def test_round_trip_calibrate_predict_evaluate(corpus, tiny_checkpoint, tmp_path, capsys):
    cal_path = tmp_path / "calibration.json"
    assert main(["calibrate", str(corpus["table"]), "--truth", str(corpus["truth"]),
                 "-o", str(cal_path), "--coverage", "0.9", "0.8"]) == 0
    assert "file rows: 90% interval half-width" in capsys.readouterr().out
    cal = Calibration.load(cal_path)
    assert cal.levels == (0.9, 0.8) and cal.kinds["file"]["n"] == N_FILES

    # independently: the 0.9 half-width is the ceil(25 * 0.9) = 23rd smallest |error|
    raw = {r["path"]: r for r in _csv(corpus["table"])}
    errors = sorted(abs(corpus["ages"][f] - float(raw[f]["age"])) for f in corpus["files"])
    q = errors[math.ceil((N_FILES + 1) * 0.9) - 1]
    assert cal.kinds["file"]["groups"]["all"]["half_width"]["0.9"] == pytest.approx(q,
                                                                                   abs=1e-3)

    out = tmp_path / "calibrated.csv"
    assert main(["predict", *corpus["files"], "--source", tiny_checkpoint, "--vad", "none",
                 "--calibration", str(cal_path), "--age-bands", "0,13,20,40,65,120",
                 "-o", str(out), "-q"]) == 0
    rows = _csv(out)
    assert list(rows[0])[-12:-1] == ["gender", "age_low", "age_high", "p_female", "p_male",
                                   "p_child", "p_age_0_13", "p_age_13_20", "p_age_20_40",
                                   "p_age_40_65", "p_age_65_120"]
    t = cal.kinds["file"]["temperature"]
    for r in rows:
        age = float(r["age"])
        assert float(r["age_low"]) == pytest.approx(max(0.0, age - q), abs=0.011)
        assert float(r["age_high"]) == pytest.approx(age + q, abs=0.011)
        assert r[LABELS[0]] == raw[r["path"]][LABELS[0]]  # raw probabilities kept
        z = np.log([max(float(r[lab]), 5e-5) for lab in LABELS]) / t
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        for lab, v in zip(LABELS, p):
            assert float(r[f"p_{lab}"]) == pytest.approx(v, abs=2e-4)
        bands = [float(r[c]) for c in list(r)[-6:-1]]
        assert sum(bands) == pytest.approx(1.0, abs=3e-4)  # every true age is in 8..70
    record = json.loads((tmp_path / "calibrated.csv.agegender.json").read_text())
    assert record["calibration"]["digest"] == cal.digest()
    assert record["calibration"]["bands"] == [0, 13, 20, 40, 65, 120]

    # evaluate --json: overall MAE and coverage against the CSV, every value in its interval
    capsys.readouterr()
    assert main(["evaluate", str(out), "--truth", str(corpus["truth"]), "--json",
                 "--replicates", "300"]) == 0
    result = json.loads(capsys.readouterr().out)
    mae = np.mean([abs(float(r["age"]) - corpus["ages"][r["path"]]) for r in rows])
    cover = np.mean([float(r["age_low"]) <= corpus["ages"][r["path"]] <= float(r["age_high"])
                     for r in rows])
    overall = result["overall"]
    assert overall["mae"]["value"] == pytest.approx(mae, abs=1e-9)
    assert overall["coverage"]["value"] == pytest.approx(cover, abs=1e-12)
    assert len(overall) == 10 and result["probabilities"] == "calibrated"
    assert result["bootstrap"]["unit"] == "speaker" and result["bootstrap"]["n_units"] == 8
    for group in [overall, *(g["metrics"] for g in result["groups"].values())]:
        for name, m in group.items():
            assert m["low"] <= m["value"] <= m["high"], name
    assert "gender=child, age_band=0-15" in result["groups"] or any(
        "gender=child" in k for k in result["groups"])

    # the human-readable table
    assert main(["evaluate", str(out), "--truth", str(corpus["truth"]),
                 "--replicates", "100", "--by", "gender"]) == 0
    text = capsys.readouterr().out
    assert "gender=female" in text and "age_band" not in text and "overall" in text

    # --resume refuses another calibration, takes the same one
    other = tmp_path / "other.json"
    assert main(["calibrate", str(corpus["table"]), "--truth", str(corpus["truth"]),
                 "-o", str(other), "--coverage", "0.8"]) == 0
    args = ["predict", *corpus["files"], "--source", tiny_checkpoint, "--vad", "none", "-o",
            str(out), "-q", "--resume", "--age-bands", "0,13,20,40,65,120"]
    capsys.readouterr()
    assert main([*args, "--calibration", str(other)]) == 2
    assert "calibration" in capsys.readouterr().err
    assert main([*args, "--calibration", str(cal_path)]) == 0


def test_model_folder_calibration_applies_by_default(corpus, tiny_checkpoint, tmp_path):
    cal_path = tmp_path / "c.json"
    assert main(["calibrate", str(corpus["table"]), "--truth", str(corpus["truth"]),
                 "-o", str(cal_path)]) == 0
    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, folder)
    shutil.copy(cal_path, folder / "calibration.json")
    files = corpus["files"][:3]
    out, plain = tmp_path / "default.csv", tmp_path / "plain.csv"
    assert main(["predict", *files, "--source", str(folder), "--vad", "none", "-o", str(out),
                 "-q"]) == 0
    assert main(["predict", *files, "--source", str(folder), "--vad", "none", "-o",
                 str(plain), "-q", "--calibration", "none"]) == 0
    assert "age_low" in _csv(out)[0] and all(r["age_low"] for r in _csv(out))
    assert "age_low" not in _csv(plain)[0]

    from agegender_sb import AgeGenderClassifier

    clf = AgeGenderClassifier.from_hparams(source=str(folder))
    assert clf.calibration is not None and clf.calibration.digest() == \
        Calibration.load(cal_path).digest()
    frame = clf.predict_table(files, vad=None, age_bands=(0, 40, 120))
    assert list(frame.columns[-5:]) == ["p_male", "p_child", "p_age_0_40", "p_age_40_120",
                                        "error"]
    assert frame["age_low"].notna().all()
    # the Python API fits the same calibration from the DataFrame as the command from the file
    again = clf.calibrate(clf.predict_table(corpus["files"], vad=None, calibration=None),
                          corpus["truth"])
    assert again.kinds["file"]["groups"] == Calibration.load(cal_path).kinds["file"]["groups"]


def test_another_models_calibration_is_refused(corpus, tiny_checkpoint, tmp_path, capsys):
    cal_path = tmp_path / "c.json"
    assert main(["calibrate", str(corpus["table"]), "--truth", str(corpus["truth"]),
                 "-o", str(cal_path)]) == 0
    data = json.loads(cal_path.read_text())
    data["model"]["fingerprint"] = "0123456789abcdef"
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["predict", corpus["files"][0], "--source", tiny_checkpoint, "--vad", "none",
                 "--calibration", str(foreign), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fitted for model 0123456789abcdef" in err[0]
    assert str(foreign) in err[0]
    with pytest.raises(CalibrationError, match="not this model"):
        from agegender_sb import AgeGenderClassifier

        AgeGenderClassifier.from_hparams(source=tiny_checkpoint, calibration=foreign)


@pytest.mark.parametrize("case", ["nan-age", "no-truth", "no-match", "no-provenance",
                                  "bands-without-calibration", "bad-json", "too-few"])
def test_bad_input_exits_2_with_one_line(corpus, tiny_checkpoint, tmp_path, capsys, case):
    table, truth = str(corpus["table"]), corpus["truth"]
    out = str(tmp_path / "c.json")
    if case == "nan-age":
        bad = tmp_path / "t.csv"
        bad.write_text(f"path,age,gender\n{Path(corpus['files'][0]).name},nan,male\n")
        args, want = ["calibrate", table, "--truth", str(bad), "-o", out], "finite"
    elif case == "no-truth":
        args, want = ["evaluate", table, "--truth", str(tmp_path / "missing.csv")], "missing"
    elif case == "no-match":
        bad = tmp_path / "t.csv"
        bad.write_text("path,age,gender\nnobody.wav,30,male\n")
        args, want = ["evaluate", table, "--truth", str(bad)], "matches"
    elif case == "no-provenance":
        copy = tmp_path / "copy.csv"
        shutil.copy(table, copy)
        args, want = ["calibrate", str(copy), "--truth", str(truth), "-o", out], "record"
    elif case == "bands-without-calibration":
        args = ["predict", corpus["files"][0], "--source", tiny_checkpoint, "--vad", "none",
                "--age-bands", "0,20,120", "-q"]
        want = "--age-bands needs a calibration"
    elif case == "bad-json":
        bad = tmp_path / "bad.json"
        bad.write_text('{"format": "something else"}')
        args = ["predict", corpus["files"][0], "--source", tiny_checkpoint, "--vad", "none",
                "--calibration", str(bad), "-q"]
        want = "not a valid calibration"
    else:
        few = tmp_path / "few.csv"
        few.write_text("path,age,gender\n" + "".join(
            f"{Path(f).name},30,male\n" for f in corpus["files"][:5]))
        args, want = ["calibrate", table, "--truth", str(few), "-o", out], "too few"
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and want in err[0], err
    assert not Path(out).exists()


def test_plot_report_prints_the_group_numbers(corpus, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "r.png"
    assert main(["plot", str(corpus["table"]), "-o", str(png), "--truth",
                 str(corpus["truth"])]) == 0
    out = capsys.readouterr().out
    assert "gender=female" in out and "95% bootstrap intervals" in out
