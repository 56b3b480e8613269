"""Predict labels with 1σ uncertainties, in physical units: a Python call and ``spectrafm predict``.

Every star gets quality flags (``LabelPredictions.flags``, the CSV's ``flags`` column): a spectrum the
model cannot answer for (no pixel in its trained range, flux unlike its training flux, constant flux,
nothing valid) gets NaN values and a refusing flag; a doubtful one (few pixels, pixels outside the
trained range) is predicted and flagged. The rules live with the tokenizer
(``feature_extraction_spectrafm.QUALITY_FLAGS``).
"""

from __future__ import annotations

import csv
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .checkpoints import load_model  # also public here: ``from spectrafm_hf.predict import load_model``
from .checkpoints import resolve_device as _device
from .feature_extraction_spectrafm import REFUSING_FLAGS, PreparedSpectra, SpectraFMFeatureExtractor, SpectraQuality

#: ``pixels=`` values of :func:`predict_labels`
PIXEL_MODES = ("window", "all")


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
    """

    names: list[str]
    values: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]
    flags: np.ndarray | None = None
    n_pixels_not_read: np.ndarray | None = field(default=None, repr=False)

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
        refusing = REFUSING_FLAGS | {NON_FINITE_OUTPUT}
        return np.array([bool(refusing.intersection(str(f).split(";"))) for f in self.flags], dtype=bool)

    def to_columns(self) -> dict[str, np.ndarray]:
        """Columns ``<LABEL>``, ``<LABEL>_err`` in request order (the CSV layout, before ``flags``)."""
        columns = {}
        for name in self.names:
            columns[name] = self.values[name]
            columns[f"{name}_err"] = self.errors[name]
        return columns

    def summary(self, window: Sequence[float] | None = None) -> str | None:
        """One line: flagged stars per flag and pixels left out (``window``: the reading window, Å,
        for the message), or None when every star is fine and nothing was left out."""
        counts = Counter(flag for flags in self.flags for flag in str(flags).split(";") if flag)
        parts = []
        n_flagged = int(sum(1 for flags in self.flags if flags))
        if n_flagged:
            listed = ", ".join(f"{count} {flag}" for flag, count in counts.most_common())
            parts.append(f"{n_flagged} of {len(self)} spectra flagged: {listed} "
                         f"({int(self.refused.sum())} refused, values NaN)")
        not_read = 0 if self.n_pixels_not_read is None else int(np.sum(self.n_pixels_not_read))
        if not_read:
            where = "" if window is None else f" {window[0]:.1f}–{window[1]:.1f} Å"
            parts.append(f"{not_read} valid pixels outside the model's training window{where} not read "
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
    """
    request, context_length = _checked_options(model, feature_extractor, request, context, batch_size, pixels)
    window = feature_extractor.training_window_A if pixels == "window" else None
    prepared = feature_extractor.prepare(wavelength, flux, flux_err=flux_err, mask=mask, scalars=scalars,
                                         window=window, assess=True)
    mean, log_variance = _predict_standardised(model, feature_extractor, prepared, request, context_length,
                                               batch_size, device, progress)
    values, errors = feature_extractor.to_physical(request, mean, log_variance)
    return _label_predictions(request, values, errors, prepared.quality)


def _checked_options(model, feature_extractor, request, context, batch_size: int, pixels: str):
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
                          context_length: int | None, batch_size: int, device, progress: bool):
    """Standardised (mean, log_variance), each (N, Q), of the stars the quality checks accept; NaN
    for refused ones (they are not run)."""
    n = len(prepared)
    mean = np.full((n, len(request)), np.nan)
    log_variance = np.full((n, len(request)), np.nan)
    accepted = np.flatnonzero(~prepared.quality.refused)
    if accepted.size == 0:
        return mean, log_variance
    run = prepared if accepted.size == n else prepared.select(accepted)
    mean[accepted], log_variance[accepted] = _run_model(model, feature_extractor, run, request, context_length,
                                                        batch_size, device, progress)
    return mean, log_variance


@torch.no_grad()
def _run_model(model, feature_extractor, prepared: PreparedSpectra, request: list[str],
               context_length: int | None, batch_size: int, device, progress: bool):
    """The model's standardised (mean, log_variance), each (N, Q), ``batch_size`` spectra at a time
    (chunks combined per star); the model's train/eval mode is restored afterwards."""
    if device is not None:
        model.to(_device(device))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = len(prepared)
    mean = np.empty((n, len(request)))
    log_variance = np.empty((n, len(request)))
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, total=len(starts), desc="predict", unit="batch")
    try:
        for start in starts:
            part = slice(start, min(start + batch_size, n))
            batch = feature_extractor.tokenize(prepared.select(part), request=request,
                                               context_length=context_length, sampling="all", return_tensors="pt")
            spectrum_index = batch.pop("spectrum_index", None)
            out = model(**{k: v.to(device) for k, v in batch.items()})
            if spectrum_index is None:
                mean[part] = out.mean.float().cpu().numpy()
                log_variance[part] = out.log_variance.float().cpu().numpy()
            else:
                mean[part], log_variance[part] = feature_extractor.combine_chunks(
                    spectrum_index, out.mean.float(), out.log_variance.float(), n_spectra=part.stop - part.start
                )
    finally:
        model.train(was_training)
    return mean, log_variance


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


def write_predictions_csv(path: str | os.PathLike, predictions: LabelPredictions) -> None:
    """CSV with columns ``index``, then ``<LABEL>``, ``<LABEL>_err`` per label in request order, then
    ``flags`` (``;``-joined quality flags, empty = fine; refused stars have ``nan`` values)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = predictions.to_columns()
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", *columns, "flags"])
        for i in range(len(predictions)):
            writer.writerow([i, *(repr(float(col[i])) for col in columns.values()), predictions.flags[i]])
    os.replace(tmp, path)  # never leave a half-written CSV under the final name


def run_predict(args) -> int:
    """``spectrafm predict --model DIR --input FILE --request FE_H [...] --output OUT.csv [--all-pixels]``."""
    from .data.readers import read_spectra
    from .output_guard import check_output_file

    # before any work: a bad --output must not throw away the predictions made for it
    check_output_file(args.output, overwrite=getattr(args, "overwrite", False), inputs=[args.input])
    spectra = read_spectra(args.input)
    model, feature_extractor = load_model(args.model, device=args.device)
    pixels = "all" if getattr(args, "all_pixels", False) else "window"
    predictions = predict_labels(
        model, feature_extractor, spectra.wavelength, spectra.flux, flux_err=spectra.flux_err,
        mask=spectra.mask, scalars=spectra.scalars or None, request=args.request,
        batch_size=args.batch_size, context=args.context, device=args.device, progress=True, pixels=pixels,
    )
    summary = predictions.summary(feature_extractor.training_window_A if pixels == "window" else None)
    if predictions.refused.all():
        raise ValueError(f"no spectrum could be predicted ({summary}); nothing written to {args.output}")
    if summary:
        print(f"spectrafm predict: {summary}", file=sys.stderr)
    write_predictions_csv(args.output, predictions)
    print(f"wrote {len(predictions)} predictions of {', '.join(predictions.names)} to {args.output}")
    return 0
