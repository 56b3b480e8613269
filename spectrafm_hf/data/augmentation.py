"""Observed-like imperfections drawn afresh for clean synthetic spectra while pre-training.

Why: stage 1 learns from noise-free synthetic spectra that match their labels exactly. Trained longer,
it reads the observed spectra worse (issue 15, docs/scaling.md "What budget reaches the goal": stage-1
zero-shot [Fe/H] on observed iron-rich stars 0.19 dex at 10 min, 1.11 dex at 80 min, while it keeps
improving on clean synthetic ones): it overfits details of the simulator that real spectra do not share.
:class:`ObservedLikeAugmentation` perturbs each training star differently at every step with the
instrument and model-mismatch terms a real spectrum carries (the ranges of the simulator's observed
universe, :mod:`spectrafm_hf.data.simulator.universe`), so that nothing the model relies on survives only
in clean spectra. Which terms matter: ``benchmarks/scaling_study.py perturbation-probe`` (pixel noise,
then the continuum residual).

It draws new random imperfections; it never uses the observed universe's fixed "truth" (its line-data
errors, extra lines, physics tweaks), so nothing about the observed test stars leaks into pre-training.

Terms, applied in the order light meets them (each one off when its setting is None or 0):

* line strengths: the depth ``1 − f`` of every pixel times ``1 + line_depth_scatter · ε(λ)``, with ε a
  unit-variance Gaussian field correlated over ``depth_correlation_pixels`` (about one line): each line
  gets its own strength error, as log gf errors of ±0.1–0.15 dex give real model spectra;
* line-spread function: resolving power drawn uniformly in ``resolving_power`` against the synthetic
  spectra's ``nominal_resolving_power`` (broadened by a Gaussian when lower, sharpened to first order,
  ``2f − G∗f``, when higher);
* continuum-normalisation residual: a smooth multiplicative cubic Legendre polynomial per detector
  segment, rms drawn uniformly in ``continuum_rms``;
* noise: Gaussian, σ = 1/SNR per pixel, SNR log-uniform in ``snr``.

Only a ``fraction`` of the stars of a batch are perturbed; the rest stay clean.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
from scipy.ndimage import correlate1d

from .simulator.constants import APOGEE_RESOLVING_POWER, C_KMS

#: Gaussian σ per FWHM
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _pair(value, name: str) -> tuple[float, float] | None:
    """``(low, high)`` with ``0 < low ≤ high`` from a 2-sequence, or None."""
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"augment.{name} must be a pair [low, high] or null, got {value!r}") from None
    if not 0 < low <= high:
        raise ValueError(f"augment.{name} must satisfy 0 < low <= high, got {value!r}")
    return low, high


@dataclass(frozen=True)
class ObservedLikeAugmentation:
    """Settings of the perturbation (units: SNR per pixel, flux fractions, resolving power λ/Δλ).

    Attributes:
        fraction: share of the stars of a batch that are perturbed (the others stay clean).
        snr: (low, high) SNR per pixel, log-uniform; None = no noise.
        continuum_rms: (low, high) rms of the continuum residual, uniform; None = off.
        line_depth_scatter: σ of the relative line-depth error; 0 = off.
        depth_correlation_pixels: Gaussian σ (pixels) of the smoothing of the depth-error field.
        resolving_power: (low, high) resolving power of the perturbed spectrum, uniform; None = off.
        nominal_resolving_power: the clean spectra's resolving power.
    """

    fraction: float = 1.0
    snr: tuple[float, float] | None = (50.0, 1000.0)
    continuum_rms: tuple[float, float] | None = (0.003, 0.01)
    line_depth_scatter: float = 0.1
    depth_correlation_pixels: float = 1.5
    resolving_power: tuple[float, float] | None = (20000.0, 25000.0)
    nominal_resolving_power: float = APOGEE_RESOLVING_POWER

    def __post_init__(self):
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"augment.fraction must be in [0, 1], got {self.fraction!r}")
        if self.line_depth_scatter < 0 or self.depth_correlation_pixels <= 0:
            raise ValueError("augment.line_depth_scatter must be >= 0 and depth_correlation_pixels > 0, got "
                             f"{self.line_depth_scatter!r}, {self.depth_correlation_pixels!r}")
        for name in ("snr", "continuum_rms", "resolving_power"):
            object.__setattr__(self, name, _pair(getattr(self, name), name))

    @classmethod
    def from_dict(cls, values: Mapping | None) -> "ObservedLikeAugmentation | None":
        """From a YAML value (``augment:`` of a stage): None / false = no augmentation; ``true`` or a
        mapping (missing keys take the defaults). Unknown keys are an error naming the valid ones."""
        if values is None or values is False:
            return None
        if values is True:
            return cls()
        if not isinstance(values, Mapping):
            raise ValueError(f"augment must be a mapping, true or null, got {values!r}")
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown augment key(s) {unknown}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)

    def describe(self) -> str:
        """One sentence for a model card: what was added to the training spectra."""
        terms = []
        if self.snr is not None:
            terms.append(f"Gaussian noise at SNR {self.snr[0]:g}–{self.snr[1]:g} per pixel")
        if self.continuum_rms is not None:
            terms.append(f"a smooth continuum residual of {100 * self.continuum_rms[0]:g}–"
                         f"{100 * self.continuum_rms[1]:g} % rms per detector")
        if self.line_depth_scatter > 0:
            terms.append(f"line-strength errors of {100 * self.line_depth_scatter:g} % rms")
        if self.resolving_power is not None:
            terms.append(f"a resolving power of {self.resolving_power[0]:g}–{self.resolving_power[1]:g}")
        share = ("every training spectrum" if self.fraction == 1
                 else f"{100 * self.fraction:g} % of the training spectra")
        return (f"At every step {share} carried freshly drawn observed-like imperfections ("
                + ("; ".join(terms) or "none enabled") + "); the best step was chosen on validation spectra "
                "perturbed the same way.")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def apply(self, flux: np.ndarray, mask: np.ndarray, wavelength: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
        """A perturbed copy of ``flux`` (B, P) on the vacuum-Å grid ``wavelength`` (P,).

        ``mask`` (B, P, True = bad) marks pixels that are neither read nor changed; the draws come from
        ``rng`` only, so equal generators give equal spectra.
        """
        flux = np.array(flux, dtype=np.float32)
        good = ~np.asarray(mask, bool) & np.isfinite(flux)
        chosen = rng.random(len(flux)) < self.fraction
        if not chosen.any():
            return flux
        part, part_good = np.where(good[chosen], flux[chosen], 1.0), good[chosen]
        segments = detector_segments(wavelength)
        if self.line_depth_scatter > 0:
            part = self._line_depths(part, segments, rng)
        if self.resolving_power is not None:
            part = self._line_spread(part, part_good, wavelength, segments, rng)
        if self.continuum_rms is not None:
            part = part * self._continuum(len(part), segments, rng)
        if self.snr is not None:
            log_snr = rng.uniform(np.log(self.snr[0]), np.log(self.snr[1]), len(part))
            part = part + rng.standard_normal(part.shape, dtype=np.float32) / np.exp(log_snr)[:, None]
        flux[chosen] = np.where(part_good, part, flux[chosen])  # assigned into float32: stays float32
        return flux

    def _line_depths(self, flux: np.ndarray, segments: list[slice], rng) -> np.ndarray:
        kernel = _gaussian_kernel(np.array([self.depth_correlation_pixels]))[0]
        kernel = kernel / np.sqrt((kernel**2).sum())  # smoothing white noise with it keeps unit variance
        field = rng.standard_normal(flux.shape, dtype=np.float32)
        for s in segments:  # smoothed within each detector
            field[:, s] = correlate1d(field[:, s], kernel, axis=1, mode="nearest")
        scale = np.clip(1.0 + self.line_depth_scatter * field, 0.0, None)
        return 1.0 - (1.0 - flux) * scale

    def _line_spread(self, flux, good, wavelength, segments, rng) -> np.ndarray:
        """Gaussian broadening (or first-order sharpening) from the nominal to a drawn resolving power."""
        power = rng.uniform(*self.resolving_power, len(flux))
        sigma_kms = C_KMS / _FWHM_PER_SIGMA
        extra = (sigma_kms / power) ** 2 - (sigma_kms / self.nominal_resolving_power) ** 2  # km²/s²
        pixel_kms = C_KMS * float(np.median(np.diff(np.log(wavelength)))) if len(wavelength) > 1 else 1.0
        kernels = _gaussian_kernel(np.maximum(np.sqrt(np.abs(extra)) / pixel_kms, 1e-3))
        weight = good.astype(flux.dtype)
        smooth = np.empty_like(flux)
        for star, kernel in enumerate(kernels):  # normalised convolution: bad pixels do not count
            for s in segments:
                total = correlate1d(weight[star, s], kernel, mode="nearest")
                smooth[star, s] = correlate1d(flux[star, s] * weight[star, s], kernel, mode="nearest") \
                    / np.maximum(total, 1e-6)
        return np.where((extra >= 0)[:, None], smooth, 2.0 * flux - smooth)

    def _continuum(self, n_stars: int, segments: list[slice], rng) -> np.ndarray:
        rms = rng.uniform(*self.continuum_rms, n_stars)
        pieces = []
        for s in segments:
            basis = np.polynomial.legendre.legvander(np.linspace(-1.0, 1.0, s.stop - s.start), 3)  # (n, 4)
            poly = rng.standard_normal((n_stars, 4)) @ basis.T
            poly /= np.sqrt(np.mean(poly**2, axis=1, keepdims=True))
            pieces.append(1.0 + poly * rms[:, None])
        return np.concatenate(pieces, axis=1)


def detector_segments(wavelength: np.ndarray) -> list[slice]:
    """Contiguous runs of a log-λ grid (P,): a new segment wherever the step jumps (a chip gap)."""
    step = np.diff(np.log(np.asarray(wavelength, np.float64)))
    if len(step) == 0:
        return [slice(0, len(wavelength))]
    cuts = np.flatnonzero(step > 1.5 * np.median(step)) + 1
    edges = [0, *cuts.tolist(), len(wavelength)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _gaussian_kernel(sigma_pixels: np.ndarray) -> np.ndarray:
    """(B, 2r+1) normalised Gaussian kernels, one per star, r = 3σ of the widest (at least 1)."""
    radius = max(1, int(np.ceil(3.0 * float(sigma_pixels.max()))))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets[None, :] / sigma_pixels[:, None]) ** 2)
    return kernel / kernel.sum(axis=1, keepdims=True)
