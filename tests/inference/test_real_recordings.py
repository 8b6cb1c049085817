"""Real recordings built from speechocean762 utterances: silence and noise do not pull a
file's result, files without speech get no answer, speaker turns are analysed exactly.

The model is the tiny random test model (its ages are arbitrary numbers, but the
arithmetic — what is pooled with what — is what these tests check); the speech detector is
the real default (Silero) or the energy fallback.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from reference import card_process

from agegender_sb import AgeGenderClassifier, NoSpeechError
from agegender_sb.cli import main

SR = 16000


SOURCE: list = []  # the tiny checkpoint's folder, for the command line


@pytest.fixture(scope="module")
def clf(tiny_checkpoint):
    SOURCE[:] = [tiny_checkpoint]
    return AgeGenderClassifier.from_hparams(source=tiny_checkpoint)


@pytest.fixture(scope="module")
def speakers(speechocean):
    """``{speaker: [utterance arrays]}`` for the first speakers of the train set."""
    root = speechocean / "train"
    paths = dict(line.split(maxsplit=1) for line in (root / "wav.scp").read_text().splitlines())
    out: dict = {}
    for line in (root / "utt2spk").read_text().splitlines():
        utt, spk = line.split()
        if len(out.get(spk, [])) < 4:
            path = Path(paths[utt])
            wav, rate = sf.read(str(path if path.is_absolute() else speechocean / path),
                                dtype="float32")
            assert rate == SR
            out.setdefault(spk, []).append(wav)
    return out


def _write(path, wav):
    sf.write(str(path), np.asarray(wav, dtype=np.float32), SR, subtype="FLOAT")
    return str(path)


@pytest.fixture(scope="module")
def sensitive(tmp_path_factory):
    """A test model whose age reacts strongly to what it hears (age head scaled x30): 40 s
    of silence move its age by several years, as the issue's test model did."""
    from reference import audeering_config, build_card_model, write_audeering_checkpoint

    card = build_card_model(audeering_config(), seed=0)
    with torch.no_grad():
        card.age.out_proj.weight.mul_(30)
    folder = write_audeering_checkpoint(card, audeering_config(),
                                        tmp_path_factory.mktemp("sensitive"))
    return AgeGenderClassifier.from_hparams(source=str(folder))


@pytest.mark.parametrize("filler", ["silence", "noise"])
def test_gaps_do_not_pull_the_files_age(tmp_path, sensitive, speakers, filler):
    """Each utterance followed by 10 s of silence (or faint noise, -60 dBFS): with the
    detector the file's age moves at most 25 % as far from the speech-only file's age as
    without it (measured over 8 speaker/model pairs: silence within 26 %, faint noise from
    -55 % to +39 %, see the closing notes; this speaker is a typical one)."""
    clf = sensitive
    rng = np.random.RandomState(0)
    utts = next(iter(speakers.values()))
    gap = (np.zeros(10 * SR) if filler == "silence" else
           1e-3 * rng.randn(10 * SR)).astype(np.float32)
    speech_only = _write(tmp_path / "speech.wav", np.concatenate(utts))
    gapped = _write(tmp_path / "gapped.wav", np.concatenate([x for u in utts for x in (u, gap)]))
    base = clf.predict_file(speech_only, vad=None).age.item()
    plain = clf.predict_file(gapped, vad=None).age.item()
    detected = clf.predict_file(gapped).age.item()
    assert abs(plain - base) > 1.0  # the gaps do pull the undetected analysis
    assert abs(detected - base) <= 0.25 * abs(plain - base)
    result = clf.analyse(gapped)
    assert result.speech < 0.8 * result.duration and result.speech_spans


@pytest.mark.parametrize("seconds", [5, 45])
@pytest.mark.parametrize("vad", ["silero", "energy"])
def test_no_speech_no_answer(tmp_path, clf, speakers, seconds, vad, capsys):
    rng = np.random.RandomState(1)
    n = seconds * SR
    files = {
        "silence": np.zeros(n),
        "dc": np.full(n, 0.3),
        "hiss": 1e-3 * rng.randn(n),
    }
    paths = [_write(tmp_path / f"{k}.wav", v) for k, v in files.items()]
    real = _write(tmp_path / "real.wav", next(iter(speakers.values()))[0])
    for path in paths:
        with pytest.raises(NoSpeechError, match="no speech detected"):
            clf.predict_file(path, vad=vad)
    out = tmp_path / "t.csv"
    assert main(["predict", *paths, real, "--source", SOURCE[0], "-o", str(out),
                 "--vad", vad]) == 0
    rows = {Path(r["path"]).stem: r for r in csv.DictReader(out.open())}
    for key in files:
        assert rows[key]["error"] == "no speech detected"
        assert rows[key]["age"] == "" and rows[key]["gender"] == ""
    assert rows["real"]["error"] == "" and rows["real"]["age"] != ""
    assert float(rows["real"]["speech"]) > 0.5


@pytest.fixture(scope="module")
def conversation(tmp_path_factory, speakers):
    """Two speakers taking turns with short pauses: the wav, its RTTM and its turns."""
    folder = tmp_path_factory.mktemp("conv")
    (a, ua), (b, ub) = list(speakers.items())[:2]
    pause = np.zeros(SR // 2, dtype=np.float32)
    parts, turns, t = [], [], 0.0
    for k in range(3):
        for spk, utts in ((a, ua), (b, ub)):
            wav = utts[k]
            turns.append((round(t, 3), round(t + len(wav) / SR, 3), spk))
            parts += [wav, pause]
            t += (len(wav) + len(pause)) / SR
    path = _write(folder / "meeting.wav", np.concatenate(parts))
    rttm = folder / "meeting.rttm"
    rttm.write_text("".join(f"SPEAKER meeting 1 {s:.3f} {e - s:.3f} <NA> <NA> {spk} <NA> <NA>\n"
                            for s, e, spk in turns))
    return path, rttm, turns


def test_turns_equal_the_reference_on_their_span(tmp_path, clf, tiny_card, conversation):
    card, _ = tiny_card
    path, rttm, turns = conversation
    wav, _ = sf.read(path, dtype="float32")
    out = tmp_path / "turns.csv"
    assert main(["predict", path, "--rttm", str(rttm), "--segments", "--source",
                 SOURCE[0], "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    turn_rows = [r for r in rows if r["start"]]
    assert len(turn_rows) == len(turns)
    for row, (s, e, spk) in zip(turn_rows, turns):
        ref = card_process(card, wav[round(s * SR):round(e * SR)])
        assert row["speaker"] == spk
        assert abs(float(row["age"]) - 100 * float(ref["age"])) < 0.05
    speaker_rows = {r["speaker"]: r for r in rows if r["speaker"] and not r["start"]}
    assert set(speaker_rows) == {spk for _, _, spk in turns}
    for spk, row in speaker_rows.items():
        ages = [float(r["age"]) for r in turn_rows if r["speaker"] == spk]
        assert min(ages) - 0.01 <= float(row["age"]) <= max(ages) + 0.01
    # the same turns as a CSV segment list give the same table
    seg = tmp_path / "segments.csv"
    with seg.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "start", "end", "speaker"])
        for s, e, spk in turns:
            w.writerow([path, s, e, spk])
    out2 = tmp_path / "turns2.csv"
    assert main(["predict", str(seg), "--segments", "--source", SOURCE[0],
                 "-o", str(out2)]) == 0
    assert list(csv.DictReader(out2.open())) == rows


def test_predict_segments_api_and_pyannote(clf, tiny_card, conversation):
    card, _ = tiny_card
    path, _, turns = conversation
    result = clf.predict_segments(path, turns)
    wav, _ = sf.read(path, dtype="float32")
    for span, (s, e, spk) in zip(result.spans, turns):
        ref = card_process(card, wav[round(s * SR):round(e * SR)])
        assert span.speaker == spk
        assert torch.allclose(span.prediction.embedding[0], ref["embedding"], atol=1e-5)
    pooled = result.speakers()
    assert set(pooled) == {spk for _, _, spk in turns}
    core = pytest.importorskip("pyannote.core")
    ann = core.Annotation()
    for s, e, spk in turns:
        ann[core.Segment(s, e)] = spk
    again = clf.predict_segments(path, ann)
    assert [x.speaker for x in again.spans] == [x.speaker for x in result.spans]
    assert torch.allclose(again.prediction.age, result.prediction.age)


def test_bad_turns_are_errors_not_losses(tmp_path, clf, conversation):
    path, _, turns = conversation
    duration = sf.info(path).duration
    bad = tmp_path / "bad.rttm"
    bad.write_text(f"SPEAKER meeting 1 {duration - 1:.3f} 5.000 <NA> <NA> x <NA> <NA>\n")
    out = tmp_path / "o.csv"
    assert main(["predict", path, "--rttm", str(bad), "--source", SOURCE[0],
                 "-o", str(out)]) == 1
    row = next(csv.DictReader(out.open()))
    assert "meeting.wav" in row["error"] and "end" in row["error"]
    other = tmp_path / "other.rttm"
    other.write_text("SPEAKER nosuchfile 1 0.000 1.000 <NA> <NA> x <NA> <NA>\n")
    assert main(["predict", path, "--rttm", str(other), "--source", SOURCE[0]]) == 2


def test_provenance_records_the_detector(tmp_path, clf, speakers):
    real = _write(tmp_path / "real.wav", next(iter(speakers.values()))[0])
    out = tmp_path / "t.csv"
    assert main(["predict", real, "--source", SOURCE[0], "-o", str(out)]) == 0
    record = json.loads((tmp_path / "t.csv.agegender.json").read_text())
    assert "SileroDetector" in record["analysis"]["detector"]
    assert main(["predict", real, "--source", SOURCE[0], "-o", str(out), "--resume",
                 "--vad", "energy"]) == 2
