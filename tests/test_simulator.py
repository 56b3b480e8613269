"""The physical simulator: line physics directions, curve of growth, Voigt accuracy, determinism,
the observed universe's gap terms, and another instrument's grid.

Uses only the project's shipped line list (``spectrafm_hf/data/linelists``), no ``../shared``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.special import wofz

from spectrafm_hf.data import simulator as sim
from spectrafm_hf.data.grid import apogee_wavelength, log_linear_grid
from spectrafm_hf.data.simulator import physics, synthesis
from spectrafm_hf.data.simulator.line_opacity import accumulate_line_opacity


def star(teff, logg, fe_h=0.0, mg_fe=0.0, o_fe=0.0, **extra):
    labels = {"TEFF": teff, "LOGG": logg, "FE_H": fe_h, "MG_FE": mg_fe, "O_FE": o_fe, **extra}
    n = max(np.size(v) for v in labels.values())
    return {k: np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)).copy() for k, v in labels.items()}


def flux_at(flux, wavelength_A, grid=None):
    grid = apogee_wavelength() if grid is None else grid
    return flux[:, np.argmin(np.abs(grid - wavelength_A))]


@pytest.fixture(scope="module")
def model():
    return sim.get_line_model()


def test_fe_lines_deepen_with_metallicity(model):
    flux = sim.synthesize(model, star(4500.0, 2.0, fe_h=[-1.5, -1.0, -0.5, 0.0, 0.3]))
    for line in (16157.7, 16169.4):
        f = flux_at(flux, line)
        assert np.all(np.diff(f) < 0), f"flux at Fe I {line} Å must fall as [Fe/H] rises, got {f}"
        assert f[0] - f[-1] > 0.05


def _strongest_oh_lines(model, k=12):
    eta0, _, _ = model.line_parameters(star(4000.0, 1.5))
    oh = np.where(model.lines.species == "OH")[0]
    grid = apogee_wavelength()
    on_chip = [i for i in oh if np.min(np.abs(grid - model.lines.wavelength[i])) < 0.2]
    order = np.argsort(eta0[0, on_chip])[::-1][:k]
    return model.lines.wavelength[np.array(on_chip)[order]]


def test_oh_deepens_with_oxygen_in_cool_giant_and_fades_when_hot(model):
    lines = _strongest_oh_lines(model)
    grid = apogee_wavelength()
    pix = np.array([np.argmin(np.abs(grid - w)) for w in lines])
    cool = sim.synthesize(model, star(4000.0, 1.5, o_fe=[0.0, 0.4]))
    depth_cool = 1.0 - cool[:, pix]
    # more O also locks more C into CO, which weakens CN blends: require most lines, and the median
    assert np.mean(depth_cool[1] > depth_cool[0]) >= 0.75, "OH lines must deepen with [O/Fe] at 4000 K"
    assert np.median(depth_cool[1] - depth_cool[0]) > 0.01
    assert np.median(depth_cool[0]) > 0.1
    hot = sim.synthesize(model, star([5000.0, 5500.0], [3.0, 3.5]))
    depth_hot = 1.0 - hot[:, pix]
    # the pixel depth also holds any blend; OH itself fades to a small fraction of the cool depth
    assert np.median(depth_hot[1]) < 0.25 * np.median(depth_cool[0])
    assert np.median(depth_hot[0]) < 0.6 * np.median(depth_cool[0])


def test_mg_lines_deepen_with_mg(model):
    flux = sim.synthesize(model, star(4700.0, 2.5, mg_fe=[-0.2, 0.0, 0.2, 0.4]))
    for line in (15745.0, 15753.3, 15770.1):
        f = flux_at(flux, line)
        assert np.all(np.diff(f) < 0), f"Mg I {line}: {f}"


def test_line_wings_broaden_with_gravity(model):
    flux = sim.synthesize(model, star(5000.0, [2.0, 3.5, 4.7], VMACRO=[3.0, 3.0, 3.0]))
    grid = apogee_wavelength()
    # far wing of Mg I 15770: 1.2–2.5 Å from the centre, away from other strong lines on the red side
    wing = (grid > 15770.1 + 1.2) & (grid < 15770.1 + 2.5)
    wing_depth = (1.0 - flux[:, wing]).mean(axis=1)
    assert wing_depth[2] > wing_depth[1] > wing_depth[0], wing_depth


def test_curve_of_growth_saturates_at_dmax():
    lam = 15800.0
    wavelength = log_linear_grid(15790.0, 15810.0, 1.0 / (10**6e-6 - 1.0))
    depths = []
    for loggf in (-7.0, -6.0, -4.0, -2.0, 0.0, 2.0, 4.0):
        lines = sim.LineList(np.array([lam]), np.array(["Fe I"]), np.array([1]), np.array([3.0]),
                             np.array([loggf]), np.array([55.845]), np.array([-7.3]))
        m = sim.LineModel(wavelength, line_list=lines)
        flux = sim.synthesize(m, star(4500.0, 2.0, VMACRO=0.0))
        depths.append(1.0 - flux.min())
        lam_min = wavelength[np.argmin(flux[0])]
    depths = np.array(depths)
    d_max = 1.0 - sim.planck_ratio(lam_min, 0.72 * 4500.0, 4500.0)
    assert np.all(np.diff(depths) >= -1e-6), "depth must grow monotonically with gf"
    assert np.all(depths <= d_max + 1e-6), f"depth {depths.max()} exceeds D_max {d_max}"
    assert depths[-1] > 0.97 * d_max, "a very strong line saturates at D_max (its core is flat)"
    assert depths[-1] - depths[-2] < 1e-3, "saturated: 100× more gf barely changes the central depth"
    assert depths[1] / depths[0] > 5.0, "weak lines are on the linear part of the curve of growth"


def test_eta0_matches_reference_recipe(model):
    """Line-centre opacities agree with the recipe's diagnostic column (4500 K, logg 2 giant)."""
    import csv

    with open(sim.LINELIST_FILE, newline="") as handle:
        ref = np.array([float(r["eta0_ref4500g2"]) for r in csv.DictReader(handle)])
    eta0, _, _ = model.line_parameters(star(4500.0, 2.0, VMICRO=1.1))
    ratio = np.log10(eta0[0] / ref)
    for species in ("Fe I", "Mg I", "Si I", "OH", "12C16O", "12C14N"):
        sel = model.lines.species == species
        assert abs(np.median(ratio[sel])) < 0.1, (species, np.median(ratio[sel]))
        assert np.std(ratio[sel]) < 0.05, (species, np.std(ratio[sel]))


def test_voigt_accuracy():
    rng = np.random.default_rng(0)
    a = 10 ** rng.uniform(-5, 1, 20000)
    v = rng.uniform(-40, 40, 20000)
    v[:8000] /= 10
    h = sim.voigt_fast(a, v)
    assert np.max(np.abs(h - wofz(v + 1j * a).real)) < 3e-4


def _one_line_opacity(is_gauss, eta0, width, damping, dv0=0.3, core=12, wing=0, n_fine=200, seg=(0, 200)):
    """η from the compiled kernel for one line centred on fine pixel 100 of a 1-star batch."""
    table = physics._voigt_table()
    as_arr = lambda x, dt=np.float64: np.array([x], dtype=dt)  # noqa: E731
    total = np.zeros((1, n_fine))
    accumulate_line_opacity(total, np.array([[eta0]]), np.array([[width]]), np.array([[damping]]),
                            as_arr(100, np.int64), as_arr(dv0), as_arr(seg[0], np.int64), as_arr(seg[1], np.int64),
                            as_arr(core, np.int64), as_arr(wing, np.int64), as_arr(is_gauss, np.bool_),
                            sim.FINE_DV_KMS, physics._voigt_corners(),
                            table.shape[0], table.shape[1], physics._VOIGT_LOGA[0], physics._VOIGT_LOGA[2],
                            physics._VOIGT_V_STEP, physics._VOIGT_V_MAX)
    dv = 0.3 + (np.arange(n_fine) - 100) * sim.FINE_DV_KMS
    return total[0], dv


def test_compiled_opacity_matches_the_profiles():
    # Gaussian (molecule) by recurrence: equals η0 exp(−(Δv/w)²) inside ±core, 0 outside
    eta, dv = _one_line_opacity(True, 0.7, 1.9, 0.0)
    inside = np.abs(np.arange(200) - 100) <= 12
    np.testing.assert_allclose(eta[inside], 0.7 * np.exp(-(dv[inside] / 1.9) ** 2), rtol=1e-12, atol=1e-300)
    assert np.all(eta[~inside] == 0.0)
    # Voigt core (atoms) matches the exact Faddeeva function to the table's accuracy
    eta, dv = _one_line_opacity(False, 2.0, 2.2, 0.05)
    exact = 2.0 * wofz(dv[inside] / 2.2 + 0.05j).real
    assert np.max(np.abs(eta[inside] - exact)) < 2.0 * 3e-4
    # damping wings beyond the core follow H(a, v) to ~1 %, and stop at the wing half-width
    eta, dv = _one_line_opacity(False, 50.0, 2.0, 0.3, core=10, wing=60)
    wing = (np.abs(np.arange(200) - 100) > 10) & (np.abs(np.arange(200) - 100) <= 60)
    exact = 50.0 * wofz(dv[wing] / 2.0 + 0.3j).real
    np.testing.assert_allclose(eta[wing], exact, rtol=0.02)
    assert np.all(eta[np.abs(np.arange(200) - 100) > 60] == 0.0)
    # a window never leaks out of its segment (here pixels 95–149)
    eta, _ = _one_line_opacity(False, 50.0, 2.0, 0.3, core=10, wing=60, seg=(95, 150))
    assert np.all(eta[:95] == 0.0) and np.all(eta[150:] == 0.0) and eta[149] > 0.0


def test_chunked_batches_give_identical_spectra(monkeypatch):
    labels = star([4000.0, 5200.0, 4600.0, 3900.0, 6100.0], [1.5, 4.5, 2.5, 1.0, 4.2],
                  fe_h=[0.0, -0.3, -1.2, 0.2, -2.0])
    whole = sim.simulate(labels, "observed", seed=3)
    monkeypatch.setattr(synthesis, "_SUB_BATCH", 2)  # 5 stars → chunks of 2, 2, 1
    chunked = sim.simulate(labels, "observed", seed=3)
    for key in whole:
        assert np.array_equal(whole[key], chunked[key], equal_nan=True), key


def test_deterministic_across_batch_sizes():
    labels = star([4000.0, 5200.0, 4600.0], [1.5, 4.5, 2.5], fe_h=[0.0, -0.3, -1.2])
    whole = sim.simulate(labels, "observed", seed=5)
    parts = [sim.simulate({k: v[i:i + 1] for k, v in labels.items()}, "observed", seed=5, start_index=i)
             for i in range(3)]
    for key in ("flux", "flux_err", "mask", "FE_H"):
        joined = np.concatenate([p[key] for p in parts])
        assert np.array_equal(whole[key], joined, equal_nan=True), key
    other_seed = sim.simulate(labels, "observed", seed=6)
    assert not np.array_equal(whole["flux"], other_seed["flux"], equal_nan=True)


def test_deterministic_across_thread_counts(tmp_path):
    code = (
        "import numpy as np, sys; from spectrafm_hf.data import simulator as sim;"
        "out = sim.simulate({'TEFF': np.array([4300.]), 'LOGG': np.array([2.]), 'FE_H': np.array([-.4]),"
        "'MG_FE': np.array([.1]), 'O_FE': np.array([.1])}, 'observed', seed=2);"
        "np.save(sys.argv[1], out['flux'])"
    )
    results = []
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        path = tmp_path / f"flux{threads}.npy"
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=env)
        results.append(np.load(path))
    assert np.array_equal(results[0], results[1], equal_nan=True)


def test_observed_minus_synthetic_rms_in_expected_band():
    labels = star([4000.0, 4700.0, 5200.0, 4400.0], [1.5, 2.5, 4.5, 2.0], fe_h=[0.0, -0.3, -0.1, -0.6])
    snr = np.full(4, 200.0)
    obs = sim.simulate(labels, "observed", seed=1, snr=snr)
    syn = sim.simulate(labels, "synthetic", seed=1)
    good = ~obs["mask"] & np.isfinite(obs["flux"]) & np.isfinite(syn["flux"])
    rms = [np.sqrt(np.mean((obs["flux"][b] - syn["flux"][b])[good[b]] ** 2)) for b in range(4)]
    assert 0.012 < np.median(rms) < 0.035, rms


def test_clean_gap_config_reproduces_the_synthetic_universe():
    labels = star([4200.0, 5000.0], [1.8, 3.0])
    syn = sim.simulate(labels, "synthetic", seed=3)
    obs_clean = sim.simulate(labels, "observed", seed=3, gap_config=sim.GapConfig.clean())
    np.testing.assert_array_equal(syn["flux"], obs_clean["flux"])
    assert np.all(syn["flux_err"] == 0) and np.all(np.isnan(syn["snr"]))
    assert np.array_equal(syn["FE_H"], labels["FE_H"].astype(np.float32))


@pytest.mark.parametrize("switch", [s for s in sim.GapConfig.SWITCHES if s not in ("flux_clip", "label_noise")])
def test_each_gap_switch_has_an_effect(switch):
    labels = star([4000.0, 5300.0, 4500.0, 4800.0], [1.5, 4.5, 2.4, 3.0], VSINI=[0.0, 5.0, 0.0, 0.0])
    # persistence hits ~10 % of stars: make it certain here
    clean = sim.GapConfig.clean(persistence_fraction=1.0, artefact_probability=1.0)
    base = sim.simulate(labels, "observed", seed=4, gap_config=clean)
    one_on = sim.simulate(labels, "observed", seed=4, gap_config=replace(clean, **{switch: True}))
    changed = ~np.isclose(base["flux"], one_on["flux"], atol=2e-4, equal_nan=True)
    assert changed.mean() > 1e-4, f"switching {switch} on changed nothing"
    if switch in ("bad_pixels", "airglow"):
        assert one_on["mask"].sum() > base["mask"].sum()
    if switch == "noise":
        assert np.all(np.isfinite(one_on["snr"])) and np.all(one_on["flux_err"] > 0)


def test_label_noise_and_missing_labels():
    labels = star(np.full(50, 4500.0), 2.0)
    labels["FE_H_MISSING"] = np.arange(50) == 7
    obs = sim.simulate(labels, "observed", seed=0, gap_config=sim.GapConfig.clean(label_noise=True))
    delta = obs["TEFF"] - obs["true_TEFF"]
    assert 4.0 < np.std(delta) < 13.0  # reported error 8 K
    assert np.isnan(obs["FE_H"][7]) and np.isfinite(obs["FE_H"][np.arange(50) != 7]).all()


def test_flux_clipping_masks_out_of_range_pixels():
    labels = star([3600.0], [0.8], fe_h=[0.3])
    out = sim.simulate(labels, "observed", seed=0, gap_config=sim.GapConfig.clean(bad_pixels=True))
    nan = np.isnan(out["flux"])
    assert nan.any() and np.all(out["mask"][nan])
    finite = out["flux"][np.isfinite(out["flux"])]
    assert finite.min() >= 0.05 and finite.max() <= 1.2


def test_other_instrument_grid_and_resolution():
    grid = log_linear_grid(15700.0, 15800.0, 3.0 * 11000.0)
    labels = star([4500.0], [2.0])
    low = sim.simulate(labels, "synthetic", wavelength=grid, resolving_power=11000.0)
    high = sim.simulate(labels, "synthetic", wavelength=grid, resolving_power=22500.0)
    assert low["flux"].shape == (1, len(grid))
    line = np.argmin(np.abs(grid - 15770.1))
    assert low["flux"][0, line] > high["flux"][0, line], "lower R must give a shallower line core"
    apogee = sim.simulate(labels, "synthetic")
    inside = (apogee_wavelength() > 15760) & (apogee_wavelength() < 15780)
    # same physics: equivalent width in a window is resolution-independent (±3 %)
    ew_apogee = np.sum(1 - apogee["flux"][0, inside] ) * np.mean(np.diff(apogee_wavelength()[inside]))
    sel = (grid > 15760) & (grid < 15780)
    ew_low = np.sum(1 - low["flux"][0, sel]) * np.mean(np.diff(grid[sel]))
    assert abs(ew_low / ew_apogee - 1) < 0.03


def test_bad_labels_raise_clear_errors():
    with pytest.raises(ValueError, match="TEFF"):
        sim.simulate(star([1000.0], [2.0]))
    with pytest.raises(ValueError, match="lack"):
        sim.simulate({"TEFF": np.array([4500.0])})
    with pytest.raises(ValueError, match="universe"):
        sim.simulate(star([4500.0], [2.0]), universe="real")
    with pytest.raises(ValueError, match="unknown gap switch"):
        sim.GapConfig().without("nope")


def test_line_list_and_constants_are_read_from_inside_the_package():
    """A pip-installed package has nothing beside it: the data files must live in the package."""
    import spectrafm_hf

    package = Path(spectrafm_hf.__file__).resolve().parent
    for path in (sim.LINELIST_FILE, sim.CONSTANTS_FILE):
        assert path.resolve().is_relative_to(package) and path.exists(), path
    assert len(sim.load_line_list()) == 4741 and sim.calibration_constants()["T0_over_Teff"] == 0.72


def test_line_list_strength_thresholds():
    full = sim.load_line_list()
    strong = sim.load_line_list(min_strength=1.0)
    with_oh = sim.load_line_list(min_strength=1.0, species_min_strength={"OH": 0.1})
    assert len(strong) < len(with_oh) < len(full)
    assert len(strong.of(["OH"])) == 0 and len(with_oh.of(["OH"])) > 0
    assert np.array_equal(strong.of(["Fe I"]), with_oh.of(["Fe I"]))  # the override touches OH only
    with pytest.raises(ValueError, match="not found"):
        sim.load_line_list("no/such/list.csv")
