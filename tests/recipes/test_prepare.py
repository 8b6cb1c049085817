"""Tests of the data preparation (``recipes/prepare.py`` and ``recipes/corpora``).

Every corpus is tested on a tiny fixture built in ``tmp_path`` in the corpus's real
layout; expected values (durations, ages, labels) are computed here from how the
fixture was built, not with the code under test.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from paths import REPO

RECIPES = REPO / "recipes"
if str(RECIPES) not in sys.path:
    sys.path.insert(0, str(RECIPES))

import prepare as prep  # noqa: E402
from corpora import common  # noqa: E402
from paths import SPEECHOCEAN  # noqa: E402

COLUMNS = ["ID", "wav", "start", "stop", "duration", "age", "gender", "speaker"]


# ----------------------------------------------------------------------------- helpers


def write_audio(path: Path, n_samples: int, sr: int = 16000, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (np.random.RandomState(n_samples).randn(n_samples) * 0.05).astype("float32")
    sf.write(str(path), data, sr, format=fmt)
    return path


def read_csv(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = {r["ID"]: r for r in reader}
        return reader.fieldnames, rows


def read_outputs(out: Path) -> dict[str, dict[str, dict[str, str]]]:
    result = {}
    for split in ("train", "valid", "test"):
        header, rows = read_csv(out / f"{split}.csv")
        assert header == COLUMNS
        result[split] = rows
    return result


def speakers(rows: dict[str, dict[str, str]]) -> set[str]:
    return {r["speaker"] for r in rows.values()}


def assert_disjoint(outputs):
    tr, va, te = (speakers(outputs[s]) for s in ("train", "valid", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)


# ----------------------------------------------------------------------------- kaldi

# speaker -> (kaldi gender, age or None, number of utterances)
KALDI_TRAIN = {
    "s01": ("m", 7, 2),
    "s02": ("f", 14, 2),
    "s03": ("f", 15, 2),
    "s04": ("m", 33, 2),
    "s05": ("f", 41, 2),
    "s06": ("m", None, 2),  # not in spk2age
    "s07": ("f", 60, 2),
    "s08": ("m", 25, 2),
    "s09": ("f", 29, 2),
    "s10": ("m", 52, 2),
}


def n_samples_for(utt: str) -> int:
    return 8000 + 400 * (sum(map(ord, utt)) % 20)


def make_kaldi(root: Path) -> dict[str, tuple[str, float | None, int]]:
    """Kaldi corpus: train (relative + one absolute path, spk2age with a gap),
    test with a segments file and no spk2age."""
    train = root / "train"
    train.mkdir(parents=True)
    expected = {}
    scp, u2s, s2g, s2a = [], [], [], []
    for spk, (g, age, n) in KALDI_TRAIN.items():
        s2g.append(f"{spk} {g}")
        if age is not None:
            s2a.append(f"{spk} {age}")
        for i in range(n):
            utt = f"{spk}_u{i}"
            rel = f"audio/{spk}/{utt}.wav"
            wav = write_audio(root / rel, n_samples_for(utt))
            # one absolute path, the rest relative to the corpus root
            scp.append(f"{utt} {wav if utt == 's04_u1' else rel}")
            u2s.append(f"{utt} {spk}")
            expected[utt] = (spk, g, age, n_samples_for(utt) / 16000, wav)
    (train / "wav.scp").write_text("\n".join(scp) + "\n")
    (train / "utt2spk").write_text("\n".join(u2s) + "\n")
    (train / "spk2gender").write_text("\n".join(s2g) + "\n")
    (train / "spk2age").write_text("\n".join(s2a) + "\n")

    test = root / "test"
    test.mkdir()
    write_audio(root / "audio" / "rec1.flac", 48000, fmt="FLAC")  # 3.0 s
    write_audio(root / "audio" / "rec2.wav", 32000)  # 2.0 s
    (test / "wav.scp").write_text("rec1 audio/rec1.flac\nrec2 audio/rec2.wav\n")
    (test / "segments").write_text("t1_a rec1 0.00 1.25\nt1_b rec1 1.25 3.0\nt2_a rec2 0.5 -1\n")
    (test / "utt2spk").write_text("t1_a t1\nt1_b t1\nt2_a t2\n")
    (test / "spk2gender").write_text("t1 f\nt2 M\n")
    return expected


def test_kaldi_train_carve_labels_and_durations(tmp_path):
    root = tmp_path / "corpus"
    expected = make_kaldi(root)
    out = tmp_path / "out"
    paths = prep.prepare("kaldi", root, out)
    assert set(paths) == {"train", "valid", "test"}
    outputs = read_outputs(out)
    # valid carved from train: together they are exactly the train dir
    assert set(outputs["train"]) | set(outputs["valid"]) == set(expected)
    assert not set(outputs["train"]) & set(outputs["valid"])
    assert len(speakers(outputs["valid"])) == 1  # round(0.1 * 10)
    assert_disjoint(outputs)
    for split in ("train", "valid"):
        for utt, row in outputs[split].items():
            spk, g, age, dur, wav = expected[utt]
            assert row["speaker"] == spk
            assert Path(row["wav"]) == wav.resolve() and Path(row["wav"]).is_absolute()
            assert row["start"] == row["stop"] == ""
            assert float(row["duration"]) == pytest.approx(dur, abs=1e-3)
            if age is None:
                assert row["age"] == "" and row["gender"] == {"m": "male", "f": "female"}[g]
            else:
                assert float(row["age"]) == age
                want = "child" if age <= 14 else {"m": "male", "f": "female"}[g]
                assert row["gender"] == want


def test_kaldi_segments_and_missing_spk2age(tmp_path):
    root = tmp_path / "corpus"
    make_kaldi(root)
    out = tmp_path / "out"
    prep.prepare("kaldi", root, out)
    test = read_outputs(out)["test"]
    assert set(test) == {"t1_a", "t1_b", "t2_a"}
    got = {k: (r["start"], r["stop"], float(r["duration"])) for k, r in test.items()}
    assert got["t1_a"][:2] == ("0", "1.25") and got["t1_a"][2] == pytest.approx(1.25)
    assert got["t1_b"][:2] == ("1.25", "3") and got["t1_b"][2] == pytest.approx(1.75)
    # end -1 = end of the recording (2.0 s)
    assert got["t2_a"][:2] == ("0.5", "2") and got["t2_a"][2] == pytest.approx(1.5)
    assert test["t1_a"]["wav"].endswith("audio/rec1.flac")
    assert {r["age"] for r in test.values()} == {""}
    assert test["t1_a"]["gender"] == "female" and test["t2_a"]["gender"] == "male"


def test_kaldi_named_split_dirs(tmp_path):
    root = tmp_path / "corpus"
    make_kaldi(root)
    (root / "train").rename(root / "tr")
    (root / "test").rename(root / "ev")
    # use the test dir as an explicit validation dir too (no carve)
    import shutil

    shutil.copytree(root / "ev", root / "dv")
    (root / "dv" / "utt2spk").write_text("t1_a v1\nt1_b v1\nt2_a v2\n")
    (root / "dv" / "spk2gender").write_text("v1 f\nv2 m\n")
    (root / "dv" / "segments").write_text("v1_a rec1 0 1\nv1_b rec1 1 2\nv2_a rec2 0 1\n")
    (root / "dv" / "utt2spk").write_text("v1_a v1\nv1_b v1\nv2_a v2\n")
    out = tmp_path / "out"
    prep.prepare("kaldi", root, out, train_dir="tr", valid_dir="dv", test_dir="ev")
    outputs = read_outputs(out)
    assert len(outputs["train"]) == 20  # nothing carved
    assert set(outputs["valid"]) == {"v1_a", "v1_b", "v2_a"}
    with pytest.raises(common.PrepareError, match="valid data directory not found"):
        prep.prepare("kaldi", root, tmp_path / "o2", train_dir="tr", valid_dir="nope",
                     test_dir="ev")  # fmt: skip


def test_kaldi_rejects_piped_command_with_line(tmp_path):
    root = tmp_path / "corpus"
    make_kaldi(root)
    scp = root / "train" / "wav.scp"
    lines = scp.read_text().splitlines()
    lines[2] = "s02_u0 sph2pipe -f wav audio/x.sph |"
    scp.write_text("\n".join(lines) + "\n")
    with pytest.raises(common.PrepareError) as err:
        prep.prepare("kaldi", root, tmp_path / "out")
    msg = str(err.value)
    assert str(scp) in msg and "line 3" in msg and "piped" in msg
    assert not (tmp_path / "out" / "train.csv").exists()


@pytest.mark.parametrize(
    "file, line_no, content, pattern",
    [
        ("utt2spk", 4, "s02_u1", "malformed"),
        ("spk2gender", 2, "s02 x", "gender must be m or f"),
        ("spk2age", 1, "s01 seven", "invalid age"),
        ("wav.scp", 5, "s03_u0 audio/missing.wav", "audio file not found"),
    ],
)
def test_kaldi_bad_lines_name_file_and_line(tmp_path, file, line_no, content, pattern):
    root = tmp_path / "corpus"
    make_kaldi(root)
    path = root / "train" / file
    lines = path.read_text().splitlines()
    lines[line_no - 1] = content
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(common.PrepareError, match=pattern) as err:
        prep.prepare("kaldi", root, tmp_path / "out")
    assert f"{path}, line {line_no}" in str(err.value)


def test_kaldi_missing_inputs(tmp_path):
    with pytest.raises(common.PrepareError, match="data folder not found"):
        prep.prepare("kaldi", tmp_path / "nowhere", tmp_path / "out")
    root = tmp_path / "corpus"
    make_kaldi(root)
    (root / "train" / "spk2gender").unlink()
    with pytest.raises(common.PrepareError, match="required file is missing") as err:
        prep.prepare("kaldi", root, tmp_path / "out")
    assert "spk2gender" in str(err.value)
    with pytest.raises(common.PrepareError, match="do not apply"):
        prep.prepare("kaldi", root, tmp_path / "out", path_column="x")


# ----------------------------------------------------------------------------- common voice

CV_OLD_HEADER = (
    "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\tlocale\tsegment"
)
CV_NEW_HEADER = (
    "client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender"
    "\taccents\tvariant\tlocale\tsegment"
)


def cv_line(header: str, client: str, clip: str, age: str, gender: str) -> str:
    values = {"client_id": client, "path": clip, "age": age, "gender": gender, "locale": "en",
              "sentence": 'He said "hi" there', "up_votes": "2", "down_votes": "0"}  # fmt: skip
    return "\t".join(values.get(col, "") for col in header.split("\t"))


def make_cv_clip(root: Path, clip: str, seconds: float) -> None:
    write_audio(root / "clips" / clip, int(seconds * 48000), sr=48000, fmt="MP3")


# (client, clip, age band, gender, expected age, expected gender)
CV_TRAIN = [
    ("c1", "common_voice_en_1.mp3", "fourties", "male_masculine", 45.0, "male"),
    ("c1", "common_voice_en_2.mp3", "fourties", "male_masculine", 45.0, "male"),
    ("c2", "common_voice_en_3.mp3", "twenties", "female_feminine", 25.0, "female"),
    ("c3", "common_voice_en_4.mp3", "", "non-binary", None, None),  # dropped
    ("c4", "common_voice_en_5.mp3", "teens", "do_not_wish_to_say", 16.0, None),
    ("c5", "common_voice_en_6.mp3", "", "intersex", None, None),  # dropped
    ("c6", "common_voice_en_7.mp3", "", "transgender", None, None),  # dropped
    ("c7", "common_voice_en_8.mp3", "eighties", "", 85.0, None),
    ("c8", "common_voice_en_9.mp3", "", "female", None, "female"),
]
CV_DEV = [
    ("d1", "common_voice_en_20.mp3", "forties", "male", 45.0, "male"),
    ("d2", "common_voice_en_21.mp3", "sixties", "other", 65.0, None),
]
CV_TEST = [
    ("e1", "common_voice_en_30.mp3", "thirties", "female", 35.0, "female"),
    ("e2", "common_voice_en_31.mp3", "", "", None, None),  # dropped
    ("e3", "common_voice_en_32.mp3", "nineties", "male", 95.0, "male"),
]


def make_cv(root: Path, with_splits=True) -> dict[str, float]:
    durations = {}
    for i, (_c, clip, *_rest) in enumerate(CV_TRAIN + CV_DEV + CV_TEST):
        durations[clip] = 1.0 + 0.25 * (i % 5)
        make_cv_clip(root, clip, durations[clip])
    if with_splits:
        for name, rows, header in (("train.tsv", CV_TRAIN, CV_NEW_HEADER),
                                   ("dev.tsv", CV_DEV, CV_OLD_HEADER),
                                   ("test.tsv", CV_TEST, CV_NEW_HEADER)):  # fmt: skip
            lines = [header] + [cv_line(header, c, p, a, g) for c, p, a, g, *_ in rows]
            (root / name).write_text("\n".join(lines) + "\n")
    return durations


def test_commonvoice_splits_age_bands_genders(tmp_path, caplog):
    root = tmp_path / "en"
    durations = make_cv(root)
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        prep.prepare("commonvoice", root, out)
    outputs = read_outputs(out)
    for split, table in (("train", CV_TRAIN), ("valid", CV_DEV), ("test", CV_TEST)):
        kept = [r for r in table if r[4] is not None or r[5] is not None]
        rows = outputs[split]
        assert set(rows) == {Path(r[1]).stem for r in kept}
        for client, clip, _band, _g, age, gender in kept:
            row = rows[Path(clip).stem]
            assert row["speaker"] == client
            assert row["age"] == ("" if age is None else f"{age:g}")
            assert row["gender"] == (gender or "")
            assert float(row["duration"]) == pytest.approx(durations[clip], abs=0.01)
            assert Path(row["wav"]) == (root / "clips" / clip).resolve()
    assert "dropped 3 clips" in caplog.text and "dropped 1 clips" in caplog.text


def test_commonvoice_keep_unlabelled_and_missing_columns(tmp_path):
    root = tmp_path / "en"
    make_cv(root)
    out = tmp_path / "out"
    prep.prepare("commonvoice", root, out, keep_unlabelled=True)
    outputs = read_outputs(out)
    assert len(outputs["train"]) == len(CV_TRAIN)
    assert outputs["train"]["common_voice_en_4"]["gender"] == ""
    # a release without age column and a 'sex' column instead of 'gender'
    (root / "train.tsv").write_text(
        "client_id\tpath\tsentence\tsex\n"
        "c1\tcommon_voice_en_1.mp3\thello\tfemale\n"
        "c2\tcommon_voice_en_3.mp3\thello\tmale_masculine\n"
    )
    prep.prepare("commonvoice", root, out, overwrite=True)
    train = read_outputs(out)["train"]
    assert {k: (r["age"], r["gender"]) for k, r in train.items()} == {
        "common_voice_en_1": ("", "female"),
        "common_voice_en_3": ("", "male"),
    }


def test_commonvoice_validated_only_speaker_disjoint(tmp_path):
    root = tmp_path / "en"
    lines = [CV_NEW_HEADER]
    clients = {}
    for i in range(60):
        client = f"client{i % 20:02d}"
        clip = f"common_voice_en_{100 + i}.mp3"
        make_cv_clip(root, clip, 0.5)
        clients[Path(clip).stem] = client
        lines.append(cv_line(CV_NEW_HEADER, client, clip, "thirties", "female_feminine"))
    (root / "validated.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    prep.prepare("commonvoice", root, out, valid_fraction=0.2, test_fraction=0.2, seed=7)
    outputs = read_outputs(out)
    assert_disjoint(outputs)
    assert [len(speakers(outputs[s])) for s in ("train", "valid", "test")] == [12, 4, 4]
    all_ids = set().union(*(outputs[s] for s in outputs))
    assert all_ids == set(clients)
    for split in outputs:
        for utt, row in outputs[split].items():
            assert row["speaker"] == clients[utt]
    # deterministic: same seed, same split
    out2 = tmp_path / "out2"
    prep.prepare("commonvoice", root, out2, valid_fraction=0.2, test_fraction=0.2, seed=7)
    for s in ("train", "valid", "test"):
        assert (out / f"{s}.csv").read_text() == (out2 / f"{s}.csv").read_text()


def test_commonvoice_unreadable_clip(tmp_path):
    root = tmp_path / "en"
    make_cv(root)
    bad = root / "clips" / "common_voice_en_3.mp3"
    bad.write_bytes(b"not an mp3 at all" * 10)
    (root / "clips" / "common_voice_en_30.mp3").unlink()
    out = tmp_path / "out"
    with pytest.raises(common.PrepareError) as err:
        prep.prepare("commonvoice", root, out)
    assert "common_voice_en_3.mp3" in str(err.value) and "train.tsv, line 4" in str(err.value)
    prep.prepare("commonvoice", root, out, skip_unreadable=True)
    outputs = read_outputs(out)
    assert "common_voice_en_3" not in outputs["train"]
    assert "common_voice_en_30" not in outputs["test"]
    assert "common_voice_en_1" in outputs["train"]
    log = (out / "skipped_clips.txt").read_text().splitlines()
    assert len(log) == 2
    assert any("common_voice_en_3.mp3" in x for x in log)
    assert any("common_voice_en_30.mp3" in x for x in log)


def test_commonvoice_bad_rows(tmp_path):
    root = tmp_path / "en"
    make_cv(root)
    text = (root / "dev.tsv").read_text().splitlines()
    text[2] = text[2].replace("sixties", "centenarian")
    (root / "dev.tsv").write_text("\n".join(text) + "\n")
    with pytest.raises(common.PrepareError, match="unknown Common Voice age band") as err:
        prep.prepare("commonvoice", root, tmp_path / "out")
    assert f"{root / 'dev.tsv'}, line 3" in str(err.value)
    text[2] = "d2\tcommon_voice_en_21.mp3\ttoo few fields"
    (root / "dev.tsv").write_text("\n".join(text) + "\n")
    with pytest.raises(common.PrepareError, match="line 3"):
        prep.prepare("commonvoice", root, tmp_path / "out")
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        (root / name).unlink()
    with pytest.raises(common.PrepareError, match="validated.tsv"):
        prep.prepare("commonvoice", root, tmp_path / "out")


# ----------------------------------------------------------------------------- timit

SPKRINFO = """\
;
;  File:  spkrinfo.txt
;  Speaker information for the TIMIT corpus.
;
;ID  Sex DR Use  RecDate   BirthDate  Ht    Race Edu  Comments
;
 CJF0  F  1  TRN  03/03/86  06/17/60  5'11"  WHT  BS
 DAB0  M  1  TRN  01/07/86  01/07/61  5'11"  WHT  MS    Birthday at rec
 ELC0  F  2  TRN  08/05/87  ??/??/??  5'07"  BLK  HS    Unknown birthdate
 JSW0  M  3  TRN  11/12/86  11/13/74  4'09"  WHT  ??
 KLS0  F  4  TRN  02/02/86  10/10/50  5'05"  ORN  PHD
 RWS0  M  5  TRN  02/02/86  09/10/40  6'00"  WHT  BS
 ABW0  M  1  TST  02/26/86  11/04/61  5'11"  WHT  BS
 MGD0  F  2  TST  05/15/86  05/16/72  5'03"  HIS  ??
"""
# speaker folder -> (split, region, gender, age)  (ages by hand from the dates above)
TIMIT_SPEAKERS = {
    "FCJF0": ("TRAIN", "DR1", "female", 25),
    "MDAB0": ("TRAIN", "DR1", "male", 25),
    "FELC0": ("TRAIN", "DR2", "female", None),
    "MJSW0": ("TRAIN", "DR3", "male", 11),  # one day before his 12th birthday
    "FKLS0": ("TRAIN", "DR4", "female", 35),
    "MRWS0": ("TRAIN", "DR5", "male", 45),
    "MABW0": ("TEST", "DR1", "male", 24),
    "FMGD0": ("TEST", "DR2", "female", 13),  # one day before 14th birthday
}


def make_timit(root: Path, lowercase: bool) -> dict[str, tuple[str, str, float | None, float]]:
    def name(x: str) -> str:
        return x.lower() if lowercase else x

    expected = {}
    for spk, (split, region, gender, age) in TIMIT_SPEAKERS.items():
        for k, utt in enumerate(("SA1", "SI648", "SX18")):
            n = 12000 + 1600 * k + 160 * len(expected)
            folder = root / name(split) / name(region) / name(spk)
            write_audio(folder / name(f"{utt}.WAV"), n, fmt="NIST")
            (folder / name(f"{utt}.PHN")).write_text("0 100 h#\n")
            (folder / name(f"{utt}.TXT")).write_text("0 100 Hello.\n")
            expected[f"{spk}_{utt}"] = (split, spk, gender, age, n / 16000)
    doc = root / name("DOC")
    doc.mkdir(parents=True)
    (doc / name("SPKRINFO.TXT")).write_text(SPKRINFO)
    return expected


@pytest.mark.parametrize("lowercase", [False, True])
def test_timit(tmp_path, lowercase):
    root = tmp_path / "TIMIT"
    expected = make_timit(root, lowercase)
    # the audio really is NIST SPHERE despite the .WAV name
    first = next(root.rglob("*.[Ww][Aa][Vv]"))
    assert first.read_bytes()[:7] == b"NIST_1A"
    out = tmp_path / "out"
    prep.prepare("timit", root, out, valid_fraction=0.2)
    outputs = read_outputs(out)
    train_ids = {k for k, v in expected.items() if v[0] == "TRAIN"}
    assert set(outputs["train"]) | set(outputs["valid"]) == train_ids
    assert len(speakers(outputs["valid"])) == 1  # round(0.2 * 6)
    assert set(outputs["test"]) == {k for k, v in expected.items() if v[0] == "TEST"}
    assert_disjoint(outputs)
    for split in outputs:
        for utt, row in outputs[split].items():
            _s, spk, gender, age, dur = expected[utt]
            assert row["speaker"] == spk
            assert row["age"] == ("" if age is None else str(age))
            assert row["gender"] == ("child" if age is not None and age < 15 else gender)
            assert float(row["duration"]) == pytest.approx(dur, abs=1e-3)
            assert Path(row["wav"]).is_file()
    # child_age 0 disables the child rule: sex labels come back
    prep.prepare("timit", root, out, valid_fraction=0.2, child_age=0)
    test_rows = read_outputs(out)["test"]
    assert test_rows["FMGD0_SA1"]["gender"] == "female"


def test_timit_errors(tmp_path):
    root = tmp_path / "TIMIT"
    make_timit(root, lowercase=False)
    info = root / "DOC" / "SPKRINFO.TXT"
    info.write_text(SPKRINFO.replace(" KLS0  F  4", " KLS0  X  4"))
    with pytest.raises(common.PrepareError, match="sex must be M or F") as err:
        prep.prepare("timit", root, tmp_path / "out")
    assert f"{info}, line 11" in str(err.value)
    info.write_text(SPKRINFO.replace(" KLS0  F  4  TRN  02/02/86  10/10/50", " KLS0  F"))
    with pytest.raises(common.PrepareError, match="line 11"):
        prep.prepare("timit", root, tmp_path / "out")
    info.unlink()
    with pytest.raises(common.PrepareError, match="SPKRINFO.TXT"):
        prep.prepare("timit", root, tmp_path / "out")


# NLTK's TIMIT sample (nltk_data/corpora/timit): speaker folders dr<region>-<sex><id> at
# the top, lower-case file names, spkrinfo.txt beside them, no train/test split.
NLTK_SPKRINFO = """\
;
;  File:  spkrinfo.txt
;  Speaker information for the TIMIT corpus.
;
;ID  Sex DR Use  RecDate   BirthDate  Ht    Race Edu  Comments
;
 VMH0  F  1  TRN  03/11/86  05/21/60  5'06"  WHT  BS
 CPM0  M  1  TRN  01/15/86  01/15/61  5'10"  WHT  MS    Birthday at rec
 AEM0  F  2  TRN  08/05/87  ??/??/??  5'07"  BLK  HS    Unknown birthdate
 ARC0  M  2  TRN  11/12/86  11/13/74  4'09"  WHT  ??
 ALK0  F  3  TRN  02/02/86  10/10/50  5'05"  ORN  PHD
 ADC0  M  3  TRN  02/02/86  09/10/40  6'00"  WHT  BS
 ALR0  F  4  TRN  12/31/85  01/01/63  5'04"  WHT  AS
 AEB0  M  4  TRN  06/30/86  07/01/50  5'11"  SPN  BS
 ZZZ0  M  5  TST  02/26/86  11/04/61  5'11"  WHT  BS    listed, no folder
"""
# speaker folder -> (speaker, gender, age)  (ages by hand from the dates above)
NLTK_SPEAKERS = {
    "dr1-fvmh0": ("FVMH0", "female", 25),  # birthday not reached yet in March
    "dr1-mcpm0": ("MCPM0", "male", 25),  # recorded on his 25th birthday
    "dr2-faem0": ("FAEM0", "female", None),
    "dr2-marc0": ("MARC0", "male", 11),  # one day before his 12th birthday
    "dr3-falk0": ("FALK0", "female", 35),
    "dr3-madc0": ("MADC0", "male", 45),
    "dr4-falr0": ("FALR0", "female", 22),  # one day before her 23rd birthday
    "dr4-maeb0": ("MAEB0", "male", 35),  # one day before his 36th birthday
}


def make_nltk_timit(root: Path) -> dict[str, tuple[str, str, float | None, float, Path]]:
    expected = {}
    for folder, (spk, gender, age) in NLTK_SPEAKERS.items():
        for k, utt in enumerate(("sa1", "si1466", "sx206")):
            n = 9600 + 1600 * k + 160 * len(expected)
            wav = write_audio(root / folder / f"{utt}.wav", n, fmt="NIST")
            for ext, text in (("phn", "h#"), ("wrd", "she"), ("txt", "She.")):
                (root / folder / f"{utt}.{ext}").write_text(f"0 100 {text}\n")
            expected[f"{spk}_{utt.upper()}"] = (spk, gender, age, n / 16000, wav.resolve())
    (root / "spkrinfo.txt").write_text(NLTK_SPKRINFO)
    (root / "timitdic.txt").write_text("; dictionary\nshe /sh iy/\n")
    return expected


def test_timit_nltk_sample(tmp_path):
    root = tmp_path / "nltk_data" / "corpora" / "timit"
    expected = make_nltk_timit(root)
    assert (root / "dr1-fvmh0" / "sa1.wav").read_bytes()[:7] == b"NIST_1A"
    out = tmp_path / "out"
    prep.prepare("timit", root, out, valid_fraction=0.25, test_fraction=0.25, seed=3)
    outputs = read_outputs(out)
    assert set().union(*outputs.values()) == set(expected)
    assert_disjoint(outputs)
    sex = {spk: g for spk, g, *_ in expected.values()}
    for split in outputs:
        for utt, row in outputs[split].items():
            spk, gender, age, dur, wav = expected[utt]
            assert row["speaker"] == spk and Path(row["wav"]) == wav
            assert row["age"] == ("" if age is None else str(age))
            assert row["gender"] == ("child" if age is not None and age < 15 else gender)
            assert float(row["duration"]) == pytest.approx(dur, abs=1e-3)
    # 8 speakers, 4 per sex: round(0.25 * 8) = 2 speakers in valid and in test, one per
    # sex, whatever the seed
    for seed in range(8):
        prep.prepare("timit", root, tmp_path / f"s{seed}", valid_fraction=0.25,
                     test_fraction=0.25, seed=seed)  # fmt: skip
        outputs = read_outputs(tmp_path / f"s{seed}")
        for split in ("valid", "test"):
            assert sorted(sex[s] for s in speakers(outputs[split])) == ["female", "male"]
        assert len(speakers(outputs["train"])) == 4
    # deterministic for a seed
    for name in ("train.csv", "valid.csv", "test.csv"):
        assert (out / name).read_text() == (tmp_path / "s3" / name).read_text()


def test_timit_nltk_sample_errors(tmp_path):
    root = tmp_path / "timit"
    make_nltk_timit(root)
    info = root / "spkrinfo.txt"
    info.write_text(NLTK_SPKRINFO.replace(" ALK0  F  3", " ALK0  F  5"))
    with pytest.raises(common.PrepareError, match="dr3-falk0 disagrees with the listed dialect"):
        prep.prepare("timit", root, tmp_path / "out")
    info.write_text(NLTK_SPKRINFO.replace(" CPM0  M  1", " CPM0  F  1"))
    with pytest.raises(common.PrepareError, match=r"speaker MCPM0 \(.*dr1-mcpm0\) not listed"):
        prep.prepare("timit", root, tmp_path / "out")
    info.unlink()
    with pytest.raises(common.PrepareError, match="required file is missing") as err:
        prep.prepare("timit", root, tmp_path / "out")
    assert str(info) in str(err.value)


def test_timit_unrecognised_layout_lists_accepted(tmp_path):
    top = tmp_path / "downloads"
    make_timit(top / "TIMIT", lowercase=False)
    (top / "notes.txt").write_text("x")
    with pytest.raises(common.PrepareError) as err:
        prep.prepare("timit", top, tmp_path / "out")
    msg = str(err.value)
    assert msg.startswith(f"{top.resolve()}: no TIMIT layout recognised")
    assert "(1) LDC: TRAIN/ and TEST/" in msg and "DOC/SPKRINFO.TXT" in msg
    assert "(2) NLTK sample: speaker folders like dr1-fvmh0/" in msg and "spkrinfo.txt" in msg
    assert "found: TIMIT/, notes.txt" in msg
    assert f"{(top / 'TIMIT').resolve()} looks like TIMIT" in msg
    (top / "TIMIT").rename(tmp_path / "elsewhere")
    with pytest.raises(common.PrepareError, match="found: notes.txt$"):
        prep.prepare("timit", top, tmp_path / "out")


# ----------------------------------------------------------------------------- csv


# Column options for the tables make_table writes.
CSV_COLUMNS = dict(path_column="file", age_column="age_years", gender_column="sex",
                   speaker_column="spk", split_column="subset")  # fmt: skip


def make_table(root: Path, delimiter: str, with_split: bool) -> dict[str, tuple]:
    # id -> (relative path, speaker, raw age, raw gender, split, expected age, gender)
    rows = {
        "a1": ("wavs/a1.wav", "A", "34", "M", "train", 34.0, "male"),
        "a2": ("wavs/a2.wav", "A", "34", "male", "train", 34.0, "male"),
        "b1": ("wavs/b1.wav", "B", "8", "f", "train", 8.0, "child"),
        "c1": ("wavs/c1.wav", "C", "NA", "Female", "dev", None, "female"),
        "d1": ("wavs/d1.wav", "D", "61.5", "", "test", 61.5, None),
        "e1": ("wavs/e1.wav", "E", "", "child", "test", None, "child"),
        "f1": ("wavs/f1.wav", "F", "27", "unknown", "train", 27.0, None),
        "g1": ("wavs/g1.wav", "G", "45", "W", "train", 45.0, "female"),
        "h1": ("wavs/h1.wav", "H", "19", "man", "valid", 19.0, "male"),
        "i1": ("wavs/i1.wav", "I", "70", "F", "test", 70.0, "female"),
    }
    lines = []
    header = ["file", "spk", "age_years", "sex"] + (["subset"] if with_split else [])
    lines.append(delimiter.join(header))
    for i, (rel, spk, age, g, split, *_) in enumerate(rows.values()):
        write_audio(root / rel, 4000 + 800 * i)
        cells = [rel, spk, age, g] + ([split] if with_split else [])
        lines.append(delimiter.join(cells))
    return rows, "\n".join(lines) + "\n"


@pytest.mark.parametrize("suffix, delimiter", [(".csv", ","), (".tsv", "\t")])
def test_csv_with_split_column(tmp_path, suffix, delimiter):
    root = tmp_path / "corpus"
    rows, text = make_table(root, delimiter, with_split=True)
    table = root / f"labels{suffix}"
    table.write_text(text)
    out = tmp_path / "out"
    prep.prepare("csv", table, out, **CSV_COLUMNS)
    outputs = read_outputs(out)
    split_map = {"train": "train", "dev": "valid", "valid": "valid", "test": "test"}
    for i, (utt, (rel, spk, _a, _g, split, age, gender)) in enumerate(rows.items()):
        row = outputs[split_map[split]][utt]
        assert Path(row["wav"]) == (root / rel).resolve()
        assert row["speaker"] == spk
        assert row["age"] == ("" if age is None else f"{age:g}")
        assert row["gender"] == (gender or "")
        assert float(row["duration"]) == pytest.approx((4000 + 800 * i) / 16000, abs=1e-3)
    assert sum(len(v) for v in outputs.values()) == len(rows)


def test_csv_speaker_disjoint_split_and_folder_table(tmp_path):
    root = tmp_path / "corpus"
    rows, text = make_table(root, ",", with_split=False)
    (root / "labels.csv").write_text(text)
    out = tmp_path / "out"
    prep.prepare("csv", root, out, table="labels.csv", path_column="file",
                 age_column="age_years", gender_column="sex", speaker_column="spk",
                 valid_fraction=0.2, test_fraction=0.2)  # fmt: skip
    outputs = read_outputs(out)
    assert_disjoint(outputs)
    assert set().union(*outputs.values()) == set(rows)
    # speakers: A..I = 9 -> 2 valid, 2 test, 5 train
    assert [len(speakers(outputs[s])) for s in ("train", "valid", "test")] == [5, 2, 2]


def test_csv_errors(tmp_path):
    root = tmp_path / "corpus"
    _rows, text = make_table(root, ",", with_split=True)
    table = root / "labels.csv"
    kw = CSV_COLUMNS
    table.write_text(text.replace("wavs/c1.wav,C,NA,Female,dev", "wavs/c1.wav,C,NA,Female,dvl"))
    with pytest.raises(common.PrepareError, match="unknown split") as err:
        prep.prepare("csv", table, tmp_path / "out", **kw)
    assert f"{table}, line 5" in str(err.value)
    table.write_text(text.replace(",34,M,", ",thirty,M,"))
    with pytest.raises(common.PrepareError, match=f"{table}, line 2: invalid age"):
        prep.prepare("csv", table, tmp_path / "out", **kw)
    table.write_text(text)
    with pytest.raises(common.PrepareError, match="not in header"):
        prep.prepare("csv", table, tmp_path / "out", **{**kw, "age_column": "age"})
    table.write_text(text.replace("wavs/e1.wav", "wavs/nope.wav"))
    with pytest.raises(common.PrepareError, match="line 7: audio file not found"):
        prep.prepare("csv", table, tmp_path / "out", **kw)


# ----------------------------------------------------------------------------- generic


def test_normalise_gender_never_guesses():
    for raw in ("m", "M", "male", " Male ", "male_masculine", "man"):
        assert common.normalise_gender(raw) == "male"
    for raw in ("f", "F", "female", "female_feminine", "woman"):
        assert common.normalise_gender(raw) == "female"
    for raw in ("child", "c", "kid"):
        assert common.normalise_gender(raw) == "child"
    for raw in ("other", "intersex", "transgender", "non-binary", "do_not_wish_to_say", "",
                "unknown", "x", None):  # fmt: skip
        assert common.normalise_gender(raw) is None


def test_child_rule_boundaries():
    def utt(age, gender="male"):
        return common.Utterance(id=str(age), wav=Path("/x.wav"), duration=1.0, speaker="s",
                                age=age, gender=gender)  # fmt: skip

    utts = [utt(6), utt(14), utt(14.9), utt(15), utt(40), utt(None), utt(None, "child")]
    got = [u.gender for u in common.apply_child_rule(utts, common.DEFAULT_CHILD_AGE)]
    assert got == ["child", "child", "child", "male", "male", "male", "child"]
    got = [u.gender for u in common.apply_child_rule(utts, 13)]
    assert got == ["child", "male", "male", "male", "male", "male", "child"]
    assert [u.gender for u in common.apply_child_rule(utts, 0)][:2] == ["male", "male"]
    assert common.DEFAULT_CHILD_AGE == 15


def test_speaker_split_deterministic_and_disjoint():
    utts = [common.Utterance(id=f"{s}_{i}", wav=Path("/x"), duration=1.0, speaker=f"s{s}")
            for s in range(30) for i in range(3)]  # fmt: skip
    a = common.speaker_split(utts, {"valid": 0.1, "test": 0.2}, seed=1)
    b = common.speaker_split(utts, {"valid": 0.1, "test": 0.2}, seed=1)
    c = common.speaker_split(utts, {"valid": 0.1, "test": 0.2}, seed=2)
    assert a == b and a != c
    sp = {k: {u.speaker for u in v} for k, v in a.items()}
    assert [len(sp[k]) for k in ("train", "valid", "test")] == [21, 3, 6]
    assert not (sp["train"] & sp["valid"] or sp["train"] & sp["test"] or sp["valid"] & sp["test"])
    assert sum(len(v) for v in a.values()) == len(utts)
    with pytest.raises(common.PrepareError):
        common.speaker_split(utts[:3], {"valid": 0.1}, seed=1)  # one speaker only


def test_speaker_split_strata_balance_each_carved_split():
    def utts(n_female, n_male):
        sexes = ["female"] * n_female + ["male"] * n_male
        return [common.Utterance(id=f"u{i}", wav=Path("/x"), duration=1.0, speaker=f"s{i:02d}",
                                 gender=g) for i, g in enumerate(sexes)]  # fmt: skip

    def sexes(rows):
        return sorted(u.gender for u in rows)

    rows = utts(8, 8)
    strata = {u.speaker: u.gender for u in rows}
    unbalanced = 0
    for seed in range(20):
        got = common.speaker_split(rows, {"valid": 0.1, "test": 0.1}, seed, strata)
        assert sexes(got["valid"]) == sexes(got["test"]) == ["female", "male"]
        assert sexes(got["train"]) == ["female"] * 6 + ["male"] * 6
        plain = common.speaker_split(rows, {"valid": 0.1, "test": 0.1}, seed)
        unbalanced += sexes(plain["valid"]) != ["female", "male"]
    assert unbalanced > 0  # without strata some seeds give one sex only
    # same counts as without strata; shares follow the strata sizes (3 vs 13 -> 0 + 2)
    rows = utts(3, 13)
    got = common.speaker_split(rows, {"valid": 0.1}, 1, {u.speaker: u.gender for u in rows})
    assert sexes(got["valid"]) == ["male", "male"]  # round(1.6) = 2 speakers
    # without strata the split is what it always was: sorted speakers shuffled once
    speakers_ = sorted({u.speaker for u in rows})
    random.Random(5).shuffle(speakers_)
    plain = common.speaker_split(rows, {"valid": 0.1}, 5)
    assert {u.speaker for u in plain["valid"]} == set(speakers_[:2])


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "train.csv"
    target.write_text("old content\n")

    def rows():
        yield common.Utterance(id="u1", wav=Path("/a.wav"), duration=1.0, speaker="s")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        common.write_manifest(rows(), target)
    assert target.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.csv"]


def test_skip_existing_outputs_and_overwrite(tmp_path):
    root = tmp_path / "corpus"
    make_kaldi(root)
    out = tmp_path / "out"
    prep.prepare("kaldi", root, out)
    marker = "ID,wav,start,stop,duration,age,gender,speaker\n"
    (out / "test.csv").write_text(marker)
    prep.prepare("kaldi", root, out)  # same options: skipped
    assert (out / "test.csv").read_text() == marker
    prep.prepare("kaldi", root, out, child_age=10)  # other options: redone
    assert len(read_csv(out / "test.csv")[1]) == 3
    (out / "test.csv").write_text(marker)
    prep.prepare("kaldi", root, out, child_age=10, overwrite=True)
    assert len(read_csv(out / "test.csv")[1]) == 3


def all_rows(out: Path) -> dict[str, dict[str, str]]:
    return {k: v for rows in read_outputs(out).values() for k, v in rows.items()}


def test_rerun_on_changed_corpus_reprepares(tmp_path, caplog):
    root = tmp_path / "timit"
    make_nltk_timit(root)
    out = tmp_path / "out"
    marker = "ID,wav,start,stop,duration,age,gender,speaker\n"
    kw = dict(valid_fraction=0.25, test_fraction=0.25)

    def rerun() -> bool:
        """Prepare again; True if the manifests were made again (the marker is gone)."""
        (out / "valid.csv").write_text(marker)
        caplog.clear()
        with caplog.at_level("INFO", logger="prepare"):
            prep.prepare("timit", root, out, **kw)
        return (out / "valid.csv").read_text() != marker

    prep.prepare("timit", root, out, **kw)
    assert all_rows(out)["FVMH0_SA1"]["age"] == "25"
    assert not rerun()  # same corpus, same options: skipped
    assert "inputs unchanged; skipping" in caplog.text

    info = root / "spkrinfo.txt"  # a label changes: born ten years later
    info.write_text(NLTK_SPKRINFO.replace("03/11/86  05/21/60", "03/11/86  05/21/70"))
    assert rerun()
    assert f"label file {info} changed" in caplog.text
    assert all_rows(out)["FVMH0_SA1"]["age"] == "15"
    assert not rerun()

    write_audio(root / "dr1-fvmh0" / "sa2.wav", 8000, fmt="NIST")  # an utterance is added
    assert rerun()
    assert "audio files changed (24 -> 25 files" in caplog.text
    assert float(all_rows(out)["FVMH0_SA2"]["duration"]) == pytest.approx(0.5)
    assert not rerun()

    wav = root / "dr2-marc0" / "sx206.wav"  # same size, new mtime (e.g. re-encoded)
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert rerun()
    assert "audio files changed (25 -> 25 files" in caplog.text

    options = out / prep.OPTIONS_FILE  # outputs of a version without fingerprints
    settings = json.loads(options.read_text())
    del settings["inputs"]
    options.write_text(json.dumps(settings))
    assert rerun()
    assert "no input fingerprint recorded" in caplog.text
    assert not rerun()


def test_rerun_sees_audio_outside_the_data_folder_and_new_label_files(tmp_path, caplog):
    # csv: the data folder is the table; the audio lies elsewhere
    root = tmp_path / "corpus"
    _rows, text = make_table(root, ",", with_split=True)
    table = tmp_path / "tables" / "labels.csv"
    table.parent.mkdir()
    table.write_text(text.replace("wavs/", "../corpus/wavs/"))
    out = tmp_path / "out"
    prep.prepare("csv", table, out, **CSV_COLUMNS)
    assert float(all_rows(out)["a1"]["duration"]) == pytest.approx(4000 / 16000, abs=1e-3)
    write_audio(root / "wavs" / "a1.wav", 12000)  # longer now
    with caplog.at_level("WARNING", logger="prepare"):
        prep.prepare("csv", table, out, **CSV_COLUMNS)
    assert "the corpus changed since the outputs were made" in caplog.text
    assert float(all_rows(out)["a1"]["duration"]) == pytest.approx(12000 / 16000, abs=1e-3)

    # kaldi: an optional label file that was absent appears
    root = tmp_path / "kaldi"
    make_kaldi(root)
    out = tmp_path / "out_kaldi"
    prep.prepare("kaldi", root, out)
    assert {r["age"] for r in read_outputs(out)["test"].values()} == {""}
    (root / "test" / "spk2age").write_text("t1 40\nt2 50\n")
    caplog.clear()
    with caplog.at_level("WARNING", logger="prepare"):
        prep.prepare("kaldi", root, out)
    assert f"label file {root.resolve() / 'test' / 'spk2age'} appeared" in caplog.text
    assert {r["age"] for r in read_outputs(out)["test"].values()} == {"40", "50"}


def test_cli(tmp_path, capsys):
    root = tmp_path / "corpus"
    make_kaldi(root)
    out = tmp_path / "out"
    assert prep.main(["--corpus", "kaldi", "--data_folder", str(root / "missing"),
                      "--output_folder", str(out)]) == 2  # fmt: skip
    assert "data folder not found" in capsys.readouterr().err
    # the script runs standalone from any working directory
    proc = subprocess.run(
        [sys.executable, str(RECIPES / "prepare.py"), "--corpus", "kaldi", "--data_folder",
         str(root), "--output_folder", str(out), "--child_age", "30", "--test_dir", "test"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    outputs = read_outputs(out)
    rows = {**outputs["train"], **outputs["valid"]}
    assert rows["s08_u0"]["gender"] == "child"  # 25 < 30
    assert rows["s04_u0"]["gender"] == "male"  # 33


# ----------------------------------------------------------------------------- real data


def read_speaker_table(path: Path) -> dict[str, str]:
    return dict(line.split() for line in path.read_text().splitlines() if line.strip())


@pytest.mark.skipif(not SPEECHOCEAN.is_dir(), reason="speechocean762 subset not available")
def test_speechocean762(tmp_path):
    out = tmp_path / "out"
    prep.prepare("kaldi", SPEECHOCEAN, out)
    outputs = read_outputs(out)
    n_valid = len(outputs["valid"])
    assert len(speakers(outputs["valid"])) == 3  # round(0.1 * 28)
    assert n_valid == 30  # 10 utterances per speaker
    assert len(outputs["train"]) == 280 - n_valid
    assert len(outputs["test"]) == 160
    assert_disjoint(outputs)
    for split, folder in (("train", "train"), ("valid", "train"), ("test", "test")):
        ages = read_speaker_table(SPEECHOCEAN / folder / "spk2age")
        sexes = read_speaker_table(SPEECHOCEAN / folder / "spk2gender")
        utt2spk = read_speaker_table(SPEECHOCEAN / folder / "utt2spk")
        for utt, row in outputs[split].items():
            spk = utt2spk[utt]
            assert row["speaker"] == spk
            assert int(row["age"]) == int(ages[spk])
            want = "child" if int(ages[spk]) <= 14 else {"m": "male", "f": "female"}[sexes[spk]]
            assert row["gender"] == want
            info = sf.info(row["wav"])
            assert float(row["duration"]) == pytest.approx(info.frames / info.samplerate, 1e-3)
    all_train = set(read_speaker_table(SPEECHOCEAN / "train" / "utt2spk"))
    assert set(outputs["train"]) | set(outputs["valid"]) == all_train


def test_kaldi_segment_starting_after_the_recording(tmp_path):
    root = tmp_path / "corpus"
    make_kaldi(root)
    segments = root / "test" / "segments"
    segments.write_text(segments.read_text().replace("t2_a rec2 0.5 -1", "t2_a rec2 2.5 -1"))
    with pytest.raises(common.PrepareError, match=r"line 3: segment 't2_a' \(2.5-2.0 s\)"):
        prep.prepare("kaldi", root, tmp_path / "out")


def test_csv_non_finite_times_and_no_train_rows(tmp_path):
    root = tmp_path / "corpus"
    _rows, text = make_table(root, ",", with_split=True)
    table = root / "labels.csv"
    kw = CSV_COLUMNS
    table.write_text(text.replace("file,spk", "file,start,spk").replace(".wav,", ".wav,nan,"))
    with pytest.raises(common.PrepareError, match=f"{table}, line 2: invalid time 'nan'"):
        prep.prepare("csv", table, tmp_path / "out", start_column="start", **kw)
    lines = text.splitlines()
    test_only = [ln for ln in lines[1:] if ln.endswith(",test")]
    table.write_text("\n".join([lines[0], *test_only]) + "\n")
    with pytest.raises(common.PrepareError, match="no train utterances"):
        prep.prepare("csv", table, tmp_path / "out2", **kw)
