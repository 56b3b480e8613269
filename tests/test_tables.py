"""Generic tables of spectra (npz, Parquet, FITS table) → SpectraInput and the dataset schema."""


import numpy as np
import pytest
from astropy.io import fits

from spectrafm_hf.data import tables
from spectrafm_hf.data.schema import get_metadata, get_wavelength

P = 50
WAVE = np.linspace(15200.0, 15300.0, P)


def _arrays(n=4, seed=0):
    rng = np.random.default_rng(seed)
    flux = rng.uniform(0.6, 1.0, (n, P))
    mask = np.zeros((n, P), bool)
    mask[:, 3] = True
    return flux, flux * 0.01, mask


def _write_parquet(path, n=4, ragged=False):
    import pyarrow as pa
    import pyarrow.parquet as pq

    flux, err, mask = _arrays(n)
    columns = {
        "wavelength": [WAVE.tolist()] * n,
        "flux": [row.tolist() for row in flux] if not ragged else [row.tolist()[: P - i] for i, row in enumerate(flux)],
        "flux_err": [row.tolist() for row in err],
        "mask": [row.tolist() for row in mask],
        "id": [f"s{i}" for i in range(n)],
        "TEFF": np.arange(n, dtype=float) + 4000,
        "H_mag": np.arange(n, dtype=float) + 10,
    }
    pq.write_table(pa.table(columns), path)
    return flux


def _write_fits_table(path, n=4):
    flux, err, mask = _arrays(n)
    cols = [
        fits.Column("WAVELENGTH", f"{P}D", array=np.tile(WAVE, (n, 1)).astype(">f8")),
        fits.Column("FLUX", f"{P}E", array=flux.astype(">f4")),
        fits.Column("FLUX_ERR", f"{P}E", array=err.astype(">f4")),
        fits.Column("MASK", f"{P}L", array=mask),
        fits.Column("APOGEE_ID", "20A", array=np.array([f"2M{i}" for i in range(n)])),
        fits.Column("Fe_H", "E", array=np.linspace(-1, 0, n).astype(">f4")),
        fits.Column("FE_H_ERR", "E", array=np.full(n, 0.02, ">f4")),
    ]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path)
    return flux


def test_parquet_table_to_dataset(tmp_path):
    flux = _write_parquet(tmp_path / "t.parquet")
    spectra = tables.read_table(tmp_path / "t.parquet")
    assert spectra.wavelength.shape == (P,)  # identical per-row grids collapse to one
    ds = tables.load_table(tmp_path / "t.parquet")
    train = ds["train"]
    assert list(train["id"]) == ["s0", "s1", "s2", "s3"]
    np.testing.assert_allclose(np.asarray(train[2]["flux"]), flux[2], rtol=1e-6)
    assert train[1]["TEFF"] == 4001 and np.isnan(train[1]["LOGG"])
    assert train[0]["H_mag"] == 10  # other numeric columns become extra scalar columns
    assert train[0]["mask"][3] and not train[0]["mask"][4]
    np.testing.assert_allclose(get_wavelength(ds), WAVE)
    assert get_metadata(ds)["source"] == "table"


def test_fits_table_big_endian_case_insensitive_and_saved(tmp_path):
    flux = _write_fits_table(tmp_path / "t.fits")
    ds = tables.load_table(tmp_path / "t.fits", out_dir=tmp_path / "ds", split="test")
    assert set(ds) == {"test"} and (tmp_path / "ds" / "dataset_dict.json").exists()
    row = ds["test"][3]
    assert row["id"] == "2M3" and row["FE_H"] == pytest.approx(0.0) and row["FE_H_ERR"] == pytest.approx(0.02)
    np.testing.assert_allclose(np.asarray(row["flux"]), flux[3], rtol=1e-6)


def test_npz_table(tmp_path):
    flux, err, mask = _arrays(3)
    np.savez(tmp_path / "t.npz", wavelength=WAVE, flux=flux, flux_err=err, mask=mask, LOGG=np.array([1.0, 2, 3]))
    ds = tables.load_table(tmp_path / "t.npz")
    assert list(ds["train"]["id"]) == ["t-0", "t-1", "t-2"] and ds["train"][2]["LOGG"] == 3


def test_table_problems(tmp_path):
    _write_parquet(tmp_path / "ragged.parquet", ragged=True)
    with pytest.raises(ValueError, match="different lengths"):
        tables.read_table(tmp_path / "ragged.parquet")
    np.savez(tmp_path / "noflux.npz", wavelength=WAVE)
    with pytest.raises(ValueError, match="flux"):
        tables.load_table(tmp_path / "noflux.npz")
    flux, _, _ = _arrays(2)
    np.savez(tmp_path / "grids.npz", wavelength=np.stack([WAVE, WAVE + 1]), flux=flux)
    with pytest.raises(ValueError, match="common grid"):
        tables.load_table(tmp_path / "grids.npz")
    (tmp_path / "bad.parquet").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.parquet: cannot read as Parquet"):
        tables.read_table(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="unsupported"):
        tables.read_table(tmp_path / "x.csv")
    fits.HDUList([fits.PrimaryHDU(np.zeros(3))]).writeto(tmp_path / "img.fits")
    with pytest.raises(ValueError, match="no binary table"):
        tables.read_table(tmp_path / "img.fits")
