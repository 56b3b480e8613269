"""Real APOGEE DR17 loaders (spectrafm_hf.data.apogee).

FITS files are written in the exact DR17 layouts by tests/fixtures/dr17_layouts.py into tmp_path;
the real apStar is tests/fixtures/apStar-dr17-2M19485057+5005279.fits.gz (see tests/fixtures/README.md).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures.dr17_layouts import (  # noqa: E402
    absorption,
    aspcap_arrays,
    smooth_continuum,
    write_allstar,
    write_apstar,
    write_aspcapstar,
)

from spectrafm_hf.data import apogee, grid  # noqa: E402
from spectrafm_hf.data.labels import LABELS, PAPER_LABEL_ORDER  # noqa: E402
from spectrafm_hf.data.schema import get_metadata, get_wavelength  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "apStar-dr17-2M19485057+5005279.fits.gz"
CHIP = grid.chip_pixel_indices()


def _star_row(apogee_id, tel="apo25m", field="F1", snr=300.0, flag=0, starflag=0, vscatter=0.1, teff=4800.0):
    return {"APOGEE_ID": apogee_id, "TELESCOPE": tel, "FIELD": field, "TARGET_ID": f"{tel}.{field}.{apogee_id}",
            "SNR": snr, "STARFLAG": starflag, "ASPCAPFLAG": flag, "VSCATTER": vscatter,
            "TEFF": teff, "LOGG": 2.5, "FE_H": -0.3, "MG_FE": 0.1, "O_FE": 0.2,
            "TEFF_ERR": 50.0, "LOGG_ERR": 0.05, "FE_H_ERR": 0.01, "MG_FE_ERR": 0.02, "O_FE_ERR": -9999.0}


def _apstar_arrays(seed=0):
    rng = np.random.default_rng(seed)
    cont = smooth_continuum()
    flux = cont * absorption({15753.203: 0.5, 16755.1: 0.5}) * (1 + rng.normal(0, 0.005, grid.APSTAR_NPIX))
    return flux, cont * 0.005, np.zeros(grid.APSTAR_NPIX, dtype=np.int64)


# ---------------------------------------------------------------- apStar

def test_apstar_mask_bits_normalisation_and_header(tmp_path):
    flux, err, bits = _apstar_arrays()
    bits[CHIP[10]] = 1 << 0        # BADPIX: bad by default
    bits[CHIP[20]] = 1 << 12       # SIG_SKYLINE: bad by default
    bits[CHIP[30]] = 1 << 9        # PERSIST_HIGH: not in the default set
    path = write_apstar(tmp_path / "apStar-dr17-2M1+2.fits", flux, err, bits, objid="2M1+2", snr=123.0)
    record = apogee.read_apstar(path)
    assert record["id"] == "2M1+2" and record["snr"] == pytest.approx(123.0)
    assert record["flux"].shape == (7514,) and record["flux"].dtype == np.float32
    assert record["mask"][[10, 20]].all() and not record["mask"][30]
    assert np.isnan(record["flux"][10]) and np.isfinite(record["flux"][30])
    assert np.all(np.isnan([record[label] for label in LABELS]))  # apStar has no ASPCAP labels
    line_free = grid.apstar_to_apogee(absorption({15753.203: 0.5, 16755.1: 0.5})) > 0.999
    assert abs(np.nanmedian(record["flux"][line_free]) - 1) < 0.005
    # errors divided by the same continuum
    np.testing.assert_allclose(record["flux_err"][~record["mask"]],
                               (grid.apstar_to_apogee(err) / record["continuum"])[~record["mask"]], rtol=1e-5)
    stricter = apogee.read_apstar(path, bad_bits=(*apogee.DEFAULT_BAD_PIXMASK_BITS, 9))
    assert stricter["mask"][30]
    raw = apogee.read_apstar(path, continuum=None)
    assert np.nanmedian(raw["flux"]) > 100  # flux-calibrated units kept


def test_real_apstar_fixture():
    record = apogee.read_apstar(FIXTURE)
    assert record["id"] == "2M19485057+5005279"
    assert record["snr"] == pytest.approx(137.489, abs=1e-3)
    assert 0.01 < record["mask"].mean() < 0.1  # bits 0-7, 12 set on a few % of pixels


@pytest.mark.parametrize("key,value,match", [("CRVAL1", 4.2, "CRVAL1"), ("CDELT1", 1e-5, "CDELT1"),
                                             ("CTYPE1", "LINEAR", "CTYPE1")])
def test_apstar_wrong_grid_is_refused(tmp_path, key, value, match):
    path = write_apstar(tmp_path / "apStar-dr17-x.fits", *_apstar_arrays(), primary_overrides={key: value})
    with pytest.raises(ValueError, match=f"apStar-dr17-x.fits.*{match}"):
        apogee.read_apstar(path)


def test_bad_files_raise_valueerror_naming_the_file(tmp_path):
    good = write_apstar(tmp_path / "apStar-dr17-good.fits", *_apstar_arrays())
    truncated = tmp_path / "apStar-dr17-trunc.fits"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="apStar-dr17-trunc.fits.*truncated"):
        apogee.read_apstar(truncated)
    garbage = tmp_path / "apStar-dr17-garbage.fits"
    garbage.write_bytes(b"this is not FITS" * 200)
    with pytest.raises(ValueError, match="apStar-dr17-garbage.fits: not a readable FITS"):
        apogee.read_apstar(garbage)
    missing = write_apstar(tmp_path / "apStar-dr17-nohdu.fits", *_apstar_arrays(), drop_hdus=(3, 4, 5, 6, 7))
    with pytest.raises(ValueError, match="missing HDU 3"):
        apogee.read_apstar(missing)
    zero = write_apstar(tmp_path / "apStar-dr17-zero.fits", np.zeros(8575), np.zeros(8575), np.zeros(8575, int))
    with pytest.raises(ValueError, match="apStar-dr17-zero.fits: no usable pixel"):
        apogee.read_apstar(zero)


# ---------------------------------------------------------------- aspcapStar

def test_aspcapstar_observed_and_synthetic(tmp_path):
    flux, err, synthetic = aspcap_arrays()
    flux[CHIP[5]] = 1.5    # emission spike above the paper's 1.2 cap
    flux[CHIP[6]] = 0.0    # ASPCAP "no data"
    flux[CHIP[7]] = 0.01   # below the 0.05 floor
    path = write_aspcapstar(tmp_path / "aspcapStar-dr17-2M9.fits", flux, err, synthetic, row=_star_row("2M9"))
    observed = apogee.read_aspcapstar(path)
    assert observed["id"] == "2M9" and observed["snr"] == pytest.approx(300.0)
    assert observed["mask"][[5, 6, 7]].all() and np.isnan(observed["flux"][[5, 6, 7]]).all()
    assert observed["mask"].sum() == 3
    assert observed["TEFF"] == pytest.approx(4800.0) and observed["FE_H_ERR"] == pytest.approx(0.01)
    assert np.isnan(observed["O_FE_ERR"])  # -9999 = missing
    np.testing.assert_allclose(observed["flux_err"], 0.01, rtol=1e-6)
    synth = apogee.read_aspcapstar(path, which="synthetic")
    np.testing.assert_allclose(synth["flux"], grid.apstar_to_apogee(synthetic), rtol=1e-6)
    assert np.isnan(synth["flux_err"]).all() and not synth["mask"].any()
    unclipped = apogee.read_aspcapstar(path, flux_range=None)
    assert unclipped["flux"][5] == pytest.approx(1.5)


def test_aspcapstar_problems(tmp_path):
    flux, err, synthetic = aspcap_arrays()
    wrong = write_aspcapstar(tmp_path / "aspcapStar-dr17-w.fits", flux, err, synthetic, hdu1_overrides={"CRVAL1": 4.17})
    with pytest.raises(ValueError, match="aspcapStar-dr17-w.fits.*CRVAL1=4.17"):
        apogee.read_aspcapstar(wrong)
    zeros = write_aspcapstar(tmp_path / "aspcapStar-dr17-z.fits", 0 * flux, err, synthetic)
    with pytest.raises(ValueError, match="all zero"):
        apogee.read_aspcapstar(zeros)
    no_labels = apogee.read_aspcapstar(write_aspcapstar(tmp_path / "aspcapStar-dr17-2M7.fits", flux, err, synthetic))
    assert no_labels["id"] == "2M7" and np.isnan(no_labels["TEFF"])  # id from the file name


# ---------------------------------------------------------------- allStar and cuts

def test_read_allstar_native_and_paper_cuts(tmp_path):
    rows = [
        _star_row("A", snr=300),
        _star_row("B", snr=300, flag=1 << 23),                 # STAR_BAD
        _star_row("C", snr=300, flag=(1 << 23) - 1),           # only warnings: kept
        _star_row("D", snr=300, starflag=4),                   # STARFLAG != 0
        _star_row("E", snr=150),                               # low SNR
        _star_row("F", snr=300, vscatter=2.0),                 # VSCATTER
        _star_row("G", snr=250, field="F1"),                   # duplicate, lower SNR
        _star_row("G", snr=400, field="F2", tel="lco25m"),     # duplicate, kept
        _star_row("H", snr=300, flag=1 << 40),                 # other high bit, not STAR_BAD: kept
    ]
    table = apogee.read_allstar(write_allstar(tmp_path / "allStar.fits", rows))
    assert table["SNR"].dtype.isnative and table["ASPCAPFLAG"].dtype == np.dtype("int64")
    assert list(table["APOGEE_ID"]) == [r["APOGEE_ID"] for r in rows]
    keep, summary, why = apogee.paper_sample_cuts(table)
    assert list(np.asarray(table["APOGEE_ID"])[keep]) == ["A", "C", "G", "H"]
    assert table["FIELD"][keep][2] == "F2"
    assert list(summary.values()) == [9, 8, 7, 6, 5, 4]
    assert why[1] == "not STAR_BAD" and why[3] == "STARFLAG == 0" and why[4] == "SNR > 200"
    assert why[5] == "VSCATTER < 1" and why[6].startswith("duplicate")


def test_paths_from_target_id():
    assert apogee.relpath_from_target_id("lco25m.000-08.2M18194111-3224298") == \
        "lco25m/000-08/aspcapStar-dr17-2M18194111-3224298.fits"
    assert apogee.spectrum_relpath("apo25m", "K04_083+13", "2M19485057+5005279", "apStar") == \
        "apo25m/K04_083+13/apStar-dr17-2M19485057+5005279.fits"
    with pytest.raises(ValueError, match="TARGET_ID"):
        apogee.relpath_from_target_id("nodots")


# ---------------------------------------------------------------- folder build

def _make_folder(tmp_path, n_good=6):
    spectra = tmp_path / "spectra"
    rows = []
    for i in range(n_good):
        folder = spectra / "apo25m" / "F1"
        folder.mkdir(parents=True, exist_ok=True)
        flux, err, synthetic = aspcap_arrays(seed=i)
        write_aspcapstar(folder / f"aspcapStar-dr17-2M{i}.fits", flux, err, synthetic,
                         row=_star_row(f"2M{i}", teff=1.0))
        rows.append(_star_row(f"2M{i}", teff=4000.0 + i))
    # a second file of star 2M0 in another field (the catalogue row says F1 → the F1 file is used)
    dup = spectra / "lco25m" / "F9"
    dup.mkdir(parents=True)
    write_aspcapstar(dup / "aspcapStar-dr17-2M0.fits", *aspcap_arrays(seed=99), row=_star_row("2M0"))
    (spectra / "apo25m" / "F1" / "aspcapStar-dr17-2Mcorrupt.fits").write_bytes(b"garbage" * 100)
    rows.append(_star_row("2Mcorrupt"))
    flux, err, synthetic = aspcap_arrays()
    write_aspcapstar(spectra / "apo25m" / "F1" / "aspcapStar-dr17-2Mlow.fits", flux, err, synthetic)
    rows.append(_star_row("2Mlow", snr=50))  # removed by the paper's SNR cut
    write_aspcapstar(spectra / "apo25m" / "F1" / "aspcapStar-dr17-2Mnocat.fits", flux, err, synthetic)
    allstar = write_allstar(tmp_path / "allStar.fits", rows)
    return spectra, allstar


def test_build_apogee_dataset_with_cuts_report_and_reproducible_splits(tmp_path):
    spectra, allstar = _make_folder(tmp_path)
    ds = apogee.build_apogee_dataset(spectra, tmp_path / "out", allstar=allstar, paper_cuts=True, seed=3,
                                     progress=False)
    assert set(ds) == {"train", "validation", "test"}
    ids = sorted(i for split in ds.values() for i in split["id"])
    assert ids == [f"2M{i}" for i in range(6)]
    row = next(r for split in ds.values() for r in split if r["id"] == "2M4")
    assert row["TEFF"] == pytest.approx(4004.0)  # from allStar, not the file's HDU 4 (1.0)
    assert np.isnan(row["O_FE_ERR"]) and row["snr"] == pytest.approx(300.0)
    assert len(row["flux"]) == 7514 and np.allclose(get_wavelength(ds["train"]), grid.apogee_wavelength())
    assert get_metadata(ds)["cut_summary"]["input"] == 8
    report = json.loads((tmp_path / "out" / "bad_files.json").read_text())
    assert report["n_bad"] == 1 and "2Mcorrupt" in report["bad"][0]["path"]
    assert "not a readable FITS" in report["bad"][0]["reason"]
    reasons = {(Path(e["path"]).parent.name, e["id"]): e["reason"] for e in report["excluded"]}
    assert reasons[("F9", "2M0")].startswith("duplicate")
    assert reasons[("F1", "2Mlow")] == "paper cut: SNR > 200"
    assert reasons[("F1", "2Mnocat")] == "no allStar row for this APOGEE_ID"
    assert report["n_spectra_in_dataset"] == 6
    again = apogee.build_apogee_dataset(spectra, tmp_path / "out2", allstar=allstar, paper_cuts=True, seed=3,
                                        progress=False)
    assert {k: list(v["id"]) for k, v in again.items()} == {k: list(v["id"]) for k, v in ds.items()}
    with pytest.raises(FileExistsError):
        apogee.build_apogee_dataset(spectra, tmp_path / "out", allstar=allstar, progress=False)


def test_run_build_apogee_cli_without_catalogue_keeps_everything_readable(tmp_path, capsys):
    spectra, _ = _make_folder(tmp_path, n_good=2)
    args = argparse.Namespace(spectra_dir=str(spectra), allstar=None, kind="aspcap-synthetic",
                              out=str(tmp_path / "ds"), paper_cuts=False, seed=0, overwrite=False)
    assert apogee.run_build_apogee(args) == 0
    assert "1 bad" in capsys.readouterr().out
    from datasets import load_from_disk
    ds = load_from_disk(str(tmp_path / "ds"))
    assert sum(len(s) for s in ds.values()) == 4  # 2M0, 2M1, 2Mlow, 2Mnocat (corrupt skipped, dup listed)
    assert get_metadata(ds)["kind"] == "aspcap-synthetic"


def test_build_refuses_folder_without_usable_files(tmp_path):
    folder = tmp_path / "spectra"
    folder.mkdir()
    (folder / "aspcapStar-dr17-2Mx.fits").write_bytes(b"junk" * 100)
    with pytest.raises(ValueError, match="could be read"):
        apogee.build_apogee_dataset(folder, tmp_path / "out", progress=False)
    assert json.loads((tmp_path / "out.bad_files.json").read_text())["n_bad"] == 1
    assert not (tmp_path / "out").exists()
    # a same-named file the user wrote is never replaced: the report goes beside it
    (tmp_path / "mine.bad_files.json").write_text("my notes")
    with pytest.raises(ValueError, match=r"mine\.bad_files\.1\.json"):
        apogee.build_apogee_dataset(folder, tmp_path / "mine", progress=False)
    assert (tmp_path / "mine.bad_files.json").read_text() == "my notes"
    assert json.loads((tmp_path / "mine.bad_files.1.json").read_text())["n_bad"] == 1
    # the other kind of file is named, with the --kind that reads it
    with pytest.raises(ValueError, match=r"no apStar-\*.fits files.*holds 1 aspcapStar-\*.fits files: use --kind "
                                         r"aspcap-observed"):
        apogee.build_apogee_dataset(folder, tmp_path / "o", kind="apstar", progress=False)
    apstars, empty = tmp_path / "apstars", tmp_path / "empty"
    apstars.mkdir()
    empty.mkdir()
    write_apstar(apstars / "apStar-dr17-2M1+2.fits", *_apstar_arrays())
    with pytest.raises(ValueError, match=r"no aspcapStar-\*.fits files.*holds 1 apStar-\*.fits files: "
                                         r"use --kind apstar"):
        apogee.build_apogee_dataset(apstars, tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match=r"no apStar-\*.fits files under \S+ \(kind='apstar'\)$"):  # no hint
        apogee.build_apogee_dataset(empty, tmp_path / "o", kind="apstar", progress=False)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- paper array release

def _paper_folder(tmp_path, n_train=5, n_test=3):
    rng = np.random.default_rng(0)
    folder = tmp_path / "zenodo"
    folder.mkdir()
    np.savetxt(folder / "apogee_wavelength_sol.csv", grid.apogee_wavelength(), header="wavelength", delimiter=",")
    for split, n in (("train", n_train), ("test", n_test)):
        flux = rng.uniform(0.5, 1.0, (n, 7514)).astype(np.float32)
        flux[:, 100] = np.nan
        np.save(folder / f"synspec_{split}.npy", flux)
        np.save(folder / f"aspcap_spectra_{split}.npy", flux)
        labels = np.tile(np.arange(5, dtype=np.float32), (n, 1)) + np.arange(n)[:, None] * 10
        np.save(folder / f"labels_{split}.npy", labels)
        np.save(folder / f"label_errs_{split}.npy", labels / 100)
    return folder


def test_load_paper_arrays_label_order_and_mask(tmp_path):
    folder = _paper_folder(tmp_path)
    ds = apogee.load_paper_arrays(folder, tmp_path / "out", kind="observed", batch_size=2)
    assert {k: len(v) for k, v in ds.items()} == {"train": 5, "test": 3}
    row = ds["train"][1]
    for column, name in enumerate(PAPER_LABEL_ORDER):  # TEFF, LOGG, O_FE, MG_FE, FE_H
        assert row[name] == pytest.approx(10 + column)
        assert row[f"{name}_ERR"] == pytest.approx((10 + column) / 100)
    assert row["mask"][100] and not row["mask"][101] and row["id"] == "paper-train-1"
    expected = np.load(folder / "aspcap_spectra_train.npy")[1]
    np.testing.assert_allclose(np.asarray(row["flux"])[101:], expected[101:])


def test_load_paper_arrays_refuses_wrong_wavelengths_and_shapes(tmp_path):
    folder = _paper_folder(tmp_path)
    np.savetxt(folder / "apogee_wavelength_sol.csv", grid.apogee_wavelength() + 1.0)
    with pytest.raises(ValueError, match="max"):
        apogee.load_paper_arrays(folder, tmp_path / "out")
    np.savetxt(folder / "apogee_wavelength_sol.csv", grid.apogee_wavelength())
    np.save(folder / "labels_test.npy", np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"labels_test.npy: shape \(3, 4\)"):
        apogee.load_paper_arrays(folder, tmp_path / "out")


def test_build_from_apstar_files_uses_continuum_normalisation(tmp_path):
    folder = tmp_path / "stars" / "apo25m" / "K04_083+13"
    folder.mkdir(parents=True)
    (folder / FIXTURE.name).write_bytes(FIXTURE.read_bytes())
    write_apstar(folder / "apStar-dr17-2Mwronggrid.fits", *_apstar_arrays(), primary_overrides={"CDELT1": 1e-5})
    ds = apogee.build_apogee_dataset(tmp_path / "stars", tmp_path / "out", kind="apstar",
                                     splits={"train": 1.0}, progress=False)
    assert list(ds["train"]["id"]) == ["2M19485057+5005279"]
    assert 0.97 < np.nanmedian(np.asarray(ds["train"][0]["flux"], dtype=float)) < 1.0
    report = json.loads((tmp_path / "out" / "bad_files.json").read_text())
    assert report["n_bad"] == 1 and "CDELT1" in report["bad"][0]["reason"]
    assert get_metadata(ds)["bad_pixmask_bits"] == list(apogee.DEFAULT_BAD_PIXMASK_BITS)
