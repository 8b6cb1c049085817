"""``AgeGenderClassifier``: the model as a SpeechBrain ``EncoderClassifier``; its result type."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.errors import EntryNotFoundError
from hyperpyyaml import load_hyperpyyaml
from speechbrain.inference.classifiers import EncoderClassifier
from speechbrain.utils.fetching import FetchConfig, FetchFrom, LocalStrategy, fetch, guess_source

from .audio import load_audio, relative_to_samples, validate_batch
from .checkpoint import (
    ARCH_FIELDS,
    SETTING_FIELDS,
    WEIGHT_FILES,
    CheckpointError,
    hparams_from_config,
    load_state_dict_file,
    load_strict,
    packaged_hparams_path,
    read_config,
    split_audeering_state_dict,
)
from .model import ModelOutput

# What "this file is not in that repo" looks like from speechbrain's fetch: its own ValueError,
# or huggingface_hub's error where speechbrain does not translate it.
_NOT_FOUND = (ValueError, EntryNotFoundError)

_DEFAULT_FETCH = FetchConfig()
logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SOURCE", "AgeGenderPrediction", "AgeGenderClassifier"]

#: The published 24-layer model (the 6-layer sibling: ``...-6-ft-age-gender``).
DEFAULT_SOURCE = "audeering/wav2vec2-large-robust-24-ft-age-gender"


@dataclass
class AgeGenderPrediction:
    """Age and gender for a batch of utterances (all tensors on the CPU).

    Attributes
    ----------
    age : torch.Tensor
        ``[batch]`` age in years (``age_raw * 100``; not clipped).
    age_raw : torch.Tensor
        ``[batch]`` the age head's output (≈ 0..1).
    gender_logits : torch.Tensor
        ``[batch, n_labels]`` gender logits.
    gender_probs : torch.Tensor
        ``[batch, n_labels]`` softmax of the logits.
    gender : list of str
        Most probable label per utterance.
    labels : tuple of str
        Label names in output order (``female, male, child`` for audEERING's models).
    embedding : torch.Tensor
        ``[batch, hidden]`` pooled last-layer hidden states.
    """

    age: torch.Tensor
    age_raw: torch.Tensor
    gender_logits: torch.Tensor
    gender_probs: torch.Tensor
    gender: list
    labels: tuple
    embedding: torch.Tensor

    def __len__(self) -> int:
        return int(self.age.shape[0])

    def to_records(self) -> list[dict]:
        """One plain dict per utterance: ``age``, ``gender`` and one probability per label.

        Example
        -------
        >>> p = AgeGenderPrediction(torch.tensor([31.0]), torch.tensor([0.31]),
        ...     torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.8, 0.1, 0.1]]), ["female"],
        ...     ("female", "male", "child"), torch.zeros(1, 4))
        >>> p.to_records()[0]["gender"], round(p.to_records()[0]["female"], 2)
        ('female', 0.8)
        """
        records = []
        for i in range(len(self)):
            rec = {"age": float(self.age[i]), "gender": self.gender[i]}
            rec.update({lab: float(self.gender_probs[i, j]) for j, lab in enumerate(self.labels)})
            records.append(rec)
        return records


def _source_layout(source, savedir, fetch_config, local_strategy) -> str:
    """``"speechbrain"`` (hyperparams.yaml) or ``"audeering"`` (transformers config.json)."""
    kind, src = guess_source(source)
    if kind == FetchFrom.LOCAL:
        folder = Path(src)
        if (folder / "hyperparams.yaml").is_file():
            return "speechbrain"
        if (folder / "config.json").is_file():
            return "audeering"
        raise FileNotFoundError(
            f"{folder}: neither hyperparams.yaml (SpeechBrain model folder) nor config.json "
            "(audEERING/transformers checkpoint)"
        )
    try:
        fetch("hyperparams.yaml", source, savedir=savedir, fetch_config=fetch_config,
              local_strategy=local_strategy)
        return "speechbrain"
    except _NOT_FOUND:
        return "audeering"


def _fetch_weights(source, savedir, fetch_config, local_strategy) -> Path:
    """The checkpoint's weight file, safetensors preferred."""
    kind, src = guess_source(source)
    if kind == FetchFrom.LOCAL:
        names = [n for n in WEIGHT_FILES if (Path(src) / n).is_file()]
        if not names:
            raise CheckpointError(f"{src}: no {' or '.join(WEIGHT_FILES)} next to config.json")
    else:
        names = list(WEIGHT_FILES)
    errors = []
    for name in names:
        try:
            return Path(fetch(name, source, savedir=savedir, fetch_config=fetch_config,
                              local_strategy=local_strategy))
        except _NOT_FOUND as err:
            errors.append(f"{name}: {err}")
    raise CheckpointError(f"{source}: no weight file could be fetched ({'; '.join(errors)})")


def model_fingerprint(module: torch.nn.Module) -> str:
    """Short hash of a module's tensors (names, shapes and values), for cache file names."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


class AgeGenderClassifier(EncoderClassifier):
    """Speaker age and gender from speech, with SpeechBrain's ``EncoderClassifier`` contract.

    Load with :meth:`from_hparams` from a Hugging Face id or a local folder, in audEERING's
    transformers layout or as a SpeechBrain model folder. Inputs are 16 kHz mono signals;
    files of any sample rate and channel count are converted on load.

    - ``classify_batch(wavs, wav_lens)`` → ``(gender probabilities [B, n], best probability [B],
      index [B], labels list[str])``; ``classify_file(path)`` the same for one file.
    - ``encode_batch(wavs, wav_lens)`` → ``[B, 1, hidden]`` pooled embeddings.
    - ``predict_batch`` / ``predict_file`` → :class:`AgeGenderPrediction` (age and gender).

    Gender labels follow the checkpoint's ``config.json`` ``id2label``: for audEERING's models
    ``female, male, child`` (the model card's printed comment says otherwise; the config and
    their ONNX export agree on this order).

    Example
    -------
    >>> clf = AgeGenderClassifier.from_hparams(source=getfixture("tiny_checkpoint"))
    >>> clf.labels
    ('female', 'male', 'child')
    >>> pred = clf.predict_batch(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> pred.age.shape, len(pred.gender)
    (torch.Size([2]), 2)
    """

    MODULES_NEEDED = ["model"]
    HPARAMS_NEEDED = ["gender_labels", "sample_rate", "age_scale"]

    def __init__(self, *args, backend: str = "torch", onnx_path=None, onnx_threads=None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.labels = tuple(self.hparams.gender_labels)
        self.source_layout = getattr(self.hparams, "source_layout", "speechbrain")
        self.config = getattr(self.hparams, "config", None)
        # architecture and settings, as a saved model folder should repeat them
        self.arch_hparams = {k: getattr(self.hparams, k) for k in (*ARCH_FIELDS, *SETTING_FIELDS)
                             if hasattr(self.hparams, k)}
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        self.backend = backend
        self.onnx_session = None
        if backend == "onnx":
            self.onnx_session = self._open_onnx(onnx_path, onnx_threads)

    def _open_onnx(self, onnx_path, threads):
        """Open (exporting first if needed) the ONNX graph of this model."""
        from .onnx_export import OnnxAgeGender, _import_onnxruntime, export_onnx

        _import_onnxruntime()  # fail early, with the install hint, before a long export
        if onnx_path is None:
            folder = Path(getattr(self.hparams, "savedir", None) or
                          Path.home() / ".cache" / "agegender_sb" / "onnx")
            onnx_path = folder / f"agegender-{model_fingerprint(self.mods.model)}.onnx"
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            logger.info("exporting the model to ONNX: %s (once)", onnx_path)
            # Our own graph keeps raw logits, so results equal the torch path's.
            export_onnx(self.mods.model, onnx_path, self.labels, gender_probabilities=False)
        providers = None
        if self.device_type == "cuda":
            index = torch.device(self.device).index
            device_id = torch.cuda.current_device() if index is None else index
            providers = [("CUDAExecutionProvider", {"device_id": device_id}),
                         "CPUExecutionProvider"]
        session = OnnxAgeGender(onnx_path, providers=providers, threads=threads)
        if session.labels is not None and session.labels != self.labels:
            raise CheckpointError(f"{onnx_path}: labels {session.labels} differ from the "
                                  f"model's {self.labels}")
        return session

    @classmethod
    def from_hparams(
        cls,
        source: str | os.PathLike = DEFAULT_SOURCE,
        hparams_file: str = "hyperparams.yaml",
        overrides: dict | None = None,
        savedir: str | os.PathLike | None = None,
        fetch_config: FetchConfig = _DEFAULT_FETCH,
        local_strategy: LocalStrategy = LocalStrategy.SYMLINK,
        **kwargs,
    ) -> AgeGenderClassifier:
        """Load a model from a hub id or a local folder.

        Parameters
        ----------
        source : str or PathLike
            1. a Hugging Face id of an audEERING-layout checkpoint (default: the 24-layer model);
            2. a local folder with ``config.json`` + ``model.safetensors`` or
               ``pytorch_model.bin`` (safetensors preferred; the pickle is read with
               ``weights_only=True``);
            3. a SpeechBrain model folder or repo (``hyperparams.yaml`` + ``*.ckpt``).
        hparams_file : str
            Hyperparameter file name of a SpeechBrain source.
        overrides : dict, optional
            hyperpyyaml overrides of top-level keys of ``hparams/inference.yaml``; for an
            audEERING checkpoint they apply on top of its ``config.json``.
        savedir : str or PathLike, optional
            Where fetched files are linked or copied.
        fetch_config : speechbrain.utils.fetching.FetchConfig
            Token, revision, offline mode, ...
        local_strategy : speechbrain.utils.fetching.LocalStrategy
        **kwargs
            ``run_opts`` (e.g. ``{"device": "cuda"}``, ``{"precision": "bf16"}`` for autocast),
            ``freeze_params``, and the backend switch: ``backend="onnx"`` runs the model with
            ONNX Runtime (``pip install "agegender_sb[onnx]"``), exporting it once to
            ``onnx_path`` (default: ``savedir`` or ``~/.cache/agegender_sb/onnx``, named by a
            hash of the weights); ``onnx_path`` may also name an existing export, ours or
            audEERING's; ``onnx_threads`` sets ONNX Runtime's thread count.

        Raises
        ------
        CheckpointError
            If a tensor is missing, unexpected or mis-shaped (named in the message).
        """
        source = str(source)
        overrides = dict(overrides or {})
        layout = _source_layout(source, savedir, fetch_config, local_strategy)
        if layout == "speechbrain":
            return super().from_hparams(
                source=source, hparams_file=hparams_file, overrides=overrides, savedir=savedir,
                fetch_config=fetch_config, local_strategy=local_strategy, **kwargs,
            )
        config_path = fetch("config.json", source, savedir=savedir, fetch_config=fetch_config,
                            local_strategy=local_strategy)
        config = read_config(config_path)
        weights = _fetch_weights(source, savedir, fetch_config, local_strategy)
        hparams_overrides = {**hparams_from_config(config), **overrides}
        with open(packaged_hparams_path(), encoding="utf-8") as fin:
            hparams = load_hyperpyyaml(fin, hparams_overrides)
        parts = split_audeering_state_dict(load_state_dict_file(weights), str(weights))
        for name, state in parts.items():
            load_strict(hparams[name], state, f"{weights} ({name})")
        hparams.update(source_layout="audeering", config=config, savedir=savedir)
        return cls(modules=hparams["modules"], hparams=hparams, **kwargs)

    # ------------------------------------------------------------------ inference
    def _batch(self, wavs, wav_lens):
        wavs, wav_lens = validate_batch(wavs, wav_lens)
        return wavs.to(self.device), wav_lens.to(self.device)

    def load_audio(self, path, savedir=None) -> torch.Tensor:
        """Read a file as a validated 16 kHz mono ``[time]`` signal on the model's device."""
        del savedir
        return load_audio(path).to(self.device)

    def encode_batch(self, wavs, wav_lens=None, normalize=False) -> torch.Tensor:
        """Pooled last-layer hidden states ``[batch, 1, hidden]`` (the card's "embeddings").

        Parameters
        ----------
        wavs : torch.Tensor
            ``[time]`` or ``[batch, time]`` 16 kHz mono signals, zero-padded.
        wav_lens : torch.Tensor, optional
            ``[batch]`` relative lengths (SpeechBrain convention).
        normalize : bool
            Unsupported (this model has no embedding normaliser); must be False.
        """
        if normalize:
            raise ValueError("normalize=True: this model has no embedding normaliser")
        wavs, wav_lens = self._batch(wavs, wav_lens)
        return self._forward(wavs, wav_lens).embedding.float().unsqueeze(1)

    def predict_batch(self, wavs, wav_lens=None) -> AgeGenderPrediction:
        """Age and gender for a batch.

        Parameters
        ----------
        wavs : torch.Tensor
            ``[time]`` or ``[batch, time]`` 16 kHz mono signals, zero-padded.
        wav_lens : torch.Tensor, optional
            ``[batch]`` relative lengths; padded rows give the same results as unpadded ones.

        Returns
        -------
        AgeGenderPrediction
        """
        wavs, wav_lens = self._batch(wavs, wav_lens)
        out = self._forward(wavs, wav_lens)
        return self._prediction(out.age, out.gender_logits, out.embedding)

    def _forward(self, wavs, wav_lens) -> ModelOutput:
        """The model on a validated batch, with the selected backend."""
        if self.onnx_session is None:
            with torch.inference_mode(), self.inference_ctx:
                return self.mods.model(wavs, wav_lens)
        lengths = relative_to_samples(wav_lens, wavs.shape[1]).tolist()
        outs = [self.onnx_session.forward(wavs[i, :n].float().cpu().numpy())
                for i, n in enumerate(lengths)]
        return ModelOutput(*(torch.cat(parts) for parts in zip(*outs)))

    def _prediction(self, age_raw, gender_logits, embedding) -> AgeGenderPrediction:
        age_raw = age_raw.detach().float().cpu()
        logits = gender_logits.detach().float().cpu()
        probs = torch.softmax(logits, dim=-1)
        return AgeGenderPrediction(
            age=age_raw * float(self.hparams.age_scale),
            age_raw=age_raw,
            gender_logits=logits,
            gender_probs=probs,
            gender=[self.labels[i] for i in probs.argmax(dim=-1).tolist()],
            labels=self.labels,
            embedding=embedding.detach().float().cpu(),
        )

    def predict_file(self, path, window=None, hop=None, max_whole=None) -> AgeGenderPrediction:
        """Age and gender for one audio file (any format soundfile reads, any rate, any channels).

        Files up to ``max_whole`` seconds (default 30) are analysed in one pass, as the
        reference does. Longer files are read in blocks and analysed in windows of ``window``
        seconds every ``hop`` seconds (defaults 4 and 4), and the windows' results are
        aggregated (duration-weighted mean of age and gender logits; see
        :mod:`agegender_sb.windows`, whose ``analyse_file`` also returns the windows).

        Parameters
        ----------
        path : str or PathLike
        window, hop : float, optional
            Window length and hop in seconds for long files.
        max_whole : float, optional
            Longest file analysed in one pass, in seconds (0: always use windows).

        Returns
        -------
        AgeGenderPrediction
            One row.

        Raises
        ------
        FileNotFoundError, AudioError
            Naming the file and the problem.
        """
        from .windows import analyse_file

        return analyse_file(self, path, window=window, hop=hop, max_whole=max_whole).prediction

    def classify_batch(self, wavs, wav_lens=None):
        """Gender classification with SpeechBrain's return convention.

        Returns
        -------
        out_prob : torch.Tensor
            ``[batch, n_labels]`` gender probabilities (softmax).
        score : torch.Tensor
            ``[batch]`` probability of the best label.
        index : torch.Tensor
            ``[batch]`` index of the best label.
        text_lab : list of str
            Best label names.
        """
        return self._classification(self.predict_batch(wavs, wav_lens))

    @staticmethod
    def _classification(pred: AgeGenderPrediction):
        score, index = pred.gender_probs.max(dim=-1)
        return pred.gender_probs, score, index, pred.gender

    def classify_file(self, path, **kwargs):
        """:meth:`classify_batch` for one file (long files in windows, as :meth:`predict_file`)."""
        del kwargs
        return self._classification(self.predict_file(path))

    def forward(self, wavs, wav_lens=None):
        """Same as :meth:`classify_batch`."""
        return self.classify_batch(wavs, wav_lens)
