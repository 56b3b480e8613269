"""Predict labels with 1σ uncertainties, in physical units, for spectra given as arrays (in memory).

Every star gets quality flags (``LabelPredictions.flags``, the output's ``flags`` column): a spectrum the
model cannot answer for (no pixel in its trained range, flux unlike its training flux, constant flux,
nothing valid) gets NaN values and a refusing flag; a doubtful one (few pixels, pixels outside the
trained range) is predicted and flagged. The rules live with the tokenizer
(``feature_extraction_spectrafm.QUALITY_FLAGS``).
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from ..checkpoints import resolve_device as _device
from ..feature_extraction_spectrafm import REFUSING_FLAGS, PreparedSpectra, SpectraFMFeatureExtractor, SpectraQuality

#: ``pixels=`` values of :func:`predict_labels`
PIXEL_MODES = ("window", "all")
#: ``dtype=`` values of :func:`predict_labels` (``--dtype``): the compute precision of the forward pass.
DTYPES = ("float32", "bfloat16")


#: Flag of a star the quality checks accepted but whose predicted value or error is not finite
#: (refused, like the feature extractor's ``REFUSING_FLAGS``).
NON_FINITE_OUTPUT = "non_finite_output"


@dataclass
class LabelPredictions:
    """Predicted labels of N spectra.

    Attributes:
        names: the requested labels, in request order.
        values: name → (N,) predicted values in physical units (K, dex); NaN for refused stars.
        errors: name → (N,) predicted 1σ uncertainties, same units; NaN for refused stars.
        flags: (N,) str, ``";"``-joined quality flags (``feature_extraction_spectrafm.QUALITY_FLAGS``);
            ``""`` = fine. None = not assessed (all fine).
        n_pixels_not_read: (N,) valid pixels left out because they lie outside the model's training
            window (``pixels="window"``); None = none left out.
        ids: (N,) star identifiers (``predict_labels(ids=...)``); None = not given.
    """

    names: list[str]
    values: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]
    flags: np.ndarray | None = None
    n_pixels_not_read: np.ndarray | None = field(default=None, repr=False)
    ids: np.ndarray | None = None

    def __post_init__(self):
        if self.flags is None:
            self.flags = np.full(len(self), "", dtype=object)

    def __getitem__(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(values, errors)`` of one label."""
        return self.values[name], self.errors[name]

    def __len__(self) -> int:
        return len(self.values[self.names[0]]) if self.names else 0

    @property
    def refused(self) -> np.ndarray:
        """(N,) bool: stars without a prediction (NaN values, a refusing flag)."""
        return refused_rows(self.flags)

    def to_columns(self) -> dict[str, np.ndarray]:
        """Columns ``<LABEL>``, ``<LABEL>_err`` in request order (the output layout, before ``flags``)."""
        columns = {}
        for name in self.names:
            columns[name] = self.values[name]
            columns[f"{name}_err"] = self.errors[name]
        return columns

    def to_table(self):
        """An ``astropy.table.Table``: ``id`` (when known), ``<LABEL>``, ``<LABEL>_err`` with their
        units (K, dex) and descriptions, then ``flags`` (the layout of ``spectrafm predict``)."""
        from .output import astropy_table

        return astropy_table(self.output_columns())

    def to_pandas(self):
        """A ``pandas.DataFrame`` with the columns of :meth:`to_table`; units in ``df.attrs["units"]``."""
        import pandas as pd

        from .output import column_unit

        frame = pd.DataFrame(self.output_columns())
        frame.attrs["units"] = {name: column_unit(name) for name in frame.columns if column_unit(name)}
        return frame

    def output_columns(self) -> dict[str, np.ndarray]:
        """``id`` (when known), ``<LABEL>``, ``<LABEL>_err``..., ``flags``: the rows ``spectrafm predict`` writes."""
        ids = {} if self.ids is None else {"id": np.asarray(self.ids).astype(str)}
        return {**ids, **self.to_columns(), "flags": np.asarray(self.flags).astype(str)}

    def summary(self, window: Sequence[float] | None = None) -> str | None:
        """One line: flagged stars per flag and pixels left out (``window``: the reading window, Å,
        for the message), or None when every star is fine and nothing was left out."""
        not_read = 0 if self.n_pixels_not_read is None else int(np.sum(self.n_pixels_not_read))
        return flag_summary(Counter(f for flags in self.flags for f in str(flags).split(";") if f),
                            int(sum(1 for flags in self.flags if flags)), int(self.refused.sum()), len(self),
                            not_read, window)


def refused_rows(flags) -> np.ndarray:
    """(N,) bool: rows whose ``";"``-joined flags include a refusing one (no prediction)."""
    refusing = REFUSING_FLAGS | {NON_FINITE_OUTPUT}
    return np.array([bool(refusing.intersection(str(f).split(";"))) for f in flags], dtype=bool)


def flag_summary(counts: Counter, n_flagged: int, n_refused: int, n: int, n_not_read: int,
                 window: Sequence[float] | None = None) -> str | None:
    """The one summary line of :meth:`LabelPredictions.summary` from its counts (also summed over
    the shards of a catalogue run): flag → stars, flagged / refused / all stars, pixels left out."""
    parts = []
    if n_flagged:
        listed = ", ".join(f"{count} {flag}" for flag, count in counts.most_common())
        parts.append(f"{n_flagged} of {n} spectra flagged: {listed} ({n_refused} refused, values NaN)")
    if n_not_read:
        where = "" if window is None else f" {window[0]:.1f}–{window[1]:.1f} Å"
        parts.append(f"{n_not_read} valid pixels outside the model's training window{where} not read "
                     "(--all-pixels / pixels='all' reads them)")
    return "; ".join(parts) or None


def predict_labels(
    model,
    feature_extractor: SpectraFMFeatureExtractor,
    wavelength,
    flux,
    flux_err=None,
    mask=None,
    scalars: Mapping[str, np.ndarray] | None = None,
    request: Sequence[str] | str = ("FE_H",),
    batch_size: int = 8,
    context: str | int = "all",
    device: str | torch.device | None = None,
    progress: bool = True,
    pixels: str = "window",
    dtype: str | torch.dtype = "float32",
    ids=None,
) -> LabelPredictions:
    """Predict ``request`` labels for spectra, with 1σ uncertainties in physical units.

    The whole input is validated first (``ValueError`` on bad input), every star gets quality flags
    (refused stars get NaN and are not run), then spectra go through the model ``batch_size`` at a time.

    Whole context vs chunks: ``context="all"`` reads a star's pixels in one pass (exact). Chunks are
    each predicted alone and combined (``SpectraFMFeatureExtractor.combine_chunks``): the mean is
    precision-weighted; σ² is the weighted mean of the chunk variances plus the scatter of the chunk
    means, with no 1/n shrinkage, since the chunks of one star share its systematic errors. The two
    are not the same estimator: a chunk sees fewer pixels (closer to the training context) and the
    model is not linear in its context, so the means differ by a fraction of σ and the chunked σ is
    larger (conservative). Measured on a trained toy model (tests/test_predict_quality.py, 5 chunks):
    68 % coverage 0.66 whole context, 0.72 chunked (0.43 with the former 1/n-shrinking combination);
    the means differ by 0.07 dex RMS, within the stated σ for every star.

    Args:
        model: a :class:`SpectraFMModel` (e.g. from :func:`load_model`).
        feature_extractor: its :class:`SpectraFMFeatureExtractor`.
        wavelength: vacuum Å, (P,) or (N, P).
        flux: (N, P) (or (P,) for one spectrum); flux_err, mask (True = bad pixel): like flux.
        scalars: named non-spectral inputs, name → (N,) physical values.
        request: label names, e.g. ``("FE_H", "TEFF")``.
        batch_size: spectra per forward pass.
        context: ``"all"`` = every valid pixel in one pass (the default, exact); an int = disjoint
            chunks of that many pixels covering every valid pixel, combined as above.
        device: torch device (default: the model's device).
        progress: show a tqdm progress bar.
        pixels: ``"window"`` (default) = only the pixels inside the window the model was last trained
            on (``feature_extractor.training_window_A``; all pixels when not recorded), as a model
            fine-tuned on a window reads every pixel it is given; ``"all"`` = every valid pixel.
        dtype: ``"float32"`` (default, exact) or ``"bfloat16"``: the forward pass under
            ``torch.autocast`` in bf16 (weights stay float32), about 1.8x faster on CPUs with
            AVX512-BF16/AMX and on GPUs; refused (``ValueError``) where the hardware has no bf16
            support. Measured cost on the quickstart stage-3 model: README ("Catalogue-scale prediction").
        ids: (N,) star identifiers, carried into the result (``LabelPredictions.ids``, ``to_table``).
    """
    request, context_length = checked_options(model, feature_extractor, request, context, batch_size, pixels)
    if device is not None:
        model.to(_device(device))
    autocast = autocast_context(dtype, next(model.parameters()).device)
    window = feature_extractor.training_window_A if pixels == "window" else None
    prepared = feature_extractor.prepare(wavelength, flux, flux_err=flux_err, mask=mask, scalars=scalars,
                                         window=window, assess=True)
    if ids is not None and len(ids) != len(prepared):
        raise ValueError(f"ids has {len(ids)} entries for {len(prepared)} spectra; give one id per spectrum")
    mean, log_variance = _predict_standardised(model, feature_extractor, prepared, request, context_length,
                                               batch_size, autocast, progress)
    values, errors = feature_extractor.to_physical(request, mean, log_variance)
    result = _label_predictions(request, values, errors, prepared.quality)
    result.ids = None if ids is None else np.asarray(ids)
    return result


def autocast_context(dtype: str | torch.dtype, device: torch.device):
    """The context the forward pass runs in for ``dtype`` on ``device``: nothing for float32, bf16
    ``torch.autocast`` for bfloat16.

    Raises:
        ValueError: an unknown dtype, or bfloat16 on hardware without bf16 support (a CPU without
            AVX-512 / ARM bf16 instructions, a GPU before Ampere, another device type).
    """
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16", "fp32": "float32", "bf16": "bfloat16"}.get(
        dtype, dtype)
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if name == "float32":
        return nullcontext()
    supported, where = bf16_support(device)
    if not supported:
        raise ValueError(f"--dtype bfloat16 is not supported here: {where}; use --dtype float32")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """(whether ``device`` runs bf16 natively, why not): CPUs with oneDNN bf16 (AVX-512 or ARM bf16
    instructions; emulating it elsewhere is slower than float32), CUDA GPUs of compute capability 8.0+."""
    if device.type == "cpu":
        supported = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return supported, "this CPU has no bf16 instructions (oneDNN needs AVX-512 or ARM bf16)"
    if device.type == "cuda":
        return (torch.cuda.is_bf16_supported(including_emulation=False),
                f"GPU {torch.cuda.get_device_name(device)} has no native bf16 (needs compute capability 8.0+)")
    return False, f"bfloat16 is offered on cpu and cuda devices, not {device.type}"


def checked_options(model, feature_extractor, request, context, batch_size: int, pixels: str):
    """(request as a list, chunk length or None); ``ValueError`` for an unknown label, a vocabulary
    that differs from the model's, or a bad ``context`` / ``batch_size`` / ``pixels``."""
    request = [request] if isinstance(request, str) else list(request)
    feature_extractor.check_compatible(model.config)
    for name in request:
        feature_extractor.token_id(name)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if pixels not in PIXEL_MODES:
        raise ValueError(f"pixels must be one of {PIXEL_MODES}, got {pixels!r}")
    return request, _context_length(context)


def _context_length(context: str | int | None) -> int | None:
    """``context`` → pixels per chunk, None for the whole context; ``ValueError`` if not 'all' or > 0."""
    if context == "all" or context is None:
        return None
    try:
        context_length = int(context)
    except (TypeError, ValueError):
        raise ValueError(f"context must be 'all' or a positive integer, got {context!r}") from None
    if context_length < 1:
        raise ValueError(f"context must be 'all' or a positive integer, got {context!r}")
    return context_length


def _predict_standardised(model, feature_extractor, prepared: PreparedSpectra, request: list[str],
                          context_length: int | None, batch_size: int, autocast, progress: bool):
    """Standardised (mean, log_variance), each (N, Q), of the stars the quality checks accept; NaN
    for refused ones (they are not run). The loop is the transformers pipeline's, so both give the
    same numbers."""
    from ..pipeline_spectrafm import standardised_predictions

    return standardised_predictions(model, feature_extractor, prepared, request, context_length, batch_size,
                                    autocast=autocast, progress=_progress_bar if progress else None)


def _progress_bar(starts, total: int):
    from tqdm.auto import tqdm

    return tqdm(starts, total=total, desc="predict", unit="batch")


def _label_predictions(request: list[str], values: np.ndarray, errors: np.ndarray,
                       quality: SpectraQuality) -> LabelPredictions:
    """(N, Q) physical values and errors + the quality checks → :class:`LabelPredictions`.

    A star the checks accepted but whose answer is not finite (a damaged checkpoint can do this) is
    flagged ``non_finite_output`` and refused: NaN values, never a silent NaN row.
    """
    flags = np.asarray(quality.flags, dtype=object).copy()
    answered = ~np.asarray(quality.refused, dtype=bool)
    broken = answered & ~(np.isfinite(values).all(axis=1) & np.isfinite(errors).all(axis=1))
    for i in np.flatnonzero(broken):
        flags[i] = ";".join(f for f in (str(flags[i]), NON_FINITE_OUTPUT) if f)
    values, errors = values.copy(), errors.copy()
    values[broken], errors[broken] = np.nan, np.nan
    return LabelPredictions(
        names=request,
        values={name: values[:, i] for i, name in enumerate(request)},
        errors={name: errors[:, i] for i, name in enumerate(request)},
        flags=flags,
        n_pixels_not_read=np.asarray(quality.n_not_read),
    )


