"""The spectral "tokenizer": spectra + named scalars → padded token tensors for SpectraFM.

``SpectraFMFeatureExtractor`` (alias ``SpectraFMTokenizer``; the class name avoids the word
"Tokenizer" because remote-code saving treats such classes as text tokenizers) owns everything
between raw arrays and the model:

* validation of the input, raising a ``ValueError`` that names the problem and the fix;
* standardisation: ONE global centre and scale for all flux values (grid-agnostic: a pixel the
  model never saw is handled like any other; :meth:`SpectraFMFeatureExtractor.fit` explains the
  choice of scale), and a median / MAD-std per named token. Outliers
  become missing: named tokens with |z| > ``outlier_threshold`` (10, the paper's rule), flux with
  |z| > ``flux_outlier_threshold`` (see :meth:`SpectraFMFeatureExtractor.fit` for why flux needs
  its own, wider, fitted limit). A per-pixel table keyed by wavelength is an option only for
  checkpoints converted from the original code (its pixels keep the paper's |z| > 10 rule);
* per-star quality checks for inference (:meth:`SpectraFMFeatureExtractor.prepare` with
  ``assess=True``, see :class:`SpectraQuality`): stars the model cannot answer for are flagged;
* context selection: a random subset per star for training (each star its own permutation), and
  for inference either every valid pixel at once or disjoint chunks covering every valid pixel,
  combined afterwards by :meth:`combine_chunks`;
* conversion of predictions back to physical units (:meth:`to_physical`).

This file travels to the Hugging Face Hub as remote code: it imports only numpy, transformers and its
sibling ``configuration_spectrafm`` (for the default vocabulary).
"""

import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from transformers import BatchFeature, SequenceFeatureExtractor

from .configuration_spectrafm import DEFAULT_NAMED_TOKENS, PAPER_LABEL_STATISTICS

PAD_ID, PIXEL_ID, FIRST_NAMED_ID = 0, 1, 2
# σ of a Gaussian / its median absolute deviation: astropy.stats.mad_std's constant, which the package
# uses elsewhere; a copy here because this file travels to the Hub and imports no astropy.
MAD_TO_STD = 1.482602218505602


def _numpy(x, dtype=None) -> np.ndarray:
    """Array-like (numpy, torch, list) → numpy array."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def mad_std(values: np.ndarray) -> tuple[float, float]:
    """(median, 1.4826 × median absolute deviation) of the finite values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no finite values to compute statistics from")
    median = float(np.median(values))
    std = float(MAD_TO_STD * np.median(np.abs(values - median)))
    if not std > 0:  # more than half the values identical: fall back to the standard deviation
        std = float(np.std(values)) or 1.0
    return median, std


#: Per-star quality flags (:class:`SpectraQuality`) → what they mean. Stars with a flag in
#: ``REFUSING_FLAGS`` get no prediction (NaN); the others are predicted and flagged.
QUALITY_FLAGS = {
    "no_valid_pixels": "every pixel is masked, non-finite or a flux outlier (refused)",
    "no_pixels_in_trained_range": "no valid pixel inside the model's trained wavelength range (or, by default, "
                                  "its training window) (refused)",
    "flux_not_like_training": "the median flux lies more than FLUX_MEDIAN_LIMIT trained flux scales from the "
                              "trained flux centre, e.g. all-zero flux for a continuum-normalised model (refused)",
    "constant_flux": "every valid flux value is identical: no spectrum to read (refused)",
    "few_pixels": "fewer than MIN_PIXELS valid pixels inside the trained range (predicted, flagged)",
    "partly_outside_trained_range": "some valid pixels lie outside the trained wavelength range (predicted, flagged)",
}
REFUSING_FLAGS = frozenset({"no_valid_pixels", "no_pixels_in_trained_range", "flux_not_like_training", "constant_flux"})
#: fewer valid pixels inside the trained range than this → ``few_pixels``
MIN_PIXELS = 16
#: |median flux − flux_median| / flux_std above this → ``flux_not_like_training``. A real star's median
#: flux sits near the continuum, within ~2–3 scales of the centre; all-zero flux on continuum-normalised
#: training lies ~10 scales away.
FLUX_MEDIAN_LIMIT = 5.0


@dataclass
class SpectraQuality:
    """Per-star quality of spectra prepared for inference (:meth:`SpectraFMFeatureExtractor.prepare`
    with ``assess=True``).

    Attributes:
        n_read: (N,) valid pixels the model reads (inside the reading window, if one was given).
        n_in_trained_range: (N,) of those, the ones inside ``trained_wavelength_range``.
        n_not_read: (N,) valid pixels outside the reading window, left out.
        flags: (N,) str, ``";"``-joined names from :data:`QUALITY_FLAGS`; ``""`` = fine.
    """

    n_read: np.ndarray
    n_in_trained_range: np.ndarray
    n_not_read: np.ndarray
    flags: np.ndarray

    @property
    def refused(self) -> np.ndarray:
        """(N,) bool: stars with a flag in :data:`REFUSING_FLAGS` (no prediction)."""
        return np.array([bool(REFUSING_FLAGS.intersection(f.split(";"))) for f in self.flags], dtype=bool)

    def select(self, index) -> "SpectraQuality":
        return SpectraQuality(self.n_read[index], self.n_in_trained_range[index], self.n_not_read[index],
                              self.flags[index])


@dataclass
class PreparedSpectra:
    """Validated, standardised spectra (the output of :meth:`SpectraFMFeatureExtractor.prepare`).

    Attributes:
        wavelength: vacuum Å, (P,) shared or (N, P), float64.
        values: standardised flux, (N, P), float32 (0 where not valid).
        valid: (N, P) bool, True = usable pixel (not masked, finite, |z| within the threshold).
        scalars: named input → (N,) standardised values (NaN = absent for that star).
        quality: per-star checks (``prepare(..., assess=True)``), else None.
    """

    wavelength: np.ndarray
    values: np.ndarray
    valid: np.ndarray
    scalars: dict[str, np.ndarray] = field(default_factory=dict)
    quality: SpectraQuality | None = None

    def __len__(self) -> int:
        return self.values.shape[0]

    def select(self, index) -> "PreparedSpectra":
        """The spectra at ``index`` (slice or integer array)."""
        wavelength = self.wavelength if self.wavelength.ndim == 1 else self.wavelength[index]
        return PreparedSpectra(wavelength, self.values[index], self.valid[index],
                               {k: v[index] for k, v in self.scalars.items()},
                               None if self.quality is None else self.quality.select(index))


def _unmasked_pixels(flux: np.ndarray, flux_err=None, mask=None) -> np.ndarray:
    """(N, P) bool: finite flux, not masked, error not +inf; ``ValueError`` if ``mask`` / ``flux_err``
    do not match ``flux`` (N, P) or an error is negative. (Outliers are judged after standardising.)"""
    valid = np.isfinite(flux)
    if mask is not None:
        mask = _numpy(mask)
        if mask.ndim == 1:
            mask = mask[None]
        if mask.shape != flux.shape:
            raise ValueError(f"mask of shape {mask.shape} does not match flux of shape {flux.shape}")
        valid &= ~mask.astype(bool)
    if flux_err is not None:
        flux_err = _numpy(flux_err, np.float64)
        if flux_err.ndim == 1:
            flux_err = flux_err[None]
        if flux_err.shape != flux.shape:
            raise ValueError(f"flux_err of shape {flux_err.shape} does not match flux of shape {flux.shape}")
        negative = int((flux_err < 0).sum())
        if negative:
            raise ValueError(
                f"flux_err has {negative} negative value(s); errors are 1σ and must be >= 0 "
                "(use NaN for unknown, or mask= for bad pixels)"
            )
        valid &= ~np.isposinf(flux_err)
    return valid


# ---- context selection ----------------------------------------------------------------------
# Each sampling mode maps the valid-pixel table (N, P) to the rows of a batch: ``row_star`` (B,), the
# star each row reads; ``columns`` (B, W), the pixel indices it reads; ``present`` (B, W), False where
# the row is padding. Valid pixels come first in a row.


def _sample_random_context(valid: np.ndarray, context: int, generator: np.random.Generator):
    """Training: one row per star, ``context`` of its valid pixels drawn at random (a uniform random
    key per pixel, the smallest keys win; padding when the star has fewer valid pixels)."""
    n, p = valid.shape
    keys = generator.random((n, p))
    keys[~valid] = 2.0  # invalid pixels sort last
    take = min(context, p)
    columns = np.argpartition(keys, take - 1, axis=1)[:, :take] if take < p else np.argsort(keys, axis=1)
    present = np.take_along_axis(keys, columns, axis=1) < 2.0
    return np.arange(n), columns, present


def _sample_all_pixels(valid: np.ndarray):
    """Inference: one row per star holding every valid pixel, in wavelength order; no randomness."""
    n_valid = valid.sum(axis=1)
    width = int(n_valid.max())
    columns = np.argsort(~valid, axis=1, kind="stable")[:, :width]  # valid pixels first, in order
    present = np.arange(width)[None, :] < n_valid[:, None]
    return np.arange(len(valid)), columns, present


def _sample_chunks(valid: np.ndarray, context: int, generator: np.random.Generator):
    """Inference: each star's valid pixels dealt, in a random order, into the fewest disjoint chunks of at
    most ``context`` pixels (sizes differ by at most one; each chunk in wavelength order), one row each;
    :meth:`SpectraFMFeatureExtractor.combine_chunks` merges their predictions."""
    n = len(valid)
    n_valid = valid.sum(axis=1)
    n_chunks = -(-n_valid // context)
    row_star = np.repeat(np.arange(n), n_chunks)
    width = int((-(-n_valid // n_chunks)).max())
    columns = np.zeros((len(row_star), width), dtype=np.int64)
    present = np.zeros((len(row_star), width), dtype=bool)
    row = 0
    for star in range(n):  # a loop over stars (not tokens): chunks of one star
        order = np.flatnonzero(valid[star])
        order = order[generator.permutation(order.size)]
        k = int(n_chunks[star])
        for chunk in range(k):  # round-robin: chunk sizes differ by at most one
            pixels = np.sort(order[chunk::k])
            columns[row, : pixels.size] = pixels
            present[row, : pixels.size] = True
            row += 1
    return row_star, columns, present


class SpectraFMFeatureExtractor(SequenceFeatureExtractor):
    r"""Turns spectra (vacuum Å wavelengths, flux, optional errors and masks) and named scalars into
    SpectraFM token batches, and predictions back into physical units.

    Args:
        named_tokens (`list[str]`): names of the non-spectral tokens; must equal the model config's
            ``named_tokens`` (token id ``2 + i`` for ``named_tokens[i]``).
        named_token_statistics (`dict[str, list[float]]`): ``name → [median, MAD-std]`` in physical
            units. Defaults to the paper's label statistics.
        flux_median (`float`), flux_std (`float`): global flux standardisation ``z = (f − median) / std``,
            set by :meth:`fit`. ``None`` until fitted (calling the extractor then raises).
        pixel_statistics (`dict`, optional): ``{"wavelength": [...], "median": [...], "std": [...]}``;
            per-pixel statistics keyed by wavelength (Å), only for checkpoints converted from the
            original code. Pixels not in the table use the global statistics; a std of 0 leaves the
            value unstandardised (as the original did).
        trained_wavelength_range (`list[float]`, optional): [min, max] Å of the pixels the model was
            trained on (set by :meth:`fit`, i.e. from the first stage's data); pixels outside raise a
            warning with their count.
        training_window_A (`list[float]`, optional): [min, max] Å of the window the model was last
            trained (fine-tuned) on, set by the training stages before saving; inference reads only
            these pixels by default (``prepare(window=...)``). None = not recorded (read every pixel).
        context_length (`int`): default number of pixels per training example (``sampling="random"``).
        outlier_threshold (`float`): named-token values (and per-pixel-table flux) with |z| above it are
            treated as missing (the paper's 10).
        flux_outlier_threshold (`float`, optional): globally standardised flux with |z| above it is
            treated as missing; set by :meth:`fit`; ``None`` = ``outlier_threshold``.
    """

    model_input_names = ["input_ids", "input_values", "input_wavelength", "attention_mask"]

    def __init__(
        self,
        named_tokens: Sequence[str] = DEFAULT_NAMED_TOKENS,
        named_token_statistics: Mapping[str, Sequence[float]] | None = None,
        flux_median: float | None = None,
        flux_std: float | None = None,
        pixel_statistics: Mapping[str, Sequence[float]] | None = None,
        trained_wavelength_range: Sequence[float] | None = None,
        training_window_A: Sequence[float] | None = None,
        context_length: int = 512,
        outlier_threshold: float = 10.0,
        flux_outlier_threshold: float | None = None,
        feature_size: int = 1,
        sampling_rate: int = 0,
        padding_value: float = 0.0,
        **kwargs,
    ):
        kwargs.setdefault("return_attention_mask", True)
        kwargs.setdefault("padding_side", "right")
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.named_tokens = [str(n) for n in named_tokens]
        if len(set(self.named_tokens)) != len(self.named_tokens):
            raise ValueError(f"named_tokens has duplicates: {self.named_tokens}")
        if named_token_statistics is None:
            named_token_statistics = {k: v for k, v in PAPER_LABEL_STATISTICS.items() if k in self.named_tokens}
        self.named_token_statistics = {str(k): [float(v[0]), float(v[1])] for k, v in named_token_statistics.items()}
        self.flux_median = None if flux_median is None else float(flux_median)
        self.flux_std = None if flux_std is None else float(flux_std)
        if self.flux_std is not None and not self.flux_std > 0:
            raise ValueError(f"flux_std must be > 0, got {flux_std}")
        self.pixel_statistics = None
        if pixel_statistics is not None:
            table = {k: [float(x) for x in pixel_statistics[k]] for k in ("wavelength", "median", "std")}
            if not len(table["wavelength"]) == len(table["median"]) == len(table["std"]):
                raise ValueError("pixel_statistics 'wavelength', 'median' and 'std' must have the same length")
            if np.any(np.diff(table["wavelength"]) <= 0):
                raise ValueError("pixel_statistics['wavelength'] must be strictly increasing")
            self.pixel_statistics = table
        self.trained_wavelength_range = (
            None if trained_wavelength_range is None else [float(x) for x in trained_wavelength_range]
        )
        self.training_window_A = None if training_window_A is None else [float(x) for x in training_window_A]
        if self.training_window_A is not None and not (
            len(self.training_window_A) == 2 and self.training_window_A[0] <= self.training_window_A[1]
        ):
            raise ValueError(f"training_window_A must be [min, max] Å, got {training_window_A}")
        self.context_length = int(context_length)
        self.outlier_threshold = float(outlier_threshold)
        self.flux_outlier_threshold = None if flux_outlier_threshold is None else float(flux_outlier_threshold)

    def to_dict(self):
        output = super().to_dict()
        return {k: v for k, v in output.items() if not k.startswith("_")}

    # ---- vocabulary and statistics ----------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.flux_median is not None and self.flux_std is not None

    def token_id(self, name: str) -> int:
        """Token id of a named token; ``ValueError`` naming the known tokens if unknown."""
        try:
            return FIRST_NAMED_ID + self.named_tokens.index(name)
        except ValueError:
            raise ValueError(
                f"unknown label or named input {name!r}; this model knows {self.named_tokens}. "
                "Check the spelling, or add it with model.add_named_tokens / feature_extractor.add_named_tokens"
            ) from None

    def token_name(self, token_id: int) -> str:
        index = int(token_id) - FIRST_NAMED_ID
        if not 0 <= index < len(self.named_tokens):
            raise ValueError(f"token id {token_id} is not a named token (ids 2..{1 + len(self.named_tokens)})")
        return self.named_tokens[index]

    def statistics(self, name: str) -> tuple[float, float]:
        """(median, MAD-std) of a named token, in physical units."""
        self.token_id(name)
        if name not in self.named_token_statistics:
            raise ValueError(f"no statistics for {name!r}: fit the feature extractor on data that contain it")
        median, std = self.named_token_statistics[name]
        return median, std

    def add_named_tokens(self, names: Iterable[str], statistics: Mapping[str, Sequence[float]] | None = None) -> None:
        """Append named tokens (same call as ``SpectraFMModel.add_named_tokens``; keep both in step)."""
        names = [str(n) for n in names]
        clash = [n for n in names if n in self.named_tokens]
        if clash or len(set(names)) != len(names):
            raise ValueError(f"named tokens {clash or names} already exist or repeat; existing: {self.named_tokens}")
        statistics = dict(statistics or {})
        self.named_tokens = [*self.named_tokens, *names]
        for name in names:
            median, std = statistics.get(name, (0.0, 1.0))
            self.named_token_statistics[name] = [float(median), float(std)]

    def check_compatible(self, config) -> None:
        """``ValueError`` unless this extractor's vocabulary matches a model config's."""
        if list(config.named_tokens) != self.named_tokens:
            raise ValueError(
                f"feature extractor named_tokens {self.named_tokens} differ from the model's "
                f"{list(config.named_tokens)}; load both from the same checkpoint"
            )

    # ---- fitting ------------------------------------------------------------------------------
    def fit(
        self,
        *,
        wavelength,
        flux,
        mask=None,
        labels: Mapping[str, Sequence[float]] | None = None,
        max_spectra: int = 2000,
        seed: int = 0,
    ) -> "SpectraFMFeatureExtractor":
        """Fit the standardisation statistics from arrays, in place; returns ``self``.

        (To fit from a dataset of the project schema, use
        ``spectrafm_hf.data.standardisation.fit_feature_extractor_from_dataset``: it reads these
        arrays and calls this method.)

        * Flux: ONE centre and scale for all pixels, from the valid flux values (not masked, finite)
          of up to ``max_spectra`` randomly chosen spectra: ``flux_median`` = their median and
          ``flux_std`` = their standard deviation after trimming the 0.01 % tails (robust to a few
          garbage values, but it sees the absorption lines).
          Why not the MAD-std, as for labels and the paper's per-pixel statistics: pooled over all
          pixels, the MAD only measures the noise around the continuum, so line cores land at
          |z| ~ 20 (simulated APOGEE) to ~ 100 (a high-S/N window); the embedding then saturates and
          learning stalls. Measured on the test suite's toy spectra (tiny model, 600 steps): MAD-std
          scale → [Fe/H] RMSE 0.23–0.28 dex, still noisy; a scale of the overall spread → 0.04 dex
          after 200 steps.
        * ``flux_outlier_threshold``: twice the largest |z| of the training flux (its 0.01 % and
          99.99 % quantiles), and at least ``outlier_threshold``: flux further out than anything seen
          in training, by a factor 2, is garbage; a fixed |z| > 10 would instead cut the deepest
          real line cores of some stars.
        * Named tokens: median and MAD-std of every named token in ``labels``.
        * ``trained_wavelength_range``: min and max wavelength of the valid pixels.

        Args:
            wavelength: vacuum Å, (P,) or (N, P).
            flux: (N, P), or (P,) for one spectrum; numpy (a memory map stays one: only the chosen
                spectra are read), torch or a list.
            mask: (N, P) bool, True = bad pixel.
            labels: named token → (N,) physical values (NaN = unknown).
            max_spectra: cap on the spectra read for the flux statistics.
            seed: seed of the random choice of spectra.
        """
        if flux is None or wavelength is None:
            raise ValueError("fit needs wavelength= and flux= arrays")
        flux = flux if hasattr(flux, "shape") else np.asarray(flux)  # keeps memory maps and tensors as they are
        if flux.ndim == 1:
            flux = flux[None]
        if mask is not None and not hasattr(mask, "shape"):
            mask = np.asarray(mask)
        # Subsample before converting: a memory-mapped (100k, 7514) float32 array must not become float64.
        index = slice(None)
        if len(flux) > max_spectra:
            index = np.sort(np.random.default_rng(seed).choice(len(flux), size=max_spectra, replace=False))
        flux = _numpy(flux[index], np.float64)
        wavelength = _numpy(wavelength, np.float64)
        grid = np.broadcast_to(wavelength if wavelength.ndim == 1 else wavelength[index], flux.shape)
        valid = np.isfinite(flux)
        if mask is not None:
            valid &= ~_numpy(mask[index], bool).reshape(flux.shape)
        if not valid.any():
            raise ValueError("fit: every flux value is masked or non-finite; nothing to compute statistics from")
        self._fit_flux_statistics(flux[valid])
        self.trained_wavelength_range = [float(grid[valid].min()), float(grid[valid].max())]
        for name, values in (labels or {}).items():
            self.token_id(name)
            values = _numpy(values, np.float64)
            if np.isfinite(values).any():
                self.named_token_statistics[name] = list(mad_std(values))
        return self

    def _fit_flux_statistics(self, training_flux: np.ndarray) -> None:
        """``flux_median``, ``flux_std`` and ``flux_outlier_threshold`` from the valid flux values
        (1-D, float64); :meth:`fit` explains the choices."""
        lo, hi = np.quantile(training_flux, [1e-4, 1.0 - 1e-4])
        trimmed = training_flux[(training_flux >= lo) & (training_flux <= hi)]
        self.flux_median = float(np.median(training_flux))
        self.flux_std = float(np.std(trimmed)) or 1.0
        extremes = (np.array([lo, hi]) - self.flux_median) / self.flux_std
        self.flux_outlier_threshold = float(max(self.outlier_threshold, 2.0 * np.abs(extremes).max()))

    # ---- validation and standardisation -------------------------------------------------------
    def prepare(self, wavelength, flux, flux_err=None, mask=None, scalars=None, warn: bool = True,
                window: Sequence[float] | None = None, assess: bool = False) -> PreparedSpectra:
        """Validate spectra and standardise them. Raises ``ValueError`` on bad input (naming the problem
        and the fix); warns (with the count) about valid pixels outside the trained wavelength range.

        Args:
            wavelength: vacuum Å, (P,) shared by all spectra or (N, P).
            flux: (N, P), or (P,) for one spectrum.
            flux_err: 1σ errors like ``flux`` (NaN = unknown; +inf marks a bad pixel); only checked,
                the model does not read them.
            mask: bool like ``flux``, True = bad pixel (never attended).
            scalars: named input → (N,) physical values (NaN = absent).
            warn: warn about valid pixels outside ``trained_wavelength_range``.
            window: [min, max] Å; pixels outside are left out (e.g. ``training_window_A``).
            assess: inference mode: per-star :class:`SpectraQuality` in the result's ``quality``
                (flags instead of the out-of-range warning), and a star with no valid pixel is
                flagged instead of raising.
        """
        if not self.is_fitted:
            raise ValueError(
                "this feature extractor has no flux statistics: call fit(wavelength=..., flux=...) (from a "
                "dataset: spectrafm_hf.data.standardisation.fit_feature_extractor_from_dataset), or construct "
                "it with flux_median= and flux_std="
            )
        flux = self._checked_flux(flux)
        wavelength = self._checked_wavelength(wavelength, flux.shape)
        valid = _unmasked_pixels(flux, flux_err, mask)
        values, within = self._standardise_flux(wavelength, flux)
        valid &= within
        n_not_read = np.zeros(len(flux), dtype=np.int64)
        if window is not None:
            grid = np.broadcast_to(wavelength, valid.shape)
            inside = (grid >= float(window[0])) & (grid <= float(window[1]))
            n_not_read = (valid & ~inside).sum(axis=1)
            valid &= inside
        empty = np.flatnonzero(~valid.any(axis=1))
        if empty.size and not assess:
            raise ValueError(
                f"every pixel is masked, non-finite or an outlier (|z| > {self._flux_limit:g}) in "
                f"{empty.size} spectrum/spectra (indices {empty[:10].tolist()}{' ...' if empty.size > 10 else ''}); "
                "drop them, or check the flux normalisation and the mask (True = bad pixel)"
            )
        values = np.where(valid, values, 0.0).astype(np.float32)
        scalars_z = self._standardise_scalars(scalars, len(flux))
        quality = self._assess_quality(wavelength, flux, valid, n_not_read) if assess else None
        if warn and not assess:
            self._warn_outside_trained_range(wavelength, valid)
        return PreparedSpectra(wavelength, values, valid, scalars_z, quality)

    @staticmethod
    def _checked_flux(flux) -> np.ndarray:
        """Flux as float64 (N, P); ``ValueError`` unless it is 1-D or 2-D and not empty."""
        flux = _numpy(flux, np.float64)
        if flux.ndim == 1:
            flux = flux[None]
        if flux.ndim != 2:
            raise ValueError(
                f"flux must have shape (n_spectra, n_pixels) (or (n_pixels,) for one spectrum), got shape "
                f"{flux.shape}; reshape or loop over your extra axes"
            )
        if flux.shape[0] == 0 or flux.shape[1] == 0:
            raise ValueError(f"flux is empty (shape {flux.shape})")
        return flux

    def _assess_quality(self, wavelength: np.ndarray, flux: np.ndarray, valid: np.ndarray,
                        n_not_read: np.ndarray) -> SpectraQuality:
        """Per-star :class:`SpectraQuality` of the ``valid`` (N, P) pixels of ``flux`` (N, P, physical)
        on ``wavelength`` (P,) or (N, P) Å; the rules are those of :data:`QUALITY_FLAGS`."""
        n_read = valid.sum(axis=1)
        inside = valid
        if self.trained_wavelength_range is not None:
            lo, hi = self.trained_wavelength_range
            grid = np.broadcast_to(wavelength, valid.shape)
            inside = valid & (grid >= lo) & (grid <= hi)
        n_in = inside.sum(axis=1)
        read_flux = np.where(valid, flux, np.nan)
        with warnings.catch_warnings():  # stars without valid pixels: all-NaN rows, flagged below
            warnings.simplefilter("ignore", RuntimeWarning)
            median_z = (np.nanmedian(read_flux, axis=1) - self.flux_median) / self.flux_std
            spread = np.nanmax(read_flux, axis=1) - np.nanmin(read_flux, axis=1)
        rules = {  # (N,) bool per flag, in QUALITY_FLAGS order
            "no_valid_pixels": (n_read == 0) & (n_not_read == 0),
            # valid pixels, but none the model reads inside its range (or its window, all left out)
            "no_pixels_in_trained_range": (n_in == 0) & ((n_read > 0) | (n_not_read > 0)),
            "flux_not_like_training": (n_read > 0) & (np.abs(median_z) > FLUX_MEDIAN_LIMIT),
            "constant_flux": (n_read > 1) & (spread == 0),
            "few_pixels": (n_in > 0) & (n_in < MIN_PIXELS),
            "partly_outside_trained_range": (n_in > 0) & (n_in < n_read),
        }
        flags = np.array([";".join(name for name, hit in rules.items() if hit[i]) for i in range(len(flux))],
                         dtype=object)
        return SpectraQuality(n_read, n_in, np.asarray(n_not_read), flags)

    def _checked_wavelength(self, wavelength, shape: tuple[int, int]) -> np.ndarray:
        """Wavelengths (Å) as float64 (P,) or (N, P) for flux of ``shape`` (N, P); ``ValueError`` if they
        do not match the flux, are not finite and strictly increasing, or look like µm / nm."""
        n, p = shape
        wavelength = _numpy(wavelength, np.float64)
        if wavelength.ndim == 1:
            if wavelength.shape[0] != p:
                raise ValueError(
                    f"wavelength has {wavelength.shape[0]} pixels but flux has {p} per spectrum; "
                    "they must describe the same pixels"
                )
        elif wavelength.ndim == 2:
            if wavelength.shape == (1, p):
                wavelength = wavelength[0]
            elif wavelength.shape != (n, p):
                raise ValueError(
                    f"wavelength of shape {wavelength.shape} does not match flux of shape {shape}; "
                    "give one grid (n_pixels,) or one per spectrum (n_spectra, n_pixels)"
                )
        else:
            raise ValueError(f"wavelength must have shape (n_pixels,) or (n_spectra, n_pixels), got {wavelength.shape}")
        if not np.isfinite(wavelength).all():
            raise ValueError(
                f"wavelength has {int((~np.isfinite(wavelength)).sum())} non-finite value(s); every pixel needs a "
                "finite wavelength (mask bad pixels with mask= instead)"
            )
        if p > 1 and not (np.diff(wavelength, axis=-1) > 0).all():
            raise ValueError(
                "wavelengths must be strictly increasing along each spectrum; sort the pixels by wavelength "
                "(and drop duplicates) first"
            )
        self._check_units(wavelength)
        return wavelength

    def _warn_outside_trained_range(self, wavelength: np.ndarray, valid: np.ndarray) -> None:
        """Warn, with the count, about valid pixels outside ``trained_wavelength_range`` (if set)."""
        if self.trained_wavelength_range is None:
            return
        lo, hi = self.trained_wavelength_range
        grid = np.broadcast_to(wavelength, valid.shape)
        outside = int((valid & ((grid < lo) | (grid > hi))).sum())
        if outside:
            warnings.warn(
                f"{outside} of {int(valid.sum())} valid pixels lie outside the model's trained wavelength range "
                f"{lo:.1f}–{hi:.1f} Å; predicting with them anyway (mask them to exclude them)",
                stacklevel=4,  # the user's line: this → prepare → __call__ → user
            )

    def _check_units(self, wavelength: np.ndarray) -> None:
        """``ValueError`` for wavelengths that look like µm or nm: µm if every value is below 100 (no
        spectrum lies below 100 Å), or if ×1e4 lands in the trained range and the values do not; nm if
        ×10 lands in the trained range and the values do not, or if they lie within 300–2600 (the
        optical/near-IR in nm; the far UV in Å) outside any trained range."""
        lo, hi = float(wavelength.min()), float(wavelength.max())
        if lo <= 0:
            raise ValueError(f"wavelengths must be positive (vacuum Å), got a minimum of {lo}")
        trained = self.trained_wavelength_range

        def in_trained(a, b):
            return trained is not None and a <= trained[1] and b >= trained[0]

        looks_um = hi < 100.0 or (in_trained(lo * 1e4, hi * 1e4) and not in_trained(lo, hi))
        looks_nm = not in_trained(lo, hi) and (in_trained(lo * 10, hi * 10) or (lo >= 300.0 and hi <= 2600.0))
        for looks, factor, unit in ((looks_um, 1e4, "micrometres (µm)"), (looks_nm, 10.0, "nanometres (nm)")):
            if looks:
                raise ValueError(
                    f"wavelengths {lo:g}–{hi:g} look like {unit}, but SpectraFM needs vacuum Ångström; "
                    f"multiply them by {factor:g}"
                )

    @property
    def _flux_limit(self) -> float:
        return self.outlier_threshold if self.flux_outlier_threshold is None else self.flux_outlier_threshold

    def usable_pixels(self, wavelength, flux, mask=None) -> np.ndarray:
        """(N, P) bool: pixels the model will read (finite, not masked, not an outlier); no validation."""
        flux = _numpy(flux, np.float64)
        _, within = self._standardise_flux(_numpy(wavelength, np.float64), flux)
        usable = within & np.isfinite(flux)
        return usable if mask is None else usable & ~_numpy(mask, bool)

    def _standardise_flux(self, wavelength: np.ndarray, flux: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(standardised flux, within the outlier limits); NaN flux is never within."""
        with np.errstate(invalid="ignore"):
            values = (flux - self.flux_median) / self.flux_std
            within = np.abs(values) <= self._flux_limit
        if self.pixel_statistics is None:
            return values, within
        table_wl = np.asarray(self.pixel_statistics["wavelength"])
        grid = np.broadcast_to(wavelength, flux.shape)
        pos = np.clip(np.searchsorted(table_wl, grid), 1, len(table_wl) - 1)
        nearest = np.where(np.abs(table_wl[pos - 1] - grid) < np.abs(table_wl[pos] - grid), pos - 1, pos)
        matched = np.abs(table_wl[nearest] - grid) <= 1e-6 * grid
        median = np.asarray(self.pixel_statistics["median"])[nearest]
        std = np.asarray(self.pixel_statistics["std"])[nearest]
        with np.errstate(invalid="ignore", divide="ignore"):
            per_pixel = np.where(std > 0, (flux - median) / np.where(std > 0, std, 1.0), flux)
            per_pixel_within = np.abs(per_pixel) <= self.outlier_threshold
        return np.where(matched, per_pixel, values), np.where(matched, per_pixel_within, within)

    def _standardise_scalars(self, scalars: Mapping | None, n: int) -> dict[str, np.ndarray]:
        out = {}
        for name, values in (scalars or {}).items():
            median, std = self.statistics(name)
            values = _numpy(values, np.float64)
            if values.ndim == 0:
                values = np.broadcast_to(values, (n,))
            if values.shape != (n,):
                raise ValueError(
                    f"named input {name!r} has shape {values.shape}; expected ({n},), one value per spectrum"
                )
            z = (values - median) / std
            with np.errstate(invalid="ignore"):
                z = np.where(np.abs(z) <= self.outlier_threshold, z, np.nan)
            out[name] = z
        return out

    # ---- tokenisation ------------------------------------------------------------------------
    def __call__(
        self,
        wavelength,
        flux,
        flux_err=None,
        mask=None,
        scalars: Mapping | None = None,
        request: str | Sequence[str] | None = None,
        context_length: int | None = None,
        sampling: str = "all",
        seed: int | None = None,
        generator: np.random.Generator | None = None,
        labels: Mapping | None = None,
        label_errors: Mapping | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Tokenise spectra (see :meth:`prepare` for the inputs and :meth:`tokenize` for the output)."""
        if kwargs:
            raise TypeError(f"unexpected argument(s) {sorted(kwargs)}")
        prepared = self.prepare(wavelength, flux, flux_err=flux_err, mask=mask, scalars=scalars)
        return self.tokenize(
            prepared, request=request, context_length=context_length, sampling=sampling, seed=seed,
            generator=generator, labels=labels, label_errors=label_errors, return_tensors=return_tensors,
        )

    def tokenize(
        self,
        prepared: PreparedSpectra,
        request: str | Sequence[str] | None = None,
        context_length: int | None = None,
        sampling: str = "all",
        seed: int | None = None,
        generator: np.random.Generator | None = None,
        labels: Mapping | None = None,
        label_errors: Mapping | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Prepared spectra → a padded token batch (``BatchFeature``).

        Args:
            prepared: output of :meth:`prepare`.
            request: label names to predict (the same for every star), ``"random"`` (training: one
                random label per star among those it has in ``labels``), or None (all named tokens in
                ``labels`` if given, else all named tokens not given as inputs).
            context_length: pixels per example. ``sampling="random"``: defaults to
                ``self.context_length``. ``sampling="all"``: None = every valid pixel in one row; an int =
                disjoint chunks of at most that many pixels covering every valid pixel (several rows per
                star, mapped back by ``spectrum_index``; combine with :meth:`combine_chunks`).
            sampling: ``"random"`` (training: each star its own random permutation of its valid pixels)
                or ``"all"`` (inference).
            seed, generator: randomness of the pixel and label choice (chunk assignment too; seed 0 when
                neither is given and chunks are made, so chunked inference is reproducible).
            labels: named token → (N,) physical target values (NaN = unknown) for training.
            label_errors: named token → (N,) physical 1σ errors of the targets.
            return_tensors: ``"pt"`` (torch) or ``"np"``.

        Returns:
            ``BatchFeature`` with ``input_ids``, ``input_values``, ``input_wavelength``, ``attention_mask``
            (B, L); ``query_ids`` (B, Q); with labels also ``labels``, ``label_errors``, ``query_mask``
            (B, Q, standardised); with chunks also ``spectrum_index`` (B,).
        """
        if sampling not in ("random", "all"):
            raise ValueError(f"sampling must be 'random' or 'all', got {sampling!r}")
        chunked = sampling == "all" and context_length is not None
        if chunked and int(context_length) < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        if generator is None:
            generator = np.random.default_rng(0 if seed is None and chunked else seed)
        n = len(prepared)
        # The label draw comes before the pixel draw: keep that order, or a seed gives other batches.
        query_names, query_ids, query_mask = self._queries(prepared, request, labels, generator, n)

        if sampling == "random":
            context = int(context_length or self.context_length)
            row_star, columns, present = _sample_random_context(prepared.valid, context, generator)
        elif chunked:
            row_star, columns, present = _sample_chunks(prepared.valid, int(context_length), generator)
        else:
            row_star, columns, present = _sample_all_pixels(prepared.valid)

        data = self._assemble_tokens(prepared, row_star, columns, present)
        data["query_ids"] = query_ids[row_star]
        if labels is not None:
            target, target_err = self._targets(query_names, query_ids, labels, label_errors, n)
            data["labels"] = target[row_star].astype(np.float32)
            data["label_errors"] = target_err[row_star].astype(np.float32)
            data["query_mask"] = (query_mask & np.isfinite(target))[row_star].astype(np.int64)
            data["labels"][data["query_mask"] == 0] = 0.0
        if chunked:
            data["spectrum_index"] = row_star.astype(np.int64)
        return BatchFeature(data, tensor_type=return_tensors)

    def _assemble_tokens(self, prepared: PreparedSpectra, row_star: np.ndarray, columns: np.ndarray,
                         present: np.ndarray) -> dict[str, np.ndarray]:
        """The token arrays (B, L) of the rows a sampling function picked (``row_star`` (B,): the star
        of each row; ``columns`` (B, W): its pixels; ``present`` (B, W): False = padding): named
        inputs first, then pixels, padding at the right."""
        star = row_star[:, None]
        pixel_values = np.where(present, prepared.values[star, columns], 0.0)
        grid = prepared.wavelength
        pixel_wavelength = grid[columns] if grid.ndim == 1 else grid[star, columns]
        pixel_wavelength = np.where(present, pixel_wavelength, 0.0)

        named = [(self.token_id(name), z) for name, z in prepared.scalars.items()]
        b = len(row_star)
        ids = [np.where(np.isfinite(z[row_star]), tid, PAD_ID)[:, None] for tid, z in named]
        vals = [np.nan_to_num(z[row_star])[:, None] for _, z in named]
        input_ids = np.concatenate([*ids, np.where(present, PIXEL_ID, PAD_ID)], axis=1).astype(np.int64)
        input_values = np.concatenate([*vals, pixel_values], axis=1).astype(np.float32)
        input_wavelength = np.concatenate(
            [np.zeros((b, len(named))), pixel_wavelength], axis=1
        ).astype(np.float32)
        input_values[input_ids == PAD_ID] = self.padding_value
        return {
            "input_ids": input_ids,
            "input_values": input_values,
            "input_wavelength": input_wavelength,
            "attention_mask": (input_ids != PAD_ID).astype(np.int64),
        }

    def _queries(self, prepared, request, labels, generator, n):
        """(names (Q,) or None for per-star random, query_ids (N, Q), query_mask (N, Q) bool)."""
        labels = dict(labels or {})
        for name in labels:
            self.token_id(name)
        if isinstance(request, str) and request == "random":
            if not labels:
                raise ValueError("request='random' picks one of each star's labels: pass labels={name: values}")
            names = list(labels)
            known = np.stack([np.isfinite(_numpy(labels[k], np.float64)) for k in names], axis=1)  # (N, K)
            # A random available label per star: the argmax of random keys over the available ones.
            keys = np.where(known, generator.random(known.shape), -1.0)
            choice = keys.argmax(axis=1)
            ids = np.array([self.token_id(k) for k in names])[choice][:, None]
            return None, ids, known.any(axis=1)[:, None]
        if request is None:
            names = [k for k in self.named_tokens if k in labels] if labels else [
                k for k in self.named_tokens if k not in prepared.scalars
            ]
        else:
            names = [request] if isinstance(request, str) else list(request)
        if not names:
            raise ValueError("nothing to predict: request at least one label")
        ids = np.array([self.token_id(k) for k in names])
        given = [k for k in names if k in prepared.scalars]
        if given:
            raise ValueError(f"{given} requested and also given as input; drop them from scalars= or from request=")
        return names, np.broadcast_to(ids, (n, len(ids))).copy(), np.ones((n, len(ids)), dtype=bool)

    def _targets(self, names, query_ids, labels, label_errors, n):
        """Standardised targets and errors (N, Q) for the queries; NaN where unknown."""
        label_errors = dict(label_errors or {})
        target = np.full(query_ids.shape, np.nan)
        target_err = np.zeros(query_ids.shape)
        for name in set(labels) | set(label_errors):
            self.token_id(name)
        for name, values in labels.items():
            median, std = self.statistics(name)
            values = _numpy(values, np.float64)
            if values.shape != (n,):
                raise ValueError(f"labels[{name!r}] has shape {values.shape}; expected ({n},), one value per spectrum")
            hit = query_ids == self.token_id(name)
            target = np.where(hit, ((values - median) / std)[:, None], target)
            if name in label_errors:
                errors = _numpy(label_errors[name], np.float64)
                if errors.shape != (n,):
                    raise ValueError(f"label_errors[{name!r}] has shape {errors.shape}; expected ({n},)")
                if (errors < 0).any():
                    raise ValueError(f"label_errors[{name!r}] has negative values; errors are 1σ, >= 0 (NaN = unknown)")
                errors = np.nan_to_num(errors / std, nan=0.0, posinf=0.0)
                target_err = np.where(hit, errors[:, None], target_err)
        if names is not None:
            missing = [k for k in names if k not in labels]
            if missing:
                raise ValueError(
                    f"labels missing for requested {missing}; pass them in labels= or drop them from request="
                )
        return target, target_err

    # ---- predictions back to physical units -------------------------------------------------
    @staticmethod
    def combine_chunks(spectrum_index, mean, log_variance, n_spectra: int | None = None):
        """Combine the predictions of a star's disjoint chunks (standardised units).

        Mean: precision-weighted, ``μ = Σ w_k μ_k / Σ w_k`` with ``w_k = exp(−s_k)``. Variance: the
        precision-weighted mean of the chunk variances, ``Σ w_k σ_k² / Σ w_k = n / Σ w_k``, PLUS the
        weighted spread of the chunk means around μ, ``Σ w_k (μ_k − μ)² / Σ w_k``. The chunks of one
        star are NOT independent measurements (they share the star's systematic errors: its model
        mismatch, its label-space region), so there is no 1/n shrinkage: n chunks that agree give the
        σ of one chunk; chunks that disagree widen it. A star with one chunk keeps its prediction.

        Args:
            spectrum_index: (R,) star of each row; mean, log_variance: (R, Q).

        Returns:
            (mean, log_variance), each (n_spectra, Q), numpy float64.
        """
        index = _numpy(spectrum_index, np.int64)
        mean = _numpy(mean, np.float64)
        log_variance = _numpy(log_variance, np.float64)
        n = int(index.max()) + 1 if n_spectra is None else int(n_spectra)
        q = mean.shape[1]
        weight = np.exp(-log_variance)
        sum_w = np.zeros((n, q))
        np.add.at(sum_w, index, weight)
        n_chunks = np.bincount(index, minlength=n)[:, None].astype(np.float64)
        mu = np.zeros((n, q))
        np.add.at(mu, index, weight * mean)
        mu /= sum_w
        spread = np.zeros((n, q))
        np.add.at(spread, index, weight * (mean - mu[index]) ** 2)
        variance = (n_chunks + spread) / sum_w
        return mu, np.log(variance)

    def to_physical(self, query, mean, log_variance) -> tuple[np.ndarray, np.ndarray]:
        """Standardised predictions → (values, 1σ) in physical units: ``value = μ·std + median``,
        ``σ = sqrt(exp(s))·std``.

        Args:
            query: label names (Q,), or token ids (Q,) or (B, Q) (e.g. the batch's ``query_ids``).
            mean, log_variance: (B, Q) model outputs (torch or numpy).
        """
        mean = _numpy(mean, np.float64)
        log_variance = _numpy(log_variance, np.float64)
        if isinstance(query, str):
            query = [query]
        query = query if isinstance(query, (list, tuple)) else _numpy(query)
        if isinstance(query, (list, tuple)) and query and isinstance(query[0], str):
            names = np.array(query, dtype=object)
        else:
            names = np.vectorize(self.token_name, otypes=[object])(_numpy(query, np.int64))
        names = np.broadcast_to(names, mean.shape)
        stats = {k: self.statistics(k) for k in set(names.ravel())}
        median = np.vectorize(lambda k: stats[k][0], otypes=[float])(names)
        std = np.vectorize(lambda k: stats[k][1], otypes=[float])(names)
        return mean * std + median, np.exp(0.5 * log_variance) * std


#: The paper's word for it. (The class itself must not be named "...Tokenizer": see module docstring.)
SpectraFMTokenizer = SpectraFMFeatureExtractor

__all__ = ["SpectraFMFeatureExtractor", "SpectraFMTokenizer", "PreparedSpectra", "SpectraQuality", "QUALITY_FLAGS",
           "REFUSING_FLAGS", "mad_std"]
