#!/usr/bin/env python3
"""Fine-tune the wav2vec2 age/gender model on manifests made by ``recipes/prepare.py``.

Usage::

    python recipes/train.py hparams/train.yaml --init_from SRC \\
        --train_csv train.csv --valid_csv valid.csv --test_csv test.csv \\
        --output_folder DIR [--freeze encoder] [--number_of_epochs 5] [...]

    torchrun --nproc_per_node 2 recipes/train.py hparams/train.yaml ... [--distributed_backend gloo]

``--init_from`` is anything ``AgeGenderClassifier.from_hparams`` loads (an audEERING-layout
checkpoint id or folder, a SpeechBrain model folder) or a plain wav2vec2 checkpoint without
heads (e.g. ``facebook/wav2vec2-large-robust``), whose heads then start from random.

Outputs in ``--output_folder``: ``train_log.txt`` (per-epoch metrics), ``log.txt``, ``save/``
(checkpoints; a killed run started again with the same command resumes from the latest),
``results.json``, ``test_predictions.csv``, ``confusion_matrix.png``, ``age_scatter.png`` and
``model/`` (the best checkpoint as a SpeechBrain model folder for
``AgeGenderClassifier.from_hparams``). See ``recipes/README.md``, section "Training".
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import speechbrain as sb
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from speechbrain.utils.distributed import if_main_process, run_on_main

from agegender_sb.audio import MIN_SAMPLES, AudioError, soundfile_call, to_mono_16k
from agegender_sb.checkpoint import (
    ARCH_FIELDS,
    SETTING_FIELDS,
    CheckpointError,
    find_weights_file,
    hparams_from_config,
    labels_from_config,
    load_state_dict_file,
    load_strict,
    load_wav2vec2_encoder,
    read_config,
    save_model_folder,
    split_audeering_state_dict,
)

logger = logging.getLogger("agegender_sb.train")

#: Metrics a checkpoint can be selected by, and whether lower is better.
BEST_METRICS = {"loss": "min", "mae": "min", "acc": "max", "uar": "max"}


# ============================================================================ init source
class _TolerantLoader(yaml.SafeLoader):
    """Reads hyperpyyaml override text; tagged values (``!name:...``) become strings."""


_TolerantLoader.add_multi_constructor(
    "!", lambda loader, suffix, node: f"!{suffix} {getattr(node, 'value', '')}"
)


@dataclass
class InitSource:
    """What ``--init_from`` points at, resolved to local files.

    Attributes
    ----------
    kind : str
        ``"audeering"``, ``"speechbrain"`` or ``"wav2vec2"`` (plain, no heads).
    folder : Path
        Local folder holding the files.
    hparams : dict
        Architecture (and, except for plain wav2vec2, ``gender_labels``) overrides.
    config : dict or None
        The source's ``config.json`` (kept next to the exported model).
    """

    kind: str
    folder: Path
    hparams: dict = field(default_factory=dict)
    config: dict | None = None

    def load_weights(self, hparams: dict) -> None:
        """Load the source's tensors into the freshly built modules, strictly."""
        if self.kind == "speechbrain":
            for name in ("encoder", "age_head", "gender_head"):
                path = self.folder / f"{name}.ckpt"
                load_strict(hparams[name], load_state_dict_file(path), str(path))
            return
        weights = find_weights_file(self.folder)
        state = load_state_dict_file(weights)
        if self.kind == "audeering":
            for name, part in split_audeering_state_dict(state, str(weights)).items():
                load_strict(hparams[name], part, f"{weights} ({name})")
        else:
            load_wav2vec2_encoder(hparams["encoder"], state, str(weights))
            logger.info("%s: plain wav2vec2 encoder loaded; heads start from random", weights)


def _fetch_init_files(source: str, savedir: str) -> Path:
    """A local folder with the source's files (hub ids are fetched into ``savedir``)."""
    if Path(source).is_dir():
        return Path(source)
    from speechbrain.utils.fetching import FetchConfig, LocalStrategy, fetch

    from agegender_sb.interface import _fetch_weights, _source_layout

    config, strategy = FetchConfig(), LocalStrategy.SYMLINK
    layout = _source_layout(source, savedir, config, strategy)
    if layout == "speechbrain":
        for name in ("hyperparams.yaml", "encoder.ckpt", "age_head.ckpt", "gender_head.ckpt"):
            fetch(name, source, savedir=savedir)
    else:
        fetch("config.json", source, savedir=savedir)
        _fetch_weights(source, savedir, config, strategy)
    return Path(savedir)


def _speechbrain_folder_hparams(path: Path) -> dict:
    """Architecture keys and labels of a SpeechBrain model folder's ``hyperparams.yaml``.

    Read as plain YAML (tags become strings), so that no module is built; only plain
    values of the architecture keys, ``gender_labels`` and ``norm_eps`` are kept.
    """
    loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_TolerantLoader) or {}
    keys = (*ARCH_FIELDS, "gender_labels", "norm_eps")
    out = {k: loaded[k] for k in keys if k in loaded}
    tagged = [k for k, v in out.items() if isinstance(v, str) and v.startswith("!")]
    if tagged:
        raise CheckpointError(f"{path}: expected plain values for {', '.join(tagged)}")
    return out


def resolve_init_source(source: str, savedir: str) -> InitSource:
    """Find out what ``source`` is and which hyperparameters it implies.

    Parameters
    ----------
    source : str
        Local folder or hub id.
    savedir : str
        Where hub files are fetched to (on the main process first, see :func:`main`).

    Raises
    ------
    CheckpointError, FileNotFoundError
        If the source is none of the accepted layouts.
    """
    folder = _fetch_init_files(str(source), savedir)
    if (folder / "hyperparams.yaml").is_file():
        hp = _speechbrain_folder_hparams(folder / "hyperparams.yaml")
        config = None
        if (folder / "config.json").is_file():
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return InitSource("speechbrain", folder, hp, config)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{source}: neither hyperparams.yaml (SpeechBrain model folder) nor config.json "
            "(audEERING or plain wav2vec2 checkpoint)"
        )
    config = read_config(folder / "config.json")
    kind = "audeering" if labels_from_config(config) is not None else "wav2vec2"
    hp = hparams_from_config(config, require_labels=False)
    return InitSource(kind, folder, hp, config)


# ============================================================================ data
def read_segment(path, start=None, stop=None, crop_seconds=None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Read ``[start, stop)`` seconds of a file as 16 kHz mono, optionally a random crop.

    Parameters
    ----------
    path : str
        Audio file.
    start, stop : float, optional
        Segment bounds in seconds (whole file when None).
    crop_seconds : float, optional
        If the segment is longer, a random window of this length is read instead.
    generator : torch.Generator, optional
        Source of the crop offset (default: torch's global generator, which DataLoader seeds
        differently in each worker and each epoch).
    """
    info = soundfile_call(path, sf.info)
    sr = info.samplerate
    first = 0 if start is None else int(round(start * sr))
    last = info.frames if stop is None else min(int(round(stop * sr)), info.frames)
    if crop_seconds is not None and crop_seconds > 0:
        crop = int(round(crop_seconds * sr))
        if last - first > crop:
            first = int(torch.randint(first, last - crop + 1, (1,), generator=generator))
            last = first + crop
    data, sr = soundfile_call(
        path, lambda p: sf.read(p, start=first, stop=last, dtype="float32", always_2d=True))
    wav = to_mono_16k(data, sr, name=str(path))
    if not torch.isfinite(wav).all():
        raise AudioError(f"{path}: the audio contains NaN or infinite samples")
    if wav.shape[0] < MIN_SAMPLES:  # a very short segment: pad to one encoder frame
        wav = torch.nn.functional.pad(wav, (0, MIN_SAMPLES - wav.shape[0]))
    return wav


def _float_or_none(value):
    return None if value in (None, "") else float(value)


def dataio_prepare(hparams: dict, labels) -> dict:
    """Train/valid/test ``DynamicItemDataset`` objects from the manifests.

    Each item provides ``sig`` (16 kHz mono), ``age_target`` (``[1]`` years, float64, NaN if
    unknown) and ``gender_target`` (``[1]`` index into ``labels``, -1 if unknown).

    Raises
    ------
    ValueError
        For a gender label the model does not have.
    """
    label_index = {lab: i for i, lab in enumerate(labels)}

    def make_pipeline(crop):
        @sb.utils.data_pipeline.takes("wav", "start", "stop")
        @sb.utils.data_pipeline.provides("sig")
        def audio_pipeline(wav, start, stop):
            return read_segment(wav, _float_or_none(start), _float_or_none(stop),
                                crop_seconds=crop)

        return audio_pipeline

    @sb.utils.data_pipeline.takes("age", "gender")
    @sb.utils.data_pipeline.provides("age_target", "gender_target")
    def label_pipeline(age, gender):
        age = _float_or_none(age)
        yield torch.tensor([math.nan if age is None else age], dtype=torch.float64)
        yield torch.tensor([label_index[gender] if gender else -1])

    datasets = {}
    for split in ("train", "valid", "test"):
        data = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=hparams[f"{split}_csv"])
        unknown = sorted({row["gender"] for row in data.data.values()
                          if row["gender"] and row["gender"] not in label_index})
        if unknown:
            raise ValueError(f"{hparams[f'{split}_csv']}: gender labels {unknown} are not among "
                             f"the model's labels {list(labels)}")
        data = data.filtered_sorted(
            sort_key=None if split == "train" else "duration",
            key_min_value={"duration": float(hparams["min_seconds"])},
        )
        crop = hparams["max_train_seconds"] if split == "train" else None
        sb.dataio.dataset.add_dynamic_item([data], make_pipeline(crop))
        sb.dataio.dataset.add_dynamic_item([data], label_pipeline)
        sb.dataio.dataset.set_output_keys([data], ["id", "sig", "age_target", "gender_target"])
        datasets[split] = data
    return datasets


class ShardSampler(torch.utils.data.Sampler):
    """Every ``world``-th index from ``rank``: disjoint, complete, unpadded shards for eval.

    Example
    -------
    >>> list(ShardSampler(range(5), rank=1, world=2))
    [1, 3]
    """

    def __init__(self, data_source, rank: int = 0, world: int = 1):
        self.n, self.rank, self.world = len(data_source), rank, world

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self):
        return len(range(self.rank, self.n, self.world))


def _dist():
    """``(rank, world_size)``; ``(0, 1)`` outside DDP."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# ============================================================================ loss / metrics
def multitask_loss(age_pred, gender_logits, age_target, gender_target, age_loss_fn,
                   age_weight=1.0, gender_weight=1.0):
    """Masked multi-task loss: age regression + gender cross-entropy.

    An utterance without an age (NaN) adds nothing to the age term, one without a gender
    (-1) nothing to the gender term. Each term is the mean over the utterances that have
    that label; a batch without any label of a kind gives 0 for that term (not NaN), still
    connected to the graph.

    Parameters
    ----------
    age_pred : torch.Tensor
        ``[B]`` predicted years/100.
    gender_logits : torch.Tensor
        ``[B, n_labels]``.
    age_target : torch.Tensor
        ``[B]`` years/100, NaN where unknown.
    gender_target : torch.Tensor
        ``[B]`` label indices, -1 where unknown.
    age_loss_fn : callable
        ``(pred, target, reduction="none") -> [B]`` (L1, MSE, smooth L1, ...).
    age_weight, gender_weight : float

    Returns
    -------
    loss : torch.Tensor
        Scalar ``age_weight * age_loss + gender_weight * gender_loss``.
    age_loss, gender_loss : torch.Tensor
        The two terms (unweighted).

    Example
    -------
    >>> import torch.nn.functional as F
    >>> loss, a, g = multitask_loss(torch.tensor([0.3, 0.5]), torch.zeros(2, 3),
    ...     torch.tensor([0.2, float("nan")]), torch.tensor([-1, 2]), F.l1_loss)
    >>> round(float(a), 4), round(float(g), 4)
    (0.1, 1.0986)
    """
    age_pred = age_pred.float()
    gender_logits = gender_logits.float()
    age_mask = torch.isfinite(age_target)
    safe_age = torch.where(age_mask, age_target, age_pred.detach())
    per_age = age_loss_fn(age_pred, safe_age, reduction="none") * age_mask
    age_loss = per_age.sum() / age_mask.sum().clamp(min=1)
    g_mask = gender_target >= 0
    per_g = torch.nn.functional.cross_entropy(
        gender_logits, gender_target.clamp(min=0), reduction="none"
    ) * g_mask
    gender_loss = per_g.sum() / g_mask.sum().clamp(min=1)
    return age_weight * age_loss + gender_weight * gender_loss, age_loss, gender_loss


class AgeGenderStats:
    """Summed counts for age MAE (overall, per band) and gender accuracy/UAR/confusion.

    Counts are plain sums, so :meth:`all_reduce` makes them exact across DDP ranks.

    Parameters
    ----------
    labels : sequence of str
        Gender labels in output order.
    band_edges : sequence of float
        Upper edges (years) of the age bands; the last band is open.

    Example
    -------
    >>> s = AgeGenderStats(["female", "male"], [15, 30])
    >>> s.append(torch.tensor([10.0, 40.0]), torch.tensor([12.0, float("nan")]),
    ...          torch.tensor([0, 1]), torch.tensor([0, 0]))
    >>> r = s.summarize()
    >>> r["mae"], r["acc"], r["uar"], r["confusion"]
    (2.0, 0.5, 0.5, [[1, 1], [0, 0]])
    """

    def __init__(self, labels, band_edges, age_weight=1.0, gender_weight=1.0):
        self.labels = list(labels)
        self.edges = [float(e) for e in band_edges]
        self.weights = (float(age_weight), float(gender_weight))
        n = len(self.labels)
        nb = len(self.edges) + 1
        # [abs err sum, count] overall, per band; [age loss sum, count, gender loss sum,
        # count] (per utterance, so the epoch loss does not depend on batching); confusion
        self.age = torch.zeros(2, dtype=torch.float64)
        self.bands = torch.zeros(nb, 2, dtype=torch.float64)
        self.loss = torch.zeros(4, dtype=torch.float64)
        self.confusion = torch.zeros(n, n, dtype=torch.float64)

    def band_names(self) -> list[str]:
        """``['<15', '15-29', ..., '60+']`` for edges ``[15, 30, 45, 60]``."""
        names, lo = [], None
        for e in self.edges:
            names.append(f"<{e:g}" if lo is None else f"{lo:g}-{e - 1:g}")
            lo = e
        names.append(f"{lo:g}+" if lo is not None else "all")
        return names

    def append(self, age_pred_years, age_true_years, gender_pred, gender_true, losses=None):
        """Add a batch (CPU or device tensors; NaN age / -1 gender = unknown).

        ``losses``: the batch's ``(age_loss, gender_loss)`` terms of :func:`multitask_loss`
        (means over the utterances having each label), accumulated per utterance.
        """
        age_pred_years = age_pred_years.detach().double().cpu()
        age_true_years = age_true_years.detach().double().cpu()
        known = torch.isfinite(age_true_years)
        err = (age_pred_years - age_true_years).abs()[known]
        self.age += torch.tensor([err.sum().item(), float(known.sum())], dtype=torch.float64)
        band = torch.bucketize(age_true_years[known], torch.tensor(self.edges,
                                                                   dtype=torch.float64),
                               right=True)
        for b, e in zip(band.tolist(), err.tolist()):
            self.bands[b, 0] += e
            self.bands[b, 1] += 1
        gt = gender_true.detach().cpu().long()
        gp = gender_pred.detach().cpu().long()
        for t, p in zip(gt[gt >= 0].tolist(), gp[gt >= 0].tolist()):
            self.confusion[t, p] += 1
        if losses is not None:
            n_age, n_gender = float(known.sum()), float((gt >= 0).sum())
            self.loss += torch.tensor([float(losses[0]) * n_age, n_age,
                                       float(losses[1]) * n_gender, n_gender],
                                      dtype=torch.float64)

    def all_reduce(self) -> None:
        """Sum the counts over DDP ranks (no-op outside DDP)."""
        rank, world = _dist()
        del rank
        if world == 1:
            return
        flat = torch.cat([self.age, self.bands.flatten(), self.loss, self.confusion.flatten()])
        backend = torch.distributed.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else None
        flat = flat.to(device) if device is not None else flat
        torch.distributed.all_reduce(flat)
        flat = flat.cpu()
        nb, n = self.bands.shape[0], len(self.labels)
        self.age = flat[:2]
        self.bands = flat[2:2 + 2 * nb].reshape(nb, 2)
        self.loss = flat[2 + 2 * nb:6 + 2 * nb]
        self.confusion = flat[6 + 2 * nb:].reshape(n, n)

    def summarize(self) -> dict:
        """``loss, mae, mae_per_band, n_age, acc, uar, recall, n_gender, confusion`` (NaN
        where there is nothing to average)."""
        def ratio(a, b):
            return float(a / b) if b > 0 else math.nan

        support = self.confusion.sum(dim=1)
        correct = self.confusion.diag()
        present = support > 0
        recall = {lab: ratio(correct[i], support[i]) for i, lab in enumerate(self.labels)}
        return {
            "loss": self.weights[0] * (ratio(self.loss[0], self.loss[1]) if self.loss[1] else 0)
            + self.weights[1] * (ratio(self.loss[2], self.loss[3]) if self.loss[3] else 0)
            if self.loss[1] + self.loss[3] > 0 else math.nan,
            "mae": ratio(self.age[0], self.age[1]),
            "n_age": int(self.age[1]),
            "mae_per_band": {name: ratio(s, c) for name, (s, c) in
                             zip(self.band_names(), self.bands.tolist())},
            "n_per_band": {name: int(c) for name, (_, c) in
                           zip(self.band_names(), self.bands.tolist())},
            "acc": ratio(correct.sum(), support.sum()),
            "uar": float((correct[present] / support[present]).mean()) if present.any()
            else math.nan,
            "recall": recall,
            "n_gender": int(support.sum()),
            "confusion": self.confusion.long().tolist(),
        }


# ============================================================================ Brain
COMPLETE_MARKER = "complete"


@sb.utils.checkpoints.register_checkpoint_hooks
class CompletionMarker:
    """A recoverable saved last: its file in a checkpoint proves every other file is whole.

    SpeechBrain's ``Checkpointer`` writes ``CKPT.yaml`` first and the tensors after it, so a
    process killed while saving leaves a checkpoint that looks valid but cannot be loaded.
    :meth:`AgeGenderBrain.init_optimizers` registers this marker after all other
    recoverables and removes checkpoints without it before resuming.
    """

    @sb.utils.checkpoints.mark_as_saver
    def _save(self, path):
        if if_main_process():
            Path(path).write_text("ok\n", encoding="utf-8")

    @sb.utils.checkpoints.mark_as_loader
    def _load(self, path, end_of_epoch=False):
        del path, end_of_epoch


def remove_incomplete_checkpoints(checkpointer) -> list[Path]:
    """Delete checkpoint folders without the completion marker (main process only)."""
    removed = []
    if if_main_process():
        marker = COMPLETE_MARKER + sb.utils.checkpoints.PARAMFILE_EXT
        for folder in sorted(Path(checkpointer.checkpoints_dir).glob("CKPT+*")):
            if folder.is_dir() and not (folder / marker).is_file():
                logger.warning("%s: incomplete checkpoint (interrupted while saving), removed",
                               folder)
                shutil.rmtree(folder)
                removed.append(folder)
    sb.utils.distributed.ddp_barrier()
    return removed


class AgeGenderBrain(sb.Brain):
    """Multi-task fine-tuning of :class:`agegender_sb.model.AgeGenderModel`."""

    def raw_model(self):
        """The model without its DDP wrapper."""
        model = self.modules.model
        return model.module if hasattr(model, "module") else model

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        # Evaluation bypasses DDP: ranks see different numbers of eval batches.
        model = self.modules.model if stage == sb.Stage.TRAIN else self.raw_model()
        return model(wavs, wav_lens)

    def compute_objectives(self, predictions, batch, stage):
        scale = float(self.hparams.age_scale)
        age_years = batch.age_target.data.squeeze(-1)
        age_target = (age_years / scale).float().to(self.device)
        gender_target = batch.gender_target.data.squeeze(-1).to(self.device)
        loss, age_loss, gender_loss = multitask_loss(
            predictions.age, predictions.gender_logits, age_target, gender_target,
            self.hparams.age_loss, self.hparams.age_loss_weight, self.hparams.gender_loss_weight,
        )
        if stage != sb.Stage.TRAIN:
            pred_idx = predictions.gender_logits.argmax(dim=-1)
            self.stats.append(predictions.age.double() * scale, age_years, pred_idx,
                              gender_target, (age_loss.detach(), gender_loss.detach()))
            if stage == sb.Stage.TEST:
                probs = torch.softmax(predictions.gender_logits.float(), dim=-1).cpu()
                for i, uid in enumerate(batch.id):
                    self.test_rows.append({
                        "ID": uid,
                        "age": float(predictions.age[i]) * scale,
                        "age_raw": float(predictions.age[i]),
                        **{lab: float(probs[i, j]) for j, lab in enumerate(self.labels)},
                        "gender": self.labels[int(pred_idx[i])],
                        "true_age": float(age_years[i]),
                        "true_gender": (self.labels[int(gender_target[i])]
                                        if int(gender_target[i]) >= 0 else ""),
                    })
        return loss

    # ---------------------------------------------------------------- setup
    @property
    def labels(self):
        return list(self.hparams.gender_labels)

    def init_optimizers(self):
        """One optimizer for the trainable encoder parameters, one for the heads."""
        model = self.raw_model()
        enc = [p for p in model.encoder.parameters() if p.requires_grad]
        heads = [p for m in (model.age_head, model.gender_head) for p in m.parameters()]
        self.optimizers_dict = {}
        if enc:
            self.optimizers_dict["encoder"] = self.hparams.encoder_opt_class(enc)
        self.optimizers_dict["heads"] = self.hparams.heads_opt_class(heads)
        self.optimizer = self.optimizers_dict["heads"]
        if self.checkpointer is not None:
            for name, opt in self.optimizers_dict.items():
                self.checkpointer.add_recoverable(f"{name}_optimizer", opt)
            # Registered last, hence saved last (recoverables keep insertion order).
            self.checkpointer.recoverables.pop(COMPLETE_MARKER, None)
            self.checkpointer.add_recoverable(COMPLETE_MARKER, CompletionMarker())
            remove_incomplete_checkpoints(self.checkpointer)

    def on_fit_start(self):
        super().on_fit_start()  # removes incomplete checkpoints, recovers the latest one
        latest = self.checkpointer.find_checkpoint() if self.checkpointer else None
        if latest is not None:
            intra = bool(latest.meta.get(INTRA_EPOCH_CKPT_FLAG))
            logger.info(
                "Resumed from checkpoint %s (%s, epoch %d, step %d)", latest.path.name,
                "intra-epoch" if intra else "end of epoch",
                self.hparams.epoch_counter.current + (1 if intra else 0), self.step,
            )

    def on_fit_batch_start(self, batch, should_step):
        if self.hparams.freeze == "encoder":
            self.raw_model().encoder.eval()  # frozen: no dropout / masking / layerdrop

    def on_stage_start(self, stage, epoch=None):
        if stage != sb.Stage.TRAIN:
            self.stats = AgeGenderStats(self.labels, self.hparams.age_bands,
                                        self.hparams.age_loss_weight,
                                        self.hparams.gender_loss_weight)
            self.test_rows = []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        self.stats.all_reduce()
        summary = self.stats.summarize()
        flat = {"loss": summary["loss"], "mae": summary["mae"], "acc": summary["acc"],
                "uar": summary["uar"]}
        flat.update({f"mae[{k}]": v for k, v in summary["mae_per_band"].items()})
        flat["confusion"] = summary["confusion"]
        if stage == sb.Stage.VALID:
            old_enc, new_enc = self.hparams.lr_annealing_encoder(summary["loss"])
            old_heads, new_heads = self.hparams.lr_annealing_heads(summary["loss"])
            for name, lr in (("encoder", new_enc), ("heads", new_heads)):
                if name in self.optimizers_dict:
                    sb.nnet.schedulers.update_learning_rate(self.optimizers_dict[name], lr)
            # log_stats is main-process-only inside and broadcasts: call it on every rank
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr_encoder": old_enc, "lr_heads": old_heads},
                train_stats={"loss": self.train_loss},
                valid_stats=flat,
            )
            key = self.hparams.best_metric
            meta = {"loss": summary["loss"]}
            if key != "loss":
                value = summary[key]
                meta[key] = value if math.isfinite(value) else (
                    math.inf if BEST_METRICS[key] == "min" else -math.inf)
            keys = {f"{BEST_METRICS[key]}_keys": [key]}
            self.checkpointer.save_and_keep_only(meta=meta, num_to_keep=1, **keys)
        elif stage == sb.Stage.TEST:
            rows = self.test_rows
            rank, world = _dist()
            if world > 1:
                gathered = [None] * world
                torch.distributed.all_gather_object(gathered, rows)
                rows = [r for part in gathered for r in part]
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=flat,
            )
            if if_main_process():
                write_test_outputs(self.hparams.output_folder, summary, rows, self.labels,
                                   self.hparams.make_plots)


# ============================================================================ outputs
def write_test_outputs(folder, summary: dict, rows: list, labels, make_plots=True) -> None:
    """``results.json``, ``test_predictions.csv`` and, with matplotlib, two PNG plots."""
    folder = Path(folder)
    rows = sorted(rows, key=lambda r: r["ID"])
    results = dict(summary)
    results["labels"] = list(labels)
    results["n_utterances"] = len(rows)
    results["age_bands_note"] = "MAE in years per band of the true age"

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    (folder / "results.json").write_text(json.dumps(clean(results), indent=2) + "\n",
                                         encoding="utf-8")
    columns = ["ID", "age", "age_raw", *labels, "gender", "true_age", "true_gender"]
    with open(folder / "test_predictions.csv", "w", newline="", encoding="utf-8") as fout:
        writer = csv.DictWriter(fout, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            out = dict(row)
            if not math.isfinite(out["true_age"]):
                out["true_age"] = ""
            for k, v in out.items():
                if isinstance(v, float):
                    out[k] = repr(v)
            writer.writerow(out)
    if make_plots:
        write_plots(folder, summary, rows, labels)


def write_plots(folder, summary: dict, rows: list, labels) -> None:
    """``confusion_matrix.png`` and ``age_scatter.png``; a logged warning without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (extra 'plots'): no PNG plots written")
        return
    folder = Path(folder)
    conf = summary["confusion"]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(conf, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(conf):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center")
    ax.set_title(f"gender: acc {summary['acc']:.3f}, UAR {summary['uar']:.3f}")
    fig.tight_layout()
    fig.savefig(folder / "confusion_matrix.png", dpi=100)
    plt.close(fig)
    pts = [(r["true_age"], r["age"]) for r in rows if math.isfinite(r["true_age"])]
    fig, ax = plt.subplots(figsize=(4, 4))
    if pts:
        t, p = zip(*pts)
        ax.scatter(t, p, s=8, alpha=0.6)
        lo, hi = min(min(t), min(p)), max(max(t), max(p))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("true age (years)")
    ax.set_ylabel("predicted age (years)")
    ax.set_title(f"age: MAE {summary['mae']:.2f} years")
    fig.tight_layout()
    fig.savefig(folder / "age_scatter.png", dpi=100)
    plt.close(fig)


def export_model(brain: AgeGenderBrain, hparams: dict, init: InitSource) -> Path:
    """Write the brain's current (best, after ``evaluate``) weights as a model folder."""
    arch = {k: hparams[k] for k in (*ARCH_FIELDS, *SETTING_FIELDS) if k in hparams}
    return save_model_folder(brain.raw_model(), hparams["gender_labels"], arch,
                             hparams["export_folder"], config=init.config)


# ============================================================================ main
def _init_from(hparams_file: str, overrides: dict) -> str:
    """``init_from`` from the command line, or a plain value in the YAML file."""
    if overrides.get("init_from"):
        return str(overrides["init_from"])
    text = Path(hparams_file).read_text(encoding="utf-8")
    match = re.search(r"^init_from:\s*([^\s#!][^#]*?)\s*(#.*)?$", text, re.MULTILINE)
    if not match:
        raise SystemExit("error: --init_from is required (audEERING checkpoint, SpeechBrain "
                         "model folder or plain wav2vec2 checkpoint)")
    return match.group(1).strip().strip("'\"")


def _plain_overrides(overrides: str) -> dict:
    """Command-line overrides as a dict (only to read plain values such as ``init_from``)."""
    return (yaml.load(overrides, Loader=_TolerantLoader) or {}) if overrides else {}


def main(argv=None) -> None:
    """Command-line entry point (see the module docstring)."""
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:] if argv is None
                                                           else argv)
    user = _plain_overrides(overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    init_from = _init_from(hparams_file, user)
    savedir = user.get("init_savedir") or os.path.join(str(user.get("output_folder", ".")),
                                                       "init_source")
    if not Path(init_from).is_dir():  # hub id: fetch on the main process first
        run_on_main(_fetch_init_files, args=[init_from, savedir])
    init = resolve_init_source(init_from, savedir)
    # init source first, command line last (it wins); kept as YAML text for !name: etc.
    merged = yaml.safe_dump({k: v for k, v in init.hparams.items() if k not in user},
                            default_flow_style=None) + "\n" + (overrides or "")
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, merged)
    if hparams["freeze"] not in ("none", "feature_extractor", "encoder"):
        raise SystemExit(f"error: freeze must be none, feature_extractor or encoder, "
                         f"got {hparams['freeze']!r}")
    if hparams["best_metric"] not in BEST_METRICS:
        raise SystemExit(f"error: best_metric must be one of {sorted(BEST_METRICS)}")
    if not float(run_opts.get("max_grad_norm", hparams["max_grad_norm"])) > 0:
        raise SystemExit("error: max_grad_norm must be > 0 (SpeechBrain always clips)")

    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=merged,
    )
    logger.info("init_from %s (%s layout); gender labels %s", init_from, init.kind,
                hparams["gender_labels"])
    init.load_weights(hparams)
    encoder = hparams["encoder"]
    if hparams["freeze"] == "feature_extractor":
        encoder.freeze_feature_extractor()
    elif hparams["freeze"] == "encoder":
        for p in encoder.parameters():
            p.requires_grad_(False)

    datasets = dataio_prepare(hparams, hparams["gender_labels"])
    brain = AgeGenderBrain(
        modules=hparams["modules"], hparams=hparams, run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    train_kwargs = {"num_workers": hparams["num_workers"]}
    if hparams["dynamic_batching"]:
        max_seconds = float(hparams["max_train_seconds"])
        sampler = sb.dataio.sampler.DynamicBatchSampler(
            datasets["train"], max_batch_length=float(hparams["max_batch_seconds"]),
            num_buckets=int(hparams["num_buckets"]),
            length_func=lambda x: min(float(x["duration"]), max_seconds),
            shuffle=True, batch_ordering="random", max_batch_ex=hparams["max_batch_ex"],
            seed=int(hparams["seed"]),
        )
        train_kwargs["batch_sampler"] = sampler
        brain.train_sampler = sampler  # so that Brain reshuffles it every epoch
    else:
        train_kwargs.update(batch_size=hparams["batch_size"], shuffle=True)

    rank, world = _dist()

    def eval_loader(data):
        return sb.dataio.dataloader.make_dataloader(
            data, batch_size=hparams["eval_batch_size"], num_workers=hparams["num_workers"],
            sampler=ShardSampler(data, rank, world),
        )

    brain.fit(brain.hparams.epoch_counter, datasets["train"], eval_loader(datasets["valid"]),
              train_loader_kwargs=train_kwargs)
    key = hparams["best_metric"]
    best = {f"{BEST_METRICS[key]}_key": key}
    brain.evaluate(eval_loader(datasets["test"]), **best)
    if if_main_process():
        path = export_model(brain, hparams, init)
        logger.info("best checkpoint (%s) exported to %s", key, path)
    # Every rank waits for the export, then leaves the process group cleanly (a rank that
    # exits while others still talk to it aborts, and torchrun reports the run as failed).
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        sb.utils.distributed.ddp_barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, ValueError, OSError) as err:  # AudioError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
