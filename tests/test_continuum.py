"""Continuum normalisation (spectrafm_hf.data.continuum).

Uses the real K-dwarf apStar vendored in tests/fixtures (a gzip copy of
../shared/data/real/apStar-dr17-2M19485057+5005279.fits, see tests/fixtures/README.md).
"""

from pathlib import Path

import numpy as np
import pytest

from spectrafm_hf.data import apogee, grid
from spectrafm_hf.data.continuum import ContinuumConfig, fit_continuum, normalise, robust_noise

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "apStar-dr17-2M19485057+5005279.fits.gz"


def _synthetic_7514(seed=0, noise=0.005):
    """A throughput-shaped continuum (different per chip) × many absorption lines + noise."""
    rng = np.random.default_rng(seed)
    chip = grid.chip_of_pixel()
    x = np.linspace(-1, 1, grid.APOGEE_NPIX)
    continuum = 500.0 * (1.0 + 0.3 * x - 0.2 * x**2) * np.array([1.0, 0.8, 0.6])[chip]
    lines = np.ones(grid.APOGEE_NPIX)
    pixels = np.arange(grid.APOGEE_NPIX)
    centres = rng.choice(grid.APOGEE_NPIX, 300, replace=False)  # ~1 line per 25 px, like a cool star
    for c in centres:
        lines *= 1 - rng.uniform(0.05, 0.6) * np.exp(-0.5 * ((pixels - c) / 1.5) ** 2)
    flux = continuum * lines * (1 + rng.normal(0, noise, grid.APOGEE_NPIX))
    return flux, continuum * noise, continuum, lines, centres


@pytest.mark.parametrize("use_err", [True, False])
def test_recovers_known_continuum_under_lines(use_err):
    flux, err, continuum, lines, _ = _synthetic_7514()
    fitted = fit_continuum(flux, err if use_err else None)
    line_free = lines > 0.999
    ratio = fitted / continuum
    # Within 0.6 % everywhere (noise 0.5 %: the 1σ lower clip biases upward by ~0.3σ), never low by lines.
    assert np.all(np.abs(ratio - 1) < 0.006)
    norm, norm_err, _ = normalise(flux, err if use_err else None)
    assert abs(np.median(norm[line_free]) - 1) < 0.004
    if use_err:
        np.testing.assert_allclose(flux / err, norm / norm_err)  # S/N unchanged


def test_stack_of_spectra_and_masked_pixels_ignored():
    flux, err, continuum, _, _ = _synthetic_7514()
    mask = np.zeros_like(flux, dtype=bool)
    mask[100:130] = True
    flux_bad = flux.copy()
    flux_bad[100:130] = 1e6  # a masked spike must not pull the fit
    norm, _, fitted = normalise(np.stack([flux_bad, flux]), np.stack([err, err]), np.stack([mask, mask]))
    assert norm.shape == (2, grid.APOGEE_NPIX)
    assert np.all(np.abs(fitted[0] / continuum - 1) < 0.006)


def test_refuses_unusable_input():
    flux, err, *_ = _synthetic_7514()
    mask = np.ones_like(flux, dtype=bool)
    mask[:50] = False
    with pytest.raises(ValueError, match="usable"):
        fit_continuum(flux, err, mask)
    with pytest.raises(ValueError, match="chips="):
        fit_continuum(np.ones(1000))
    assert fit_continuum(np.full(1000, 3.0), chips=np.zeros(1000, int)) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="lower_sigma"):
        ContinuumConfig(lower_sigma=0)


def test_robust_noise_ignores_lines():
    rng = np.random.default_rng(1)
    flux = 1 + rng.normal(0, 0.01, 5000)
    flux[::50] -= 0.5  # isolated deep lines
    assert robust_noise(flux) == pytest.approx(0.01, rel=0.1)


def test_real_k_dwarf_apstar_looks_aspcap_normalised():
    """Real apStar (K dwarf, SNR 137): per chip, median near 1, upper envelope at 1, strong lines deep."""
    record = apogee.read_apstar(FIXTURE)
    flux, mask = record["flux"], record["mask"]
    chip = grid.chip_of_pixel()
    for c in range(3):
        good = flux[(chip == c) & ~mask]
        assert 0.97 < np.median(good) < 1.0, f"chip {c}"
        assert 0.995 < np.percentile(good, 90) < 1.015, f"chip {c}"
        assert np.percentile(good, 99.5) < 1.05, f"chip {c}"
    wavelength = grid.apogee_wavelength()
    # Mg I (blue), Si I (green), Al I (red): strong lines of a K dwarf, well below the continuum.
    for line in (15753.203, 15770.108, 15964.424, 16755.1):
        near = np.abs(wavelength - line) < 0.6
        assert np.nanmin(flux[near]) < 0.75, line
    # The continuum follows the flux-calibrated spectrum's level (1e-17 erg/s/cm²/Å, ~500-800 here).
    assert np.all((record["continuum"] > 400) & (record["continuum"] < 1000))
