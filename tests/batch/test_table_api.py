"""``AgeGenderClassifier.predict_table`` against ``agegender predict``: the same rows, the
same columns, the same numbers, cell by cell, for every kind of input the command takes
(files, a folder, a list file, a CSV segment list, ``--segments``, ``--speakers``), on
synthetic noise without a speech detector and on real speech with the default one.

The command's CSV is read with pandas as text (``keep_default_na=False``: an empty cell is
``""``, never NaN), and every cell is compared with the DataFrame's: empty cells with
None/NaN, numbers exactly (both sides are rounded to the table's decimals, and a CSV float
round-trips), text as text. The index is checked against audformat's segmented index built
independently from the CSV's ``path``, ``start`` and ``end`` columns.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agegender_sb.batch.tables import columns
from agegender_sb.cli import main

pd = pytest.importorskip("pandas")

LABELS = ("female", "male", "child")
NUMERIC = {"start", "end", "duration", "speech", "age", *LABELS}


def _noise(path, seconds, rate=16000, channels=1, seed=0):
    rng = np.random.RandomState(seed)
    n = int(round(seconds * rate))
    x = 0.1 * rng.randn(n, channels) * (1 + np.sin(np.arange(n) / 3000))[:, None]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), rate)
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("table-corpus")
    files = {
        "a": _noise(d / "s1" / "a.wav", 1.0, seed=1),
        "b": _noise(d / "s1" / "b.flac", 2.5, 44100, channels=2, seed=2),
        "c": _noise(d / "s2" / "sub" / "c.wav", 1.7, 8000, seed=3),
        "long": _noise(d / "long" / "long.wav", 5.0, 22050, seed=4),
    }
    bad = d / "bad.wav"
    bad.write_text("not audio")
    files["bad"] = str(bad)
    return d, files


def _cli_table(tmp_path, source, inputs, *options) -> pd.DataFrame:
    out = tmp_path / "cli.csv"
    status = main(["predict", *map(str, inputs), "--source", source, "-o", str(out), "-q",
                   *map(str, options)])
    assert status in (0, 1)
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(table.columns) == columns(LABELS)
    return table


def _empty(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT


def _assert_same(cli: pd.DataFrame, api: pd.DataFrame) -> None:
    """Cell by cell, then the index (built here from the CSV's own columns); the usual pandas
    operations on the frame: reset_index, a CSV round trip."""
    # start and end are in the index (audformat's convention), not repeated as columns
    assert list(api.columns) == [c for c in cli.columns if c not in ("start", "end")]
    flat = api.reset_index()
    assert list(flat.columns[:3]) == ["file", "start", "end"]
    assert len(flat) == len(cli)
    back = pd.read_csv(io.StringIO(api.to_csv()), index_col=["file", "start", "end"])
    assert list(back.columns) == list(api.columns) and len(back) == len(api)
    assert len(api) == len(cli), (len(api), len(cli))
    for i in range(len(cli)):
        for col in api.columns:
            text, value = cli[col].iloc[i], api[col].iloc[i]
            where = f"row {i} ({cli['path'].iloc[i]!r}, {cli['speaker'].iloc[i]!r}), {col}"
            if text == "":
                assert _empty(value), f"{where}: CLI empty, API {value!r}"
            elif col in NUMERIC:
                assert not _empty(value), f"{where}: CLI {text}, API empty"
                assert float(value) == float(text), f"{where}: CLI {text}, API {value!r}"
            else:
                assert value == text, f"{where}: CLI {text!r}, API {value!r}"
    starts = [float(x) if x else 0.0 for x in cli["start"]]
    ends = [float(x) if x else float("nan") for x in cli["end"]]
    for i in range(len(cli)):  # a speaker's row within a file: its turns' span
        path, speaker = cli["path"].iloc[i], cli["speaker"].iloc[i]
        if path and speaker and not cli["start"].iloc[i]:
            turns = cli[(cli["path"] == path) & (cli["speaker"] == speaker)
                        & (cli["start"] != "")]
            if len(turns):
                starts[i] = min(float(x) for x in turns["start"])
                ends[i] = max(float(x) for x in turns["end"])
            else:  # without --segments the turns are not in the table: check the shape only
                starts[i], ends[i] = api.index[i][1].total_seconds(), None
    expected = pd.MultiIndex.from_arrays([
        [p if p != "" else None for p in cli["path"]],
        pd.to_timedelta(starts, unit="s"),
        pd.to_timedelta([float("nan") if e is None else e for e in ends], unit="s"),
    ], names=["file", "start", "end"])
    assert list(api.index.names) == ["file", "start", "end"]
    for i, (got, want) in enumerate(zip(api.index, expected)):
        assert (_empty(want[0]) and _empty(got[0])) or got[0] == want[0]  # speaker rows
        assert got[1] == want[1]
        if ends[i] is None:
            assert not pd.isna(got[2]) and got[2] > got[1]
        else:
            assert (pd.isna(got[2]) and pd.isna(want[2])) or got[2] == want[2]
    # within each kind of row (file rows, window/turn rows, a file's speaker rows) the index
    # is unique, as audformat's segmented index is; kinds are told apart by the columns
    has_file = [not _empty(f) for f in api.index.get_level_values("file")]
    segment = [not _empty(x) for x in cli["start"].replace("", None)]
    speaker = [not _empty(x) for x in api["speaker"]]
    for kind in ((True, False, False), (True, True, False), (True, True, True),
                 (True, False, True)):
        rows = api[[(f, s, k) == kind for f, s, k in zip(has_file, segment, speaker)]]
        assert rows.index.is_unique, kind
    for level in ("start", "end"):  # timedelta64 (pandas 3 infers [us], pandas 2 [ns])
        assert api.index.get_level_values(level).dtype.kind == "m"


def test_files_folder_and_list_file(clf, corpus, tiny_checkpoint, tmp_path):
    d, f = corpus
    listing = tmp_path / "list.txt"
    listing.write_text(f"{f['c']}\n# comment\n{f['a']}\n")
    inputs = [f["a"], f["bad"], d / "s1", listing]
    cli = _cli_table(tmp_path, tiny_checkpoint, inputs, "--vad", "none")
    api = clf.predict_table(inputs, vad=None)
    _assert_same(cli, api)
    # every file once, the bad one with its error, the others with an age
    assert cli["path"].tolist() == [f["a"], f["bad"], f["b"], f["c"]]
    assert (cli["error"] != "").tolist() == [False, True, False, False]
    # whole-file rows: start 0, end NaT (audformat's filewise rows in a segmented index)
    assert (api.index.get_level_values("start") == pd.Timedelta(0)).all()
    assert api.index.get_level_values("end").isna().all()


def test_windows_with_segments(clf, corpus, tiny_checkpoint, tmp_path):
    _, f = corpus
    inputs = [f["long"], f["a"]]
    cli = _cli_table(tmp_path, tiny_checkpoint, inputs, "--vad", "none", "--segments",
                     "--max-whole", "2", "--window", "2")
    api = clf.predict_table(inputs, segments=True, vad=None, max_whole=2, window=2)
    _assert_same(cli, api)
    # 5 s in 2 s windows: 0-2, then 2-5 (a last window under 3 s joins the previous one)
    assert cli["start"].tolist()[:2] == ["0.000", "2.000"] and cli["end"].tolist()[:2] == [
        "2.000", "5.000"]


def test_segment_list_and_speakers(clf, corpus, tiny_checkpoint, tmp_path):
    _, f = corpus
    segments = tmp_path / "turns.csv"
    segments.write_text("path,start,end,speaker\n"
                        f"{f['long']},0,2,A\n{f['long']},2,3.5,B\n{f['long']},3.5,5,A\n")
    spk = tmp_path / "spk.csv"
    spk.write_text(f"path,speaker\n{f['a']},s1\n{f['b']},s1\n{f['c']},s2\n{f['long']},s2\n")
    inputs = [segments, f["a"], f["b"], f["c"]]
    for segs in (False, True):
        opts = ["--segments"] if segs else []
        cli = _cli_table(tmp_path, tiny_checkpoint, inputs, "--vad", "none",
                         "--speakers", spk, *opts)
        api = clf.predict_table(inputs, segments=segs, speakers=spk, vad=None)
        _assert_same(cli, api)
        assert set(cli["speaker"]) == {"", "A", "B", "s1", "s2"}


def test_precise_numbers_round_to_the_written_ones(clf, corpus):
    _, f = corpus
    rounded = clf.predict_table([f["a"], f["b"]], vad=None)
    precise = clf.predict_table([f["a"], f["b"]], vad=None, precise=True)
    assert np.allclose(precise["age"], rounded["age"], atol=0.005 + 1e-9)
    assert (precise["age"] != rounded["age"]).any()  # really unrounded
    assert np.allclose(precise[list(LABELS)], rounded[list(LABELS)], atol=5e-5 + 1e-9)


def test_file_rows_join_an_audformat_style_table(clf, corpus):
    """A filewise truth table (index ``file``) joins the file rows on ``file``."""
    _, f = corpus
    table = clf.predict_table([f["a"], f["c"]], vad=None)
    truth = pd.DataFrame({"age": [31.0, 52.0]},
                         index=pd.Index([f["a"], f["c"]], name="file"))
    joined = table.join(truth.add_suffix("_true"), on="file")
    assert joined["age_true"].tolist() == [31.0, 52.0]
    assert table.index.is_unique


def _speechocean_files(root, n=2):
    lines = (root / "test" / "wav.scp").read_text().splitlines()[:n]
    out = []
    for line in lines:
        _, rel = line.split(maxsplit=1)
        p = Path(rel)
        out.append(str(p if p.is_absolute() else root / p))
    return out


def test_real_speech_default_detector(clf, speechocean, tiny_checkpoint, tmp_path):
    files = _speechocean_files(speechocean)
    segments = tmp_path / "turns.csv"
    info = sf.info(files[0])
    half = round(info.duration / 2, 3)
    segments.write_text(f"path,start,end,speaker\n{files[0]},0,{half},A\n"
                        f"{files[0]},{half},{info.duration:.3f},B\n")
    spk = tmp_path / "utt2spk"
    spk.write_text("".join(f"{Path(p).stem} x\n" for p in files))
    inputs = [files[1], segments]  # one file whole, the other in two turns
    cli = _cli_table(tmp_path, tiny_checkpoint, inputs, "--segments", "--speakers", spk)
    api = clf.predict_table(inputs, segments=True, speakers=spk)
    _assert_same(cli, api)
    assert (cli["speech"][cli["path"] == files[1]].astype(float) > 0).all()


def test_docs_python_examples(clf, corpus, tmp_path):
    """docs/python.md's examples, on the tiny model and synthetic files."""
    d, f = corpus
    pred = clf.predict_file(f["a"], vad=None)
    probs = dict(zip(pred.labels, pred.gender_probs[0].tolist()))
    assert set(probs) == set(LABELS) and pred.to_records()[0]["gender"] == pred.gender[0]

    result = clf.analyse(f["long"], vad=None, max_whole=2, window=2)
    assert result.speech_spans is None and list(result.spans[0].windows) == [(0.0, 2.0),
                                                                        (2.0, 5.0)]
    result = clf.predict_segments(f["long"], [(0.0, 2.0, "A"), (2.0, 3.5, "B"),
                                              (3.5, 5.0, "A")], vad=None)
    assert [s.speaker for s in result.spans] == ["A", "B", "A"]
    assert set(result.speakers()) == {"A", "B"}
    pyannote = pytest.importorskip("pyannote.core")
    diarization = pyannote.Annotation()
    diarization[pyannote.Segment(0.0, 2.0)] = "A"
    diarization[pyannote.Segment(2.0, 5.0)] = "B"
    assert len(clf.predict_segments(f["long"], diarization, vad=None).spans) == 2

    spk = tmp_path / "utt2spk"
    spk.write_text("a s1\nb s1\nc s2\n")
    table = clf.predict_table([d / "s1", d / "s2"], speakers=spk, vad=None)
    end = table.index.get_level_values("end")  # as docs/python.md selects the kinds
    files = table[table["path"].notna() & table["speaker"].isna() & end.isna()]
    speakers = table[table["path"].isna()]
    assert files["path"].tolist() == [f["a"], f["b"], f["c"]]
    assert speakers["speaker"].tolist() == ["s1", "s2"]
    truth = pd.DataFrame({"age": [34, 61]}, index=pd.Index([f["a"], f["c"]], name="file"))
    joined = files.join(truth.add_suffix("_true"), on="file")
    mae = (joined["age"] - joined["age_true"]).abs().mean()
    assert mae == pytest.approx(np.mean([abs(files["age"].iloc[0] - 34),
                                         abs(files["age"].iloc[2] - 61)]))
