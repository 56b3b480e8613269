"""Simulated DatasetDicts: schema, reproducible splits, batch-size independence, atomic writes, CLI."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from spectrafm_hf.data import simulated, simulator
from spectrafm_hf.data.grid import APOGEE_NPIX
from spectrafm_hf.data.labels import LABEL_COLUMNS
from spectrafm_hf.data.schema import get_metadata, get_wavelength


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "observed"
    ds = simulated.build_simulated_dataset(out, "observed", n=10, seed=7, batch_size=4, progress=False)
    return out, ds


def test_schema_and_metadata(built):
    out, ds = built
    assert set(ds) == {"train", "validation", "test"}
    assert sum(len(s) for s in ds.values()) == 10
    row = ds["train"][0]
    assert len(row["flux"]) == len(row["flux_err"]) == len(row["mask"]) == APOGEE_NPIX
    for name in (*LABEL_COLUMNS, "VMICRO", "C_FE", "N_FE", "TRUE_FE_H"):
        assert name in ds["train"].column_names
    assert row["id"].startswith("sim-observed-7-")
    meta = get_metadata(ds)
    assert meta["source"] == "simulator" and meta["universe"] == "observed" and meta["seed"] == 7
    assert meta["prior"] == "apogee" and meta["gap_config"]["noise"] is True
    assert get_wavelength(ds).shape == (APOGEE_NPIX,)
    flux = np.array(row["flux"], dtype=np.float32)
    mask = np.array(row["mask"])
    assert np.all(mask[~np.isfinite(flux)])
    assert 200 <= row["snr"] <= 1000


def test_rows_match_in_memory_simulation_and_batch_size(built):
    _, ds = built
    ids = ds["test"]["id"]
    index = np.array([int(i.rsplit("-", 1)[1]) for i in ids])
    labels = simulated.sample_labels(10, seed=7, prior="apogee")
    direct = simulated.simulate_label_table({k: v[index] for k, v in labels.items()}, "observed", seed=7,
                                            indices=index, batch_size=1)
    np.testing.assert_array_equal(np.array(ds["test"]["flux"], dtype=np.float32), direct["flux"])


def test_splits_are_reproducible(tmp_path, built):
    _, ds = built
    again = simulated.build_simulated_dataset(tmp_path / "again", "observed", n=10, seed=7, batch_size=10,
                                              progress=False)
    for split in ds:
        assert ds[split]["id"] == again[split]["id"]
        np.testing.assert_array_equal(np.array(ds[split]["FE_H"]), np.array(again[split]["FE_H"]))


def test_synthetic_defaults_and_label_table(tmp_path):
    labels = {"TEFF": np.array([4200.0, 5100.0, 4700.0]), "LOGG": np.array([1.6, 4.4, 2.5]),
              "FE_H": np.array([-1.5, 0.1, -0.4]), "MG_FE": np.array([0.3, 0.0, 0.1]),
              "O_FE": np.array([0.3, 0.0, 0.1])}
    ds = simulated.build_simulated_dataset(tmp_path / "syn", "synthetic", n=0, labels=labels, seed=1,
                                           splits={"train": 1.0}, progress=False)
    assert len(ds["train"]) == 3
    assert np.allclose(sorted(ds["train"]["FE_H"]), sorted(labels["FE_H"]), atol=1e-6)
    assert np.all(np.isnan(ds["train"]["snr"]))
    assert get_metadata(ds)["gap_config"]["noise"] is False


def test_failed_build_leaves_no_output(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = simulator.simulate

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(simulated.sim, "simulate", failing)
    out = tmp_path / "broken"
    with pytest.raises(RuntimeError, match="boom"):
        simulated.build_simulated_dataset(out, "synthetic", n=6, seed=0, batch_size=2, progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_bad_arguments(built, tmp_path):
    out, _ = built
    with pytest.raises(FileExistsError):
        simulated.build_simulated_dataset(out, "observed", n=2, progress=False)
    with pytest.raises(ValueError, match="universe"):
        simulated.build_simulated_dataset(tmp_path / "x", "real", n=2, progress=False)
    with pytest.raises(ValueError, match="n must"):
        simulated.build_simulated_dataset(tmp_path / "x", "synthetic", n=0, progress=False)


def test_run_simulate_cli_entry(tmp_path, capsys):
    args = argparse.Namespace(universe="synthetic", n=3, seed=2, out=str(tmp_path / "cli"), prior=None,
                              overwrite=False)
    assert simulated.run_simulate(args) == 0
    assert "synthetic" in capsys.readouterr().out
    assert get_metadata(simulated.build_simulated_dataset(
        tmp_path / "cli", "synthetic", n=3, seed=2, overwrite=True, progress=False))["prior"] == "wide"


def test_star_id_round_trip_and_bad_ids():
    from spectrafm_hf.data.simulated import star_id, star_index

    assert star_id("observed", 7, 42) == "sim-observed-7-42" and star_index(star_id("observed", 7, 42)) == 42
    for bad in ("apogee-2M0000", "sim-observed-7-", "sim-observed-7-x"):
        with pytest.raises(ValueError, match="not a simulated star id"):
            star_index(bad)


def test_worker_processes_write_the_same_arrow_data(tmp_path):
    """``num_proc`` (``spectrafm simulate --num-proc``) changes who simulates, never what is written: the
    Arrow data of 1 and 2 processes are equal, column by column, row order included (NaN where NaN)."""
    kwargs = dict(universe="observed", n=14, seed=3, batch_size=2, progress=False)
    one = simulated.build_simulated_dataset(tmp_path / "one", num_proc=1, **kwargs)
    two = simulated.build_simulated_dataset(tmp_path / "two", num_proc=2, **kwargs)
    assert sum(len(split) for split in two.values()) == 14
    for name in one:
        assert one[name].features == two[name].features and one[name].column_names == two[name].column_names
        a, b = one[name].with_format("numpy")[:], two[name].with_format("numpy")[:]
        for column in a:  # Arrow's own equals() says NaN != NaN; numpy's assert treats them as equal
            np.testing.assert_array_equal(a[column], b[column], err_msg=f"{name}/{column}")
    with pytest.raises(ValueError, match="num-proc"):
        simulated.build_simulated_dataset(tmp_path / "none", num_proc=0, **kwargs)
    assert simulated.available_cores() >= 1
