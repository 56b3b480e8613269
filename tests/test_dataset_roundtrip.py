"""The wavelength grid travels with the data (issue 14): save_to_disk → Parquet → load_dataset → predict,
and a folder laid out as a Hub dataset repo → load_dataset(folder) → predict (spectrafm_hf.data.hub_layout)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import toy_spectra
from datasets import load_dataset

from spectrafm_hf.data import hub_layout, schema
from spectrafm_hf.predict import predict_labels


@pytest.fixture
def saved(tmp_path):
    """Toy spectra (the fixture model's grid) saved by write_dataset: train 9 stars, test 5, an empty split."""
    toy = toy_spectra(14, seed=3)

    def batches(rows):
        def make():
            yield {"id": np.array([f"s{i}" for i in rows]), "flux": toy["flux"][rows],
                   "flux_err": toy["flux_err"][rows], "FE_H": toy["labels"]["FE_H"][rows],
                   "TEFF": toy["labels"]["TEFF"][rows]}
        return make

    folder = tmp_path / "saved"
    dataset = schema.write_dataset(folder, {"train": batches(np.arange(9)), "test": batches(np.arange(9, 14)),
                                            "validation": lambda: iter(())},
                                   toy["wavelength"], {"source": "table", "path": "toy"})
    return folder, dataset, toy


def _predict(model, feature_extractor, wavelength, split):
    rows = split.with_format("numpy")[:]
    result = predict_labels(model, feature_extractor, wavelength, rows["flux"], flux_err=rows["flux_err"],
                            request=["FE_H"], progress=False)
    return result["FE_H"]


def test_save_to_disk_to_parquet_to_load_dataset_to_predict(saved, tmp_path, tiny_model, feature_extractor):
    folder, dataset, toy = saved
    expected = _predict(tiny_model, feature_extractor, toy["wavelength"], dataset["test"])
    path = hub_layout.write_parquet(dataset["test"], tmp_path / "test.parquet")
    stored = json.loads(pq.read_schema(path).metadata[schema.PARQUET_METADATA_KEY])
    assert stored["source"] == "table" and stored["wavelength_vac_A"] == toy["wavelength"].tolist()

    loaded = load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.features == dataset["test"].features  # fixed-length lists survive (the huggingface key)
    with pytest.raises(ValueError, match="source="):  # load_dataset drops every kind of metadata
        schema.get_wavelength(loaded)
    wavelength = schema.get_wavelength(loaded, source=path)
    np.testing.assert_array_equal(wavelength, toy["wavelength"])
    got = _predict(tiny_model, feature_extractor, wavelength, loaded)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])

    again = hub_layout.load_spectra_dataset(path, split="train", cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(schema.get_wavelength(again), toy["wavelength"])  # no source needed


def test_datasets_own_to_parquet_drops_the_grid_and_says_how_to_keep_it(saved, tmp_path):
    _, dataset, _ = saved
    path = tmp_path / "hf.parquet"
    dataset["test"].to_parquet(str(path))
    assert schema.parquet_metadata(path) is None
    with pytest.raises(ValueError, match="write_parquet"):
        schema.metadata_from_files(path)


def test_hub_layout_folder_to_load_dataset_to_predict(saved, tmp_path, tiny_model, feature_extractor):
    folder, dataset, toy = saved
    expected = _predict(tiny_model, feature_extractor, toy["wavelength"], dataset["test"])
    hub = hub_layout.export_hub_dataset(folder, tmp_path / "hub", max_shard_bytes=1)  # one shard per star
    names = sorted(p.relative_to(hub).as_posix() for p in hub.rglob("*") if p.is_file() and p.name[0] != ".")
    assert names == ["README.md", *(f"data/test-0000{i}-of-00005.parquet" for i in range(5)),
                     *(f"data/train-0000{i}-of-00009.parquet" for i in range(9)), "wavelength.json"]
    for shard in (hub / "data").glob("*.parquet"):  # every shard carries the grid on its own
        np.testing.assert_array_equal(schema.metadata_from_files(shard)["wavelength_vac_A"], toy["wavelength"])

    loaded = load_dataset(str(hub), cache_dir=str(tmp_path / "cache"))
    assert set(loaded) == {"train", "test"}  # the empty split has no shard and no config entry
    assert loaded["test"]["id"] == dataset["test"]["id"]  # shard order kept
    wavelength = schema.get_wavelength(loaded["test"], source=hub)
    got = _predict(tiny_model, feature_extractor, wavelength, loaded["test"])
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])

    restored = hub_layout.load_spectra_dataset(hub, cache_dir=str(tmp_path / "cache"))
    assert schema.get_metadata(restored["train"]) == schema.get_metadata(dataset)


def test_hub_layout_card_names_the_repo_and_describes_the_shards(saved, tmp_path):
    from huggingface_hub import DatasetCard

    folder, dataset, _ = saved
    hub = hub_layout.export_hub_dataset(dataset, tmp_path / "hub", repo_id="org/toy-spectra")
    card = DatasetCard.load(hub / "README.md")
    assert card.data.to_dict()["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train-*.parquet"}, {"split": "test", "path": "data/test-*.parquet"}]
    assert 'load_dataset("org/toy-spectra")' in card.text
    assert 'hf_hub_download("org/toy-spectra", "wavelength.json", repo_type="dataset")' in card.text
    payload, features, sizes, files = hub_layout.describe_hub_folder(hub)
    assert payload == schema.get_metadata(dataset) and features == dataset["train"].features
    assert {split: rows for split, (rows, _) in sizes.items()} == {"train": 9, "test": 5}
    assert files == ["data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]


def test_the_card_usage_code_runs_on_the_exported_folder(saved, tmp_path, monkeypatch):
    """The dataset card's Python snippet (local folder version) loads the data and the grid."""
    import re

    folder, dataset, toy = saved
    hub = hub_layout.export_hub_dataset(folder, tmp_path / "hub")
    code = re.findall(r"```python\n(.*?)```", (hub / "README.md").read_text(), flags=re.S)[0]
    assert f'folder = "{hub}"' in code
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "cache")  # never the user's cache
    namespace: dict = {}
    exec(compile(code, "dataset-card", "exec"), namespace)  # noqa: S102 - our own rendered card
    np.testing.assert_array_equal(namespace["wavelength"], toy["wavelength"])
    assert namespace["flux"].shape == (4, toy["wavelength"].size)


def test_export_refuses_mixed_grids_and_unsafe_outputs(saved, tmp_path):
    from datasets import DatasetDict

    folder, dataset, toy = saved
    other = schema.dataset_in_memory({"test": lambda: iter([{"id": np.array(["x"]), "flux": np.ones((1, 160))}])},
                                     toy["wavelength"] + 1.0)
    with pytest.raises(ValueError, match="another wavelength grid"):
        hub_layout.export_hub_dataset(DatasetDict({"train": dataset["train"], "test": other["test"]}),
                                      tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()
    with pytest.raises(ValueError, match="inside this command's input"):
        hub_layout.export_hub_dataset(folder, folder / "hub")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        hub_layout.export_hub_dataset(folder, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_grid_from_files_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        schema.metadata_from_files(tmp_path / "absent.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="export_hub_dataset"):
        schema.metadata_from_files(tmp_path / "empty")
    (tmp_path / "w.json").write_text('{"other": 1}')
    with pytest.raises(ValueError, match="not a spectrafm"):
        schema.metadata_from_files(tmp_path / "w.json")
