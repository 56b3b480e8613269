"""Predict labels with 1σ uncertainties, in physical units: a Python call and ``spectrafm predict``."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .checkpoints import load_model  # also public here: ``from spectrafm_hf.predict import load_model``
from .checkpoints import resolve_device as _device
from .feature_extraction_spectrafm import SpectraFMFeatureExtractor


@dataclass
class LabelPredictions:
    """Predicted labels of N spectra.

    Attributes:
        names: the requested labels, in request order.
        values: name → (N,) predicted values in physical units (K, dex).
        errors: name → (N,) predicted 1σ uncertainties, same units.
    """

    names: list[str]
    values: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(values, errors)`` of one label."""
        return self.values[name], self.errors[name]

    def __len__(self) -> int:
        return len(self.values[self.names[0]]) if self.names else 0

    def to_columns(self) -> dict[str, np.ndarray]:
        """Columns ``<LABEL>``, ``<LABEL>_err`` in request order (the CSV layout)."""
        columns = {}
        for name in self.names:
            columns[name] = self.values[name]
            columns[f"{name}_err"] = self.errors[name]
        return columns


@torch.no_grad()
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
) -> LabelPredictions:
    """Predict ``request`` labels for spectra, with 1σ uncertainties in physical units.

    The whole input is validated first (``ValueError`` on bad input; a warning for pixels outside the
    trained wavelength range), then spectra go through the model ``batch_size`` at a time.

    Args:
        model: a :class:`SpectraFMModel` (e.g. from :func:`load_model`).
        feature_extractor: its :class:`SpectraFMFeatureExtractor`.
        wavelength: vacuum Å, (P,) or (N, P).
        flux: (N, P) (or (P,) for one spectrum); flux_err, mask (True = bad pixel): like flux.
        scalars: named non-spectral inputs, name → (N,) physical values.
        request: label names, e.g. ``("FE_H", "TEFF")``.
        batch_size: spectra per forward pass.
        context: ``"all"`` = every valid pixel in one pass (the default, exact); an int = disjoint
            chunks of that many pixels covering every valid pixel, combined by precision weighting.
        device: torch device (default: the model's device).
        progress: show a tqdm progress bar.
    """
    request = [request] if isinstance(request, str) else list(request)
    feature_extractor.check_compatible(model.config)
    for name in request:
        feature_extractor.token_id(name)
    if context == "all" or context is None:
        context_length = None
    else:
        try:
            context_length = int(context)
        except (TypeError, ValueError):
            raise ValueError(f"context must be 'all' or a positive integer, got {context!r}") from None
        if context_length < 1:
            raise ValueError(f"context must be 'all' or a positive integer, got {context!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is not None:
        model.to(_device(device))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    prepared = feature_extractor.prepare(wavelength, flux, flux_err=flux_err, mask=mask, scalars=scalars)
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
            batch = feature_extractor.tokenize(
                prepared.select(part), request=request, context_length=context_length, sampling="all",
                return_tensors="pt",
            )
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
    values, errors = feature_extractor.to_physical(request, mean, log_variance)
    return LabelPredictions(
        names=request,
        values={name: values[:, i] for i, name in enumerate(request)},
        errors={name: errors[:, i] for i, name in enumerate(request)},
    )


def write_predictions_csv(path: str | os.PathLike, predictions: LabelPredictions) -> None:
    """CSV with columns ``index``, then ``<LABEL>``, ``<LABEL>_err`` per label in request order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = predictions.to_columns()
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", *columns])
        for i in range(len(predictions)):
            writer.writerow([i, *(repr(float(col[i])) for col in columns.values())])
    os.replace(tmp, path)  # never leave a half-written CSV under the final name


def run_predict(args) -> int:
    """``spectrafm predict --model DIR --input FILE --request FE_H [...] --output OUT.csv``."""
    from .data.readers import read_spectra
    from .output_guard import check_output_file

    # before any work: a bad --output must not throw away the predictions made for it
    check_output_file(args.output, overwrite=getattr(args, "overwrite", False), inputs=[args.input])
    spectra = read_spectra(args.input)
    model, feature_extractor = load_model(args.model, device=args.device)
    predictions = predict_labels(
        model, feature_extractor, spectra.wavelength, spectra.flux, flux_err=spectra.flux_err,
        mask=spectra.mask, scalars=spectra.scalars or None, request=args.request,
        batch_size=args.batch_size, context=args.context, device=args.device, progress=True,
    )
    write_predictions_csv(args.output, predictions)
    print(f"wrote {len(predictions)} predictions of {', '.join(predictions.names)} to {args.output}")
    return 0
