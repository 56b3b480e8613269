"""The label prior: APOGEE-like distributions, the wide metal-poor variant, per-star determinism."""

from __future__ import annotations

import numpy as np
import pytest

from spectrafm_hf.data.prior import FEH_QUANTILES, metal_poor_share, sample_labels


@pytest.fixture(scope="module")
def apogee():
    return sample_labels(6000, seed=11, prior="apogee")


def test_apogee_prior_matches_catalogue_statistics(apogee):
    assert 0.72 < np.mean(apogee["LOGG"] < 3.8) < 0.78  # 75 % giants
    assert 0.015 < np.mean(apogee["FE_H"] < -1.0) < 0.035  # 2.5 % below −1
    assert np.mean(apogee["FE_H"] < -2.0) < 0.004  # 0.1 % below −2
    p = np.percentile(apogee["FE_H"], [5, 25, 50, 75, 95])
    np.testing.assert_allclose(p, [-0.73, -0.38, -0.16, 0.02, 0.23], atol=0.04)
    teff = np.percentile(apogee["TEFF"], [5, 50, 95])
    assert 3550 < teff[0] < 3950 and 4500 < teff[1] < 4900 and 5800 < teff[2] < 6300
    assert 0.75 < np.corrcoef(apogee["MG_FE"], apogee["O_FE"])[0, 1] < 0.92


def test_alpha_trend_and_isochrone(apogee):
    poor = (apogee["FE_H"] > -1.0) & (apogee["FE_H"] < -0.5)
    rich = apogee["FE_H"] > 0.0
    assert np.median(apogee["MG_FE"][poor]) > np.median(apogee["MG_FE"][rich]) + 0.1
    giants = apogee["LOGG"] < 3.3
    # red giant branch: cooler at lower gravity
    assert np.corrcoef(apogee["LOGG"][giants], apogee["TEFF"][giants])[0, 1] > 0.6
    dwarfs = apogee["LOGG"] > 4.0
    assert np.all(apogee["VSINI"][~dwarfs & (apogee["LOGG"] < 3.8)] == 0)
    assert np.median(apogee["N_FE"][giants]) > np.median(apogee["N_FE"][dwarfs]) + 0.2


def test_reported_errors_and_missing_labels(apogee):
    assert 6.0 < np.median(apogee["TEFF_ERR"]) < 10.0
    assert 0.006 < np.median(apogee["FE_H_ERR"]) < 0.009
    for name in ("FE_H", "MG_FE", "O_FE"):
        assert 0.002 < np.mean(apogee[f"{name}_MISSING"]) < 0.014


def test_wide_prior_has_a_metal_poor_tail():
    wide = sample_labels(4000, seed=11, prior="wide")
    assert 0.18 < np.mean(wide["FE_H"] < -1.0) < 0.27
    assert wide["FE_H"].min() >= FEH_QUANTILES[0, 1]


def test_wide_percent_priors_nest_their_metal_poor_stars_and_wide20_is_wide():
    """The scaling study's knob: ``wide<P>`` puts P % of stars in [Fe/H] −2.5..−1; a smaller P's metal-poor
    stars are a subset of a larger P's, and every other label of a star is the same."""
    labels = {prior: sample_labels(4000, seed=5, prior=prior) for prior in ("apogee", "wide5", "wide20", "wide",
                                                                              "wide50")}
    for key in labels["wide"]:
        np.testing.assert_array_equal(labels["wide20"][key], labels["wide"][key])
    below = {prior: values["FE_H"] < -1.0 for prior, values in labels.items()}
    share = {prior: float(np.mean(flags)) for prior, flags in below.items()}
    assert share["apogee"] < 0.04 and 0.05 < share["wide5"] < 0.09 and 0.48 < share["wide50"] < 0.55
    assert np.all(below["wide5"] <= below["wide20"]) and np.all(below["wide20"] <= below["wide50"])
    assert np.all(below["apogee"] <= below["wide5"])
    for name in ("VMACRO", "VSINI", "C_FE"):  # draws that do not depend on [Fe/H]: unchanged by the knob
        np.testing.assert_array_equal(labels["wide5"][name], labels["wide50"][name])
    assert metal_poor_share("wide2.5") == 0.025
    for bad in ("wide0", "wide101", "widex", "Wide", ""):
        with pytest.raises(ValueError, match="'wide<P>' with 0 < P <= 100"):
            metal_poor_share(bad)


def test_star_labels_do_not_depend_on_n_or_offset():
    a = sample_labels(30, seed=3)
    b = sample_labels(10, seed=3, start_index=20)
    for key in a:
        np.testing.assert_array_equal(a[key][20:], b[key])
    c = sample_labels(30, seed=4)
    assert not np.array_equal(a["TEFF"], c["TEFF"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="prior"):
        sample_labels(3, prior="flat")
    with pytest.raises(ValueError, match="n must"):
        sample_labels(-1)
