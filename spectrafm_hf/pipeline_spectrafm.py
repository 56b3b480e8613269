"""The transformers pipeline task ``"stellar-label-prediction"``: spectra in, stellar labels with 1σ
uncertainties in physical units out, in one call. (A ``transformers.Pipeline``; not to be confused with
``spectrafm_hf/pipeline/``, the package's three-stage training pipeline.)

    from transformers import pipeline

    predictor = pipeline("stellar-label-prediction", model="runs/quickstart/stage3")   # spectrafm_hf imported
    predictor = pipeline("stellar-label-prediction", model="org/model", trust_remote_code=True)  # without it
    predictor({"wavelength": wavelength, "flux": flux}, labels=["FE_H", "TEFF"])
    # one spectrum, flux (P,):  {"FE_H": -0.21, "FE_H_err": 0.03, "TEFF": 4810.0, "TEFF_err": 61.0, "flags": ""}
    # N spectra, flux (N, P):   a list of N such dicts ("id" first when ids are given)
    # a list of inputs:         a list of results, one per input

Units: those of the model's label statistics, K for TEFF, dex for LOGG and the abundances. ``flags`` are
the feature extractor's quality flags (``QUALITY_FLAGS``; ``";"``-joined, ``""`` = fine); a refused
spectrum gets NaN values and errors. The numbers are those of ``spectrafm_hf.predict_labels`` with the
same options.

Where ``spectrafm_hf`` is installed, ``import spectrafm_hf`` registers the task (:func:`register_pipeline`)
and a path to a spectra file (npz, Parquet, FITS, APOGEE files, a dataset folder) is accepted as input.
Where it is not, a checkpoint folder carries this file and a ``custom_pipelines`` entry in
``config.json`` (:data:`CUSTOM_PIPELINES`), and ``trust_remote_code=True`` loads it; inputs are then
arrays only (the file readers belong to the package).

This file travels to the Hugging Face Hub with the model code: it imports only numpy, torch,
transformers and its siblings.
"""

from __future__ import annotations

import contextlib
import importlib
import os

import numpy as np
import torch
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_spectrafm import DEFAULT_NAMED_TOKENS
from .feature_extraction_spectrafm import REFUSING_FLAGS

#: The task name, as given to ``transformers.pipeline``.
TASK = "stellar-label-prediction"

#: ``config.json``'s ``custom_pipelines`` value that lets ``transformers.pipeline(TASK, model=folder,
#: trust_remote_code=True)`` find this class in a checkpoint folder beside the model code (the layout
#: ``Pipeline.save_pretrained`` writes for a registered pipeline).
CUSTOM_PIPELINES = {TASK: {"impl": "pipeline_spectrafm.SpectraFMLabelPipeline", "pt": ["AutoModel"]}}

#: Keys of a dict input.
INPUT_KEYS = ("wavelength", "flux", "flux_err", "mask", "scalars", "ids")

#: Flag of a spectrum the quality checks accepted but whose predicted value or error is not finite.
NON_FINITE_OUTPUT = "non_finite_output"


class SpectraFMLabelPipeline(Pipeline):
    """``transformers.pipeline("stellar-label-prediction", model=...)``: labels with 1σ for spectra.

    Input: a dict ``{"wavelength": (P,) or (N, P) vacuum Å, "flux": (P,) or (N, P)}`` with optional
    ``"flux_err"``, ``"mask"`` (True = bad pixel), ``"scalars"`` (named inputs the model knows, name →
    (N,)) and ``"ids"`` (N,); a list of such dicts; or, with ``spectrafm_hf`` installed, a path to a
    spectra file (label and unknown columns of a file are never fed to the model).

    Call options: ``labels`` (names, default the model's stellar labels), ``context`` (``"all"``,
    default: every pixel in one pass; an int: chunks of that many pixels, combined), ``pixels``
    (``"window"``, default: the window the model was trained on; ``"all"``), ``spectra_per_batch``
    (spectra per forward pass, default 8). Many spectra go in ONE input as an (N, P) flux; the
    pipeline's own ``batch_size`` (for lists of inputs) must stay 1.
    """

    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = True
    _load_tokenizer = False

    #: ``"module:function"`` reading a path into an object with ``wavelength``, ``flux``, ``flux_err``,
    #: ``mask``, ``scalars`` and ``ids`` (imported on first use). Set by ``spectrafm_hf`` when installed
    #: (:func:`register_pipeline`); None as remote code: arrays only.
    file_reader: str | None = None

    def __call__(self, inputs, **kwargs):
        """Labels for ``inputs`` (see the class docstring); the options as keyword arguments."""
        if (kwargs.get("batch_size") or self._batch_size or 1) != 1:
            raise ValueError("batch_size must be 1 for stellar-label-prediction: put many spectra in one input "
                             "(flux of shape (N, P)); spectra_per_batch= sets how many run at once")
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, labels=None, context=None, pixels=None, spectra_per_batch=None):
        preprocess, forward = {}, {}
        if labels is not None:
            preprocess["labels"] = [labels] if isinstance(labels, str) else list(labels)
        if pixels is not None:
            if pixels not in ("window", "all"):
                raise ValueError(f"pixels must be 'window' or 'all', got {pixels!r}")
            preprocess["pixels"] = pixels
        if context is not None:
            forward["context_length"] = _context_length(context)
        if spectra_per_batch is not None:
            if int(spectra_per_batch) < 1:
                raise ValueError(f"spectra_per_batch must be >= 1, got {spectra_per_batch}")
            forward["spectra_per_batch"] = int(spectra_per_batch)
        return preprocess, forward, {}

    def get_inference_context(self):
        return torch.inference_mode

    def preprocess(self, inputs, labels=None, pixels="window"):
        """Validate and standardise the spectra (``ValueError`` naming a bad input); nothing is run yet."""
        arrays = self._read(inputs)
        extractor = self.feature_extractor
        extractor.check_compatible(self.model.config)
        request = labels or [name for name in DEFAULT_NAMED_TOKENS if name in self.model.config.named_tokens]
        for name in request:
            extractor.token_id(name)
        flux = np.asarray(arrays["flux"])
        window = extractor.training_window_A if pixels == "window" else None
        prepared = extractor.prepare(arrays["wavelength"], flux, flux_err=arrays.get("flux_err"),
                                     mask=arrays.get("mask"), scalars=arrays.get("scalars"), window=window,
                                     assess=True)
        ids = arrays.get("ids")
        if ids is not None and len(ids) != len(prepared):
            raise ValueError(f"ids has {len(ids)} entries for {len(prepared)} spectra; give one id per spectrum")
        return {"prepared": prepared, "request": request, "ids": ids, "single": flux.ndim == 1}

    def _forward(self, model_inputs, context_length=None, spectra_per_batch=8):
        prepared, request = model_inputs["prepared"], model_inputs["request"]
        mean, log_variance = standardised_predictions(self.model, self.feature_extractor, prepared, request,
                                                      context_length, spectra_per_batch, self.device)
        values, errors = self.feature_extractor.to_physical(request, mean, log_variance)
        return {**model_inputs, "values": values, "errors": errors}

    def postprocess(self, model_outputs):
        """One dict per spectrum: ``id`` (when given), ``<LABEL>``, ``<LABEL>_err``, ``flags``."""
        request, values, errors = model_outputs["request"], model_outputs["values"], model_outputs["errors"]
        flags = list(model_outputs["prepared"].quality.flags)
        ids = model_outputs["ids"]
        rows = []
        for i in range(len(values)):
            row = {} if ids is None else {"id": _plain(ids[i])}
            broken = not (np.isfinite(values[i]).all() and np.isfinite(errors[i]).all())
            refused = bool(REFUSING_FLAGS.intersection(str(flags[i]).split(";")))
            if broken and not refused:  # a damaged checkpoint: never a silent NaN row
                flags[i] = ";".join(f for f in (str(flags[i]), NON_FINITE_OUTPUT) if f)
            for j, name in enumerate(request):
                row[name] = float("nan") if broken else float(values[i, j])
                row[f"{name}_err"] = float("nan") if broken else float(errors[i, j])
            row["flags"] = str(flags[i])
            rows.append(row)
        return rows[0] if model_outputs["single"] else rows

    def _read(self, inputs) -> dict:
        """A dict input checked for its keys, or a file read by the package's readers."""
        if isinstance(inputs, (str, os.PathLike)):
            return self._read_file(inputs)
        if not isinstance(inputs, dict):
            raise ValueError(f"stellar-label-prediction takes a dict of arrays (keys {', '.join(INPUT_KEYS)}), a "
                             f"list of them, or a file path; got {type(inputs).__name__}")
        unknown = sorted(set(inputs) - set(INPUT_KEYS))
        missing = [key for key in ("wavelength", "flux") if key not in inputs]
        if unknown or missing:
            raise ValueError(f"input keys {unknown or missing} {'unknown' if unknown else 'missing'}: give "
                             f"'wavelength' and 'flux', optionally {', '.join(INPUT_KEYS[2:])}")
        return dict(inputs)

    def _read_file(self, path) -> dict:
        if self.file_reader is None:
            raise ValueError(f"cannot read {os.fspath(path)!r}: reading files needs the spectrafm_hf package "
                             "(pip install spectrafm-hf); as remote code this pipeline takes arrays: "
                             "{'wavelength': ..., 'flux': ...}")
        module, function = self.file_reader.split(":")
        spectra = getattr(importlib.import_module(module), function)(path)
        # A file's label columns (truths) and columns the model does not know are never model inputs.
        inputs = set(self.model.config.named_tokens) - set(DEFAULT_NAMED_TOKENS)
        scalars = {name: values for name, values in (spectra.scalars or {}).items() if name in inputs}
        return {"wavelength": spectra.wavelength, "flux": spectra.flux, "flux_err": spectra.flux_err,
                "mask": spectra.mask, "scalars": scalars, "ids": spectra.ids}


def standardised_predictions(model, feature_extractor, prepared, request: list[str], context_length: int | None,
                             spectra_per_batch: int, device: torch.device | None = None, autocast=None,
                             progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Standardised (mean, log_variance), each (N, Q), of prepared spectra (``feature_extractor.prepare``
    with ``assess=True``): the stars the quality checks refuse are not run (NaN), the others go through
    the model ``spectra_per_batch`` at a time, read whole (``context_length`` None) or in chunks of
    that many pixels combined per star (``feature_extractor.combine_chunks``). The one loop behind both
    this pipeline and ``spectrafm_hf.predict_labels``.

    Args:
        device: where the model runs (default: where its parameters are).
        autocast: a context manager entered around each forward pass (e.g. ``torch.autocast`` for bf16).
        progress: ``progress(batch_starts, total)`` → an iterable of the same starts (e.g. a tqdm bar).
    """
    n = len(prepared)
    mean = np.full((n, len(request)), np.nan)
    log_variance = np.full((n, len(request)), np.nan)
    accepted = np.flatnonzero(~prepared.quality.refused)
    device = next(model.parameters()).device if device is None else device
    starts = range(0, accepted.size, spectra_per_batch)
    starts = progress(starts, len(starts)) if progress is not None else starts
    was_training = model.training
    model.eval()
    try:
        for start in starts:
            rows = accepted[start : start + spectra_per_batch]
            batch = feature_extractor.tokenize(prepared.select(rows), request=request, context_length=context_length,
                                               sampling="all", return_tensors="pt")
            spectrum_index = batch.pop("spectrum_index", None)
            with torch.inference_mode(), (autocast if autocast is not None else contextlib.nullcontext()):
                out = model(**{key: value.to(device) for key, value in batch.items()})
            if spectrum_index is None:
                mean[rows], log_variance[rows] = out.mean.float().cpu().numpy(), out.log_variance.float().cpu().numpy()
            else:
                mean[rows], log_variance[rows] = feature_extractor.combine_chunks(
                    spectrum_index, out.mean.float(), out.log_variance.float(), n_spectra=rows.size)
    finally:
        model.train(was_training)
    return mean, log_variance


def register_pipeline(file_reader: str | None = None) -> None:
    """Register :data:`TASK` with ``transformers.pipelines.PIPELINE_REGISTRY`` (``spectrafm_hf`` does it on
    import), so ``transformers.pipeline(TASK, model=folder)`` builds a :class:`SpectraFMLabelPipeline`
    without remote code. ``file_reader``: ``"module:function"`` that reads a spectra file for path inputs."""
    SpectraFMLabelPipeline.file_reader = file_reader
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=SpectraFMLabelPipeline, pt_model=AutoModel)


def _context_length(context) -> int | None:
    """``"all"`` → None (every pixel in one pass); a positive int → pixels per chunk."""
    if context == "all":
        return None
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < 1:
        raise ValueError(f"context must be 'all' or a positive integer, got {context!r}")
    return int(context)


def _plain(value):
    """A numpy scalar (e.g. an id) as a plain Python value."""
    return value.item() if isinstance(value, np.generic) else value


__all__ = ["CUSTOM_PIPELINES", "TASK", "SpectraFMLabelPipeline", "register_pipeline", "standardised_predictions"]
