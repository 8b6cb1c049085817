"""Channels-last CPU modules: same numbers as the plain modules and the model card's."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch
from reference import card_process
from tiny_encoders import encoder_pair, padded_batch

from agegender_sb import AgeGenderClassifier
from agegender_sb.backends.cpu_speed import (
    FastFeatureEncoder,
    FastFeedForward,
    FastPositionalConv,
    frame_products_faster,
    plain_torch_modules,
    use_fast_cpu_modules,
)
from agegender_sb.backends.fast_linear import OneDNNLinear
from agegender_sb.model import wav2vec2 as w2v


def test_encoder_uses_the_cpu_modules_and_keeps_its_state_dict():
    fast, plain = encoder_pair()
    m = fast.model
    assert type(m.feature_extractor) is FastFeatureEncoder
    assert type(m.encoder.pos_conv_embed) is FastPositionalConv
    assert all(type(layer.feed_forward) is FastFeedForward for layer in m.encoder.layers)
    assert type(plain.model.feature_extractor) is w2v.Wav2Vec2FeatureEncoder
    assert list(fast.state_dict()) == list(plain.state_dict())


def test_same_numbers_as_the_plain_modules_on_a_padded_batch():
    fast, plain = encoder_pair()
    wavs, lens = padded_batch()
    with torch.inference_mode():
        f_frames, f_mask = fast(wavs, lens)
        p_frames, p_mask = plain(wavs, lens)
        f_feat = fast.model.feature_extractor(wavs)
        p_feat = plain.model.feature_extractor(wavs)
    assert torch.equal(f_mask, p_mask)
    assert f_feat.shape == p_feat.shape
    assert (f_feat - p_feat).abs().max() < 1e-5
    assert (f_frames - p_frames).abs().max() < 1e-5


def test_cached_weight_norm_follows_weight_changes():
    fast, plain = encoder_pair()
    wavs, _ = padded_batch()
    with torch.inference_mode():
        fast(wavs)  # fills the caches
    torch.manual_seed(5)
    other, _ = encoder_pair(seed=5)
    fast.load_state_dict(other.state_dict())  # in-place copies: new versions
    plain.load_state_dict(other.state_dict())
    with torch.inference_mode():
        assert (fast(wavs)[0] - plain(wavs)[0]).abs().max() < 1e-5
    with torch.no_grad():  # a direct in-place edit of the weight-norm magnitude
        for mod in (fast, plain):
            pos = mod.model.encoder.pos_conv_embed.conv
            pos.parametrizations.weight.original0.mul_(1.5)
        assert (fast(wavs)[0] - plain(wavs)[0]).abs().max() < 1e-5


def test_training_takes_the_plain_path_with_the_same_gradients():
    fast, plain = encoder_pair(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                        feat_proj_dropout=0.0, layerdrop=0.0, apply_spec_augment=False)
    fast.train()
    plain.train()
    wavs, _ = padded_batch()
    fast(wavs)[0].square().mean().backward()
    plain(wavs)[0].square().mean().backward()
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        if b.grad is not None:
            assert (a.grad - b.grad).norm() <= 1e-5 * b.grad.norm() + 1e-9, name


def test_switching_back_restores_the_plain_classes():
    fast, _ = encoder_pair()
    plain_torch_modules(fast)  # what ONNX export calls
    assert not any(isinstance(m, OneDNNLinear) for m in fast.modules())
    assert type(fast.model.feature_extractor) is w2v.Wav2Vec2FeatureEncoder
    assert type(fast.model.encoder.pos_conv_embed) is w2v.Wav2Vec2PositionalConvEmbedding
    use_fast_cpu_modules(fast)
    assert type(fast.model.feature_extractor) is FastFeatureEncoder


def test_classifier_matches_the_model_card(tiny_card, tiny_checkpoint):
    card, _ = tiny_card
    clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    assert type(clf.mods.model.encoder.model.feature_extractor) is FastFeatureEncoder
    rng = np.random.default_rng(3)
    for n in (16000, 5321):
        signal = (0.1 * rng.standard_normal(n)).astype(np.float32)
        ref = card_process(card, signal)
        pred = clf.predict_batch(torch.from_numpy(signal))
        assert abs(float(pred.age_raw[0]) - float(ref["age"])) < 1e-5
        assert (pred.embedding[0] - ref["embedding"]).abs().max() < 1e-5
        assert (pred.gender_probs[0] - ref["gender_probs"]).abs().max() < 1e-5


def _ops(module, x) -> list[str]:
    """The names of the operators ``module(x)`` calls, in order."""
    with torch.inference_mode(), torch.profiler.profile() as prof:
        module(x)
    return [e.name for e in prof.events()]


def test_the_feature_encoder_as_products_over_frames_or_as_convolutions():
    fast, plain = encoder_pair()
    wavs, _ = padded_batch()
    enc = fast.model.feature_extractor
    with torch.inference_mode():
        ref = plain.model.feature_extractor(wavs)
        outs = {}
        for choice in (True, False, True):  # switched on the same instance, after a first call
            enc.frame_products = choice
            outs[choice] = enc(wavs)
            ops = _ops(enc, wavs)
            convolutions = sum(name == "aten::conv2d" for name in ops)
            assert convolutions == (0 if choice else 6), (choice, convolutions)
            assert (outs[choice] - ref).abs().max() < 1e-5
    assert (outs[True] - outs[False]).abs().max() < 1e-5


def test_each_layer_is_normalised_block_by_block():
    fast, plain = encoder_pair()
    wavs, _ = padded_batch()  # 12000 samples: 2399 frames after the first layer, 1199, 599...
    enc = fast.model.feature_extractor
    n = [2399, 1199, 599, 299, 149, 74, 37]  # frames after each layer

    def blocks(t, size):
        return -(-t // size)

    with torch.inference_mode():
        ref = plain.model.feature_extractor(wavs)
        for products in (True, False):
            enc.frame_products = products
            enc.first_block_frames, enc.block_frames = 256, 1024
            whole = enc(wavs)
            for first, block in ((256, 1024), (100, 50), (7, 3)):
                enc.first_block_frames, enc.block_frames = first, block
                norms = sum(name == "aten::layer_norm" for name in _ops(enc, wavs))
                if products:  # the first layer's frames computed where the second reads them
                    expected = 2 * blocks(n[1], block) + sum(blocks(t, block) for t in n[2:])
                else:  # the first layer in blocks of its own, the convolutions whole
                    expected = blocks(n[0], first) + len(n) - 1
                assert norms == expected, (products, first, block, norms)
                out = enc(wavs)
                assert (out - whole).abs().max() < 1e-6
                assert (out - ref).abs().max() < 1e-5


def test_products_over_frames_by_default_only_where_pytorch_runs_avx512():
    code = ("import torch\nfrom agegender_sb.backends.cpu_speed import frame_products_faster\n"
            "print(torch.backends.cpu.get_cpu_capability(), frame_products_faster())")

    def run(capability):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        return out[0], out[1] == "True"

    capability, chosen = run("avx2")  # at most AVX2 kernels (fewer on a CPU without them)
    assert capability != "AVX512" and not chosen
    capability, chosen = run("avx512")  # falls back to AVX2 on a CPU without AVX-512
    assert chosen == (capability == "AVX512")
    fast, _ = encoder_pair()
    enc = fast.model.feature_extractor
    assert enc.frame_products is None
    wavs, _ = padded_batch()
    convolutions = sum(name == "aten::conv2d" for name in _ops(enc, wavs))
    assert convolutions == (0 if frame_products_faster() else 6)
