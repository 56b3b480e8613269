"""Shared fixtures: a tiny SpectraFM config/model, a fitted feature extractor, and toy spectra.

Toy spectra (``toy_spectra``): a short APOGEE-like log-linear grid (vacuum Å) with Gaussian absorption
lines; "iron" lines deepen with FE_H and "temperature" lines with TEFF, plus Gaussian noise. They are
generated in memory, so every test is hermetic and fast.
"""

import numpy as np
import pytest

from spectrafm_hf import SpectraFMConfig, SpectraFMFeatureExtractor, SpectraFMModel

TOY_PIXELS = 160
_FE_LINES = (15204.0, 15214.0, 15227.0)
_T_LINES = (15209.0, 15221.0)


def toy_wavelength(n_pixels: int = TOY_PIXELS) -> np.ndarray:
    """Vacuum Å on the APOGEE log-linear step, starting at 15200 Å."""
    return 15200.0 * 10.0 ** (6e-6 * np.arange(n_pixels))


def toy_spectra(n: int, seed: int = 0, n_pixels: int = TOY_PIXELS, noise: float = 0.004) -> dict:
    """``n`` toy spectra: dict with wavelength (P,), flux/flux_err/mask (n, P) and labels FE_H, TEFF (n,)."""
    rng = np.random.default_rng(seed)
    wavelength = toy_wavelength(n_pixels)
    fe_h = rng.uniform(-1.0, 0.4, n)
    teff = rng.uniform(4000.0, 5500.0, n)
    absorption = np.zeros((n, n_pixels))
    for centre in _FE_LINES:
        depth = 0.25 + 0.2 * fe_h
        absorption += depth[:, None] * np.exp(-0.5 * ((wavelength - centre) / 0.35) ** 2)
    for centre in _T_LINES:
        depth = 0.2 + 0.15 * (5500.0 - teff) / 1500.0
        absorption += depth[:, None] * np.exp(-0.5 * ((wavelength - centre) / 0.35) ** 2)
    flux = 1.0 - absorption + noise * rng.standard_normal((n, n_pixels))
    return {
        "wavelength": wavelength,
        "flux": flux.astype(np.float32),
        "flux_err": np.full((n, n_pixels), noise, np.float32),
        "mask": np.zeros((n, n_pixels), bool),
        "labels": {"FE_H": fe_h, "TEFF": teff},
    }


@pytest.fixture
def tiny_config() -> SpectraFMConfig:
    return SpectraFMConfig.tiny()


@pytest.fixture
def tiny_model(tiny_config) -> SpectraFMModel:
    import torch

    torch.manual_seed(0)
    return SpectraFMModel(tiny_config).eval()


@pytest.fixture
def toy() -> dict:
    return toy_spectra(12, seed=1)


@pytest.fixture
def feature_extractor(toy) -> SpectraFMFeatureExtractor:
    """Fitted on the toy spectra (flux and label statistics, trained wavelength range)."""
    return SpectraFMFeatureExtractor(context_length=32).fit(
        wavelength=toy["wavelength"], flux=toy["flux"], mask=toy["mask"], labels=toy["labels"]
    )


@pytest.fixture
def checkpoint(tiny_model, feature_extractor, tmp_path):
    """The tiny model and fitted feature extractor saved with ``save_pretrained`` (weights and configs only)."""
    folder = tmp_path / "model"
    tiny_model.save_pretrained(folder)
    feature_extractor.save_pretrained(folder)
    return folder
