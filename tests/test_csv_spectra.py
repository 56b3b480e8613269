"""CSV spectra (long: a row per pixel; wide: a column per pixel) read as the same stars as an npz, and
fine-tuned on / predicted from with the same results; malformed CSV refused in one line naming the fix."""

import gzip
import json

import numpy as np
import pytest
import torch
from _training_toys import tiny_stage2, toy_data

from spectrafm_hf.cli import main
from spectrafm_hf.data.readers import read_spectra

FE_WINDOW_A = ("16105.8", "16220")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_long_csv(path, data, ids, shuffle_seed=None):
    """Stars as a long CSV: one row per pixel, FE_H / FE_H_ERR / TEFF repeated on each of a star's rows.
    ``shuffle_seed`` writes the rows in a random order (a reader must regroup and sort them)."""
    n, p = data.flux.shape
    star = np.repeat(np.arange(n), p)
    pixel = np.tile(np.arange(p), n)
    order = np.random.default_rng(shuffle_seed).permutation(n * p) if shuffle_seed is not None else np.arange(n * p)
    lines = ["# written by tests/test_csv_spectra.py", "id,wavelength,flux,flux_err,mask,FE_H,FE_H_ERR,TEFF"]
    for s, k in zip(star[order], pixel[order]):
        values = (data.wavelength[k], data.flux[s, k], data.flux_err[s, k], data.labels["FE_H"][s],
                  data.label_errors["FE_H"][s], data.labels["TEFF"][s])
        wavelength, flux, flux_err, feh, feh_err, teff = (repr(float(v)) for v in values)  # exact round trip
        lines.append(f"{ids[s]},{wavelength},{flux},{flux_err},{int(data.mask[s, k])},{feh},{feh_err},{teff}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _npz(path, data, ids):
    np.savez(path, wavelength=data.wavelength, flux=data.flux, flux_err=data.flux_err, mask=data.mask,
             id=np.asarray(ids), FE_H=data.labels["FE_H"], FE_H_ERR=data.label_errors["FE_H"],
             TEFF=data.labels["TEFF"])
    return str(path)


def test_long_csv_in_any_row_order_reads_as_the_npz_of_the_same_stars(tmp_path):
    data = toy_data(3, 0)
    ids = ["2M-b", "2M-a", "2M-c"]
    spectra = read_spectra(_write_long_csv(tmp_path / "long.csv", data, ids, shuffle_seed=1))
    # stars keep the order in which they first appear in the file, not sorted order
    rows = (tmp_path / "long.csv").read_text().splitlines()[2:]
    first_seen = list(dict.fromkeys(line.split(",")[0] for line in rows))
    reference = read_spectra(_npz(tmp_path / "same.npz", data, ids))
    order = [ids.index(star) for star in first_seen]
    assert list(spectra.ids) == first_seen
    np.testing.assert_array_equal(spectra.wavelength, reference.wavelength)  # one shared grid, kept once
    np.testing.assert_array_equal(spectra.flux, reference.flux[order])      # NaN at masked pixels included
    np.testing.assert_array_equal(spectra.flux_err, reference.flux_err[order])
    np.testing.assert_array_equal(spectra.mask, reference.mask[order])
    for name in ("FE_H", "FE_H_ERR", "TEFF"):
        np.testing.assert_array_equal(spectra.scalars[name], reference.scalars[name][order])

    gz = tmp_path / "long.csv.gz"
    gz.write_bytes(gzip.compress((tmp_path / "long.csv").read_bytes()))
    np.testing.assert_array_equal(read_spectra(gz).flux, spectra.flux)


def test_wide_csv_takes_its_grid_from_the_header_and_a_file_without_ids_is_one_star(tmp_path):
    (tmp_path / "wide.csv").write_text("APOGEE_ID,FE_H,15100.5,15100.25,15101.0\n"
                                       "2M01,-0.2,0.91,0.92,0.93\n2M02,,0.81,0.82,\n")
    wide = read_spectra(tmp_path / "wide.csv")
    np.testing.assert_array_equal(wide.wavelength, [15100.25, 15100.5, 15101.0])  # header sorted into a grid
    np.testing.assert_array_equal(wide.flux, [[0.92, 0.91, 0.93], [0.82, 0.81, np.nan]])
    assert list(wide.ids) == ["2M01", "2M02"]
    np.testing.assert_array_equal(wide.scalars["FE_H"], [-0.2, np.nan])

    (tmp_path / "one_star.csv").write_text("Wavelength,Flux\n15101.0,0.7\n15100.0,0.9\n")
    one = read_spectra(tmp_path / "one_star.csv")
    np.testing.assert_array_equal(one.wavelength, [15100.0, 15101.0])
    np.testing.assert_array_equal(one.flux, [[0.9, 0.7]])
    assert one.ids is None  # predict names it <file stem>-0, as for an npz without ids


@pytest.mark.parametrize("text, message", [
    ("id,wavelength,flux,FE_H\na,15100,1,0.1\na,15101,1,0.2\n",
     "column 'FE_H' changes between the pixel rows of star 'a'"),
    ("id,wavelength,flux\na,15100,1\na,15101,1\nb,15100,1\n", "different numbers of pixel rows ('a': 2, 'b': 1)"),
    ("wavelength,flux\n15100,1\n15100,1\n", "wavelength 15100 on two rows"),
    ("ra,dec\n1,2\n", "neither CSV layout of spectra"),
    ("id,flux\na,1\n", "no 'wavelength' column"),
    ("id,wavelength,flux\n", "no rows"),
    ("wavelength,flux,note\n15100,1,hi\n15101,1,hi\n", "column 'note'"),
    ("id,wavelength,flux\n,15100,1\n", "data row 1 has an empty 'id'"),
    ("wavelength,flux\n15100,bright\n15101,1\n", "'flux' has dtype"),
])
def test_malformed_csv_is_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=None) as caught:
        read_spectra(path)
    assert message in str(caught.value) and "\n" not in str(caught.value) and str(path) in str(caught.value)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny 'stage 2' on the whole APOGEE grid (two steps on toy spectra)."""
    return tiny_stage2(tmp_path_factory.mktemp("base") / "stage2")


def test_finetune_and_predict_on_csv_equal_the_same_stars_as_npz(base, tmp_path):
    """``spectrafm finetune --train x.csv`` trains the same weights as on the npz of the same stars, and
    ``spectrafm predict --input x.csv`` writes the same predictions."""
    train, validation = toy_data(12, 2, (-1.0, 0.4)), toy_data(6, 3, (-1.0, 0.4))
    train_ids, validation_ids = [f"t{i}" for i in range(12)], [f"v{i}" for i in range(6)]
    results = {}
    for kind in ("npz", "csv"):
        write = _npz if kind == "npz" else _write_long_csv
        out = tmp_path / f"finetuned-{kind}"
        assert main(["finetune", "--model", str(base), "--labels", "FE_H", "--window", *FE_WINDOW_A,
                     "--train", write(tmp_path / f"train.{kind}", train, train_ids),
                     "--validation", write(tmp_path / f"validation.{kind}", validation, validation_ids),
                     "--max-steps", "4", "--eval-every", "2", "--batch-size", "4", "--no-progress",
                     "--out", str(out)]) == 0
        assert main(["predict", "--model", str(out), "--input", str(tmp_path / f"validation.{kind}"),
                     "--request", "FE_H", "--output", str(tmp_path / f"pred-{kind}.csv")]) == 0
        results[kind] = out
    from safetensors.torch import load_file

    weights = [load_file(results[kind] / "model.safetensors") for kind in ("npz", "csv")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    assert json.loads((results["npz"] / "finetune.json").read_text())["n_train"] == 12
    assert (tmp_path / "pred-npz.csv").read_text() == (tmp_path / "pred-csv.csv").read_text()
