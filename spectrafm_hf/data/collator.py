"""Dataset rows → SpectraFM training batches (a ``transformers.Trainer`` ``data_collator``)."""

from __future__ import annotations

import warnings
import zlib
from typing import Mapping, Sequence

import numpy as np

from ..feature_extraction_spectrafm import SpectraFMFeatureExtractor


class SpectraFMCollator:
    """Turns rows of the project dataset schema into a token batch for training.

    Each call draws, for every star, its own random subset of its valid pixels (``context_length``
    of them) and, with ``request="random"``, one random label among those the star has (missing
    labels are never requested).

    Randomness is a function of ``seed`` and the batch: of the rows' ``id`` values in batch order
    when rows carry an ``id`` (the schema's), else of the call number. So shuffled training batches
    get fresh draws every step, the (unshuffled) evaluation batches get the SAME draws at every
    evaluation, making eval losses comparable, and dataloader workers or resuming change nothing.

    Args:
        feature_extractor: a fitted :class:`SpectraFMFeatureExtractor`.
        wavelength: vacuum Å of the dataset's pixels, (P,) (``schema.get_wavelength(dataset)``).
        request: ``"random"`` (one label per star), or a list of label names requested for every star
            (stars lacking one get ``query_mask`` 0 for it).
        context_length: pixels per star (default: the feature extractor's ``context_length``).
        pixel_window: restrict the pixels: a ``slice`` of pixel indices, or a list of ``(lo, hi)``
            wavelength ranges in Å (inclusive). Default: every pixel.
        seed: base seed.
        label_names: the labels that may be requested with ``"random"`` (default: every named token
            of the feature extractor that is a column of the rows, minus ``input_names``).
        input_names: named scalar columns fed to the model as input tokens (e.g. photometry).

    Rows are dicts with ``flux`` (P,), optional ``mask`` (P,), label columns and ``<LABEL>_ERR``
    columns (use ``dataset.with_format("numpy")``). A star with no valid pixel inside the window is
    dropped from the batch with a warning.
    """

    def __init__(
        self,
        feature_extractor: SpectraFMFeatureExtractor,
        wavelength,
        request: str | Sequence[str] = "random",
        context_length: int | None = None,
        pixel_window: slice | Sequence[tuple[float, float]] | None = None,
        seed: int = 0,
        label_names: Sequence[str] | None = None,
        input_names: Sequence[str] = (),
    ):
        self.feature_extractor = feature_extractor
        wavelength = np.asarray(wavelength, dtype=np.float64)
        if wavelength.ndim != 1:
            raise ValueError(f"wavelength must be the dataset's grid, shape (P,), got {wavelength.shape}")
        if pixel_window is None:
            columns = np.arange(wavelength.size)
        elif isinstance(pixel_window, slice):
            columns = np.arange(wavelength.size)[pixel_window]
        else:
            keep = np.zeros(wavelength.size, dtype=bool)
            for lo, hi in pixel_window:
                keep |= (wavelength >= lo) & (wavelength <= hi)
            columns = np.flatnonzero(keep)
        if columns.size == 0:
            raise ValueError(f"pixel_window {pixel_window!r} selects no pixel of the {wavelength.size}-pixel grid")
        self.columns = columns
        self.wavelength = wavelength[columns]
        if isinstance(request, str) and request != "random":
            request = [request]
        self.request = request
        for name in [] if request == "random" else request:
            feature_extractor.token_id(name)
        self.context_length = context_length or feature_extractor.context_length
        self.seed = int(seed)
        self.label_names = None if label_names is None else list(label_names)
        self.input_names = list(input_names)
        for name in [*(self.label_names or []), *self.input_names]:
            feature_extractor.token_id(name)
        self.step = 0

    def __call__(self, rows: Sequence[Mapping]):
        fe = self.feature_extractor
        flux = np.stack([np.asarray(r["flux"], dtype=np.float32)[self.columns] for r in rows])
        mask = None
        if "mask" in rows[0]:
            mask = np.stack([np.asarray(r["mask"], dtype=bool)[self.columns] for r in rows])
        mask = ~fe.usable_pixels(self.wavelength, flux, mask)
        keep = np.flatnonzero(~mask.all(axis=1))
        if keep.size < len(rows):
            if keep.size == 0:
                raise ValueError("no star in this batch has a valid pixel inside the pixel window")
            warnings.warn(f"dropped {len(rows) - keep.size} star(s) with no valid pixel in the window from a batch")
            rows = [rows[i] for i in keep]
            flux, mask = flux[keep], mask[keep]

        label_names = self.label_names
        if label_names is None:
            label_names = [n for n in fe.named_tokens if n in rows[0] and n not in self.input_names]
        if self.request != "random":
            missing = [n for n in self.request if n not in rows[0]]
            if missing:
                raise ValueError(f"requested labels {missing} are not columns of the dataset rows")
            label_names = list(self.request)

        def column(name):
            return np.array([r[name] for r in rows], dtype=np.float64)

        labels = {n: column(n) for n in label_names}
        label_errors = {n: column(f"{n}_ERR") for n in label_names if f"{n}_ERR" in rows[0]}
        scalars = {n: column(n) for n in self.input_names}
        if "id" in rows[0]:
            key = zlib.crc32("\x00".join(str(r["id"]) for r in rows).encode())
        else:
            key = 2**32 + self.step  # no ids: the call number (never equal to a crc32)
        generator = np.random.default_rng([self.seed, key])
        self.step += 1
        prepared = fe.prepare(self.wavelength, flux, mask=mask, scalars=scalars or None, warn=False)
        return fe.tokenize(
            prepared, request=self.request, context_length=self.context_length, sampling="random",
            generator=generator, labels=labels, label_errors=label_errors, return_tensors="pt",
        )
