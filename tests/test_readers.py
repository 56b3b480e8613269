"""readers.read_spectra: every input format of ``spectrafm predict --input``.

The apStar case uses the real file vendored in tests/fixtures (gzip copy of
../shared/data/real/apStar-dr17-2M19485057+5005279.fits).
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures.dr17_layouts import aspcap_arrays, write_aspcapstar  # noqa: E402

from spectrafm_hf.data import grid, tables  # noqa: E402
from spectrafm_hf.data.readers import read_spectra  # noqa: E402
from spectrafm_hf.data.spectra_input import SpectraInput  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "apStar-dr17-2M19485057+5005279.fits.gz"


def test_npz_keeps_extra_arrays_as_scalar_inputs(tmp_path):
    np.savez(tmp_path / "s.npz", wavelength=np.arange(5.0), flux=np.ones((2, 5)), H=np.array([9.0, 10.0]),
             id=np.array(["a", "b"]))
    spectra = read_spectra(tmp_path / "s.npz")
    assert isinstance(spectra, SpectraInput) and list(spectra.ids) == ["a", "b"]
    assert spectra.scalars["H"].tolist() == [9.0, 10.0] and spectra.reference == {}


def test_apstar_and_aspcapstar_files(tmp_path):
    apstar = read_spectra(FIXTURE)
    assert apstar.flux.shape == (1, 7514) and apstar.ids.tolist() == ["2M19485057+5005279"]
    np.testing.assert_allclose(apstar.wavelength, grid.apogee_wavelength())
    assert 0.97 < np.nanmedian(apstar.flux) < 1.0  # continuum-normalised
    assert apstar.reference["snr"][0] == pytest.approx(137.49, abs=0.01)
    flux, err, synthetic = aspcap_arrays()
    path = write_aspcapstar(tmp_path / "aspcapStar-dr17-2M5.fits", flux, err, synthetic,
                            row={"APOGEE_ID": "2M5", "TEFF": 4500.0, "SNR": 250.0})
    aspcap = read_spectra(path)
    assert aspcap.ids.tolist() == ["2M5"] and aspcap.reference["TEFF"][0] == 4500
    assert aspcap.scalars == {}  # catalogue labels are reference values, never model inputs
    renamed = tmp_path / "star.fits"  # name says nothing: recognised by its HDU layout
    renamed.write_bytes(path.read_bytes())
    np.testing.assert_array_equal(read_spectra(renamed).flux, aspcap.flux)


def test_parquet_fits_table_and_dataset_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    wave = np.linspace(15200, 15300, 20)
    flux = np.random.default_rng(0).uniform(0.5, 1, (3, 20))
    pq.write_table(pa.table({"wavelength": [wave.tolist()] * 3, "flux": [r.tolist() for r in flux],
                             "TEFF": [4000.0, 4100.0, 4200.0]}), tmp_path / "s.parquet")
    from_parquet = read_spectra(tmp_path / "s.parquet")
    np.testing.assert_allclose(from_parquet.flux, flux)
    assert from_parquet.scalars["TEFF"].tolist() == [4000.0, 4100.0, 4200.0]

    tables.load_table(tmp_path / "s.parquet", out_dir=tmp_path / "ds")
    from_folder = read_spectra(tmp_path / "ds")
    np.testing.assert_allclose(from_folder.flux, flux, rtol=1e-6)
    np.testing.assert_allclose(from_folder.wavelength, wave)
    assert from_folder.reference["TEFF"].tolist() == [4000.0, 4100.0, 4200.0] and from_folder.scalars == {}
    assert from_folder.ids.tolist() == ["s-0", "s-1", "s-2"]
    with pytest.raises(ValueError, match="no split 'test'"):
        read_spectra(tmp_path / "ds", split="test")


def test_unsupported_and_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_spectra(tmp_path / "nope.npz")
    (tmp_path / "x.txt").write_text("1,2")
    with pytest.raises(ValueError, match="unsupported input format.*.csv"):  # the message lists what is read
        read_spectra(tmp_path / "x.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a dataset folder"):
        read_spectra(tmp_path / "empty")
    (tmp_path / "apStar-dr17-broken.fits").write_bytes(b"x" * 3000)
    with pytest.raises(ValueError, match="apStar-dr17-broken.fits"):
        read_spectra(tmp_path / "apStar-dr17-broken.fits")
