"""``spectrafm predict`` on datasets that left this machine (issue 14): a Parquet file written by
``hub_layout.write_parquet`` (grid in its schema metadata, no ``wavelength`` column), the same after a
``load_dataset("parquet")`` round trip, a ``Dataset.to_parquet`` file that lost the grid (a one-line
error naming the fix), and a folder in the Hub dataset repo layout (``export_hub_dataset``, ``--split``)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import toy_spectra

from spectrafm_hf.cli import main
from spectrafm_hf.data import hub_layout, schema
from spectrafm_hf.data.readers import read_spectra
from spectrafm_hf.data.sources import HubFolderSource, ParquetSource, open_source


@pytest.fixture
def saved(tmp_path):
    """Toy spectra on the fixture model's grid saved by write_dataset: train 9 stars, test 5, an empty
    validation split; labels, a nuisance scalar (VMICRO) and a simulation truth (TRUE_FE_H)."""
    toy = toy_spectra(14, seed=3)

    def batches(rows):
        def make():
            yield {"id": np.array([f"s{i}" for i in rows]), "flux": toy["flux"][rows],
                   "flux_err": toy["flux_err"][rows], "FE_H": toy["labels"]["FE_H"][rows],
                   "TEFF": toy["labels"]["TEFF"][rows], "VMICRO": np.full(len(rows), 1.5),
                   "TRUE_FE_H": toy["labels"]["FE_H"][rows] + 0.01}
        return make

    folder = tmp_path / "saved"
    dataset = schema.write_dataset(folder, {"train": batches(np.arange(9)), "test": batches(np.arange(9, 14)),
                                            "validation": lambda: iter(())},
                                   toy["wavelength"], {"source": "table", "path": "toy"},
                                   extra_scalars=("VMICRO", "TRUE_FE_H"))
    return folder, dataset, toy


def predict(capsys, model, spectra, out, *extra):
    """(exit code, 'spectrafm ...' lines on stderr, output table as a dict of numpy arrays or None)."""
    capsys.readouterr()
    rc = main([str(a) for a in ("predict", "--model", model, "--input", spectra, "--request", "FE_H",
                                "--request", "TEFF", "--output", out, "--device", "cpu", "--no-progress", *extra)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("spectrafm ")]
    table = pq.read_table(out).to_pydict() if rc == 0 else None
    return rc, lines, None if table is None else {k: np.asarray(v) for k, v in table.items()}


def assert_same_predictions(got: dict, expected: dict) -> None:
    assert got["id"].tolist() == expected["id"].tolist()
    for column in ("FE_H", "FE_H_err", "TEFF", "TEFF_err", "flags"):
        np.testing.assert_array_equal(got[column], expected[column], err_msg=column)


def test_a_write_parquet_file_predicts_like_its_dataset_folder(saved, checkpoint, tmp_path, capsys):
    folder, dataset, toy = saved
    rc, _, expected = predict(capsys, checkpoint, folder, tmp_path / "folder.parquet", "--split", "test")
    assert rc == 0 and len(expected["id"]) == 5
    path = hub_layout.write_parquet(dataset["test"], tmp_path / "test.parquet")
    assert "wavelength" not in pq.read_schema(path).names  # the grid is in the footer only

    rc, lines, got = predict(capsys, checkpoint, path, tmp_path / "pred.parquet", "--keep", "FE_H")
    assert rc == 0, lines
    assert_same_predictions(got, expected)
    np.testing.assert_allclose(got["FE_H_input"], toy["labels"]["FE_H"][9:], rtol=1e-6)  # kept, renamed
    # labels and truths are answers, never inputs, exactly as for the dataset folder
    assert len(lines) == 1 and "model inputs besides the spectrum: none" in lines[0], lines
    assert all(name in lines[0] for name in ("TEFF", "FE_H_ERR", "snr", "TRUE_FE_H"))

    source = open_source(path)
    assert isinstance(source, ParquetSource) and source.columns["TRUE_FE_H"] == "f"
    block = source.read(1, 4, ["VMICRO"])
    np.testing.assert_array_equal(block.wavelength, toy["wavelength"])
    np.testing.assert_array_equal(block.flux, toy["flux"][10:13])
    assert block.ids.tolist() == ["s10", "s11", "s12"] and block.scalars["VMICRO"].tolist() == [1.5] * 3

    whole = read_spectra(path)  # the in-memory reader follows the dataset-folder rule too
    from_folder = read_spectra(folder, split="test")
    np.testing.assert_array_equal(whole.wavelength, toy["wavelength"])
    assert set(whole.scalars) == set(from_folder.scalars) == {"VMICRO"}
    assert set(whole.reference) == set(from_folder.reference) >= {"FE_H", "TEFF_ERR", "snr", "TRUE_FE_H"}
    np.testing.assert_allclose(whole.reference["TRUE_FE_H"], from_folder.reference["TRUE_FE_H"])


def test_write_parquet_through_load_dataset_and_back_still_predicts(saved, checkpoint, tmp_path, capsys):
    """save_to_disk → write_parquet → load_dataset("parquet") (load_spectra_dataset) → write_parquet → predict."""
    folder, dataset, _ = saved
    rc, _, expected = predict(capsys, checkpoint, folder, tmp_path / "folder.parquet", "--split", "test")
    first = hub_layout.write_parquet(dataset["test"], tmp_path / "first.parquet")
    loaded = hub_layout.load_spectra_dataset(first, split="train", cache_dir=str(tmp_path / "cache"))
    again = hub_layout.write_parquet(loaded, tmp_path / "again.parquet")
    rc, lines, got = predict(capsys, checkpoint, again, tmp_path / "pred.parquet")
    assert rc == 0, lines
    assert_same_predictions(got, expected)


def test_a_to_parquet_file_without_the_grid_is_a_one_line_error_naming_the_fix(saved, checkpoint, tmp_path, capsys):
    _, dataset, _ = saved
    path = tmp_path / "hf.parquet"
    dataset["test"].to_parquet(str(path))  # datasets' own writer: no grid in the file
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, lines, _ = predict(capsys, checkpoint, path, tmp_path / "pred.parquet")
    assert rc == 2 and len(lines) == 1, lines
    for words in (str(path), "no wavelength grid", "Dataset.to_parquet", "hub_layout.write_parquet",
                  "export_hub_dataset", "add a 'wavelength' column"):
        assert words in lines[0], (words, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    with pytest.raises(ValueError, match="no wavelength grid"):
        read_spectra(path)


def test_a_hub_layout_folder_predicts_like_the_dataset_folder(saved, checkpoint, tmp_path, capsys):
    folder, _, _ = saved
    hub = hub_layout.export_hub_dataset(folder, tmp_path / "hub", max_shard_bytes=1)  # one shard per star
    assert len(list((hub / "data").glob("test-*.parquet"))) == 5
    # blocks of 2 rows span shard boundaries; shards are read in order (the same --shard-size on both
    # sides: batches of other sizes round differently in the last bits)
    rc, _, expected = predict(capsys, checkpoint, folder, tmp_path / "folder.parquet", "--split", "test",
                              "--shard-size", "2")
    rc, lines, got = predict(capsys, checkpoint, hub, tmp_path / "hub.parquet", "--split", "test",
                             "--shard-size", "2")
    assert rc == 0 and len(lines) == 1 and "model inputs besides the spectrum: none;" in lines[0], lines
    assert_same_predictions(got, expected)

    # every split: in the card's order (train, test), as the save_to_disk folder stores them
    rc, _, all_folder = predict(capsys, checkpoint, folder, tmp_path / "all-folder.parquet")
    rc, _, all_hub = predict(capsys, checkpoint, hub, tmp_path / "all-hub.parquet")
    assert rc == 0 and all_hub["id"].tolist() == [f"s{i}" for i in range(14)]
    assert_same_predictions(all_hub, all_folder)

    rc, lines, _ = predict(capsys, checkpoint, hub, tmp_path / "x.parquet", "--split", "validation")
    assert rc == 2 and len(lines) == 1 and "no split 'validation'; it has ['test', 'train']" in lines[0], lines
    assert not (tmp_path / "x.parquet").exists()

    whole = read_spectra(hub, split="test")  # the in-memory reader agrees
    from_folder = read_spectra(folder, split="test")
    np.testing.assert_array_equal(whole.flux, from_folder.flux)
    assert whole.ids.tolist() == from_folder.ids.tolist() and set(whole.reference) == set(from_folder.reference)


def test_hub_shards_rewritten_without_metadata_take_the_folder_grid(saved, tmp_path):
    """A Hub folder whose shards lost their schema metadata (rewritten by datasets) still has wavelength.json."""
    folder, dataset, toy = saved
    hub = hub_layout.export_hub_dataset(folder, tmp_path / "hub")
    for shard in (hub / "data").glob("*.parquet"):
        split = shard.name.split("-")[0]
        shard.unlink()
        dataset[split].to_parquet(str(shard))
        assert schema.parquet_metadata(shard) is None
    source = open_source(hub, split="test")
    assert isinstance(source, HubFolderSource) and len(source) == 5
    block = source.read(0, 5)
    np.testing.assert_array_equal(block.wavelength, toy["wavelength"])
    assert block.ids.tolist() == [f"s{i}" for i in range(9, 14)]

    (hub / "wavelength.json").unlink()  # no grid anywhere: the error names the shard and the fix
    with pytest.raises(ValueError, match="test-00000-of-00001.parquet: no wavelength grid"):
        open_source(hub, split="test")


def test_a_shard_with_another_grid_than_the_folder_is_refused(saved, tmp_path):
    folder, _, toy = saved
    hub = hub_layout.export_hub_dataset(folder, tmp_path / "hub")
    payload = json.loads((hub / "wavelength.json").read_text())
    payload["spectrafm"]["wavelength_vac_A"] = (toy["wavelength"] + 1.0).tolist()
    (hub / "wavelength.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="carries another wavelength grid than"):
        open_source(hub, split="test")
