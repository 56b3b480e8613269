"""Tiny toy spectra on the APOGEE grid for the training tests (not a test module).

Flux = 1 − Σ depth·Gaussian at a few fixed lines; depths respond to the five labels (Fe lines to
[Fe/H], others to Teff/logg/[Mg/Fe]/[O/Fe]), so a model can learn something in a few steps.
"""

import numpy as np

from spectrafm_hf.data import grid
from spectrafm_hf.data.arrays import WindowData
from spectrafm_hf.data.arrays import cut_window as cut  # noqa: F401  (the tests' name for it)
from spectrafm_hf.data.labels import LABELS

LINES_A = (15300.0, 15750.0, 15990.0, 16157.7, 16169.4, 16200.0, 16700.0)


def toy_data(n: int, seed: int, feh_range=(-2.5, 0.4)) -> WindowData:
    rng = np.random.default_rng(seed)
    wavelength = grid.apogee_wavelength()
    labels = {
        "TEFF": rng.uniform(4000, 5500, n), "LOGG": rng.uniform(1.0, 4.5, n), "FE_H": rng.uniform(*feh_range, n),
        "MG_FE": rng.uniform(-0.1, 0.4, n), "O_FE": rng.uniform(-0.1, 0.4, n),
    }
    response = np.stack([0.3 + 0.1 * labels["FE_H"] + 0.02 * (labels[k] - labels[k].mean()) / labels[k].std()
                         for k in ("TEFF", "LOGG", "MG_FE", "O_FE", "TEFF", "LOGG", "MG_FE")], axis=1)
    flux = np.ones((n, len(wavelength)))
    for j, line in enumerate(LINES_A):
        flux -= response[:, j:j + 1] * np.exp(-0.5 * ((wavelength - line) / 0.6) ** 2)
    flux += rng.normal(scale=0.005, size=flux.shape)
    mask = rng.random(flux.shape) < 0.01
    flux[mask] = np.nan
    return WindowData(
        flux=flux.astype(np.float32), mask=mask, flux_err=np.full(flux.shape, 0.005, np.float32),
        labels=labels, label_errors={k: np.full(n, 0.01) for k in LABELS}, wavelength=wavelength,
    )


def tiny_stage2(folder):
    """A tiny 'stage 2' checkpoint in ``folder``: a SpectraFM on the whole APOGEE grid, two steps on toy spectra."""
    from spectrafm_hf.training.loop import LoopConfig
    from spectrafm_hf.training.stages import StageSpec, run_stage

    spec = StageSpec("stage2", "all", "random", 8, 32, LoopConfig(max_steps=2, eval_every=2, progress=False))
    run_stage(spec, toy_data(16, 0), toy_data(8, 1), folder, model_config=TINY_MODEL)
    return folder


TINY_MODEL = dict(d_model=16, encoder_heads=[2, 2], encoder_mlp=[32, 32], decoder_heads=[2, 2, 2],
                  decoder_mlp=[32, 32, 32], head_mlp=[32, 16], context_length=32)
