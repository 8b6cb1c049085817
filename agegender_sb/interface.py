"""``AgeGenderClassifier``: the model as a SpeechBrain ``EncoderClassifier``.

Loading goes through :mod:`agegender_sb.sources` (any source, checked before anything
runs); file analysis through :class:`agegender_sb.analysis.Analyzer`; results are
:class:`agegender_sb.results.AgeGenderPrediction`. :meth:`AgeGenderClassifier.run_model` is
the one place the network is called.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from speechbrain.inference.classifiers import EncoderClassifier

from .audio import AudioError, load_audio, validate_batch
from .checkpoint import CheckpointError, fingerprint
from .defaults import DEFAULT_SOURCE
from .model_config import setting_fields
from .results import AgeGenderPrediction

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SOURCE", "AgeGenderPrediction", "AgeGenderClassifier"]



class AgeGenderClassifier(EncoderClassifier):
    """Speaker age and gender from speech, with SpeechBrain's ``EncoderClassifier`` contract.

    Load with :meth:`from_hparams` from a Hugging Face id or a local folder, in audEERING's
    transformers layout or as a SpeechBrain model folder. Inputs are 16 kHz mono signals;
    files of any sample rate and channel count are converted on load.

    - ``classify_batch(wavs, wav_lens)`` → ``(gender probabilities [B, n], best probability [B],
      index [B], labels list[str])``; ``classify_file(path)`` the same for one file.
    - ``encode_batch(wavs, wav_lens)`` → ``[B, 1, hidden]`` pooled embeddings.
    - ``predict_batch`` / ``predict_file`` / ``predict_segments`` →
      :class:`~agegender_sb.results.AgeGenderPrediction` (age and gender).

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
        self.source_layout = getattr(self.hparams, "source_kind", "speechbrain")
        self.config = getattr(self.hparams, "config", None)
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        self.backend = backend
        self._fingerprint = None
        self.onnx_session = None
        if backend == "onnx":
            self.onnx_session = self._open_onnx(onnx_path, onnx_threads)

    @property
    def settings(self) -> dict:
        """The plain settings of this model (architecture, labels, ...), as a model folder
        repeats them."""
        return {k: getattr(self.hparams, k) for k in setting_fields() if hasattr(self.hparams, k)}

    @property
    def fingerprint(self) -> str:
        """Short hash of the weights and labels (names result tables and ONNX caches)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint({"model": self.mods.model}, self.labels)
        return self._fingerprint

    def _open_onnx(self, onnx_path, threads):
        """Open (exporting first if needed) the ONNX graph of this model."""
        from .onnx_export import OnnxAgeGender, _import_onnxruntime, export_onnx

        _import_onnxruntime()  # fail early, with the install hint, before a long export
        if onnx_path is None:
            folder = Path(getattr(self.hparams, "savedir", None) or
                          Path.home() / ".cache" / "agegender_sb" / "onnx")
            onnx_path = folder / f"agegender-{self.fingerprint}.onnx"
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
        fetch_config=None,
        local_strategy=None,
        trust_remote_code: bool = False,
        **kwargs,
    ) -> AgeGenderClassifier:
        """Load a model from a hub id or a local folder (see :mod:`agegender_sb.sources`).

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
            Overrides of ``hparams/inference.yaml``'s values, e.g.
            ``{"wav2vec2": {"layerdrop": 0.0}}``; they apply on top of the source's values.
        savedir : str or PathLike, optional
            Where fetched files are linked or copied.
        fetch_config : speechbrain.utils.fetching.FetchConfig, optional
            Token, revision, offline mode, ...
        local_strategy : speechbrain.utils.fetching.LocalStrategy, optional
        trust_remote_code : bool
            Load a SpeechBrain folder whose ``hyperparams.yaml`` has tags this package does
            not write (its code runs); refused otherwise.
        **kwargs
            ``run_opts`` (e.g. ``{"device": "cuda"}``, ``{"precision": "bf16"}`` for autocast),
            ``freeze_params``, and the backend switch: ``backend="onnx"`` runs the model with
            ONNX Runtime (``pip install "agegender_sb[onnx]"``), exporting it once to
            ``onnx_path`` (default: ``savedir`` or ``~/.cache/agegender_sb/onnx``, named by a
            hash of the weights); ``onnx_path`` may also name an existing export, ours or
            audEERING's; ``onnx_threads`` sets ONNX Runtime's thread count.

        Raises
        ------
        SourceError
            A folder that does not exist, a hub that cannot be reached (at once, with the ways
            out).
        CheckpointError
            A tensor missing, unexpected, mis-shaped, not float or not finite; a bad config;
            :class:`~agegender_sb.sources.UnsafeModelError` for foreign YAML tags.
        """
        from .sources import load_model, resolve_source

        src = resolve_source(source, savedir=savedir, fetch_config=fetch_config,
                             local_strategy=local_strategy, hparams_file=hparams_file,
                             trust_remote_code=trust_remote_code)
        hparams = load_model(src, overrides)
        hparams["savedir"] = savedir
        return cls(modules=hparams["modules"], hparams=hparams, **kwargs)

    # ------------------------------------------------------------------ inference
    def load_audio(self, path, savedir=None) -> torch.Tensor:
        """Read a file as a validated 16 kHz mono ``[time]`` signal on the model's device."""
        del savedir
        return load_audio(path).to(self.device)

    def run_model(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> AgeGenderPrediction:
        """The network on a checked batch (``[B, T]`` 16 kHz, relative lengths), with the
        selected backend: the one place the model is called."""
        if self.onnx_session is None:
            with torch.inference_mode(), self.inference_ctx:
                out = self.mods.model(wavs, wav_lens)
        else:
            from .audio import relative_to_samples
            from .model import ModelOutput

            lengths = relative_to_samples(wav_lens, wavs.shape[1]).tolist()
            outs = [self.onnx_session.forward(wavs[i, :n].float().cpu().numpy())
                    for i, n in enumerate(lengths)]
            out = ModelOutput(*(torch.cat(parts) for parts in zip(*outs)))
        return AgeGenderPrediction.from_outputs(out.age, out.gender_logits, out.embedding,
                                                self.labels, float(self.hparams.age_scale))

    def predict_batch(self, wavs, wav_lens=None) -> AgeGenderPrediction:
        """Age and gender for a batch.

        Parameters
        ----------
        wavs : torch.Tensor
            ``[time]`` or ``[batch, time]`` 16 kHz mono signals, zero-padded.
        wav_lens : torch.Tensor, optional
            ``[batch]`` relative lengths; padded rows give the same results as unpadded ones.
        """
        wavs, wav_lens = validate_batch(wavs, wav_lens)
        return self.run_model(wavs.to(self.device), wav_lens.to(self.device))

    def encode_batch(self, wavs, wav_lens=None, normalize=False) -> torch.Tensor:
        """Pooled last-layer hidden states ``[batch, 1, hidden]`` (the card's "embeddings").

        ``normalize=True`` is unsupported (this model has no embedding normaliser).
        """
        if normalize:
            raise ValueError("normalize=True: this model has no embedding normaliser")
        return self.predict_batch(wavs, wav_lens).embedding.unsqueeze(1)

    def analyzer(self, **settings):
        """An :class:`~agegender_sb.analysis.Analyzer` for this model (``window``, ``hop``,
        ``max_whole``, ``batch_size``, ``vad``, ``trim``, ...; see there)."""
        from .analysis import Analyzer

        return Analyzer(self, **settings)

    def predict_file(self, path, **settings) -> AgeGenderPrediction:
        """Age and gender for one audio file (any format soundfile reads, any rate, any channels).

        Files up to ``max_whole`` seconds (default 30) are analysed in one pass, as the
        reference does. Longer files are read in blocks and analysed in windows of ``window``
        seconds every ``hop`` seconds (defaults 4 and 4), pooled by duration. For the
        windows, detected speech and the settings, use :meth:`analyzer` (``analyse(path)``).

        Raises
        ------
        FileNotFoundError, AudioError
            Naming the file and the problem.
        """
        result = self.analyzer(**settings).analyse(path)
        if result.prediction is None:
            raise AudioError(f"{path}: {result.error}")
        return result.prediction

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
