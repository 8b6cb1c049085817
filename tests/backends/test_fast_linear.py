"""oneDNN Linear for CPU inference: same numbers as nn.Linear, and only where it applies."""

from __future__ import annotations

import shutil

import pytest
import torch

from agegender_sb.backends.fast_linear import (
    OneDNNLinear,
    onednn_available,
    unpack_linear_weights,
    use_onednn_linear,
)
from agegender_sb.model.encoder import Wav2Vec2Encoder


def _pair(seed=0):
    torch.manual_seed(seed)
    plain = torch.nn.Linear(64, 96)
    fast = use_onednn_linear(torch.nn.Sequential(torch.nn.Linear(64, 96)))[0]
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def test_same_numbers_in_inference():
    plain, fast = _pair()
    x = torch.randn(3, 50, 64)
    with torch.inference_mode():
        assert fast._fast(x) == onednn_available()
        assert torch.allclose(fast(x), plain(x), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")
def test_fast_path_is_taken_on_this_machine():
    _, fast = _pair()
    with torch.no_grad():
        assert fast._fast(torch.randn(2, 64))
    assert not fast._fast(torch.randn(2, 64, dtype=torch.float64))
    container = torch.nn.Sequential(fast)
    use_onednn_linear(container, enabled=False)
    assert type(container[0]) is torch.nn.Linear


def test_training_and_autocast_take_the_usual_path():
    plain, fast = _pair(1)
    x = torch.randn(4, 64)
    assert not fast._fast(x)  # grad enabled and weight requires grad
    fast(x).sum().backward()
    plain(x).sum().backward()
    assert torch.allclose(fast.weight.grad, plain.weight.grad)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fast._fast(x)
        assert fast(x).dtype == torch.bfloat16


def test_encoder_uses_it_and_keeps_its_state_dict_keys():
    kwargs = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=37, conv_dim=[16] * 7, num_conv_pos_embeddings=16,
                  num_conv_pos_embedding_groups=2)
    fast = Wav2Vec2Encoder(kwargs).eval()
    plain = Wav2Vec2Encoder(kwargs, onednn_linear=False).eval()
    assert any(isinstance(m, OneDNNLinear) for m in fast.modules())
    assert not any(isinstance(m, OneDNNLinear) for m in plain.modules())
    assert list(fast.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 8000)
    with torch.inference_mode():
        assert torch.allclose(fast(x)[0], plain(x)[0], atol=1e-5)


# ------------------------------------------------------------- packed weights
needs_onednn = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


def _frozen_pair(seed=0):
    """A frozen oneDNN Linear (as in the inference classifier) and a copy of its weight."""
    _, fast = _pair(seed)
    fast.requires_grad_(False)
    return fast, fast.weight.detach().clone()


@needs_onednn
def test_packed_weight_gives_the_same_products_bit_for_bit():
    fast, weight = _frozen_pair()
    param = fast.weight
    inputs = [torch.randn(2, 64), torch.randn(7, 64), torch.randn(3, 50, 64),
              torch.randn(1, 299, 64)]
    with torch.inference_mode():
        before = [fast(x) for x in inputs]  # oneDNN with the plain weight
        assert fast.pack() and fast.packed
        after = [fast(x) for x in inputs]
    assert fast.weight is param and fast.weight.is_mkldnn  # the same Parameter, repacked
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(fast.weight.to_dense(), weight)


@needs_onednn
def test_only_frozen_cpu_float32_weights_are_packed():
    fast, _ = _frozen_pair()
    fast.requires_grad_(True)
    assert not fast.pack()
    fast.requires_grad_(False)
    fast.double()
    assert not fast.pack() and not fast.packed


@needs_onednn
def test_packed_layer_shows_plain_weights_to_state_dict_loading_and_copies():
    import copy
    import io

    fast, weight = _frozen_pair(1)
    fast.pack()
    state = fast.state_dict()
    assert state["weight"].layout == torch.strided and torch.equal(state["weight"], weight)
    assert torch.equal(copy.deepcopy(fast).weight, weight)
    buffer = io.BytesIO()
    torch.save(fast, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False).weight, weight)
    new = {"weight": torch.randn_like(weight), "bias": torch.randn(96)}
    fast.load_state_dict(new)
    assert fast.packed  # loaded, and packed again
    assert torch.equal(fast.state_dict()["weight"], new["weight"])


@needs_onednn
def test_packed_layer_unpacks_exactly_for_everything_else():
    fast, weight = _frozen_pair(2)
    plain = torch.nn.Linear(64, 96)
    plain.load_state_dict(fast.state_dict())
    param = fast.weight
    fast.pack()
    fast.to("cpu")
    assert fast.packed  # still a CPU float32 weight
    fast.requires_grad_(True)  # fine-tuning a loaded classifier: same Parameter object
    optimiser = torch.optim.SGD(fast.parameters(), lr=0.1)
    x = torch.randn(4, 64)
    fast(x).sum().backward()
    plain(x).sum().backward()
    assert not fast.packed and fast.weight is param
    assert torch.allclose(param.grad, plain.weight.grad)
    optimiser.step()
    assert not torch.equal(param.detach(), weight)  # the optimiser updated the live weight
    fast.requires_grad_(False)
    fast.load_state_dict({"weight": weight, "bias": plain.bias.detach()})
    assert fast.pack()
    fast.double()
    assert not fast.packed and torch.equal(fast.weight, weight.double())
    container = torch.nn.Sequential(fast.float())
    fast.pack()
    use_onednn_linear(container, enabled=False)
    assert type(container[0]) is torch.nn.Linear and torch.equal(container[0].weight, weight)


_ONE_COPY_SCRIPT = """
import gc, os, sys
import torch
from agegender_sb.backends.fast_linear import (
    pack_linear_weights, unpack_linear_weights, use_onednn_linear)

def rss():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

model = torch.nn.Sequential(*[torch.nn.Linear(1024, 4096) for _ in range(16)])
use_onednn_linear(model).requires_grad_(False)
start = rss()
n = pack_linear_weights(model)
packed = rss()
assert all(m.packed for m in model)
unpack_linear_weights(model)
print(n, packed - start, rss() - start)
"""


@needs_onednn
def test_packing_holds_one_copy_of_the_weights():
    """Resident memory after packing 256 MB of weights (and after unpacking them) grows by
    far less than a copy; measured in a fresh process, whose allocator state is known."""
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/statm").exists():
        pytest.skip("no /proc/self/statm")
    out = subprocess.run([sys.executable, "-c", _ONE_COPY_SCRIPT], capture_output=True,
                         text=True, check=True, timeout=300).stdout.split()
    layers, after_pack, after_unpack = (int(v) for v in out[-3:])
    weights = 16 * 4096 * 1024 * 4
    assert layers == 16
    assert after_pack < 0.25 * weights, f"{after_pack / 2**20:.0f} MB more after packing"
    # unpacking frees blocks from glibc's heap, which fragments (about a third of the
    # weights measured); two copies would be the whole 256 MB
    assert after_unpack < 0.6 * weights, f"{after_unpack / 2**20:.0f} MB more after unpacking"


@needs_onednn
def test_classifier_packs_its_weights_and_computes_the_same(tiny_checkpoint):
    from agegender_sb import AgeGenderClassifier
    from agegender_sb.loading.checkpoint import fingerprint

    clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    layers = [m for m in clf.mods.model.modules() if isinstance(m, OneDNNLinear)]
    assert layers and all(m.packed for m in layers)
    wavs = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    lens = torch.tensor([1.0, 0.7])
    packed = clf.predict_batch(wavs, lens)
    assert fingerprint({"model": clf.mods.model}, clf.labels) == clf.fingerprint
    assert unpack_linear_weights(clf.mods.model) == layers
    plain = clf.predict_batch(wavs, lens)
    assert fingerprint({"model": clf.mods.model}, clf.labels) == clf.fingerprint
    for name in ("age_raw", "gender_logits", "embedding"):
        assert torch.equal(getattr(packed, name), getattr(plain, name)), name
    for kwargs in ({"pack_weights": False}, {"run_opts": {"precision": "bf16"}}):
        kept = AgeGenderClassifier.from_hparams(source=tiny_checkpoint, **kwargs)
        assert not any(m.packed for m in kept.mods.model.modules()
                       if isinstance(m, OneDNNLinear)), kwargs


@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                    reason="torch.compile's CPU code generation needs a C++ compiler")
def test_torch_compile_runs_the_classifiers_model(tiny_checkpoint):
    """``torch.compile`` traces the plain ``F.linear`` (inductor cannot lower oneDNN's
    operator with a weight that is not a graph constant); a packed weight is unpacked on the
    compiled model's first call. Same numbers as eager within 1e-5."""
    from agegender_sb import AgeGenderClassifier

    clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    model = clf.mods.model
    wav = torch.randn(1, 16000, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        eager = model(wav)
        compiled = torch.compile(model)(wav)
    torch._dynamo.reset()
    for a, b in zip(eager, compiled, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
