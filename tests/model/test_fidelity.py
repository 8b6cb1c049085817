"""Our forward path against the model card's reference implementation (fp32, CPU).

Tolerance: 1e-5 absolute on the age output, the gender logits and probabilities and the
pooled embedding (the code reaches about 2e-6 on these tiny models), for single signals,
padded batches, low-amplitude signals (where the normalisation's epsilon matters), files,
and the 24- and 6-layer shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from reference import audeering_config, build_card_model, card_process, write_audeering_checkpoint

from agegender_sb import AgeGenderClassifier

TOL = 1e-5


def _signals(seed=0, lengths=(16000, 7321, 24000, 400, 12000)):
    """Test signals; the last is very quiet (std ~ 3e-4, variance ~ 1e-7, the epsilon's
    size), so that an epsilon other than 1e-7 moves it."""
    rng = np.random.RandomState(seed)
    out = []
    for k, n in enumerate(lengths):
        t = np.arange(n) / 16000
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(80, 300) * t) + 0.05 * rng.randn(n) + 0.01
        if k == 4:
            x = x * 1e-3
        out.append(x.astype(np.float32))
    return out


def assert_matches_reference(pred, i, ref):
    assert abs(float(pred.age_raw[i]) - float(ref["age"])) < TOL
    assert abs(float(pred.age[i]) - 100 * float(ref["age"])) < 100 * TOL
    assert torch.allclose(pred.gender_logits[i], ref["gender_logits"], atol=TOL, rtol=0)
    assert torch.allclose(pred.gender_probs[i], ref["gender_probs"], atol=TOL, rtol=0)
    assert torch.allclose(pred.embedding[i], ref["embedding"], atol=TOL, rtol=0)


@pytest.mark.parametrize("layers", [24, 6])
def test_single_and_padded_batch_match_reference(tmp_path, layers):
    config = audeering_config(num_hidden_layers=layers)
    card = build_card_model(config, seed=layers)
    clf = AgeGenderClassifier.from_hparams(source=str(write_audeering_checkpoint(card, config,
                                                                                 tmp_path)))
    assert len(clf.mods.model.encoder.model.encoder.layers) == layers
    signals = _signals(seed=layers)
    refs = [card_process(card, x) for x in signals]
    # one at a time
    for x, ref in zip(signals, refs):
        assert_matches_reference(clf.predict_batch(torch.from_numpy(x)), 0, ref)
    # one padded batch, lengths as SpeechBrain's relative lengths
    longest = max(len(x) for x in signals)
    wavs = torch.zeros(len(signals), longest)
    for i, x in enumerate(signals):
        wavs[i, : len(x)] = torch.from_numpy(x)
    lens = torch.tensor([len(x) / longest for x in signals])
    pred = clf.predict_batch(wavs, lens)
    for i, ref in enumerate(refs):
        assert_matches_reference(pred, i, ref)
    # the SpeechBrain contract on the same batch
    probs, score, index, labels = clf.classify_batch(wavs, lens)
    assert torch.allclose(probs, pred.gender_probs)
    assert torch.equal(index, pred.gender_probs.argmax(-1))
    assert torch.allclose(score, pred.gender_probs.max(-1).values)
    assert labels == [clf.labels[i] for i in index.tolist()]
    emb = clf.encode_batch(wavs, lens)
    assert emb.shape == (len(signals), 1, config["hidden_size"])
    for i, ref in enumerate(refs):
        assert torch.allclose(emb[i, 0], ref["embedding"], atol=TOL, rtol=0)


def test_padding_changes_the_unmasked_reference_but_not_us(tiny_card, tiny_checkpoint):
    """The card's code has no mask: zero padding shifts its output. Ours must not move."""
    card, _ = tiny_card
    clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    x = _signals(lengths=(8000,))[0]
    padded = np.concatenate([x, np.zeros(8000, np.float32)])
    ref, ref_padded = card_process(card, x), card_process(card, padded)
    assert not torch.allclose(ref["embedding"], ref_padded["embedding"], atol=TOL)
    wavs = torch.from_numpy(np.stack([padded, padded]))
    wavs[1] = torch.randn(16000)  # a genuinely longer neighbour
    pred = clf.predict_batch(wavs, torch.tensor([0.5, 1.0]))
    assert_matches_reference(pred, 0, ref)


def test_forward_is_classify_batch(tiny_checkpoint):
    clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    x = torch.from_numpy(_signals(lengths=(6000,))[0])
    a, b = clf(x), clf.classify_batch(x)
    assert torch.equal(a[0], b[0]) and a[3] == b[3]


def test_files_match_reference(tmp_path, tiny_card, tiny_checkpoint):
    """16-bit PCM file: soundfile's int→float scaling, then the reference on the same samples."""
    card, _ = tiny_card
    clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    x = _signals(lengths=(20000,))[0]
    path = tmp_path / "a.wav"
    sf.write(path, x, 16000, subtype="PCM_16")
    samples, _ = sf.read(path, dtype="float32")
    ref = card_process(card, samples)
    assert_matches_reference(clf.predict_file(path, vad=None), 0, ref)
    probs, _, _, labels = clf.classify_file(str(path), vad=None)
    assert torch.allclose(probs[0], ref["gender_probs"], atol=TOL)
    assert labels == [("female", "male", "child")[int(ref["gender_probs"].argmax())]]


def test_real_speech_matches_reference(speechocean, tiny_card, tiny_checkpoint):
    """Real 16 kHz recordings, one at a time and as one padded batch."""
    card, _ = tiny_card
    clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    lines = (speechocean / "test" / "wav.scp").read_text().split("\n")[:6]
    paths = [speechocean / line.split()[1] for line in lines if line.strip()]
    signals = [sf.read(p, dtype="float32")[0] for p in paths]
    refs = [card_process(card, x) for x in signals]
    for p, ref in zip(paths, refs):
        assert_matches_reference(clf.predict_file(p), 0, ref)
    longest = max(len(x) for x in signals)
    wavs = torch.zeros(len(signals), longest)
    for i, x in enumerate(signals):
        wavs[i, : len(x)] = torch.from_numpy(x)
    pred = clf.predict_batch(wavs, torch.tensor([len(x) / longest for x in signals]))
    for i, ref in enumerate(refs):
        assert_matches_reference(pred, i, ref)


def test_resampled_and_stereo_file(tmp_path, tiny_card, tiny_checkpoint):
    """A 44.1 kHz stereo file equals the reference on the mean of its channels resampled."""
    import torchaudio

    card, _ = tiny_card
    clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    rng = np.random.RandomState(3)
    stereo = (0.1 * rng.randn(44100, 2)).astype(np.float32)
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo, 44100, subtype="PCM_24")
    data, _ = sf.read(path, dtype="float32")
    mono = torch.from_numpy(data).mean(dim=1)
    resampled = torchaudio.functional.resample(mono, 44100, 16000).numpy()
    assert abs(len(resampled) - 16000) <= 1
    assert_matches_reference(clf.predict_file(path, vad=None), 0, card_process(card, resampled))


def test_bf16_autocast_option(tiny_checkpoint):
    """SpeechBrain's ``precision`` run option autocasts the encoder; outputs stay float32 and
    close to fp32 (bf16 keeps ~3 significant digits: tolerance 2e-2 here, not 1e-4)."""
    fp32 = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    bf16 = AgeGenderClassifier.from_hparams(source=tiny_checkpoint,
                                            run_opts={"precision": "bf16"})
    wavs = torch.from_numpy(np.stack(_signals(lengths=(16000, 16000))))
    lens = torch.tensor([1.0, 0.6])
    a, b = fp32.predict_batch(wavs, lens), bf16.predict_batch(wavs, lens)
    assert b.age_raw.dtype == torch.float32 and torch.isfinite(b.embedding).all()
    assert not torch.equal(a.embedding, b.embedding)  # autocast really ran
    assert torch.allclose(a.age_raw, b.age_raw, atol=2e-2)
    assert torch.allclose(a.gender_probs, b.gender_probs, atol=2e-2)
    # close to fp32, and much closer than a broken output would be: an all-zero embedding
    # is max|a| away, the other input's result is their difference away
    err = (a.embedding - b.embedding).abs().max()
    assert err < 0.1 * a.embedding.abs().max()
    assert err < 0.1 * (a.embedding[0] - a.embedding[1]).abs().max()

