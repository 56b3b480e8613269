"""Accuracy and calibration metrics, per [Fe/H] regime.

Everything here is plain numpy on 1-D arrays of physical units (dex, K) so that every model — the
transformer, the scratch MLP, ridge, The Cannon — is scored by the same code.

Regimes ("bins") follow the paper's claim: a model fine-tuned on iron-rich stars ([Fe/H] > −1) is asked
about iron-poor ones. A star belongs to a bin by its TRUE [Fe/H]:

=================  ============================
bin key            stars
=================  ============================
``all``            every star
``feh_ge_-1``      true [Fe/H] ≥ −1
``feh_lt_-1``      true [Fe/H] < −1
``feh_lt_-1.5``    true [Fe/H] < −1.5 (a subset of the previous bin)
=================  ============================

Per bin: ``n``, ``rmse``, ``bias`` (median of predicted − true) and ``sigma_mad`` (1.4826 × median
absolute deviation of the residuals around their median, ``astropy.stats.mad_std`` — the robust
scatter the paper quotes).

:func:`flat_label_metrics` gives one label's numbers as flat keys (``rmse``, ``rmse_feh_lt_-1``, ...,
``coverage_68``): the names of ``metrics.json``'s stage entries and of the model cards, and what
``training.trainer.make_compute_metrics`` hands to ``transformers.Trainer`` (prefixed by the label).

Calibration: with predicted 1σ ``s`` the z-score is ``(pred − true) / s``. A calibrated model has z-score
std 1, 68.3 % of |z| < 1 and 95.4 % of |z| < 2. The post-hoc fix is one variance scale per label,
``s → s · k``, with ``k`` fitted on the VALIDATION set (never the test set) as the RMS of its z-scores.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from astropy.stats import mad_std

#: bin key → predicate on true [Fe/H] (dex).
FEH_BINS: dict[str, tuple[float | None, float | None]] = {
    "all": (None, None),
    "feh_ge_-1": (-1.0, None),
    "feh_lt_-1": (None, -1.0),
    "feh_lt_-1.5": (None, -1.5),
}


def _as_1d(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per star), got shape {array.shape}")
    return array


def bin_mask(true_feh: np.ndarray, key: str) -> np.ndarray:
    """Boolean mask (N,) of the stars in bin ``key`` (see :data:`FEH_BINS`) by true [Fe/H] in dex."""
    if key not in FEH_BINS:
        raise ValueError(f"unknown [Fe/H] bin {key!r}; choose one of {list(FEH_BINS)}")
    true_feh = _as_1d("true_feh", true_feh)
    low, high = FEH_BINS[key]
    mask = np.isfinite(true_feh) if key != "all" else np.ones(true_feh.shape, bool)
    if low is not None:
        mask &= true_feh >= low
    if high is not None:
        mask &= true_feh < high
    return mask


def residual_stats(predicted, true) -> dict[str, float | int]:
    """``n``, ``rmse``, ``bias`` (median residual) and ``sigma_mad`` of predicted − true.

    Stars with a non-finite prediction or truth are dropped (and not counted in ``n``). Empty input
    gives ``n = 0`` and NaN statistics rather than an error, so a bin without stars is visible in the
    report instead of crashing it.
    """
    predicted, true = _as_1d("predicted", predicted), _as_1d("true", true)
    if predicted.shape != true.shape:
        raise ValueError(f"predicted {predicted.shape} and true {true.shape} must have the same length")
    ok = np.isfinite(predicted) & np.isfinite(true)
    residual = predicted[ok] - true[ok]
    if residual.size == 0:
        return {"n": 0, "rmse": float("nan"), "bias": float("nan"), "sigma_mad": float("nan")}
    median = float(np.median(residual))
    return {
        "n": int(residual.size),
        "rmse": float(np.sqrt(np.mean(residual**2))),
        "bias": median,
        "sigma_mad": float(mad_std(residual)),
    }


def binned_stats(predicted, true, true_feh, bins=tuple(FEH_BINS)) -> dict[str, dict]:
    """:func:`residual_stats` per [Fe/H] bin (bins chosen by the TRUE [Fe/H] of each star).

    Args:
        predicted, true: (N,) the label being scored (physical units).
        true_feh: (N,) true [Fe/H] in dex, which decides the bin (may equal ``true``).
    """
    predicted, true, true_feh = _as_1d("predicted", predicted), _as_1d("true", true), _as_1d("true_feh", true_feh)
    if not (predicted.shape == true.shape == true_feh.shape):
        raise ValueError(
            f"predicted {predicted.shape}, true {true.shape} and true_feh {true_feh.shape} must match"
        )
    return {key: residual_stats(predicted[bin_mask(true_feh, key)], true[bin_mask(true_feh, key)]) for key in bins}


def calibration_stats(predicted, sigma, true) -> dict[str, float | int]:
    """z-score std and 1σ / 2σ coverage of predicted uncertainties.

    Args:
        predicted, sigma, true: (N,) physical units; ``sigma`` is the predicted 1σ (> 0).
    Returns:
        ``n``, ``z_std`` (std of z), ``z_rms`` (RMS of z, the quantity the variance scale divides out),
        ``coverage_68`` and ``coverage_95`` (fractions with |z| < 1 and |z| < 2).
    """
    predicted, sigma, true = _as_1d("predicted", predicted), _as_1d("sigma", sigma), _as_1d("true", true)
    ok = np.isfinite(predicted) & np.isfinite(true) & np.isfinite(sigma) & (sigma > 0)
    if not ok.any():
        nan = float("nan")
        return {"n": 0, "z_std": nan, "z_rms": nan, "coverage_68": nan, "coverage_95": nan}
    z = (predicted[ok] - true[ok]) / sigma[ok]
    return {
        "n": int(z.size),
        "z_std": float(np.std(z)),
        "z_rms": float(np.sqrt(np.mean(z**2))),
        "coverage_68": float(np.mean(np.abs(z) < 1.0)),
        "coverage_95": float(np.mean(np.abs(z) < 2.0)),
    }


def fit_variance_scale(predicted, sigma, true) -> float:
    """The factor ``k`` such that ``sigma · k`` has unit z-score RMS on this (validation) set.

    ``k = sqrt(mean(z²))``: the maximum-likelihood scale of a Gaussian with known shape. Raises if no
    star has a finite prediction, truth and positive sigma, because a scale fitted on nothing would
    silently leave uncertainties uncalibrated.
    """
    stats = calibration_stats(predicted, sigma, true)
    if stats["n"] == 0:
        raise ValueError("cannot fit a variance scale: no star with finite prediction, truth and sigma > 0")
    return float(stats["z_rms"])


def evaluate_label(
    predicted,
    sigma,
    true,
    true_feh,
    val_predicted=None,
    val_sigma=None,
    val_true=None,
) -> dict:
    """All test metrics of one model on one label.

    Args:
        predicted, sigma, true: (N,) test predictions, predicted 1σ and truths (physical units).
        true_feh: (N,) true [Fe/H] (dex) of the test stars, which decides the bins.
        val_*: the same on the validation set; when given, a variance scale is fitted there and the
            test calibration is reported before and after applying it.
    Returns:
        ``{"bins": {bin: residual stats}, "calibration": {"before": {bin: ...}, "scale": k,
        "after": {bin: ...}}}`` — calibration per bin too, since uncertainties of iron-poor stars
        are where under-dispersion would hurt.
    """
    predicted, sigma, true, true_feh = (
        _as_1d("predicted", predicted),
        _as_1d("sigma", sigma),
        _as_1d("true", true),
        _as_1d("true_feh", true_feh),
    )
    result = {"bins": binned_stats(predicted, true, true_feh)}
    before = {k: calibration_stats(predicted[m], sigma[m], true[m]) for k, m in _masks(true_feh).items()}
    calibration: dict = {"before": before}
    if val_predicted is not None:
        scale = fit_variance_scale(val_predicted, val_sigma, val_true)
        calibration["scale"] = scale
        calibration["after"] = {
            k: calibration_stats(predicted[m], sigma[m] * scale, true[m]) for k, m in _masks(true_feh).items()
        }
    result["calibration"] = calibration
    return result


def _masks(true_feh: np.ndarray) -> dict[str, np.ndarray]:
    return {key: bin_mask(true_feh, key) for key in FEH_BINS}


def summary_row(metrics: Mapping, label: str = "FE_H") -> dict[str, float]:
    """Flatten one model's metrics for a table: rmse/bias/sigma_mad per bin and calibrated coverage."""
    entry = metrics["labels"][label]
    row = {}
    for key, stats in entry["bins"].items():
        for name in ("n", "rmse", "bias", "sigma_mad"):
            row[f"{name}[{key}]"] = stats[name]
    calibration = entry.get("calibration", {})
    row["z_std_before"] = calibration.get("before", {}).get("all", {}).get("z_std", float("nan"))
    row["coverage_68_before"] = calibration.get("before", {}).get("all", {}).get("coverage_68", float("nan"))
    if "after" in calibration:
        row["coverage_68_after"] = calibration["after"]["all"]["coverage_68"]
        row["coverage_95_after"] = calibration["after"]["all"]["coverage_95"]
    return row


def flat_label_metrics(predicted, sigma, true, true_feh=None) -> dict[str, float]:
    """One label's test metrics (:func:`evaluate_label`, no variance scale) as flat keys.

    Args:
        predicted, sigma, true: (N,) predictions, predicted 1σ and truths, physical units (NaN truth =
            unknown: the star is left out).
        true_feh: (N,) true [Fe/H] in dex deciding the bins; None (or NaN) = bin ``all`` only.
    Returns:
        ``n``, ``rmse``, ``bias`` (median residual), ``sigma_mad`` over all stars; the same with suffix
        ``_<bin>`` for each other bin of :data:`FEH_BINS` that holds stars (``rmse_feh_lt_-1`` ...);
        ``z_std``, ``coverage_68``, ``coverage_95`` of the predicted σ over all stars. The keys are
        those of ``metrics.json``'s stage entries (``training.report.card_entry``).
    """
    predicted = _as_1d("predicted", predicted)
    true_feh = np.full(predicted.shape, np.nan) if true_feh is None else true_feh
    result = evaluate_label(predicted, sigma, true, true_feh)
    flat: dict[str, float] = {}
    for bin_key, stats in result["bins"].items():
        if bin_key != "all" and stats["n"] == 0:
            continue
        suffix = "" if bin_key == "all" else f"_{bin_key}"
        for name in ("n", "rmse", "bias", "sigma_mad"):
            flat[f"{name}{suffix}"] = stats[name]
    calibration = result["calibration"]["before"]["all"]
    for name in ("z_std", "coverage_68", "coverage_95"):
        flat[name] = calibration[name]
    return flat
