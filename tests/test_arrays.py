"""WindowData and its helpers (spectrafm_hf.data.arrays): build from a dataset, cut, select, join, rows."""

import numpy as np

from spectrafm_hf.data import schema
from spectrafm_hf.data.arrays import WindowData, concatenate, cut_window, rows_of, subset, window_data
from spectrafm_hf.data.labels import LABELS

P = 16
WAVE = np.linspace(15200.0, 15215.0, P)


def _toy(n: int, labels=("FE_H", "TEFF"), seed: int = 0) -> WindowData:
    rng = np.random.default_rng(seed)
    flux = rng.random((n, P)).astype(np.float32)
    return WindowData(flux=flux, mask=rng.random((n, P)) < 0.2, flux_err=np.full((n, P), 0.01, np.float32),
                      labels={k: rng.random(n) for k in labels}, label_errors={labels[0]: np.full(n, 0.02)},
                      wavelength=WAVE.copy())


def test_window_data_reads_whole_columns_and_honours_row_selection(tmp_path):
    """window_data (whole Arrow buffers) equals the dataset's own rows, after select()."""

    def batches():
        rng = np.random.default_rng(0)
        for start in range(0, 10, 4):
            b = min(4, 10 - start)
            yield {"id": np.array([f"s{start + i}" for i in range(b)]), "flux": rng.random((b, P)).astype(np.float32),
                   "mask": rng.random((b, P)) < 0.2, "TEFF": np.arange(start, start + b) + 4000.0}

    def no_batches():
        return iter(())

    ds = schema.write_dataset(tmp_path / "d", {"train": batches, "empty": no_batches}, WAVE)
    rows, pixels = [7, 2, 9], slice(3, 11)
    data = window_data(ds["train"], pixels, rows=rows)
    np.testing.assert_array_equal(data.flux, np.stack([ds["train"][r]["flux"] for r in rows])[:, pixels])
    np.testing.assert_array_equal(data.mask, np.stack([ds["train"][r]["mask"] for r in rows])[:, pixels])
    np.testing.assert_array_equal(data.labels["TEFF"], [4007.0, 4002.0, 4009.0])
    assert np.isnan(data.labels["LOGG"]).all() and data.flux.dtype == np.float32 and data.mask.dtype == bool
    np.testing.assert_allclose(data.wavelength, WAVE[pixels])
    assert set(data.labels) == set(LABELS) and set(data.label_errors) == set(LABELS)
    empty = window_data(ds["empty"], pixels)
    assert empty.flux.shape == (0, 8) and empty.labels["TEFF"].shape == (0,)


def test_cut_window_keeps_stars_and_labels():
    data = _toy(5)
    window = slice(4, 12)
    part = cut_window(data, window)
    assert len(part) == 5 and part.flux.shape == (5, 8)
    np.testing.assert_array_equal(part.flux, data.flux[:, window])
    np.testing.assert_array_equal(part.mask, data.mask[:, window])
    np.testing.assert_array_equal(part.flux_err, data.flux_err[:, window])
    np.testing.assert_array_equal(part.wavelength, WAVE[window])
    assert part.labels is data.labels and part.label_errors is data.label_errors


def test_subset_concatenate_and_rows():
    a, b = _toy(4, ("FE_H", "TEFF")), _toy(3, ("FE_H",), seed=1)
    picked = subset(a, [3, 1])
    np.testing.assert_array_equal(picked.flux, a.flux[[3, 1]])
    np.testing.assert_array_equal(picked.labels["TEFF"], a.labels["TEFF"][[3, 1]])
    both = concatenate(a, b)
    assert len(both) == 7
    np.testing.assert_array_equal(both.labels["FE_H"], np.concatenate([a.labels["FE_H"], b.labels["FE_H"]]))
    assert np.isnan(both.labels["TEFF"][4:]).all()  # b has no TEFF
    rows = rows_of(both, [0, 5])
    assert len(rows) == 2 and set(rows[0]) == {"flux", "flux_err", "mask", *LABELS, *(f"{k}_ERR" for k in LABELS)}
    assert rows[0]["FE_H_ERR"] == np.float32(0.02) and np.isnan(rows[1]["TEFF"]) and np.isnan(rows[0]["LOGG"])
    np.testing.assert_array_equal(rows[1]["flux"], b.flux[1])


def test_clean_flux_fills_bad_pixels():
    data = _toy(2)
    data.flux[0, 0] = np.nan
    clean = data.clean_flux()
    assert clean.dtype == np.float32 and clean[0, 0] == 1.0
    assert np.all(clean[data.mask] == 1.0)
