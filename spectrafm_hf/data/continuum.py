"""Continuum normalisation of apStar spectra, so they look like ASPCAP-normalised ones.

apStar spectra are flux-calibrated (1e-17 erg/s/cm²/Å) and carry the instrument's throughput shape;
models trained on ASPCAP-normalised spectra (aspcapStar HDU 1, the paper's ``aspcap_spectra_*``)
expect a continuum at 1 with absorption lines below it. This module divides a spectrum by a
smooth pseudo-continuum.

Method (per chip, because the three detectors have separate throughput curves and gaps between them):

1. Start from every usable pixel of the chip (finite positive flux, not masked), minus isolated
   upward spikes (more than ``upper_sigma``·σ above a 5-pixel running median).
2. Fit a Chebyshev polynomial of degree ``degree`` (default 4, the order ASPCAP uses per chip) in
   x = chip pixel index scaled to [-1, 1] (log-λ is linear in pixel index, so this is a polynomial
   in log λ).
3. Keep for the next fit only the pixels whose residual ``r = flux − continuum`` satisfies
   ``−lower_sigma·σ < r < upper_sigma·σ``. The clip is *asymmetric* (default 1σ below, 3σ above):
   absorption lines sit below the continuum and are rejected quickly, while pixels scattered above
   it by noise are kept, so the fit climbs to the upper envelope of the spectrum. σ is the
   per-pixel ``flux_err`` when it is given, else a robust noise estimate of the chip
   (``astropy.stats.mad_std`` of adjacent-pixel differences / √2, insensitive to lines a few pixels wide).
4. Repeat until the kept set stops changing or ``max_iter`` is reached. This runs in two phases:
   first with the lower clip only (the first fit, through every pixel, lies *below* the continuum,
   so an upper clip would reject the continuum itself at high S/N), then with both clips.

The normalised flux is ``flux / continuum`` and the normalised error ``flux_err / continuum``.
On a real K-dwarf apStar (SNR 137; the repository's test fixture
``tests/fixtures/apStar-dr17-2M19485057+5005279.fits.gz``) this gives a median normalised flux of
≈ 0.985 per chip and a 90th percentile ≈ 1.00 (see ``tests/test_continuum.py``). The 1σ lower clip
biases the continuum upward by ≈ 0.28σ of the noise (the mean of a unit normal truncated to
(−1, 3)), i.e. ≈ 0.2 % at SNR 137: small against ASPCAP's own normalisation differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.stats import mad_std
from scipy.ndimage import median_filter

from . import grid


@dataclass(frozen=True)
class ContinuumConfig:
    """Settings of :func:`fit_continuum` (see the module docstring for the method).

    Attributes:
        degree: Chebyshev degree per chip.
        lower_sigma: pixels more than this many σ *below* the fit are rejected (absorption lines).
        upper_sigma: pixels more than this many σ *above* the fit are rejected (cosmics, sky residuals).
        max_iter: maximum number of fit-and-clip iterations.
        min_fraction: if fewer than this fraction of a chip's pixels remain, the fit is refused
            (a spectrum so masked or so line-blanketed has no measurable continuum).
    """

    degree: int = 4
    lower_sigma: float = 1.0
    upper_sigma: float = 3.0
    max_iter: int = 20
    min_fraction: float = 0.05

    def __post_init__(self):
        if self.degree < 0:
            raise ValueError(f"degree must be >= 0, got {self.degree}")
        if self.lower_sigma <= 0 or self.upper_sigma <= 0:
            raise ValueError(
                f"lower_sigma and upper_sigma must be > 0, got {self.lower_sigma}, {self.upper_sigma}"
            )
        if not 0 < self.min_fraction <= 1:
            raise ValueError(f"min_fraction must be in (0, 1], got {self.min_fraction}")


# The default settings, shared as one instance (the config is frozen, so sharing it is safe).
DEFAULT_CONTINUUM = ContinuumConfig()


def robust_noise(flux: np.ndarray) -> float:
    """Noise σ of a spectrum segment from adjacent-pixel differences (robust to lines), flux units."""
    flux = np.asarray(flux, dtype=np.float64)
    diff = np.diff(flux[np.isfinite(flux)])
    if diff.size < 2:
        return float("nan")
    return float(mad_std(diff) / np.sqrt(2.0))


def _fit_segment(flux, flux_err, usable, config: ContinuumConfig, where: str) -> np.ndarray:
    n = flux.size
    x = np.linspace(-1.0, 1.0, n)
    need = max(int(np.ceil(config.min_fraction * n)), 2 * (config.degree + 1))
    if usable.sum() < need:
        raise ValueError(
            f"{where}: only {int(usable.sum())} of {n} pixels are usable (finite, unmasked); "
            f"a continuum fit needs at least {need}"
        )
    if flux_err is not None:
        sigma = np.where(np.isfinite(flux_err) & (flux_err > 0), flux_err, np.inf)
    else:
        sigma = np.full(n, robust_noise(flux[usable]))
    # A noiseless segment (σ = 0) would make every clip test 0·∞ = NaN; floor σ at 1e-6 of the level.
    sigma = np.maximum(np.nan_to_num(sigma, nan=np.inf), 1e-6 * np.median(np.abs(flux[usable])))
    # Isolated upward spikes (cosmics, sky residuals a pixel or two wide) are removed first, against
    # a 5-pixel running median: they would otherwise drag the first fits up.
    filled = np.where(usable, flux, np.median(flux[usable]))
    spikes = (flux - median_filter(filled, size=5, mode="nearest")) > config.upper_sigma * sigma
    usable = usable & ~spikes
    keep = usable.copy()
    continuum = None
    # Phase 1 clips only below (lines): the first fit through all pixels sits under the continuum,
    # and an upper clip there would throw away the very continuum pixels the fit must climb to.
    # Phase 2 adds the upper clip once the fit has reached the envelope.
    for upper in (np.inf, config.upper_sigma):
        for _ in range(config.max_iter):
            coef = np.polynomial.chebyshev.chebfit(x[keep], flux[keep], config.degree)
            continuum = np.polynomial.chebyshev.chebval(x, coef)
            residual = flux - continuum
            new_keep = usable & (residual > -config.lower_sigma * sigma) & (residual < upper * sigma)
            if new_keep.sum() < need:
                # Clipping ran away (e.g. an error array far too small): keep the last acceptable fit.
                break
            if np.array_equal(new_keep, keep):
                break
            keep = new_keep
    if not np.all(np.isfinite(continuum)) or np.any(continuum <= 0):
        raise ValueError(
            f"{where}: the fitted continuum is not positive everywhere (min {np.nanmin(continuum):.3g}); "
            "is this a flux-calibrated spectrum with positive flux?"
        )
    return continuum


def fit_continuum(
    flux: np.ndarray,
    flux_err: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    chips: np.ndarray | None = None,
    config: ContinuumConfig = DEFAULT_CONTINUUM,
) -> np.ndarray:
    """Pseudo-continuum of one spectrum, shape (P,), in the units of ``flux``.

    Args:
        flux: shape (P,), any positive flux units (apStar: 1e-17 erg/s/cm²/Å).
        flux_err: shape (P,) 1σ errors in the same units, or None (robust noise estimate per chip).
        mask: bool (P,), True = bad pixel (excluded from the fit, still normalised).
        chips: int (P,) segment number of each pixel; each segment is fitted separately. Default:
            the three APOGEE chips when P = 7514 (``grid.chip_of_pixel()``); required otherwise.
        config: method settings.
    """
    flux = np.asarray(flux, dtype=np.float64)
    if flux.ndim != 1:
        raise ValueError(f"fit_continuum takes one spectrum of shape (P,), got {flux.shape}; loop over rows")
    if chips is None:
        if flux.size != grid.APOGEE_NPIX:
            raise ValueError(
                f"spectrum has {flux.size} pixels, not the {grid.APOGEE_NPIX}-pixel APOGEE grid; "
                "pass chips= (a segment number per pixel) to say where the detector gaps are"
            )
        chips = grid.chip_of_pixel()
    chips = np.asarray(chips)
    if chips.shape != flux.shape:
        raise ValueError(f"chips shape {chips.shape} differs from flux shape {flux.shape}")
    err = None if flux_err is None else np.asarray(flux_err, dtype=np.float64)
    usable = np.isfinite(flux) & (flux > 0)
    if mask is not None:
        usable &= ~np.asarray(mask, dtype=bool)
    if err is not None:
        usable &= np.isfinite(err) & (err > 0)
    continuum = np.full(flux.shape, np.nan)
    for chip in np.unique(chips):
        sel = chips == chip
        continuum[sel] = _fit_segment(
            flux[sel], None if err is None else err[sel], usable[sel], config, where=f"chip {chip}"
        )
    return continuum


def normalise(
    flux: np.ndarray,
    flux_err: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    chips: np.ndarray | None = None,
    config: ContinuumConfig = DEFAULT_CONTINUUM,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Continuum-normalise one spectrum (P,) or a stack (N, P).

    Returns ``(flux / continuum, flux_err / continuum or None, continuum)``, float64, same shape as
    ``flux``. The error is divided by the same continuum, so the signal-to-noise is unchanged.
    """
    flux = np.asarray(flux, dtype=np.float64)
    if flux.ndim == 2:
        rows = [
            normalise(
                flux[i],
                None if flux_err is None else np.asarray(flux_err)[i],
                None if mask is None else np.asarray(mask)[i],
                chips,
                config,
            )
            for i in range(flux.shape[0])
        ]
        norm = np.stack([r[0] for r in rows])
        err = None if flux_err is None else np.stack([r[1] for r in rows])
        return norm, err, np.stack([r[2] for r in rows])
    continuum = fit_continuum(flux, flux_err, mask, chips, config)
    err = None if flux_err is None else np.asarray(flux_err, dtype=np.float64) / continuum
    return flux / continuum, err, continuum
