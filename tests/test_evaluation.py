"""Metrics per [Fe/H] bin and calibration (spectrafm_hf.training.evaluation)."""

import numpy as np
import pytest

from spectrafm_hf.training import evaluation as ev


def test_bins_select_by_true_feh():
    feh = np.array([-2.0, -1.6, -1.2, -1.0, -0.5, 0.3])
    assert ev.bin_mask(feh, "feh_lt_-1").tolist() == [True, True, True, False, False, False]
    assert ev.bin_mask(feh, "feh_lt_-1.5").tolist() == [True, True, False, False, False, False]
    assert ev.bin_mask(feh, "feh_ge_-1").tolist() == [False, False, False, True, True, True]
    assert ev.bin_mask(feh, "all").all()
    with pytest.raises(ValueError, match="unknown \\[Fe/H\\] bin"):
        ev.bin_mask(feh, "poor")


def test_residual_stats_known_values():
    true = np.zeros(5)
    predicted = np.array([0.1, 0.1, 0.1, 0.1, 1.1])
    stats = ev.residual_stats(predicted, true)
    assert stats["n"] == 5
    assert stats["bias"] == pytest.approx(0.1)
    assert stats["rmse"] == pytest.approx(np.sqrt((4 * 0.01 + 1.21) / 5))
    assert stats["sigma_mad"] == pytest.approx(0.0)  # robust to the one outlier
    # non-finite predictions are dropped, an empty bin gives NaN and n = 0
    assert ev.residual_stats([np.nan, 1.0], [0.0, 0.0])["n"] == 1
    empty = ev.residual_stats([], [])
    assert empty["n"] == 0 and np.isnan(empty["rmse"])
    with pytest.raises(ValueError, match="same length"):
        ev.residual_stats([1.0], [1.0, 2.0])


def test_binned_stats_separates_regimes():
    feh = np.array([-2.0, -1.2, 0.0, 0.1])
    predicted = feh + np.array([0.5, 0.5, 0.0, 0.0])
    stats = ev.binned_stats(predicted, feh, feh)
    assert stats["feh_lt_-1"]["rmse"] == pytest.approx(0.5)
    assert stats["feh_ge_-1"]["rmse"] == pytest.approx(0.0)
    assert stats["feh_lt_-1.5"]["n"] == 1


def test_calibration_and_variance_scale_fix_underdispersion():
    rng = np.random.default_rng(0)
    true = rng.normal(size=20000)
    sigma_true = 0.2
    predicted = true + rng.normal(scale=sigma_true, size=true.size)
    claimed = np.full(true.size, sigma_true / 2)  # under-dispersed by 2×
    before = ev.calibration_stats(predicted, claimed, true)
    assert before["z_std"] == pytest.approx(2.0, rel=0.03)
    assert before["coverage_68"] < 0.45
    scale = ev.fit_variance_scale(predicted[:10000], claimed[:10000], true[:10000])
    assert scale == pytest.approx(2.0, rel=0.03)
    after = ev.calibration_stats(predicted[10000:], claimed[10000:] * scale, true[10000:])
    assert after["coverage_68"] == pytest.approx(0.683, abs=0.02)
    assert after["coverage_95"] == pytest.approx(0.954, abs=0.01)
    with pytest.raises(ValueError, match="variance scale"):
        ev.fit_variance_scale([np.nan], [1.0], [0.0])


def test_evaluate_label_structure_and_values():
    rng = np.random.default_rng(1)
    feh = rng.uniform(-2.5, 0.5, 400)
    predicted = feh + rng.normal(scale=0.1, size=feh.size)
    sigma = np.full(feh.size, 0.05)
    result = ev.evaluate_label(predicted, sigma, feh, feh, predicted, sigma, feh)
    assert set(result["bins"]) == set(ev.FEH_BINS)
    assert result["calibration"]["scale"] == pytest.approx(2.0, rel=0.15)
    assert result["calibration"]["after"]["all"]["z_std"] == pytest.approx(1.0, rel=0.1)
    row = ev.summary_row({"labels": {"FE_H": result}})
    assert row["rmse[all]"] == pytest.approx(result["bins"]["all"]["rmse"])
