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


def test_label_columns_come_from_the_one_label_table():
    """The schema's label columns, and the remote-code copy of the label names, follow data.labels."""
    from spectrafm_hf.configuration_spectrafm import DEFAULT_NAMED_TOKENS
    from spectrafm_hf.data import labels

    assert labels.LABEL_COLUMNS == (*labels.LABELS, *(f"{k}_ERR" for k in labels.LABELS), "snr")
    assert labels.error_column("FE_H") == "FE_H_ERR" and labels.ERROR_COLUMNS[0] == "TEFF_ERR"
    for table in (labels.LABEL_UNITS, labels.LABEL_DESCRIPTIONS, labels.LABEL_DISPLAY_NAMES, labels.LABEL_LATEX):
        assert set(table) == set(labels.LABELS)
    features = schema.spectra_features(P)
    assert all(name in features for name in labels.LABEL_COLUMNS)
    assert schema.LABELS is labels.LABELS and tuple(DEFAULT_NAMED_TOKENS) == labels.LABELS
