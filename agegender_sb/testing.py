"""Random checkpoints in audEERING's published layout, for offline tries and pipeline tests.

As transformers users test with tiny random models, :func:`write_checkpoint` writes a folder
that loads like ``audeering/wav2vec2-large-robust-24-ft-age-gender`` -- ``config.json``
(the published fields, ``id2label`` female/male/child), ``model.safetensors`` (the published
tensor names, weight norm as ``weight_g``/``weight_v``) and ``preprocessor_config.json`` --
with random weights. Its numbers mean nothing; everything else (loading, the command line,
tables, speaker pooling, ONNX export) runs as with the real model, without the hub.

Example
-------
>>> from agegender_sb import AgeGenderClassifier
>>> folder = write_checkpoint(getfixture("tmp_path") / "tiny", size="tiny")
>>> sorted(p.name for p in folder.iterdir())
['config.json', 'model.safetensors', 'preprocessor_config.json']
>>> AgeGenderClassifier.from_hparams(source=folder).labels
('female', 'male', 'child')

From a shell: ``python -m agegender_sb.testing FOLDER [--size tiny|small|full] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

__all__ = ["SIZES", "PREPROCESSOR_CONFIG", "published_config", "write_checkpoint"]

SIZES = {
    # 2 layers, hidden 32: ~29k parameters, 0.1 MB; loads and runs in milliseconds.
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=37, conv_dim=16, num_conv_pos_embeddings=16,
                 num_conv_pos_embedding_groups=2),
    # 4 layers, hidden 128: ~1.0M parameters, 4 MB; still fast, closer in shape.
    "small": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=512, conv_dim=64, num_conv_pos_embeddings=32,
                  num_conv_pos_embedding_groups=4),
    # The published 24-layer model's sizes: ~317M parameters, 1.27 GB (for speed tests).
    "full": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                 intermediate_size=4096, conv_dim=512, num_conv_pos_embeddings=128,
                 num_conv_pos_embedding_groups=16),
}
"""Sizes :func:`write_checkpoint` knows, as :func:`published_config` arguments."""

PREPROCESSOR_CONFIG = {
    "do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1, "padding_side": "right", "padding_value": 0.0,
    "return_attention_mask": True, "sampling_rate": 16000,
}
"""``preprocessor_config.json`` as audEERING publish it."""


def published_config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096, conv_dim=512, num_conv_pos_embeddings=128,
                     num_conv_pos_embedding_groups=16) -> dict:
    """``config.json`` with the published model's fields; the sizes given replace its own.

    >>> cfg = published_config()
    >>> cfg["hidden_size"], cfg["num_hidden_layers"], cfg["id2label"]
    (1024, 24, {'0': 'female', '1': 'male', '2': 'child'})
    """
    return {
        "_name_or_path": "facebook/wav2vec2-large-robust",
        "activation_dropout": 0.1, "apply_spec_augment": True, "architectures": ["Model"],
        "attention_dropout": 0.1, "bos_token_id": 1, "codevector_dim": 768,
        "contrastive_logits_temperature": 0.1, "conv_bias": True,
        "conv_dim": [conv_dim] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "conv_stride": [5, 2, 2, 2, 2, 2, 2], "ctc_loss_reduction": "sum",
        "ctc_zero_infinity": False, "diversity_loss_weight": 0.1,
        "do_stable_layer_norm": True, "eos_token_id": 2, "feat_extract_activation": "gelu",
        "feat_extract_dropout": 0.0, "feat_extract_norm": "layer", "feat_proj_dropout": 0.1,
        "feat_quantizer_dropout": 0.0, "final_dropout": 0.1, "finetuning_task": "age-gender",
        "gradient_checkpointing": False, "hidden_act": "gelu", "hidden_dropout": 0.1,
        "hidden_dropout_prob": 0.1, "hidden_size": hidden_size,
        "id2label": {"0": "female", "1": "male", "2": "child"},
        "initializer_range": 0.02, "intermediate_size": intermediate_size,
        "label2id": {"child": 2, "female": 0, "male": 1}, "layer_norm_eps": 1e-05,
        "layerdrop": 0.1, "mask_feature_length": 10, "mask_feature_prob": 0.0,
        "mask_time_length": 10, "mask_time_prob": 0.05, "model_type": "wav2vec2",
        "num_adapter_layers": 3, "num_attention_heads": num_attention_heads,
        "num_codevector_groups": 2, "num_codevectors_per_group": 320,
        "num_conv_pos_embedding_groups": num_conv_pos_embedding_groups,
        "num_conv_pos_embeddings": num_conv_pos_embeddings, "num_feat_extract_layers": 7,
        "num_hidden_layers": num_hidden_layers, "num_negatives": 100, "pad_token_id": 0,
        "proj_codevector_dim": 768, "torch_dtype": "float32",
        "transformers_version": "4.17.0.dev0", "use_weighted_layer_sum": False,
        "vocab_size": 32,
    }


def _random_state(config: dict, seed: int) -> dict:
    """Tensors of a random model under the published names (``wav2vec2.*``, ``age.*``,
    ``gender.*``; ``weight_g``/``weight_v``), drawn from ``seed`` without touching the
    caller's random state."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = Wav2Vec2Model(Wav2Vec2Config(**config))
        state = {f"wav2vec2.{k}": v for k, v in encoder.state_dict().items()}
        hidden = config["hidden_size"]
        for head, outputs in (("age", 1), ("gender", len(config["id2label"]))):
            for name, shape in (("dense", (hidden, hidden)), ("out_proj", (outputs, hidden))):
                layer = torch.nn.Linear(shape[1], shape[0])
                state[f"{head}.{name}.weight"] = layer.weight
                state[f"{head}.{name}.bias"] = layer.bias
        out = {}
        for key, value in state.items():
            value = value.detach().clone()
            if value.dim() == 1:  # zero biases and unit norms would hide mistakes
                value += 0.05 * torch.randn_like(value)
            key = key.replace("parametrizations.weight.original0", "weight_g")
            key = key.replace("parametrizations.weight.original1", "weight_v")
            out[key] = value.contiguous()
    return out


def write_checkpoint(folder: str | os.PathLike, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random checkpoint in audEERING's published layout; return the folder.

    Parameters
    ----------
    folder : str or PathLike
        Created if needed; its ``config.json``, ``model.safetensors`` and
        ``preprocessor_config.json`` are overwritten.
    size : {"tiny", "small", "full"}
        See :data:`SIZES`; ``"full"`` has the published model's shapes (1.27 GB).
    seed : int
        The same seed writes the same tensors (on one torch version).

    Load it with ``AgeGenderClassifier.from_hparams(source=folder)`` or
    ``agegender predict FILE --source folder``.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    from safetensors.torch import save_file

    config = published_config(**SIZES[size])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = _random_state(config, int(seed))
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "preprocessor_config.json").write_text(
        json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agegender_sb.testing",
        description="Write a random checkpoint in audEERING's published layout.")
    parser.add_argument("folder")
    parser.add_argument("--size", choices=tuple(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_checkpoint(args.folder, args.size, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
