"""The model card's reference implementation, and tiny checkpoints in audEERING's exact layout.

``CardModel`` is the code published on the model card of
``audeering/wav2vec2-large-robust-24-ft-age-gender``, unchanged except ``post_init()`` in place
of ``init_weights()`` (which breaks under transformers 5). Inputs go through transformers'
``Wav2Vec2FeatureExtractor`` as on the card. Tests compare our package against it; the
benchmarks time it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2PreTrainedModel

LABELS = ("female", "male", "child")


class ModelHead(torch.nn.Module):
    """Classification head (model card)."""

    def __init__(self, config, num_labels):
        super().__init__()
        self.dense = torch.nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = torch.nn.Dropout(config.final_dropout)
        self.out_proj = torch.nn.Linear(config.hidden_size, num_labels)

    def forward(self, features, **kwargs):
        x = features
        x = self.dropout(x)
        x = self.dense(x)
        x = torch.tanh(x)
        x = self.dropout(x)
        x = self.out_proj(x)
        return x


class CardModel(Wav2Vec2PreTrainedModel):
    """Speech emotion classifier (model card's ``AgeGenderModel``)."""

    def __init__(self, config):
        super().__init__(config)
        self.config = config
        self.wav2vec2 = Wav2Vec2Model(config)
        self.age = ModelHead(config, 1)
        self.gender = ModelHead(config, 3)
        self.post_init()

    def forward(self, input_values):
        outputs = self.wav2vec2(input_values)
        hidden_states = outputs[0]
        hidden_states = torch.mean(hidden_states, dim=1)
        logits_age = self.age(hidden_states)
        logits_gender = torch.softmax(self.gender(hidden_states), dim=1)
        return hidden_states, logits_age, logits_gender


def card_gender_logits(model: CardModel, input_values: torch.Tensor) -> torch.Tensor:
    """The card's gender head before its softmax (the card returns probabilities only)."""
    hidden = torch.mean(model.wav2vec2(input_values)[0], dim=1)
    return model.gender(hidden)


def card_process(model: CardModel, signal: np.ndarray, sampling_rate: int = 16000) -> dict:
    """The card's ``process_func`` for one signal: feature extractor → model, fp32, no mask."""
    processor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
        return_attention_mask=True,
    )
    y = processor(signal, sampling_rate=sampling_rate)["input_values"][0]
    y = torch.from_numpy(np.asarray(y, dtype=np.float32).reshape(1, -1))
    with torch.no_grad():
        hidden, age, probs = model(y)
        logits = card_gender_logits(model, y)
    return {"embedding": hidden[0], "age": age[0, 0], "gender_probs": probs[0],
            "gender_logits": logits[0]}


def audeering_config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=37, conv_dim=16, num_conv_pos_embeddings=16,
                     num_conv_pos_embedding_groups=2) -> dict:
    """A config.json shaped like audEERING's published one (sizes shrunk for tests)."""
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


PREPROCESSOR_CONFIG = {
    "do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1, "padding_side": "right", "padding_value": 0.0,
    "return_attention_mask": True, "sampling_rate": 16000,
}


def build_card_model(config: dict, seed: int = 0) -> CardModel:
    """The reference model with random weights (post_init), heads perturbed so they matter."""
    torch.manual_seed(seed)
    model = CardModel(Wav2Vec2Config(**config)).eval()
    with torch.no_grad():  # post_init zeroes biases; random ones make the test stricter
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.05)
    return model


def legacy_weight_norm_keys(state_dict: dict) -> dict:
    """Rename ``parametrizations.weight.original0/1`` → ``weight_g/weight_v`` (published files)."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        out[key] = value
    return out


def write_audeering_checkpoint(model: CardModel, config: dict, folder, formats=("safetensors",),
                               legacy_weight_norm: bool = True) -> Path:
    """Write ``config.json``, weights and ``preprocessor_config.json`` as audEERING publish them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if legacy_weight_norm:
        state = legacy_weight_norm_keys(state)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2))
    if "safetensors" in formats:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if "bin" in formats:
        torch.save(state, folder / "pytorch_model.bin")
    return folder
