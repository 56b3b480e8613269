"""Scratch baselines (spectrafm_hf.training.baselines) on toy spectra whose line depth tracks [Fe/H]."""

import numpy as np
import pytest

from spectrafm_hf.data.arrays import WindowData
from spectrafm_hf.training.baselines import fit_cannon, fit_ridge, fit_scratch_mlp


def toy_window(n, seed, feh_range=(-0.8, 0.4), n_pixels=40):
    """Two Gaussian absorption lines; depth grows with [Fe/H] and (weakly) with Teff. A few bad pixels."""
    rng = np.random.default_rng(seed)
    feh = rng.uniform(*feh_range, n)
    teff = rng.uniform(4200, 5200, n)
    logg = rng.uniform(1.5, 3.5, n)
    pixels = np.arange(n_pixels)
    line_a = np.exp(-0.5 * ((pixels - 10) / 2.0) ** 2)
    line_b = np.exp(-0.5 * ((pixels - 28) / 2.0) ** 2)
    # The lines respond to Teff in opposite senses, so [Fe/H] is identifiable from the pair.
    depth_a = 0.3 + 0.15 * feh + 0.0001 * (teff - 4700)
    depth_b = 0.3 + 0.15 * feh - 0.0001 * (teff - 4700)
    flux = 1.0 - depth_a[:, None] * line_a - depth_b[:, None] * line_b + rng.normal(scale=0.003, size=(n, n_pixels))
    mask = rng.random((n, n_pixels)) < 0.02
    flux[mask] = np.nan
    return WindowData(
        flux=flux.astype(np.float32), mask=mask, flux_err=np.full((n, n_pixels), 0.003, np.float32),
        labels={"FE_H": feh, "TEFF": teff, "LOGG": logg},
        label_errors={"FE_H": np.full(n, 0.01)}, wavelength=16100.0 + 0.25 * pixels,
    )


def _rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_ridge_learns_a_linear_line_depth():
    train, val, test = toy_window(100, 0), toy_window(50, 1), toy_window(200, 2)
    ridge = fit_ridge(train, val)
    mean, sigma = ridge.predict(test)
    # far better than the label spread (0.35 dex); masked pixels filled with 1 limit a linear model
    assert _rmse(mean, test.labels["FE_H"]) < 0.12
    assert np.all(sigma == ridge.sigma) and 0 < ridge.sigma < 0.12


def test_scratch_mlp_trains_and_selects_on_validation():
    train, val, test = toy_window(100, 0), toy_window(50, 1), toy_window(100, 2)
    mlp = fit_scratch_mlp(train, val, hidden=(64, 32), learning_rate=1e-3, max_steps=400, eval_every=50, seed=0)
    mean, sigma = mlp.predict(test)
    # much better than predicting the median (std of the label is ~0.35 dex)
    assert _rmse(mean, test.labels["FE_H"]) < 0.15
    assert np.all(sigma > 0)
    assert mlp.history and mlp.history[0]["val_rmse"] >= min(h["val_rmse"] for h in mlp.history)
    with pytest.raises(ValueError, match="label 'MG_FE' not in the data"):
        fit_scratch_mlp(train, val, label="MG_FE", max_steps=1)


def test_cannon_package_fits_toy_spectra():
    """Runs the installed TheCannon package end to end and checks it does not leave usetex switched on."""
    import matplotlib

    train, test = toy_window(100, 0), toy_window(30, 2)
    cannon = fit_cannon(train, label_names=("TEFF", "FE_H"))
    mean, sigma = cannon.predict(test)
    assert _rmse(mean, test.labels["FE_H"]) < 0.1
    assert np.all(np.isfinite(sigma)) and np.all(sigma > 0)
    assert not matplotlib.rcParams["text.usetex"]
    with pytest.raises(ValueError, match="must be one of"):
        fit_cannon(train, label_names=("TEFF",), target="FE_H")
