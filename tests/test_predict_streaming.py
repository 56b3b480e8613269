"""Catalogue-scale prediction (issue 11): streamed inputs, output formats with ids and units, input
columns, resuming, several processes, bf16, and one-line errors that leave no partial output."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from astropy.table import Table
from conftest import toy_spectra

from spectrafm_hf.cli import main
from spectrafm_hf.data import tables
from spectrafm_hf.data.sources import ArraySource, open_source
from spectrafm_hf.predict import CatalogueOptions, predict_catalogue, predict_labels
from spectrafm_hf.predict import catalogue as catalogue_module
from spectrafm_hf.predict import core as core_module
from spectrafm_hf.predict.inputs import choose_columns
from spectrafm_hf.predict.shards import WorkFolder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures.dr17_layouts import aspcap_arrays, write_aspcapstar  # noqa: E402


@pytest.fixture
def stars():
    return toy_spectra(12, seed=3)


@pytest.fixture
def npz(stars, tmp_path):
    path = tmp_path / "stars.npz"
    np.savez(path, wavelength=stars["wavelength"], flux=stars["flux"], id=np.array([f"2M{i:03d}" for i in range(12)]),
             RA=np.arange(12) * 10.0)
    return path


def run(capsys, *argv):
    """(exit code, lines on stderr starting with 'spectrafm ')."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, [line for line in err.splitlines() if line.startswith("spectrafm ")]


def predict_argv(model, spectra, out, *extra):
    return ["predict", "--model", model, "--input", spectra, "--request", "FE_H", "--request", "TEFF",
            "--output", out, "--device", "cpu", "--no-progress", *extra]


def read_back(path: Path) -> Table:
    return Table.read(path, format="ascii.csv") if path.suffix == ".csv" else Table.read(path)


# ---- output formats ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".ecsv", ".fits"])
def test_ids_values_and_units_round_trip_through_every_format(checkpoint, npz, stars, tmp_path, capsys, suffix):
    out = tmp_path / f"pred{suffix}"
    rc, lines = run(capsys, *predict_argv(checkpoint, npz, out, "--keep", "RA", "--shard-size", "5"))
    assert rc == 0 and lines == [], lines
    table = read_back(out)
    assert table.colnames == ["id", "FE_H", "FE_H_err", "TEFF", "TEFF_err", "flags", "RA"]
    assert [str(v) for v in table["id"]] == [f"2M{i:03d}" for i in range(12)]
    np.testing.assert_allclose(np.asarray(table["RA"], float), np.arange(12) * 10.0)
    from spectrafm_hf.predict import load_model

    model, fe = load_model(checkpoint, device="cpu")
    expected = predict_labels(model, fe, stars["wavelength"], stars["flux"], request=["FE_H", "TEFF"],
                              batch_size=8, progress=False)
    np.testing.assert_allclose(np.asarray(table["TEFF"], float), expected.values["TEFF"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(table["FE_H_err"], float), expected.errors["FE_H"], rtol=1e-6)
    if suffix == ".parquet":
        schema = pq.read_schema(out)
        assert schema.field("TEFF").metadata[b"unit"] == b"K" and schema.field("FE_H_err").metadata[b"unit"] == b"dex"
    elif suffix != ".csv":  # CSV has no place for units
        assert str(table["TEFF"].unit) == "K" and str(table["TEFF_err"].unit) == "K"
        assert str(table["FE_H"].unit) == "dex"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", "stars.npz", out.name])  # no leftovers


def test_label_predictions_to_table_and_to_pandas(tiny_model, feature_extractor, toy):
    result = predict_labels(tiny_model, feature_extractor, toy["wavelength"], toy["flux"][:3], request=["TEFF"],
                            progress=False, ids=["a", "b", "c"])
    table = result.to_table()
    assert table.colnames == ["id", "TEFF", "TEFF_err", "flags"] and list(table["id"]) == ["a", "b", "c"]
    assert str(table["TEFF"].unit) == "K" and "effective temperature" in table["TEFF"].description
    frame = result.to_pandas()
    assert list(frame["id"]) == ["a", "b", "c"] and frame.attrs["units"] == {"TEFF": "K", "TEFF_err": "K"}
    np.testing.assert_array_equal(frame["TEFF"].to_numpy(), result.values["TEFF"])
    with pytest.raises(ValueError, match="one id per spectrum"):
        predict_labels(tiny_model, feature_extractor, toy["wavelength"], toy["flux"][:3], progress=False, ids=["a"])


# ---- bad inputs: one line, no partial output ------------------------------------------------------


def _nothing_written(folder: Path, before: set) -> bool:
    return {p.name for p in folder.iterdir()} == before


@pytest.mark.parametrize("case, words", [
    ("extension", "unsupported extension '.txt'; supported: .parquet (recommended), .csv, .ecsv, .fits"),
    ("keep", "--keep DEC: "),
    ("split", "--split 'test' applies to dataset folders only"),
    ("inputs", "--inputs RA: the model has no named input 'RA'"),
])
def test_bad_options_are_one_line_errors_without_output(checkpoint, npz, tmp_path, capsys, case, words):
    out = tmp_path / ("pred.txt" if case == "extension" else "pred.parquet")
    extra = {"extension": [], "keep": ["--keep", "DEC"], "split": ["--split", "test"], "inputs": ["--inputs", "RA"]}
    before = {p.name for p in tmp_path.iterdir()}
    rc, lines = run(capsys, *predict_argv(checkpoint, npz, out, *extra[case]))
    assert rc == 2 and len(lines) == 1 and words in lines[0], lines
    assert _nothing_written(tmp_path, before)


def test_a_dataset_folder_with_labels_and_truths_predicts_and_says_what_it_ignores(checkpoint, stars, tmp_path,
                                                                                   capsys):
    """Before issue 11 a saved dataset failed: "unknown label or named input 'VMICRO'"."""
    n = len(stars["flux"])
    pq.write_table(pa.table({"wavelength": [stars["wavelength"].tolist()] * n,
                             "flux": [row.tolist() for row in stars["flux"]],
                             "id": [f"s{i}" for i in range(n)], "TEFF": stars["labels"]["TEFF"],
                             "FE_H": stars["labels"]["FE_H"], "VMICRO": np.ones(n),
                             "TRUE_FE_H": stars["labels"]["FE_H"]}), tmp_path / "t.parquet")
    tables.load_table(tmp_path / "t.parquet", out_dir=tmp_path / "ds", split="test")
    out = tmp_path / "pred.parquet"
    rc, lines = run(capsys, *predict_argv(checkpoint, tmp_path / "ds", out, "--split", "test", "--keep", "FE_H"))
    assert rc == 0 and len(lines) == 1, lines
    assert lines[0].startswith("spectrafm predict: model inputs besides the spectrum: none; columns not read by "
                               "the model: TEFF,") and "VMICRO" in lines[0] and "TRUE_FE_H" in lines[0]
    table = pq.read_table(out).to_pandas()
    assert list(table["id"]) == [f"s{i}" for i in range(n)]
    np.testing.assert_allclose(table["FE_H_input"], stars["labels"]["FE_H"], rtol=1e-6)  # kept, renamed
    rc, lines = run(capsys, *predict_argv(checkpoint, tmp_path / "ds", tmp_path / "x.csv", "--split", "train"))
    assert rc == 2 and "no split 'train'" in lines[-1] and not (tmp_path / "x.csv").exists()


def test_label_and_truth_columns_are_never_inputs_unless_asked():
    columns = {"TEFF": "f", "TEFF_ERR": "f", "TRUE_LOGG": "f", "VMICRO": "f", "H_MAG": "f", "RA": "f", "NAME": "O"}
    vocabulary = ["TEFF", "LOGG", "FE_H", "TRUE_LOGG", "H_MAG"]
    choice = choose_columns(columns, vocabulary, ["FE_H"], ["id", "FE_H", "FE_H_err", "flags"], keep=["RA", "NAME"])
    assert choice.inputs == ["H_MAG"] and choice.keep == {"RA": "RA", "NAME": "NAME"}
    assert choice.ignored == ["TEFF", "TEFF_ERR", "TRUE_LOGG", "VMICRO"] and "H_MAG" in choice.note()
    assert choose_columns(columns, vocabulary, ["FE_H"], [], inputs=["TEFF"]).inputs == ["TEFF"]
    for inputs, words in ((["LOGG"], "has no column 'LOGG'"), (["VMICRO"], "no named input 'VMICRO'"),
                          (["TEFF"], "is requested")):
        with pytest.raises(ValueError, match=words):
            choose_columns(columns, vocabulary, ["TEFF"], [], inputs=inputs)


# ---- streaming sources ----------------------------------------------------------------------------


class CountingSource(ArraySource):
    """An in-memory source that records every block pulled from it."""

    def __init__(self, path, spectra):
        super().__init__(path, spectra)
        self.blocks = []

    def read(self, start, stop, columns=()):
        self.blocks.append((start, stop))
        return super().read(start, stop, columns)


def test_the_reader_never_pulls_more_than_one_block(tiny_model, feature_extractor, tmp_path):
    from spectrafm_hf.data.spectra_input import SpectraInput

    many = toy_spectra(50, seed=4)
    source = CountingSource(tmp_path / "in.npz", SpectraInput(wavelength=many["wavelength"], flux=many["flux"]))
    options = CatalogueOptions(request=["FE_H"], shard_size=20, read_size=8, progress=False)
    result = predict_catalogue(tiny_model, feature_extractor, source, tmp_path / "out.parquet", options,
                               log=lambda line: None)
    assert result.n_rows == 50
    assert max(stop - start for start, stop in source.blocks) <= 8
    covered = sorted(source.blocks)
    assert covered[0][0] == 0 and covered[-1][1] == 50 and sum(b - a for a, b in covered) == 50
    assert list(pq.read_table(tmp_path / "out.parquet")["id"].to_pylist()) == [f"in-{i}" for i in range(50)]


def test_parquet_and_dataset_blocks_across_row_groups_and_splits_equal_a_whole_read(stars, tmp_path):
    n = len(stars["flux"])
    pq.write_table(pa.table({"wavelength": [stars["wavelength"].tolist()] * n,
                             "flux": [row.tolist() for row in stars["flux"]], "RA": np.arange(n) * 1.0}),
                   tmp_path / "t.parquet", row_group_size=5)
    source = open_source(tmp_path / "t.parquet")
    assert len(source) == n and source.columns == {"RA": "f"}
    block = source.read(3, 11, ["RA"])  # spans three row groups
    np.testing.assert_allclose(block.flux, stars["flux"][3:11], rtol=1e-6)
    assert block.scalars["RA"].tolist() == list(range(3, 11)) and list(block.ids) == [f"t-{i}" for i in range(3, 11)]
    for start, stop in ((11, 12), (0, 2), (2, 9)):  # continuing the stream, going back, one row at a group end
        np.testing.assert_allclose(source.read(start, stop).flux, stars["flux"][start:stop], rtol=1e-6)
    dataset = tables.load_table(tmp_path / "t.parquet")  # in memory: write two splits to disk
    from datasets import DatasetDict

    DatasetDict({"a": dataset["train"].select(range(4)), "b": dataset["train"].select(range(4, n))}).save_to_disk(
        tmp_path / "ds")
    folder = open_source(tmp_path / "ds")
    block = folder.read(2, 7, ["RA"])  # spans the two splits
    np.testing.assert_allclose(block.flux, stars["flux"][2:7], rtol=1e-6)
    assert block.scalars["RA"].tolist() == [2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match=r"no split 'test'; it has \['a', 'b'\]"):
        open_source(tmp_path / "ds", split="test")


def _aspcap_folder(folder: Path, n: int) -> list[str]:
    folder.mkdir()
    ids = []
    for i in range(n):
        flux, err, synthetic = aspcap_arrays(seed=i)
        ids.append(f"2M0000000{i}+0000000")
        write_aspcapstar(folder / f"aspcapStar-dr17-{ids[-1]}.fits", flux, err, synthetic,
                         row={"APOGEE_ID": ids[-1], "TEFF": 4500.0 + i})
    return ids


def test_an_unreadable_file_in_a_folder_is_skipped_with_one_warning(checkpoint, tmp_path, capsys):
    config = json.loads((checkpoint / "preprocessor_config.json").read_text())
    config["training_window_A"] = [15200.0, 15250.0]  # read ~90 of the 7514 pixels: fast
    (checkpoint / "preprocessor_config.json").write_text(json.dumps(config))
    ids = _aspcap_folder(tmp_path / "spectra", 3)
    (tmp_path / "spectra" / "aspcapStar-dr17-2M_broken.fits").write_bytes(b"SIMPLE  = T" + b" " * 3000)
    out = tmp_path / "pred.csv"
    rc, lines = run(capsys, *predict_argv(checkpoint, tmp_path / "spectra", out, "--keep", "TEFF"))
    assert rc == 0
    warnings = [line for line in lines if "warning" in line]
    assert len(warnings) == 1 and "1 of 4 input files could not be read and were skipped" in warnings[0]
    assert "aspcapStar-dr17-2M_broken.fits" in warnings[0]
    table = read_back(out)
    assert [str(v) for v in table["id"]] == ids and list(table["TEFF_input"]) == [4500.0, 4501.0, 4502.0]
    assert np.isfinite(np.asarray(table["FE_H"], float)).all()
    # the same files through a glob pattern; every file unreadable is an error, nothing written
    for path in (tmp_path / "spectra").glob("aspcapStar-dr17-2M0*"):
        path.write_bytes(b"broken")
    rc, lines = run(capsys, *predict_argv(checkpoint, tmp_path / "spectra" / "*.fits", tmp_path / "none.csv"))
    assert rc == 2 and "no spectrum could be read (4 of 4 input files" in lines[-1]
    assert not (tmp_path / "none.csv").exists() and not (tmp_path / "none.csv.parts").exists()


# ---- resuming -------------------------------------------------------------------------------------


def test_an_interrupted_run_resumes_to_the_same_output(checkpoint, npz, tmp_path, capsys, monkeypatch):
    whole = tmp_path / "whole.parquet"
    assert run(capsys, *predict_argv(checkpoint, npz, whole, "--shard-size", "3"))[0] == 0
    out = tmp_path / "resumed.parquet"
    real_write = WorkFolder.write_shard
    written = []

    def interrupted_write(self, index, columns, skipped):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(index)
        real_write(self, index, columns, skipped)

    monkeypatch.setattr(WorkFolder, "write_shard", interrupted_write)
    assert run(capsys, *predict_argv(checkpoint, npz, out, "--shard-size", "3"))[0] == 130
    parts = WorkFolder(out).path
    assert not out.exists() and sorted(p.name for p in parts.glob("shard-*")) == ["shard-000000.parquet",
                                                                                 "shard-000001.parquet"]
    monkeypatch.setattr(WorkFolder, "write_shard", real_write)
    calls = []
    real_predict = catalogue_module.predict_labels
    monkeypatch.setattr(catalogue_module, "predict_labels", lambda *a, **k: calls.append(1) or real_predict(*a, **k))
    rc, lines = run(capsys, *predict_argv(checkpoint, npz, out, "--shard-size", "3"))
    assert rc == 0 and lines[-1] == f"spectrafm predict: resuming: 2 finished shards found in {parts}"
    assert len(calls) == 2  # only the two missing shards (one block each) were predicted
    assert pq.read_table(out).equals(pq.read_table(whole)) and not parts.exists()
    assert out.read_bytes() == whole.read_bytes()


def test_shards_of_another_run_are_discarded_not_reused(checkpoint, npz, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pred.parquet"
    monkeypatch.setattr(WorkFolder, "write_shard", _raise_after_one(WorkFolder.write_shard))
    assert run(capsys, *predict_argv(checkpoint, npz, out, "--shard-size", "4"))[0] == 130
    monkeypatch.undo()
    rc, lines = run(capsys, *predict_argv(checkpoint, npz, out, "--shard-size", "4", "--batch-size", "2"))
    assert rc == 0 and "discarded 1 finished shards" in lines[-1] and "another model, input or options" in lines[-1]
    fresh = tmp_path / "fresh.parquet"
    assert run(capsys, *predict_argv(checkpoint, npz, fresh, "--shard-size", "4", "--batch-size", "2"))[0] == 0
    assert pq.read_table(out).equals(pq.read_table(fresh))


def _raise_after_one(real_write):
    count = []

    def write(self, index, columns, skipped):
        if count:
            raise KeyboardInterrupt
        count.append(index)
        real_write(self, index, columns, skipped)

    return write


# ---- bf16 -----------------------------------------------------------------------------------------


#: Largest |bf16 − fp32| shift allowed, in units of the predicted σ (issue 11's target).
BF16_TOLERANCE_SIGMA = 0.1


@pytest.mark.skipif(not core_module.bf16_support(torch.device("cpu"))[0],
                    reason="this CPU has no bf16 support")
def test_bf16_predictions_stay_within_a_tenth_of_sigma(checkpoint, tmp_path):
    from spectrafm_hf.predict import load_model

    model, fe = load_model(checkpoint, device="cpu")
    stars = toy_spectra(64, seed=11)
    shifts = {}
    for context in ("all", 40):
        fp32 = predict_labels(model, fe, stars["wavelength"], stars["flux"], request=["FE_H", "TEFF"],
                              context=context, progress=False)
        bf16 = predict_labels(model, fe, stars["wavelength"], stars["flux"], request=["FE_H", "TEFF"],
                              context=context, progress=False, dtype="bfloat16")
        for name in ("FE_H", "TEFF"):
            shifts[(context, name)] = np.max(np.abs(bf16.values[name] - fp32.values[name]) / fp32.errors[name])
            assert not np.array_equal(bf16.values[name], fp32.values[name])  # bf16 really ran
    assert max(shifts.values()) <= BF16_TOLERANCE_SIGMA, shifts


def test_bf16_without_hardware_support_is_a_clear_error(checkpoint, npz, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(core_module, "bf16_support", lambda device: (False, "this CPU has no bf16 instructions"))
    rc, lines = run(capsys, *predict_argv(checkpoint, npz, tmp_path / "out.parquet", "--dtype", "bfloat16"))
    assert rc == 2 and lines == ["spectrafm predict: error: --dtype bfloat16 is not supported here: this CPU has no "
                                 "bf16 instructions; use --dtype float32"]
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.parquet.parts").exists()


# ---- several processes ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists(),
                    reason="the accelerate CLI is not installed")
def test_two_processes_give_the_same_output_as_one(checkpoint, tmp_path):
    many = toy_spectra(40, seed=8)
    spectra = tmp_path / "many.npz"
    np.savez(spectra, wavelength=many["wavelength"], flux=many["flux"], id=np.array([f"s{i}" for i in range(40)]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "true"}
    arguments = ["predict", "--model", str(checkpoint), "--input", str(spectra), "--request", "FE_H",
                 "--request", "TEFF", "--shard-size", "6", "--batch-size", "4", "--no-progress"]
    one = subprocess.run([sys.executable, "-m", "spectrafm_hf.cli", *arguments, "--output",
                          str(tmp_path / "one.parquet")], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    # as in test_training_multiprocess: torchrun's launcher (--multi_gpu) + ACCELERATE_USE_CPU = 2 gloo processes
    two = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                          "-m", "spectrafm_hf.cli", *arguments, "--output", str(tmp_path / "two.parquet")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "7 shards on 2 processes" in two.stderr
    assert two.stdout.count("wrote 40 predictions") == 1  # the main process merged, once
    first, second = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "two.parquet")
    assert second["id"].to_pylist() == [f"s{i}" for i in range(40)]
    assert first.equals(second)
    assert not (tmp_path / "two.parquet.parts").exists()
