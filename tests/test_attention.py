"""Attention analysis (spectrafm_hf.training.attention): profiles, line cores, enrichment, control.

The line list is the simulator's (``spectrafm_hf.data.simulator.lines``), cut to the strong lines.
"""

from pathlib import Path

import numpy as np
import pytest

from spectrafm_hf.data import grid
from spectrafm_hf.data import simulator as sim
from spectrafm_hf.training import attention as at


def test_core_mask_and_nearest_index():
    wavelength = np.arange(100.0, 110.0, 0.25)
    cores = at.core_mask(wavelength, [102.0, 107.5], core_half_width_A=0.3)
    assert wavelength[cores].tolist() == [101.75, 102.0, 102.25, 107.25, 107.5, 107.75]
    assert not at.core_mask(wavelength, []).any()
    assert at.nearest_index(wavelength, np.array([100.1, 100.2, 109.9])).tolist() == [0, 1, 39]


def test_enrichment_of_uniform_and_concentrated_profiles():
    cores = np.zeros(100, bool)
    cores[:10] = True
    assert at.enrichment(np.full(100, 0.01), cores) == pytest.approx(1.0)
    focused = np.where(cores, 0.1, 0.0)
    assert at.enrichment(focused, cores) == pytest.approx(10.0)
    assert np.isnan(at.enrichment(np.full(100, 0.01), np.zeros(100, bool)))


def test_mean_profile_renormalises_each_star_over_valid_pixels():
    weights = np.array([[1.0, 1.0, 2.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    valid = np.array([[True, True, True, False], [True, False, False, False]])
    profile = at.mean_profile(weights, valid)
    # star rows relative to uniform: [0.75, 0.75, 1.5, –] and [1, –, –, –]; pixel 0 averages both stars
    np.testing.assert_allclose(profile[:3], np.array([0.875, 0.75, 1.5]) / 3.125)
    assert np.isnan(profile[3])  # never valid


def test_fe_window_profile_on_fe_lines_is_enriched_and_beats_shuffled_control():
    wavelength = grid.apogee_wavelength()[grid.FE_WINDOW]
    lines = at.strong_lines()
    fe = lines.of(at.QUERY_SPECIES["FE_H"][1])
    assert ((fe > 16157) & (fe < 16158.5)).any()  # Fe I 16157.7 Å is in the list
    cores = at.core_mask(wavelength, fe)
    profile = np.where(cores, 5.0, 1.0)
    profile /= profile.sum()
    result = at.analyse_profiles({"FE_H": profile}, wavelength, lines, n_shuffles=20)
    entry = result["profiles"]["FE_H"]
    assert entry["enrichment"] > 1.5
    assert entry["enrichment_control"] < entry["enrichment"]
    uniform = at.analyse_profiles({"FE_H": np.full(len(wavelength), 1 / len(wavelength))}, wavelength, lines)
    assert uniform["profiles"]["FE_H"]["enrichment"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no line species"):
        at.analyse_profiles({"TEFF": profile}, wavelength, lines)


def test_line_list_keeps_oh_lines_for_the_oxygen_query():
    """OH is weak in the 4500 K reference giant, so it has its own threshold: the [O/Fe] query has
    lines in the first half (where stage 2's attention is analysed); a strict list has none."""
    half = grid.apogee_wavelength()[:3757]
    default = at.strong_lines()
    oh = default.of(at.QUERY_SPECIES["O_FE"][1])
    assert ((oh > half.min()) & (oh < half.max())).sum() >= 20
    assert len(default.of(["Mg I"])) == 9 and len(default.of(["Fe I"])) == 316  # others: min_strength 1
    strict = at.strong_lines(species_min_strength={})
    assert len(strict.of(["OH"])) == 0


def test_line_list_is_the_simulators_read_from_inside_the_package():
    """One owner: the analysis uses the simulator's shipped list (no copy, no path outside the package)."""
    import spectrafm_hf

    assert at.LineList is sim.LineList
    expected = sim.load_line_list(min_strength=at.MIN_STRENGTH, species_min_strength=at.SPECIES_MIN_STRENGTH)
    lines = at.strong_lines()
    assert np.array_equal(lines.wavelength, expected.wavelength) and np.array_equal(lines.species, expected.species)
    package = Path(spectrafm_hf.__file__).resolve().parent
    assert sim.LINELIST_FILE.resolve().is_relative_to(package)
    stray = [name for name, value in vars(at).items()
             if isinstance(value, Path) and not value.resolve().is_relative_to(package)]
    assert not stray, stray
