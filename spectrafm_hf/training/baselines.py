"""Models trained from scratch on the stage-3 data: the comparisons the paper's claim rests on.

Every baseline sees EXACTLY the stage-3 inputs: the same 100 iron-rich observed stars, the same pixel
window (4107–4618, ``grid.FE_WINDOW``), and is selected on the same iron-rich validation stars. All
return predictions and 1σ in physical units through one interface::

    model = fit_<name>(train, validation, **options)      # train/validation: WindowData
    mean, sigma = model.predict(flux, mask)               # (N,), (N,) dex

* :func:`fit_scratch_mlp` — the paper's baseline MLP (512 → 2048 → 1280 → 1024 → mean, log-var;
  NaN → 1; Adam 1e-4; the transformer's Gaussian NLL). Layer widths are configurable: the quickstart uses a narrower
  MLP so it trains in seconds on a 2-core CPU (say so in reports); ``paper.yaml`` uses the paper's.
* :func:`fit_ridge` — linear ridge regression on the same pixels, penalty chosen on validation.
* :func:`fit_cannon` — The Cannon (Ness et al. 2015), the installed ``TheCannon`` package (Anna Ho's
  implementation, a real peer, not reimplemented here): quadratic-in-labels spectral model trained on
  the 100 stars and their ASPCAP-like labels, labels inferred per test star by least squares.
* The same SpectraFM transformer trained from scratch is a stage-3 run without initial weights; it lives
  in :mod:`spectrafm_hf.training.stages` (``run_stage(..., init=None)``).
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from astropy.stats import mad_std
from torch import nn

from ..data.arrays import WindowData
from ..modeling_spectrafm import gaussian_nll


def _check_label(data: WindowData, label: str) -> np.ndarray:
    if label not in data.labels:
        raise ValueError(f"label {label!r} not in the data (have {sorted(data.labels)})")
    y = np.asarray(data.labels[label], np.float64)
    if not np.isfinite(y).any():
        raise ValueError(f"label {label!r} has no finite value in the training data")
    return y


# ----------------------------------------------------------------------------------------------
# Scratch MLP (the paper's baseline)
# ----------------------------------------------------------------------------------------------


class ScratchMLP(nn.Module):
    """Flux pixels → (mean, log-variance) of one standardised label.

    Input (B, P) flux with NaN → 1, shifted by −1 and divided by ``flux_scale`` so inputs are O(1)
    (the paper fed raw flux; the shift/scale only conditions the optimiser). GELU hidden layers.
    """

    def __init__(self, n_pixels: int, hidden: Sequence[int] = (2048, 1280, 1024), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_pixels
        for size in hidden:
            layers += [nn.Linear(width, size), nn.GELU(), nn.Dropout(dropout)]
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 2)
        self.widths = [n_pixels, *hidden, 2]  # for reports

    def forward(self, flux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.body(flux))
        return out[:, 0], out[:, 1]


@dataclass
class FittedMLP:
    """A trained :class:`ScratchMLP` with its standardisation; ``predict`` returns physical units."""

    model: ScratchMLP
    flux_scale: float
    label_median: float
    label_scale: float
    history: list[dict]

    @torch.no_grad()
    def predict(self, data: WindowData) -> tuple[np.ndarray, np.ndarray]:
        """(mean, 1σ) in physical units, each (N,)."""
        self.model.eval()
        x = torch.from_numpy((data.clean_flux() - 1.0) / self.flux_scale)
        mean, log_variance = self.model(x)
        sigma = torch.exp(0.5 * log_variance)
        return (
            mean.double().numpy() * self.label_scale + self.label_median,
            sigma.double().numpy() * self.label_scale,
        )


def _robust_scale(values: np.ndarray) -> tuple[float, float]:
    """(median, MAD-std) of the finite values; the std when the MAD is 0 (or 1 if that is 0 too)."""
    values = values[np.isfinite(values)]
    median = float(np.median(values))
    scale = float(mad_std(values))
    return median, scale if scale > 0 else float(np.std(values) or 1.0)


def fit_scratch_mlp(
    train: WindowData,
    validation: WindowData,
    label: str = "FE_H",
    hidden: Sequence[int] = (2048, 1280, 1024),
    learning_rate: float = 1e-4,
    max_steps: int = 2000,
    batch_size: int = 32,
    eval_every: int = 50,
    patience: int = 10,
    seed: int = 0,
) -> FittedMLP:
    """Train the scratch MLP with Adam on ``train``; keep the weights with the lowest validation RMSE.

    ``validation`` must hold only stars of the regime the model is allowed to see (the pipeline passes
    iron-rich stars): selecting on iron-poor stars would leak the claim into model selection.
    Early stopping after ``patience`` evaluations without improvement.
    """
    if max_steps < 1 or batch_size < 1:
        raise ValueError(f"max_steps and batch_size must be ≥ 1, got {max_steps}, {batch_size}")
    y = _check_label(train, label)
    keep = np.isfinite(y)
    x_train = train.clean_flux()[keep]
    y_train = y[keep]
    y_err = np.nan_to_num(np.asarray(train.label_errors.get(label, np.zeros_like(y)), np.float64)[keep])
    flux_scale = float(np.std(x_train - 1.0)) or 1.0
    label_median, label_scale = _robust_scale(y_train)

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ScratchMLP(x_train.shape[1], hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    x = torch.from_numpy((x_train - 1.0) / flux_scale)
    target = torch.from_numpy((y_train - label_median) / label_scale).float()
    target_err = torch.from_numpy(y_err / label_scale).float()
    fitted = FittedMLP(model, flux_scale, label_median, label_scale, history=[])
    y_val = _check_label(validation, label)

    best_rmse, best_state, stale = np.inf, copy.deepcopy(model.state_dict()), 0
    for step in range(1, max_steps + 1):
        model.train()
        index = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=generator)
        mean, log_variance = model(x[index])
        # The transformer's loss (every star has a target here, so it is the plain batch mean).
        loss = gaussian_nll(mean, log_variance, target[index], target_err[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == max_steps:
            prediction, _ = fitted.predict(validation)
            rmse = float(np.sqrt(np.nanmean((prediction - y_val) ** 2)))
            fitted.history.append({"step": step, "loss": float(loss.detach()), "val_rmse": rmse})
            if rmse < best_rmse:
                best_rmse, best_state, stale = rmse, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stale >= patience:
                    break
    model.load_state_dict(best_state)
    return fitted


# ----------------------------------------------------------------------------------------------
# Ridge regression
# ----------------------------------------------------------------------------------------------


@dataclass
class FittedRidge:
    """Linear model ``y = (x − x̄)·w + ȳ``; constant 1σ = validation residual RMS."""

    weights: np.ndarray  # (P,)
    x_mean: np.ndarray  # (P,)
    y_mean: float
    alpha: float
    sigma: float

    def predict(self, data: WindowData) -> tuple[np.ndarray, np.ndarray]:
        mean = (data.clean_flux().astype(np.float64) - self.x_mean) @ self.weights + self.y_mean
        return mean, np.full(mean.shape, self.sigma)


def _ridge_solve(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    # Dual form: with N ≪ P stars, solve the N×N system (X Xᵀ + αI) c = y, w = Xᵀ c.
    gram = x @ x.T
    coefficients = np.linalg.solve(gram + alpha * np.eye(len(gram)), y)
    return x.T @ coefficients


def fit_ridge(
    train: WindowData,
    validation: WindowData,
    label: str = "FE_H",
    alphas: Sequence[float] = tuple(10.0 ** np.arange(-6, 3)),
) -> FittedRidge:
    """Ridge regression on flux (NaN → 1); ``alpha`` chosen by validation RMSE from ``alphas``."""
    y = _check_label(train, label)
    keep = np.isfinite(y)
    x = train.clean_flux()[keep].astype(np.float64)
    y = y[keep]
    x_mean, y_mean = x.mean(axis=0), float(y.mean())
    y_val = _check_label(validation, label)
    best = None
    for alpha in alphas:
        fitted = FittedRidge(_ridge_solve(x - x_mean, y - y_mean, alpha), x_mean, y_mean, float(alpha), 1.0)
        prediction, _ = fitted.predict(validation)
        rmse = float(np.sqrt(np.nanmean((prediction - y_val) ** 2)))
        if best is None or rmse < best[0]:
            best = (rmse, fitted)
    rmse, fitted = best
    fitted.sigma = rmse
    return fitted


# ----------------------------------------------------------------------------------------------
# The Cannon (the installed TheCannon package)
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_cannon():
    """Import/run TheCannon without its side effects on our figures and logs.

    ``TheCannon.model`` sets ``matplotlib`` ``text.usetex = True`` at import (LaTeX may be absent,
    which would break every later figure) and prints progress for every star; both are undone here.
    """
    import matplotlib

    saved = dict(matplotlib.rcParams)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        matplotlib.rcParams.update(saved)


@dataclass
class FittedCannon:
    """A trained ``TheCannon.model.CannonModel``; ``predict`` infers labels star by star."""

    cannon: object
    label_names: tuple[str, ...]
    target: str
    wavelength: np.ndarray
    train_labels: np.ndarray  # (N_train, L), for the starting guess

    def predict(self, data: WindowData) -> tuple[np.ndarray, np.ndarray]:
        """(mean, 1σ) of the target label; 1σ from the least-squares covariance of TheCannon."""
        with _quiet_cannon():
            from TheCannon import dataset

            flux, ivar = _cannon_inputs(data)
            ds = dataset.Dataset(
                self.wavelength, np.arange(1), flux[:1], ivar[:1], self.train_labels[:1],
                np.arange(len(flux)).astype(str), flux, ivar,
            )
            ds.set_label_names(list(self.label_names))
            # Start at the training median (TheCannon's default of 1 is far off for Teff).
            errors, _ = self.cannon.infer_labels(ds, starting_guess=np.zeros(len(self.label_names)))
        column = self.label_names.index(self.target)
        mean = np.asarray(ds.test_label_vals, np.float64)[:, column]
        sigma = np.asarray(errors, np.float64)[:, column] * np.asarray(self.cannon.scales)[column]
        failed = mean < -9000  # TheCannon's sentinel for a failed fit
        mean[failed], sigma[failed] = np.nan, np.nan
        return mean, sigma


def _cannon_inputs(data: WindowData) -> tuple[np.ndarray, np.ndarray]:
    """Flux with bad pixels at 1 and inverse variance 0 there (TheCannon's convention)."""
    bad = data.mask | ~np.isfinite(data.flux)
    flux = np.where(bad, 1.0, data.flux).astype(np.float64)
    err = np.asarray(data.flux_err, np.float64)
    # Unknown errors: a flat 1 % (about an SNR-100 spectrum) rather than dropping the pixel.
    err = np.where(np.isfinite(err) & (err > 0), err, 0.01)
    ivar = np.where(bad, 0.0, 1.0 / err**2)
    return flux, ivar


def fit_cannon(
    train: WindowData,
    label_names: Sequence[str] = ("TEFF", "LOGG", "FE_H"),
    target: str = "FE_H",
) -> FittedCannon:
    """Train a quadratic Cannon on ``train`` with ``label_names`` (must include ``target``).

    The Cannon is a generative model of flux given labels; like ASPCAP it needs the stars' other
    labels (Teff, logg) to explain the spectra, so it is trained on several labels of the same 100
    stars while the neural models see only [Fe/H] targets. It has no hyper-parameters to select.
    Stars missing any of ``label_names`` are dropped from its training set.
    """
    label_names = tuple(label_names)
    if target not in label_names:
        raise ValueError(f"target {target!r} must be one of the Cannon's labels {label_names}")
    labels = np.stack([_check_label(train, name) for name in label_names], axis=1)
    keep = np.isfinite(labels).all(axis=1)
    if keep.sum() < 2 * (1 + len(label_names) + len(label_names) * (len(label_names) + 1) // 2):
        raise ValueError(
            f"The Cannon with {len(label_names)} labels needs more training stars than {int(keep.sum())}; "
            "use fewer labels or more stars"
        )
    flux, ivar = _cannon_inputs(train)
    wavelength = (
        np.asarray(train.wavelength, np.float64) if train.wavelength is not None
        else np.arange(flux.shape[1], dtype=float)
    )
    with _quiet_cannon():
        from TheCannon import dataset, model

        ds = dataset.Dataset(
            wavelength, np.arange(int(keep.sum())).astype(str), flux[keep], ivar[keep], labels[keep],
            np.arange(1).astype(str), flux[:1], ivar[:1],
        )
        ds.set_label_names(list(label_names))
        cannon = model.CannonModel(2, useErrors=False)
        cannon.train(ds)
    return FittedCannon(cannon, label_names, target, wavelength, labels[keep])
