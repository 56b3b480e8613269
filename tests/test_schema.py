"""The one dataset schema and its streaming, atomic writer (spectrafm_hf.data.schema)."""

import numpy as np
import pytest

from spectrafm_hf.data import schema

P = 16
WAVE = np.linspace(15200.0, 15215.0, P)


def _batches(n, fail_after=None):
    def make():
        for start in range(0, n, 3):
            if fail_after is not None and start >= fail_after:
                raise RuntimeError("generator broke")
            b = min(3, n - start)
            flux = np.full((b, P), 0.9, np.float32)
            flux[:, 0] = np.nan  # non-finite flux is always masked
            yield {"id": np.array([f"s{start + i}" for i in range(b)]), "flux": flux,
                   "TEFF": np.arange(start, start + b) + 4000.0, "VMICRO": np.ones(b)}
    return make


def test_round_trip_with_empty_split_and_extra_scalar(tmp_path):
    ds = schema.write_dataset(tmp_path / "d", {"train": _batches(7), "test": _batches(0)}, WAVE,
                              {"source": "unit"}, extra_scalars=("VMICRO",))
    assert len(ds["train"]) == 7 and len(ds["test"]) == 0
    row = ds["train"][4]
    assert row["id"] == "s4" and row["TEFF"] == 4004 and row["VMICRO"] == 1 and np.isnan(row["LOGG"])
    assert row["mask"][0] and not row["mask"][1] and np.isnan(row["flux_err"][1])
    np.testing.assert_allclose(schema.get_wavelength(ds["test"]), WAVE)
    assert schema.get_metadata(ds)["source"] == "unit"
    assert ds["train"].features["flux"].length == P


def test_atomic_overwrite_and_shape_errors(tmp_path):
    with pytest.raises(RuntimeError, match="broke"):
        schema.write_dataset(tmp_path / "d", {"train": _batches(9, fail_after=3)}, WAVE)
    assert list(tmp_path.iterdir()) == []  # no half-written dataset, no staging left behind
    schema.write_dataset(tmp_path / "d", {"train": _batches(2)}, WAVE)
    with pytest.raises(FileExistsError, match="overwrite"):
        schema.write_dataset(tmp_path / "d", {"train": _batches(2)}, WAVE)
    assert len(schema.write_dataset(tmp_path / "d", {"train": _batches(5)}, WAVE, overwrite=True)["train"]) == 5
    with pytest.raises(ValueError, match=r"shape \(B, 17\)"):
        schema.write_dataset(tmp_path / "e", {"train": _batches(2)}, np.arange(17.0))
    with pytest.raises(ValueError, match="clashes"):
        schema.spectra_features(P, ("TEFF",))


def test_in_memory_dataset_matches_schema():
    ds = schema.dataset_in_memory({"train": _batches(4)}, WAVE, {"source": "mem"})
    assert len(ds["train"]) == 4 and ds["train"].features == schema.spectra_features(P)
    np.testing.assert_allclose(schema.get_wavelength(ds), WAVE)


def test_split_indices_reproducible_and_complete():
    a = schema.split_indices(101, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=5)
    b = schema.split_indices(101, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(101))
    assert [len(v) for v in a.values()] == [81, 10, 10]
    c = schema.split_indices(101, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=6)
    assert not np.array_equal(a["test"], c["test"])
    with pytest.raises(ValueError, match="sum to 1"):
        schema.split_indices(10, {"train": 0.5}, seed=0)
    # the order of the names does not matter (a YAML file may list them in any order)
    d = schema.split_indices(101, {"test": 0.1, "validation": 0.1, "train": 0.8}, seed=5)
    assert list(d) == ["test", "validation", "train"] and all(np.array_equal(a[k], d[k]) for k in a)


def test_window_data_reads_whole_columns_and_honours_row_selection(tmp_path):
    """training.stages.window_data (whole Arrow buffers) equals the dataset's own rows, after select()."""
    from spectrafm_hf.training.stages import window_data

    def batches():
        rng = np.random.default_rng(0)
        for start in range(0, 10, 4):
            b = min(4, 10 - start)
            yield {"id": np.array([f"s{start + i}" for i in range(b)]), "flux": rng.random((b, P)).astype(np.float32),
                   "mask": rng.random((b, P)) < 0.2, "TEFF": np.arange(start, start + b) + 4000.0}

    ds = schema.write_dataset(tmp_path / "d", {"train": batches, "empty": _batches(0)}, WAVE)
    rows, pixels = [7, 2, 9], slice(3, 11)
    data = window_data(ds["train"], pixels, rows=rows)
    np.testing.assert_array_equal(data.flux, np.stack([ds["train"][r]["flux"] for r in rows])[:, pixels])
    np.testing.assert_array_equal(data.mask, np.stack([ds["train"][r]["mask"] for r in rows])[:, pixels])
    np.testing.assert_array_equal(data.labels["TEFF"], [4007.0, 4002.0, 4009.0])
    assert np.isnan(data.labels["LOGG"]).all() and data.flux.dtype == np.float32 and data.mask.dtype == bool
    np.testing.assert_allclose(data.wavelength, WAVE[pixels])
    empty = window_data(ds["empty"], pixels)
    assert empty.flux.shape == (0, 8) and empty.labels["TEFF"].shape == (0,)
