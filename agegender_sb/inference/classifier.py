"""``AgeGenderClassifier``: the model as a SpeechBrain ``EncoderClassifier``.

Loading goes through :mod:`agegender_sb.loading.sources` (any source, checked before anything
runs); file analysis through :class:`agegender_sb.inference.analysis.Analyzer`; results are
:class:`agegender_sb.inference.results.AgeGenderPrediction`. :meth:`AgeGenderClassifier.run_model`
is
the one place the network is called.
"""

from __future__ import annotations

import logging
import numbers
import os

import torch
from speechbrain.inference.classifiers import EncoderClassifier

from agegender_sb.audio import load_audio, validate_batch
from agegender_sb.defaults import DEFAULT_SOURCE, DEFAULT_VAD
from agegender_sb.errors import NoSpeechError, SettingsError, TurnError
from agegender_sb.inference.results import AgeGenderPrediction
from agegender_sb.loading.checkpoint import fingerprint
from agegender_sb.loading.config import setting_fields

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
      :class:`~agegender_sb.inference.results.AgeGenderPrediction` (age and gender).

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
                 fast_path: str | None = None, allow_other_onnx: bool = False,
                 pack_weights: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.labels = tuple(self.hparams.gender_labels)
        self.source_layout = getattr(self.hparams, "source_kind", "speechbrain")
        self.config = getattr(self.hparams, "config", None)
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        if fast_path is not None and (backend != "torch" or self.device_type != "cpu"):
            raise ValueError("fast_path is a CPU option of the torch backend")
        self.backend = backend
        self._fingerprint = None
        self.calibration = None  # set by from_hparams (agegender_sb.report.calibration)
        self.onnx_session = None
        #: What computes the numbers with ``backend="onnx"`` (graph fingerprint, the model it
        #: records being exported from); None for the torch backend.
        self.onnx_record = None
        if backend == "onnx":
            from agegender_sb.inference.onnx_backend import attach_onnx

            self.onnx_session = attach_onnx(self, onnx_path, onnx_threads, allow_other_onnx)
        self.fast_path = None
        if fast_path is not None:
            from agegender_sb.backends.fast_paths import enable_fast_path, resolve_fast_path

            self.fast_path = resolve_fast_path(fast_path)  # "auto" → what this CPU runs
            self.fingerprint  # noqa: B018 -- of the float32 weights the fast path derives from
            enable_fast_path(self.mods.model, self.fast_path)
        elif (pack_weights and backend == "torch" and self.device_type == "cpu"
              and self.precision == "fp32"):  # autocast would unpack them at once
            from agegender_sb.backends.fast_linear import pack_linear_weights

            self.fingerprint  # noqa: B018 -- hashed from the plain weights (no transient copy)
            pack_linear_weights(self.mods.model)  # frozen float32 weights: oneDNN's layout

    @property
    def settings(self) -> dict:
        """The plain settings of this model (architecture, labels, ...), as a model folder
        repeats them."""
        return {k: getattr(self.hparams, k) for k in setting_fields() if hasattr(self.hparams, k)}

    @property
    def fingerprint(self) -> str:
        """Short hash of the weights and labels (names result tables and ONNX caches;
        computed before the ONNX backend frees the torch weights)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint({"model": self.mods.model}, self.labels)
        return self._fingerprint

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
        """Load a model from a hub id or a local folder (see :mod:`agegender_sb.loading.sources`).

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
            audEERING's; ``onnx_threads`` sets ONNX Runtime's thread count (default:
            ``torch.get_num_threads()``, so that ``torch.set_num_threads`` and the CLI's
            ``--threads`` govern both backends; ONNX Runtime's own default, all physical
            cores, would oversubscribe ranks under torchrun). ``calibration``: a
            :class:`~agegender_sb.report.calibration.Calibration` or its file, None for none
            (default: the model folder's ``calibration.json`` when it has one; another
            model's is refused with :class:`~agegender_sb.report.calibration.CalibrationError`).
            ``fast_path``
            (CPU, torch backend; :mod:`agegender_sb.backends.fast_paths`): ``"bf16"`` (the matrix
            products in bfloat16; for CPUs with AMX or AVX512-BF16), ``"int8"`` (the
            transformer's in int8), ``"auto"`` (bf16 where the CPU has it, else int8;
            ``clf.fast_path`` says which): faster, not the reference's numbers
            (docs/speed.md). ``pack_weights`` (default True; CPU float32 torch backend without
            a fast path): hold the frozen float32 Linear weights in oneDNN's blocked layout, in
            place of the plain ones (the same numbers, no per-call reorder;
            :func:`~agegender_sb.backends.fast_linear.pack_linear_weights`); False keeps them
            plain, e.g. to export the model at once.

        Raises
        ------
        SourceError
            A folder that does not exist, a hub that cannot be reached (at once, with the ways
            out).
        CheckpointError
            A tensor missing, unexpected, mis-shaped, not float or not finite; a bad config;
            :class:`~agegender_sb.errors.UnsafeModelError` for foreign YAML tags.
        """
        from agegender_sb.loading.sources import load_model, resolve_source

        src = resolve_source(source, savedir=savedir, fetch_config=fetch_config,
                             local_strategy=local_strategy, hparams_file=hparams_file,
                             trust_remote_code=trust_remote_code)
        calibration = kwargs.pop("calibration", "default")
        hparams = load_model(src, overrides)
        hparams["savedir"] = savedir
        clf = cls(modules=hparams["modules"], hparams=hparams, **kwargs)
        # a model folder's calibration.json applies by default (agegender_sb.report.calibration)
        from agegender_sb.loading.sources import CALIBRATION_FILE
        from agegender_sb.report.calibration import model_calibration

        if isinstance(calibration, str) and calibration == "default":
            calibration = src.files.get(CALIBRATION_FILE)
        if calibration is not None:  # the fingerprint is hashed only to check one
            clf.calibration = model_calibration(calibration, None, clf.fingerprint,
                                                clf.labels)
        return clf

    # ------------------------------------------------------------------ inference
    def load_audio(self, path, savedir=None) -> torch.Tensor:
        """Read a file as a validated 16 kHz mono ``[time]`` signal on the model's device."""
        del savedir
        return load_audio(path).to(self.device)

    def run_model(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> AgeGenderPrediction:
        """The network on a checked batch (``[B, T]`` 16 kHz, relative lengths): the one
        place the model is called (the torch modules, or the ONNX Runtime graph in their
        place with ``backend="onnx"``)."""
        with torch.inference_mode(), self.inference_ctx:
            out = self.mods.model(wavs, wav_lens)
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

    def analyzer(self, vad=DEFAULT_VAD, vad_options: dict | None = None, **settings):
        """An :class:`~agegender_sb.inference.analysis.Analyzer` for this model.

        Parameters
        ----------
        vad : str, detector or None
            Speech detector: ``"silero"`` (default), ``"energy"``, None (analyse every
            sample, as the reference does), or a detector object (see
            :mod:`agegender_sb.speech.detectors`).
        vad_options : dict, optional
            Detector options (``threshold``, ``min_speech_s``, ``min_silence_s``,
            ``speech_pad_s``, ...).
        **settings
            ``window``, ``hop``, ``max_whole``, ``min_tail``, ``batch_size``, ``trim``,
            ``context``: see :class:`~agegender_sb.inference.analysis.AnalysisSettings`.
        """
        from agegender_sb.inference.analysis import Analyzer

        return Analyzer(self, detector=self._detector(vad, vad_options), **settings)

    def _detector(self, vad, options):
        if vad is None or not isinstance(vad, str):
            if options:
                raise ValueError("vad_options need a detector name")
            return vad
        if options is not None and not isinstance(options, dict):
            raise SettingsError(f"vad_options must be a dict, got {type(options).__name__}")
        for name, value in (options or {}).items():
            if not isinstance(value, (numbers.Real, str, type(None))):
                raise SettingsError(f"vad_options[{name!r}] must be a number, string or None, "
                                    f"got {type(value).__name__} {value!r}")
        key = (vad.lower(), tuple(sorted((options or {}).items())))
        cache = self.__dict__.setdefault("_detectors", {})
        if key not in cache:  # one detector (and one silero model) per setting
            from agegender_sb.speech.detectors import make_detector

            cache[key] = make_detector(vad, **(options or {}))
        return cache[key]

    def analyse(self, path, **settings):
        """The full analysis of one file: :class:`~agegender_sb.inference.analysis.FileResult` (its
        spans, windows, detected speech and pooled prediction; no prediction without
        speech). Settings as :meth:`analyzer`."""
        return self.analyzer(**settings).analyse(path)

    def predict_file(self, path, **settings) -> AgeGenderPrediction:
        """Age and gender for one audio file (any format soundfile reads, any rate, any channels).

        Files up to ``max_whole`` seconds (default 30) are analysed in one pass, exactly as
        the reference does; the speech detector (``vad``, default Silero) only decides
        whether there is speech (``trim=True`` also cuts the file to it). Longer files are
        read in blocks and analysed in windows of ``window`` seconds every ``hop`` seconds
        (defaults 4 and 4) over detected speech, pooled by duration. ``vad=None`` analyses
        every sample. For windows and detected speech spans, use :meth:`analyse`.

        Raises
        ------
        FileNotFoundError, AudioError
            Naming the file and the problem; :class:`~agegender_sb.errors.NoSpeechError` when
            the detector finds no speech (no age and no gender for it).
        """
        result = self.analyse(path, **settings)
        if result.prediction is None:
            raise NoSpeechError(f"{path}: {result.message}")
        return result.prediction

    def predict_segments(self, path, segments, **settings):
        """Analyse speaker turns of one file; return its
        :class:`~agegender_sb.inference.analysis.FileResult`.

        Each turn is analysed as the reference analyses that span cut out of the file (whole
        up to ``max_whole``, else windows over speech); ``result.spans`` has one result per
        turn, ``result.speakers()`` each speaker's turns pooled by seconds of speech.

        Parameters
        ----------
        segments : sequence or pyannote.core.Annotation
            ``(start, end[, speaker])`` tuples in seconds, :class:`~agegender_sb.speech.turns.Turn`
            objects, or a ``pyannote.core.Annotation`` (a diarization).
        **settings
            As :meth:`analyzer`.

        Raises
        ------
        TurnError
            For turns past the end of the file, of zero length, or given twice.
        """
        from agegender_sb.speech.turns import Turn, turns_from_annotation, turns_from_tuples

        if hasattr(segments, "itertracks"):
            turns = turns_from_annotation(segments)
        else:
            segments = list(segments)
            turns = (segments if all(isinstance(t, Turn) for t in segments)
                     else turns_from_tuples(segments))
        if not turns:
            raise TurnError(f"{path}: no speaker turns given (an empty list or diarisation); "
                            "use predict_file to analyse the whole file")
        return self.analyzer(**settings).analyse(path, turns)

    def predict_table(self, inputs, segments: bool = False, speakers=None, rttm=None,
                      precise: bool = False, progress: bool = False,
                      calibration="default", age_bands=None, **settings):
        """What ``agegender predict`` writes, as a pandas DataFrame (``pip install
        "agegender_sb[table]"``): the same rows, columns and numbers, from the same batch
        runner (:mod:`agegender_sb.batch.runner`).

        Parameters
        ----------
        inputs : str, PathLike or sequence of them
            Audio files, folders, list files (``.csv`` segment lists included); a file named
            twice is analysed once.
        segments : bool
            Also one row per window or turn (``--segments``).
        speakers : str or PathLike, optional
            Kaldi ``utt2spk`` or CSV ``path,speaker``: add one row per speaker.
        rttm : str or PathLike, optional
            Speaker turns (an RTTM file or a folder of them).
        precise : bool
            Numbers unrounded (default: rounded as the command writes them).
        progress : bool
            A progress bar on stderr.
        calibration : Calibration, str, PathLike or None
            Adds ``age_low``, ``age_high``, ``p_<label>`` (``--calibration``; default:
            :attr:`calibration`, the model folder's; None: none).
        age_bands : sequence of float, optional
            With a calibration: one ``p_age_<lo>_<hi>`` column per band between these edges.
        **settings
            As :meth:`analyzer` (``vad``, ``window``, ``max_whole``, ...).

        Returns
        -------
        pandas.DataFrame
            Indexed by ``file``, ``start``, ``end`` (audformat's segmented index:
            ``pd.Timedelta``), with the table's other columns (``path`` included, as the
            command writes it): a file's row has start 0 and end ``NaT`` (the whole file, as
            audformat writes filewise rows); a window or turn row its times; a speaker's row
            within a file the span from its first turn to its last; a ``speakers`` row, which
            belongs to no one file, an empty ``file``. ``reset_index()`` gives the columns
            ``file, start, end`` and the rest; select one kind of row (by ``start`` or
            ``speaker``) before joining on the index: a speaker with one turn has the same
            span as that turn.
        """
        from agegender_sb.batch.frames import table_frame

        return table_frame(self, inputs, segments, speakers, rttm, precise, progress,
                           self._table_calibration(calibration, age_bands), **settings)

    def _table_calibration(self, calibration, age_bands):
        from agegender_sb.report.calibration import model_calibration

        if isinstance(calibration, str) and calibration == "default":
            cal = self.calibration
        else:
            cal = model_calibration(calibration, None, self.fingerprint, self.labels)
        if age_bands is not None:
            if cal is None:
                raise ValueError("age_bands need a calibration")
            cal = cal.with_options(bands=age_bands)
        return cal

    def calibrate(self, table, truth, levels=(0.9,), min_group: int = 30):
        """Fit a :class:`~agegender_sb.report.calibration.Calibration` of this model from a table
        (a file ``agegender predict`` wrote, or :meth:`predict_table`'s DataFrame) and a
        truth CSV (``path`` or ``speaker``, ``age``, ``gender``); ``.save(path)`` it, or
        apply it with ``predict_table(..., calibration=cal)``.

        Raises
        ------
        CalibrationError
            A table made by another model, no row matched, too few rows for a level.
        """
        from agegender_sb.report.calibration import calibrate_table

        rows = None
        if hasattr(table, "to_dict"):  # a DataFrame from predict_table
            import math

            rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                     for k, v in r.items()} for r in table.to_dict("records")]
            table = "the table"
        return calibrate_table(table, truth, levels, min_group, fingerprint=self.fingerprint,
                               rows=rows, labels=self.labels)

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

    def classify_file(self, path, savedir=None, **settings):
        """:meth:`classify_batch` for one file, analysed as :meth:`predict_file` (settings
        such as ``vad=None`` passed on; ``savedir``, SpeechBrain's argument, is unused)."""
        del savedir
        return self._classification(self.predict_file(path, **settings))

    def forward(self, wavs, wav_lens=None):
        """Same as :meth:`classify_batch`."""
        return self.classify_batch(wavs, wav_lens)
