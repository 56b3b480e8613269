"""Stars → SpectraFM training and evaluation batches: the one batcher of both training paths.

:class:`SpectraFMCollator` turns a batch of stars and a batch seed into a token batch. The Accelerate
loop (:func:`spectrafm_hf.training.stages.batch_sampler`) hands it stars of a
:class:`~spectrafm_hf.data.arrays.WindowData` by index (:meth:`SpectraFMCollator.select`);
``transformers.Trainer`` hands it rows of the dataset schema (it is the ``data_collator``). Either way
the same :meth:`SpectraFMCollator.collate` draws the contexts and the requested labels, so both
paths train on batches built by the same rules.

With ``transformers.Trainer``, wrap the datasets in :func:`training_rows` and :func:`evaluation_rows`:

* their rows are :class:`StarRow` mappings, not dicts, so Trainer's ``remove_unused_columns`` (on by
  default, it would strip ``flux`` and the labels, which are not arguments of the model's ``forward``)
  leaves them whole: no ``TrainingArguments`` setting is needed;
* evaluation rows are collated deterministically on WHOLE windows (:meth:`SpectraFMCollator.whole_window_batch`:
  every usable pixel of the window, every requested label, targets in float64 with NaN where unknown),
  so ``Trainer.evaluate()`` / ``predict()`` return the labels the pipeline's evaluation would, and
  ``training.trainer.make_compute_metrics`` turns them into physical-unit metrics;
* training batches can carry rehearsal stars (:meth:`SpectraFMCollator.add_rehearsal`), as the
  Accelerate path's do;
* with ``augmentation`` (an :class:`~spectrafm_hf.data.augmentation.ObservedLikeAugmentation`) the
  training stars of every batch, not the rehearsal ones, get observed-like imperfections drawn from the
  batch seed, on either path: the same batch seed gives the same perturbed spectra.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..feature_extraction_spectrafm import SpectraFMFeatureExtractor
from .augmentation import ObservedLikeAugmentation

if TYPE_CHECKING:
    from .arrays import WindowData

#: appended to a batch seed to seed the narrow-window draw, apart from the context / label draw
_NARROW_WINDOW_STREAM = 7
#: appended to a batch seed to draw the batch's rehearsal stars (Trainer path), apart from the other draws
_REHEARSAL_STREAM = 11
#: appended to a batch seed to draw the training stars' augmentation, apart from the other draws
AUGMENT_STREAM = 13


def _augmentation(value) -> ObservedLikeAugmentation | None:
    """The collator's ``augmentation``: an ``ObservedLikeAugmentation``, or what a stage's YAML ``augment:``
    takes (None / False = off, True = the defaults, a mapping of its settings)."""
    if isinstance(value, ObservedLikeAugmentation):
        return value
    return ObservedLikeAugmentation.from_dict(value)


def _entropy(seed: int | Sequence[int]) -> list[int]:
    """A batch seed (an int or a list of ints) as a list, to extend with a stream number."""
    return list(seed) if isinstance(seed, (list, tuple, np.ndarray)) else [seed]


@dataclass
class StarColumns:
    """Stars of one batch as arrays, cut to the collator's pixels.

    Attributes:
        flux: (B, P) continuum-normalised flux.
        mask: (B, P) bool, True = bad pixel.
        labels: label name → (B,) physical values (NaN = unknown); every label the collator may request.
        label_errors: label name → (B,) reported 1σ (NaN = unknown).
        scalars: named input → (B,) physical values, fed to the model as input tokens.
    """

    flux: np.ndarray
    mask: np.ndarray
    labels: dict[str, np.ndarray]
    label_errors: dict[str, np.ndarray]
    scalars: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.flux.shape[0])


def narrow_window_mask(mask: np.ndarray, fraction: float, width: int, rng: np.random.Generator) -> np.ndarray:
    """Mask (B, P), True = bad → a copy where a ``fraction`` of the rows keep only one random
    contiguous run of ``width`` pixels (everything else marked bad, so never in the context)."""
    n_stars, n_pixels = mask.shape
    chosen = rng.random(n_stars) < fraction
    if width >= n_pixels or not chosen.any():
        return mask
    starts = rng.integers(0, n_pixels - width + 1, size=n_stars)
    pixel = np.arange(n_pixels)
    outside = (pixel < starts[:, None]) | (pixel >= starts[:, None] + width)
    return mask | (outside & chosen[:, None])


class SpectraFMCollator:
    """Turns a batch of stars into a token batch for training.

    Each call draws, for every star, its own random subset of its valid pixels (``context_length``
    of them) and, with ``request="random"``, one random label among those the star has (missing
    labels are never requested). With ``narrow_window_fraction`` > 0 that fraction of the stars
    first loses every pixel outside one random contiguous run of ``narrow_window_pixels`` pixels.

    The draws are a function of the stars and a batch seed. :meth:`select` and :meth:`collate` take it
    from the caller (the Accelerate loop derives it from ``(seed, step, rank)``, so a resumed or
    multi-process run draws what an uninterrupted single run would). Called with dataset rows and
    no seed, it is ``(seed, rows' ids in batch order)`` when rows carry an ``id`` (the schema's),
    else ``(seed, call number)``: shuffled training batches get fresh draws every step, the
    (unshuffled) evaluation batches get the SAME draws at every evaluation, making eval losses
    comparable, and dataloader workers or resuming change nothing.

    Args:
        feature_extractor: a fitted :class:`SpectraFMFeatureExtractor`.
        wavelength: vacuum Å of the data's pixels, (P,) (``schema.get_wavelength(dataset)``).
        request: ``"random"`` (one label per star), ``"all"`` (every label in ``label_names`` for
            every star) or a list of label names requested for every star (stars lacking one get
            ``query_mask`` 0 for it, which leaves it out of the loss).
        context_length: pixels per star (default: the feature extractor's ``context_length``).
        pixel_window: restrict the pixels: a ``slice`` of pixel indices, or a list of ``(lo, hi)``
            wavelength ranges in Å (inclusive). Default: every pixel.
        seed: base seed of the draws of rows without a batch seed.
        label_names: the labels that may be requested with ``"random"`` / ``"all"``, in this order
            (default: every named token of the feature extractor that is a column of the rows,
            minus ``input_names``); a star without one of them has it as NaN.
        input_names: named scalar columns fed to the model as input tokens (e.g. photometry).
        narrow_window_fraction: fraction of the (non-rehearsal) stars whose context comes from one
            contiguous run of pixels (0 = off).
        narrow_window_pixels: width of those runs, in pixels.
        augmentation: observed-like imperfections for the training stars of every batch (an
            ``ObservedLikeAugmentation``, True for its defaults or a mapping of its settings; not the
            rehearsal stars, never evaluation rows), drawn from the batch seed on the collator's whole
            grid ``wavelength`` before ``pixel_window`` cuts it; None = the spectra as they are.

    Rows are mappings with ``flux`` (P,), optional ``mask`` (P,), label columns and ``<LABEL>_ERR``
    columns (use ``dataset.with_format("numpy")``, or :func:`training_rows`). A star with no valid
    pixel inside the window is dropped from a training batch with a warning. Rows of
    :func:`evaluation_rows` are collated by :meth:`whole_window_batch` instead (deterministic, whole
    window, no star dropped), and training rows get :meth:`add_rehearsal`'s stars appended.
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
        narrow_window_fraction: float = 0.0,
        narrow_window_pixels: int = 512,
        augmentation: ObservedLikeAugmentation | Mapping | bool | None = None,
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
        self.n_grid = wavelength.size
        self.grid = wavelength
        self.wavelength = wavelength[columns]
        if isinstance(request, str) and request not in ("random", "all"):
            request = [request]
        self.request = request if isinstance(request, str) else list(request)
        self.context_length = context_length or feature_extractor.context_length
        self.seed = int(seed)
        self.label_names = None if label_names is None else list(label_names)
        self.input_names = list(input_names)
        for name in [*self._requested([]), *(self.label_names or []), *self.input_names]:
            feature_extractor.token_id(name)
        if not 0.0 <= narrow_window_fraction <= 1.0:
            raise ValueError(f"narrow_window_fraction must be in [0, 1], got {narrow_window_fraction}")
        if narrow_window_pixels < 1:
            raise ValueError(f"narrow_window_pixels must be ≥ 1, got {narrow_window_pixels}")
        self.narrow_window_fraction = float(narrow_window_fraction)
        self.narrow_window_pixels = int(narrow_window_pixels)
        self.augmentation = _augmentation(augmentation)
        self.step = 0
        self.rehearsal_pool: WindowData | None = None
        self.rehearsal_per_batch = 0

    def add_rehearsal(self, pool: WindowData, per_batch: int) -> "SpectraFMCollator":
        """Append ``per_batch`` stars of ``pool`` to every TRAINING batch built from dataset rows (the
        Trainer path; :meth:`select` takes its rehearsal stars from the caller, as the Accelerate loop
        draws them). They are drawn from the batch seed, so a batch is the same on every replay, and,
        like the Accelerate path's, keep their whole window (no narrow window) and are asked the
        batch's labels. ``pool`` must be on this collator's grid (``WindowData`` of the same pixels).

        Returns the collator (``collator = SpectraFMCollator(...).add_rehearsal(pool, 32)``).
        """
        if per_batch < 1:
            raise ValueError(f"rehearsal per batch must be ≥ 1, got {per_batch}")
        if len(pool) == 0:
            raise ValueError("the rehearsal pool holds no stars; give rehearsal stars or set rehearsal to 0")
        if pool.wavelength is not None and (len(pool.wavelength) != self.n_grid
                                            or not np.allclose(pool.wavelength, self.grid, rtol=1e-9)):
            raise ValueError(f"the rehearsal stars are on another pixel grid ({len(pool.wavelength)} pixels, "
                             f"{pool.wavelength[0]:.2f}–{pool.wavelength[-1]:.2f} Å) than the training stars "
                             f"({self.n_grid} pixels, {self.grid[0]:.2f}–{self.grid[-1]:.2f} Å); cut both to "
                             "the same window of the same grid")
        self.rehearsal_pool, self.rehearsal_per_batch = pool, int(per_batch)
        return self

    def _requested(self, columns: Sequence[str]) -> list[str]:
        """Labels a batch may ask for: the request list, or ``label_names`` (default: known ``columns``)."""
        if not isinstance(self.request, str):
            return self.request
        if self.label_names is not None:
            return self.label_names
        fe = self.feature_extractor
        return [n for n in fe.named_tokens if n in columns and n not in self.input_names]

    # ---- stars in ---------------------------------------------------------------------------------
    def __call__(self, rows: Sequence[Mapping], seed: int | Sequence[int] | None = None):
        """Dataset rows (the ``transformers.Trainer`` ``data_collator`` interface) → a token batch.

        Rows of :func:`evaluation_rows` → :meth:`whole_window_batch`; other rows → a training batch
        (random contexts, plus :meth:`add_rehearsal`'s stars).
        """
        if rows and getattr(rows[0], "whole_window", False):
            return self.whole_window_batch(self.stack(rows))
        if seed is None:
            if "id" in rows[0]:
                key = zlib.crc32("\x00".join(str(r["id"]) for r in rows).encode())
            else:
                key = 2**32 + self.step  # no ids: the call number (never equal to a crc32)
            seed = [self.seed, key]
        self.step += 1
        stars = self.stack(rows, seed=seed)
        return self.collate(stars, seed, rehearsal=self._rehearsal_stars(list(stars.labels), seed))

    def _rehearsal_stars(self, names: Sequence[str], seed) -> StarColumns | None:
        """``rehearsal_per_batch`` stars of the rehearsal pool drawn from the batch ``seed`` (None if off)."""
        if not self.rehearsal_per_batch:
            return None
        pool, k = self.rehearsal_pool, self.rehearsal_per_batch
        rng = np.random.default_rng([*_entropy(seed), _REHEARSAL_STREAM])
        index = rng.choice(len(pool), size=k, replace=k > len(pool))
        return self._columns_of(pool, index, names)

    def _perturbed(self, flux: np.ndarray, mask: np.ndarray, seed) -> np.ndarray:
        """``flux`` (B, n_grid) with this collator's augmentation drawn from the batch ``seed`` (itself
        when there is none, or no seed: evaluation and rehearsal stars stay as they are)."""
        if self.augmentation is None or seed is None:
            return flux
        return self.augmentation.apply(flux, mask, self.grid, np.random.default_rng([*_entropy(seed), AUGMENT_STREAM]))

    def stack(self, rows: Sequence[Mapping], seed: int | Sequence[int] | None = None) -> StarColumns:
        """Dataset rows → :class:`StarColumns` (flux as float32, scalars as float64); with a batch
        ``seed``, training stars carry the collator's augmentation (if any)."""
        names = self._requested(list(rows[0]))
        if not isinstance(self.request, str):
            missing = [n for n in names if n not in rows[0]]
            if missing:
                raise ValueError(f"requested labels {missing} are not columns of the dataset rows")

        def column(name, required=False):
            if name not in rows[0]:
                if required:
                    raise ValueError(f"named input {name!r} is not a column of the dataset rows")
                return np.full(len(rows), np.nan)  # the star lacks it
            return np.array([r[name] for r in rows], dtype=np.float64)

        if len(rows[0]["flux"]) != self.n_grid:
            raise ValueError(f"the rows have {len(rows[0]['flux'])} pixels per star; this collator's grid has "
                             f"{self.n_grid}")
        # Only an augmented batch needs whole rows (its draw sees the whole grid); otherwise each row is
        # cut to the pixel window as it is read, the cheap path of every evaluation and plain batch.
        whole = self.augmentation is not None and seed is not None
        columns = slice(None) if whole else self.columns
        flux = np.stack([np.asarray(r["flux"], dtype=np.float32)[columns] for r in rows])
        if "mask" in rows[0]:
            mask = np.stack([np.asarray(r["mask"], dtype=bool)[columns] for r in rows])
        else:
            mask = np.zeros(flux.shape, dtype=bool)
        if whole:
            flux = self._perturbed(flux, mask, seed)[:, self.columns]
            mask = mask[:, self.columns]
        return StarColumns(
            flux=flux, mask=mask, labels={n: column(n) for n in names},
            label_errors={n: column(f"{n}_ERR") for n in names},
            scalars={n: column(n, required=True) for n in self.input_names},
        )

    def select(self, data: WindowData, index, seed: int | Sequence[int],
               rehearsal: tuple[WindowData, np.ndarray] | None = None):
        """Stars ``index`` of ``data`` (a ``WindowData`` on the collator's grid), plus ``rehearsal`` =
        ``(WindowData, index)`` stars appended after them → a token batch drawn from ``seed``.

        Arrays keep their dtype (no float32 round trip of the labels); a label a ``WindowData``
        lacks is NaN for its stars. Named inputs (``input_names``) are read from ``data.labels``.
        """
        names = self._requested(list(data.labels))
        stars = self._columns_of(data, index, names, seed=seed)
        extra = None if rehearsal is None else self._columns_of(*rehearsal, names)
        return self.collate(stars, seed, rehearsal=extra)

    def _columns_of(self, data: WindowData, index, names: Sequence[str], seed=None) -> StarColumns:
        """Stars ``index`` of ``data`` cut to the collator's pixels (with a batch ``seed``: augmented)."""
        index = np.asarray(index)
        if data.flux.shape[1] != self.n_grid:
            raise ValueError(
                f"the data has {data.flux.shape[1]} pixels per star; this collator's grid has {self.n_grid}"
            )
        flux, mask = data.flux[index], data.mask[index]
        flux = self._perturbed(flux, mask, seed)
        if self.columns.size < self.n_grid:  # a pixel_window (else every pixel: no second copy)
            flux, mask = flux[:, self.columns], mask[:, self.columns]

        def column(values: Mapping, name: str) -> np.ndarray:
            return values[name][index] if name in values else np.full(len(index), np.nan)

        return StarColumns(
            flux=flux, mask=mask,
            labels={n: column(data.labels, n) for n in names},
            label_errors={n: column(data.label_errors, n) for n in names},
            scalars={n: data.labels[n][index] for n in self.input_names},
        )

    # ---- the batch ----------------------------------------------------------------------------------
    def collate(self, stars: StarColumns, seed: int | Sequence[int], rehearsal: StarColumns | None = None):
        """Stars (+ ``rehearsal`` stars appended after them) → a ``BatchFeature`` drawn from ``seed``.

        ``seed`` (an int or a list of ints) seeds the context and label draw; the narrow windows use
        ``[*seed, 7]``. Rehearsal stars keep their whole window: they anchor what pre-training learnt.
        """
        fe = self.feature_extractor
        flux, mask = stars.flux, stars.mask
        if self.narrow_window_fraction > 0:
            mask = narrow_window_mask(mask, self.narrow_window_fraction, self.narrow_window_pixels,
                                      np.random.default_rng([*_entropy(seed), _NARROW_WINDOW_STREAM]))
        labels, errors, scalars = stars.labels, stars.label_errors, stars.scalars
        if rehearsal is not None:
            flux = np.concatenate([flux, rehearsal.flux])
            mask = np.concatenate([mask, rehearsal.mask])
            labels = {k: np.concatenate([v, rehearsal.labels[k]]) for k, v in labels.items()}
            errors = {k: np.concatenate([v, rehearsal.label_errors[k]]) for k, v in errors.items()}
            scalars = {k: np.concatenate([v, rehearsal.scalars[k]]) for k, v in scalars.items()}

        mask = ~fe.usable_pixels(self.wavelength, flux, mask)
        keep = np.flatnonzero(~mask.all(axis=1))
        if keep.size < len(flux):
            if keep.size == 0:
                raise ValueError("no star in this batch has a valid pixel inside the pixel window")
            warnings.warn(f"dropped {len(flux) - keep.size} star(s) with no valid pixel in the window from a batch",
                          stacklevel=2)
            flux, mask = flux[keep], mask[keep]
            labels = {k: v[keep] for k, v in labels.items()}
            errors = {k: v[keep] for k, v in errors.items()}
            scalars = {k: v[keep] for k, v in scalars.items()}
        # Errors: NaN (unknown) → 0 added variance, as the paper's loss does with missing errors.
        errors = {k: np.nan_to_num(np.abs(v), nan=0.0) for k, v in errors.items()}
        # "all": every label in one pass (queries never attend to each other, so this is the
        # one-label requests at once; a star's missing labels get query_mask 0, left out of the loss).
        request = list(labels) if self.request == "all" else self.request
        prepared = fe.prepare(self.wavelength, flux, mask=mask, scalars=scalars or None, warn=False)
        return fe.tokenize(
            prepared, request=request, context_length=self.context_length, sampling="random",
            generator=np.random.default_rng(seed), labels=labels, label_errors=errors, return_tensors="pt",
        )

    def whole_window_batch(self, stars: StarColumns):
        """Stars → a deterministic evaluation batch: every usable pixel of each star's window in one
        context (no random subset, no narrow window, no rehearsal), every requested label of every star.

        The pixels and the model's input are exactly those of :func:`spectrafm_hf.predict.predict_labels`
        on the same stars (``pixels="all"``), so a batch of the same stars gives the same predictions.
        ``labels`` are the standardised targets in float64 (B, Q), NaN where a star lacks the label
        or is one the model refuses to answer for (``feature_extraction_spectrafm.REFUSING_FLAGS``,
        e.g. no usable pixel): metrics then leave it out, as the pipeline's evaluation does, and no
        row is dropped, so predictions stay aligned with the dataset's rows. A refused star's row is
        all padding (its prediction is meaningless). ``predict_labels`` leaves refused stars out of
        its batches altogether, so its batches are the same only when the refused stars are not
        followed by another batch; other batch boundaries change padding and the predictions by
        ~1e-10 relative.
        """
        fe = self.feature_extractor
        names = list(stars.labels)
        if not names:
            raise ValueError("nothing to evaluate: the rows hold none of the collator's labels")
        prepared = fe.prepare(self.wavelength, stars.flux, mask=stars.mask, scalars=stars.scalars or None,
                              warn=False, assess=True)
        if not prepared.valid.any():
            raise ValueError("no star of this evaluation batch has a usable pixel inside the window; "
                             "check the window and the flux normalisation")
        refused = prepared.quality.refused
        if refused.any() and not refused.all():
            # not read, as predict_labels does not run them: their pixels would only widen the padding
            prepared.valid[refused] = False
            prepared.values[refused] = 0.0
        errors = {k: np.nan_to_num(np.abs(v), nan=0.0) for k, v in stars.label_errors.items()}
        batch = fe.tokenize(prepared, request=names, sampling="all", labels=stars.labels, label_errors=errors,
                            return_tensors="pt")
        # float64 targets: physical = z · std + median then reproduces the stored labels to ~1e-16
        target = np.stack([(np.asarray(stars.labels[n], np.float64) - fe.statistics(n)[0]) / fe.statistics(n)[1]
                           for n in names], axis=1)
        target[refused] = np.nan
        batch["labels"] = torch.from_numpy(target)
        batch["query_mask"] = batch["query_mask"] * torch.from_numpy(np.isfinite(target)).long()
        return batch


# ---- rows for transformers.Trainer ------------------------------------------------------------------


class StarRow(MappingABC):
    """One star as a read-only mapping of schema columns (``flux``, ``mask``, labels, ``<LABEL>_ERR``,
    ``id`` ...) plus ``whole_window``: True for rows :meth:`SpectraFMCollator.__call__` collates as a
    whole-window evaluation batch.

    Deliberately not a ``dict``: ``transformers.Trainer`` (``remove_unused_columns=True``, its default)
    strips dict rows down to the arguments of the model's ``forward``, which would drop the flux and
    the labels; it passes other mappings through whole.
    """

    __slots__ = ("_columns", "whole_window")

    def __init__(self, columns: Mapping, whole_window: bool = False):
        self._columns = columns
        self.whole_window = bool(whole_window)

    def __getitem__(self, key: str):
        return self._columns[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


class StarRows(torch.utils.data.Dataset):
    """Stars as :class:`StarRow` s for ``transformers.Trainer`` (``train_dataset`` / ``eval_dataset``).

    Args:
        stars: one split: a ``datasets.Dataset`` of the schema (:mod:`spectrafm_hf.data.schema`) or a
            :class:`~spectrafm_hf.data.arrays.WindowData` (its rows get the star index as ``id``).
        whole_window: rows for evaluation (:func:`evaluation_rows`) rather than training.
    """

    def __init__(self, stars, whole_window: bool = False):
        from datasets import DatasetDict

        from .arrays import WindowData

        if isinstance(stars, DatasetDict):
            raise ValueError(f"give one split of the dataset, e.g. dataset['train'], not a DatasetDict with "
                             f"splits {list(stars)}")
        if not isinstance(stars, WindowData):
            # the collator never reads flux errors: not decoding them saves a third of each row's cost
            unread = [name for name in ("flux_err",) if name in stars.column_names]
            stars = stars.remove_columns(unread).with_format("numpy")
        self.stars = stars
        self.whole_window = bool(whole_window)

    def __len__(self) -> int:
        return len(self.stars)

    def __getitem__(self, index: int) -> StarRow:
        from .arrays import WindowData
        from .labels import error_column

        if not isinstance(self.stars, WindowData):
            return StarRow(self.stars[int(index)], self.whole_window)
        data = self.stars
        columns = {"id": int(index), "flux": data.flux[index], "mask": data.mask[index]}
        # labels at full precision (no float32 round trip): evaluation compares them with predictions
        columns.update({name: values[index] for name, values in data.labels.items()})
        columns.update({error_column(name): values[index] for name, values in data.label_errors.items()})
        return StarRow(columns, self.whole_window)


def training_rows(stars) -> StarRows:
    """``train_dataset`` for ``transformers.Trainer``: rows the collator turns into training batches
    (random contexts, the collator's request, narrow windows, rehearsal stars)."""
    return StarRows(stars, whole_window=False)


def evaluation_rows(stars) -> StarRows:
    """``eval_dataset`` (or ``Trainer.predict``'s dataset): rows the collator turns into deterministic
    whole-window batches (:meth:`SpectraFMCollator.whole_window_batch`)."""
    return StarRows(stars, whole_window=True)
