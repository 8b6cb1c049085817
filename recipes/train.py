#!/usr/bin/env python3
"""Fine-tune the wav2vec2 age/gender model on manifests made by ``recipes/prepare.py``.

Usage::

    python recipes/train.py hparams/train.yaml --init_from SRC \\
        --train_csv train.csv --valid_csv valid.csv --test_csv test.csv \\
        --output_folder DIR [--freeze encoder] [--number_of_epochs 5] [...]

    torchrun --nproc_per_node 2 recipes/train.py hparams/train.yaml ... [--distributed_backend gloo]

``--init_from`` is any source of :func:`agegender_sb.loading.sources.resolve_source`: an audEERING
checkpoint (hub id or folder), a SpeechBrain model folder, or a plain wav2vec2 checkpoint
without heads (e.g. ``facebook/wav2vec2-large-robust``), whose heads then start from random.
The model is ``hparams/inference.yaml``'s (included by ``train.yaml``) with the source's
architecture and labels; command-line overrides win (``--wav2vec2 "{layerdrop: 0.0}"``).

Outputs in ``--output_folder``: ``train_log.txt`` (per-epoch metrics), ``log.txt``, ``save/``
(checkpoints; a killed run started again with the same command resumes from the latest),
``results.json``, ``test_predictions.csv``, two PNG plots and ``model/`` (the best checkpoint
as a SpeechBrain model folder for ``AgeGenderClassifier.from_hparams``). See
``recipes/README.md``, section "Training".
"""

from __future__ import annotations

import logging
import math
import os
import sys

import ruamel.yaml
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from hyperpyyaml.core import recursive_update
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from speechbrain.utils.distributed import if_main_process, run_on_main

from agegender_sb.batch.distributed import Distributed, exit_rank
from agegender_sb.loading.checkpoint import CheckpointError, fingerprint
from agegender_sb.loading.config import plain_values, setting_fields
from agegender_sb.loading.folders import save_model_folder
from agegender_sb.loading.sources import load_weights, resolve_source
from agegender_sb.report.calibration import CalibrationError
from agegender_sb.training.calibration import fit_on_rows, results_entry
from agegender_sb.training.data import ShardSampler, read_segment
from agegender_sb.training.outputs import (
    COMPLETE_MARKER,
    CompletionMarker,
    remove_incomplete_checkpoints,
    write_test_outputs,
)

logger = logging.getLogger("agegender_sb.train")

#: Metrics a checkpoint can be selected by, and whether lower is better.
BEST_METRICS = {"loss": "min", "mae": "min", "acc": "max", "uar": "max"}


# ============================================================================ Brain
class AgeGenderBrain(sb.Brain):
    """Multi-task fine-tuning of :class:`agegender_sb.model.network.AgeGenderModel`."""

    #: Utterances dropped per split (shorter than ``min_seconds``), for ``results.json``.
    dropped: dict = {}
    #: A TEST-stage pass that only collects the predictions (the validation set's, for the
    #: calibration), and the calibration measured on the test set.
    collect_only: bool = False
    collected: list = []
    calibration = None

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
        gender_target = batch.gender_target.data.squeeze(-1).to(self.device)
        loss, age_loss, gender_loss = self.hparams.compute_cost(
            predictions.age, predictions.gender_logits,
            (age_years / scale).float().to(self.device), gender_target)
        if stage != sb.Stage.TRAIN:
            pred_idx = predictions.gender_logits.argmax(dim=-1)
            self.stats.append(predictions.age.double() * scale, age_years, pred_idx,
                              gender_target, (age_loss.detach(), gender_loss.detach()))
            if stage == sb.Stage.TEST:
                self.test_rows.extend(self._rows(batch.id, predictions, pred_idx, age_years,
                                                 gender_target))
        return loss

    def _rows(self, ids, predictions, pred_idx, age_years, gender_target):
        """One ``test_predictions.csv`` row per utterance."""
        labels, scale = self.hparams.gender_labels, float(self.hparams.age_scale)
        probs = torch.softmax(predictions.gender_logits.float(), dim=-1).cpu()
        for i, uid in enumerate(ids):
            truth = int(gender_target[i])
            yield {"ID": uid, "age": float(predictions.age[i]) * scale,
                   "age_raw": float(predictions.age[i]),
                   **{lab: float(probs[i, j]) for j, lab in enumerate(labels)},
                   "gender": labels[int(pred_idx[i])], "true_age": float(age_years[i]),
                   "true_gender": labels[truth] if truth >= 0 else ""}

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
        epoch = self.hparams.epoch_counter.current
        if self.step > 0 or epoch > 0:  # what was actually recovered, not what is on disk
            latest = self.checkpointer.find_checkpoint()
            intra = bool(latest.meta.get(INTRA_EPOCH_CKPT_FLAG))
            logger.info("Resumed from checkpoint %s (%s, epoch %d, step %d)", latest.path.name,
                        "intra-epoch" if intra else "end of epoch", epoch + intra, self.step)

    def on_fit_batch_start(self, batch, should_step):
        if self.hparams.freeze == "encoder":
            self.raw_model().encoder.eval()  # frozen: no dropout / masking / layerdrop

    def on_stage_start(self, stage, epoch=None):
        if stage != sb.Stage.TRAIN:
            self.stats = self.hparams.error_stats()
            self.test_rows = []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        self.stats.all_reduce()
        summary = self.stats.summarize()
        flat = {k: summary[k] for k in ("loss", "mae", "acc", "uar")}
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
                train_stats={"loss": self.train_loss}, valid_stats=flat)
            key = self.hparams.best_metric
            meta = {"loss": summary["loss"]}
            if key != "loss":
                worst = math.inf if BEST_METRICS[key] == "min" else -math.inf
                meta[key] = summary[key] if math.isfinite(summary[key]) else worst
            self.checkpointer.save_and_keep_only(
                meta=meta, num_to_keep=1, **{f"{BEST_METRICS[key]}_keys": [key]})
        elif stage == sb.Stage.TEST:
            rows = self.test_rows
            if Distributed().active:  # every rank's predictions to every rank
                gathered = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(gathered, rows)
                rows = [r for part in gathered for r in part]
            if self.collect_only:  # the validation set's predictions, for the calibration
                self.collected = rows
                return
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=flat)
            if if_main_process():
                extra = {"dropped": self.dropped, "calibration": None}
                if self.calibration is not None:
                    extra["calibration"] = results_entry(self.calibration, rows,
                                                         self.hparams.gender_labels)
                write_test_outputs(self.hparams.output_folder, summary, rows,
                                   self.hparams.gender_labels, self.hparams.make_plots,
                                   extra=extra)


# ============================================================================ data
def dataio_prepare(hparams: dict) -> tuple[dict, dict]:
    """Train/valid/test ``DynamicItemDataset`` objects from the manifests.

    Each item provides ``sig`` (16 kHz mono; train: a random crop of at most
    ``max_train_seconds``), ``age_target`` (``[1]`` years, float64, NaN if unknown) and
    ``gender_target`` (``[1]`` index into the model's labels, -1 if unknown). Utterances
    shorter than ``min_seconds`` are dropped and logged; ``max_utterances`` (if not null)
    keeps the first that many of each split, in manifest order, for quick runs.

    Returns
    -------
    datasets : dict
        ``{"train": ..., "valid": ..., "test": ...}``.
    dropped : dict
        Number of dropped utterances per split.

    Raises
    ------
    ValueError
        For a gender label the model does not have, naming the manifest.
    """
    labels = list(hparams["gender_labels"])
    label_index = {lab: i for i, lab in enumerate(labels)}

    def number(value):
        return None if value in (None, "") else float(value)

    def audio_pipeline(crop):
        @sb.utils.data_pipeline.takes("wav", "start", "stop")
        @sb.utils.data_pipeline.provides("sig")
        def read(wav, start, stop):
            return read_segment(wav, number(start), number(stop), crop_seconds=crop)

        return read

    @sb.utils.data_pipeline.takes("age", "gender")
    @sb.utils.data_pipeline.provides("age_target", "gender_target")
    def label_pipeline(age, gender):
        age = number(age)
        yield torch.tensor([math.nan if age is None else age], dtype=torch.float64)
        yield torch.tensor([label_index[gender] if gender else -1])

    min_seconds = float(hparams["min_seconds"])
    cap = hparams.get("max_utterances")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ValueError(f"max_utterances must be a whole number >= 1 (or null), got {cap!r}")
    datasets, dropped = {}, {}
    for split in ("train", "valid", "test"):
        path = hparams[f"{split}_csv"]
        data = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=path)
        unknown = sorted({row["gender"] for row in data.data.values()
                          if row["gender"] and row["gender"] not in label_index})
        if unknown:
            raise ValueError(f"{path}: gender labels {unknown} are not among the model's "
                             f"labels {labels}")
        short = [uid for uid, row in data.data.items() if float(row["duration"]) < min_seconds]
        dropped[split] = len(short)
        if short:
            logger.warning("%s: %d utterances shorter than min_seconds=%g dropped: %s%s", path,
                           len(short), min_seconds, ", ".join(short[:5]),
                           ", ..." if len(short) > 5 else "")
        # the first max_utterances kept (manifest order), then sorted for evaluation
        data = data.filtered_sorted(key_min_value={"duration": min_seconds}, select_n=cap)
        if split != "train":
            data = data.filtered_sorted(sort_key="duration")
        crop = hparams["max_train_seconds"] if split == "train" else None
        sb.dataio.dataset.add_dynamic_item([data], audio_pipeline(crop))
        sb.dataio.dataset.add_dynamic_item([data], label_pipeline)
        sb.dataio.dataset.set_output_keys([data], ["id", "sig", "age_target", "gender_target"])
        datasets[split] = data
    return datasets, dropped


def merge_overrides(source_values: dict, overrides: str) -> dict:
    """The init source's model values under the command line's, as ``train.yaml`` overrides.

    ``source_values`` (:attr:`agegender_sb.loading.sources.ModelSource.hparams`) go to the top-level
    ``wav2vec2`` mapping and to ``net`` (the included ``inference.yaml``); the command line
    (``--wav2vec2 "{layerdrop: 0.0}"``, ``--net "{final_dropout: 0.0}"``, any other key) is
    merged over them key by key.

    Example
    -------
    >>> merged = merge_overrides({"wav2vec2": {"hidden_size": 32, "layerdrop": 0.1},
    ...     "gender_labels": ["f", "m"]}, "wav2vec2: {layerdrop: 0.0}\\nseed: 3")
    >>> merged["wav2vec2"], merged["net"], merged["seed"]
    ({'hidden_size': 32, 'layerdrop': 0.0}, {'gender_labels': ['f', 'm']}, 3)
    """
    cli = ruamel.yaml.YAML().load(overrides or "") or {}
    bad = sorted(set(cli.get("net") or {}) - (set(setting_fields()) - {"wav2vec2"}))
    if bad:
        raise ValueError(f"--net: {bad} not among inference.yaml's settings "
                         f"{sorted(set(setting_fields()) - {'wav2vec2'})} (the architecture "
                         "goes to --wav2vec2)")
    merged = {"wav2vec2": dict(source_values.get("wav2vec2", {})),
              "net": {k: v for k, v in source_values.items() if k != "wav2vec2"}}
    recursive_update(merged, cli)
    return merged


def calibrate_on_valid(brain, hparams, loader, best):
    """The best checkpoint's :class:`~agegender_sb.report.calibration.Calibration`, fitted on its
    validation predictions (every rank fits the same one); None, with a warning, when the
    validation set is too small for the levels."""
    brain.collect_only = True
    try:
        brain.evaluate(loader, **best)
    finally:
        brain.collect_only = False
    labels = tuple(hparams["gender_labels"])
    try:
        return fit_on_rows(brain.collected, labels,
                           fingerprint({"model": brain.raw_model()}, labels),
                           hparams["calibration_coverage"], hparams["calibration_min_group"],
                           corpus={"split": "valid", "manifest": str(hparams["valid_csv"])})
    except CalibrationError as err:
        logger.warning("no calibration: validation set: %s", err)
        return None


# ============================================================================ main
def main(argv=None) -> None:
    """Command-line entry point (see the module docstring)."""
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:] if argv is None
                                                           else argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    dist = Distributed()
    with open(hparams_file, encoding="utf-8") as fin:
        text = fin.read()
    given = {**plain_values(text, hparams_file), **plain_values(overrides or "", "overrides")}
    if not given.get("init_from"):
        raise SystemExit("error: --init_from is required (audEERING checkpoint, SpeechBrain "
                         "model folder or plain wav2vec2 checkpoint)")
    init_from = str(given["init_from"])
    savedir = given.get("init_savedir") or os.path.join(str(given.get("output_folder", ".")),
                                                        "init_source")
    # Hub ids are fetched on the main process first; the others then find the files.
    run_on_main(resolve_source, args=[init_from], kwargs={"savedir": savedir})
    src = resolve_source(init_from, savedir=savedir)
    merged = merge_overrides(src.hparams, overrides)
    unknown = sorted(set(merged) - set(ruamel.yaml.YAML().load(text)))
    if unknown:
        raise SystemExit(f"error: {hparams_file} has no keys {unknown}")
    with open(hparams_file, encoding="utf-8") as fin:  # its name: !include is relative to it
        hparams = load_hyperpyyaml(fin, merged, overrides_must_match=False)
    if hparams["freeze"] not in ("none", "feature_extractor", "encoder"):
        raise SystemExit(f"error: freeze must be none, feature_extractor or encoder, "
                         f"got {hparams['freeze']!r}")
    if hparams["best_metric"] not in BEST_METRICS:
        raise SystemExit(f"error: best_metric must be one of {sorted(BEST_METRICS)}")
    grad_norm = (run_opts["max_grad_norm"] if "max_grad_norm" in run_opts.overridden_args
                 else hparams["max_grad_norm"])
    if not float(grad_norm) > 0:
        raise SystemExit("error: max_grad_norm must be > 0 (SpeechBrain always clips)")
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"],
                                   hyperparams_to_save=hparams_file, overrides=merged)
    logger.info("init_from %s (%s layout); gender labels %s", init_from, src.kind,
                hparams["gender_labels"])
    load_weights(src, hparams)
    encoder = hparams["encoder"]
    if hparams["freeze"] == "feature_extractor":
        encoder.freeze_feature_extractor()
    elif hparams["freeze"] == "encoder":
        encoder.requires_grad_(False)
    # Layerdrop skips a different layer on each rank: DDP must look for unused parameters,
    # or the ranks wait in different collectives forever.
    if dist.active and encoder.config.layerdrop > 0 and hparams["freeze"] != "encoder":
        hparams["find_unused_parameters"] = True
        logger.info("layerdrop %g under DDP: find_unused_parameters on",
                    encoder.config.layerdrop)

    datasets, dropped = dataio_prepare(hparams)
    brain = AgeGenderBrain(modules=hparams["modules"], hparams=hparams, run_opts=run_opts,
                           checkpointer=hparams["checkpointer"])
    brain.dropped = dropped
    train_kwargs = {"num_workers": hparams["num_workers"]}
    if hparams["dynamic_batching"]:
        # Under DDP, Brain wraps it in DistributedSamplerWrapper: every rank gets
        # ceil(n_batches / world) batches (the count does not depend on the shuffle).
        max_seconds = float(hparams["max_train_seconds"])
        train_kwargs["batch_sampler"] = sb.dataio.sampler.DynamicBatchSampler(
            datasets["train"], max_batch_length=float(hparams["max_batch_seconds"]),
            num_buckets=int(hparams["num_buckets"]),
            length_func=lambda x: min(float(x["duration"]), max_seconds),
            shuffle=True, batch_ordering="random", max_batch_ex=hparams["max_batch_ex"],
            seed=int(hparams["seed"]))
    else:
        train_kwargs.update(batch_size=hparams["batch_size"], shuffle=True)

    def eval_loader(data):
        return sb.dataio.dataloader.make_dataloader(
            data, batch_size=hparams["eval_batch_size"], num_workers=hparams["num_workers"],
            sampler=ShardSampler(data, dist.rank, dist.world))

    brain.fit(hparams["epoch_counter"], datasets["train"], eval_loader(datasets["valid"]),
              train_loader_kwargs=train_kwargs)
    key = hparams["best_metric"]
    if hparams["calibrate"]:
        brain.calibration = calibrate_on_valid(brain, hparams, eval_loader(datasets["valid"]),
                                               {f"{BEST_METRICS[key]}_key": key})
    brain.evaluate(eval_loader(datasets["test"]), **{f"{BEST_METRICS[key]}_key": key})
    if if_main_process():
        values = {k: hparams["net"][k] for k in setting_fields()}
        path = save_model_folder(brain.raw_model(), values, hparams["export_folder"],
                                 config=src.config)
        cal_path = path / "calibration.json"  # none of an earlier run's: another model's
        cal_path.unlink(missing_ok=True)
        if brain.calibration is not None:
            brain.calibration.save(cal_path)
        logger.info("best checkpoint (%s) exported to %s%s", key, path,
                    " with its calibration" if brain.calibration is not None else "")
    # Every rank waits here for the export; the caller then ends the rank (exit_rank).
    dist.barrier()


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, ValueError, OSError) as err:  # AudioError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    if Distributed().active:  # past the final barrier: leave without gloo's teardown, which
        exit_rank(0)  # can abort a rank whose work is complete (torchrun: run failed)
