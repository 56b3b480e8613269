"""Dataset cards (spectrafm_hf.data.dataset_card): every dataset folder the package writes has a README.md
that huggingface_hub parses, whose YAML datasets reads, and whose Markdown documents every column."""

from __future__ import annotations

import re

import numpy as np
import pytest
from huggingface_hub import DatasetCard

from spectrafm_hf.data import schema
from spectrafm_hf.data.dataset_card import feature_type, size_category


def _column_rows(text: str) -> dict[str, list[str]]:
    """The Columns table: column name → [type, unit, meaning]."""
    section = text.split("## Columns")[1].split("## Splits")[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `([^`]+)` \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def _split_rows(text: str) -> dict[str, int]:
    section = text.split("## Splits")[1].split("##")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"\| `(\w+)`[^|]* \| (\d+) \|", section)}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from spectrafm_hf.data.simulated import build_simulated_dataset

    out = tmp_path_factory.mktemp("sim") / "observed"
    dataset = build_simulated_dataset(out, "observed", n=8, seed=5, batch_size=8, progress=False)
    return out, dataset


def test_simulated_dataset_card_yaml(simulated):
    out, dataset = simulated
    card = DatasetCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "mit" and data["task_categories"] == ["tabular-regression"]
    assert {"astronomy", "stellar-spectra", "simulated", "observed-universe"} <= set(data["tags"])
    assert data["size_categories"] == ["n<1K"] and data["annotations_creators"] == ["machine-generated"]
    filled = [split for split in dataset if len(dataset[split])]
    assert data["configs"] == [{"config_name": "default", "data_files": [
        {"split": split, "path": f"{split}/data-*.arrow"} for split in filled]}]
    info = data["dataset_info"]
    assert [f["name"] for f in info["features"]] == list(dataset["train"].features)
    assert {s["name"]: s["num_examples"] for s in info["splits"]} == {k: len(dataset[k]) for k in filled}


def test_simulated_dataset_card_documents_every_column_with_units(simulated):
    out, dataset = simulated
    text = DatasetCard.load(out / "README.md").text
    rows = _column_rows(text)
    assert list(rows) == list(dataset["train"].features)  # every column, nothing else, in order
    expected_units = {"TEFF": "K", "LOGG": "dex (cgs)", "FE_H": "dex", "MG_FE_ERR": "dex", "VMICRO": "km/s",
                      "VMACRO": "km/s", "VSINI": "km/s", "C_FE": "dex", "N_FE": "dex", "TRUE_TEFF": "K",
                      "TRUE_FE_H": "dex", "flux": "dimensionless (continuum = 1)"}
    for name, unit in expected_units.items():
        assert rows[name][1] == unit, name
    assert rows["flux"][0] == "float32 × 7514" and rows["mask"][0] == "bool × 7514"
    assert "never a model input" in rows["TRUE_FE_H"][2] and "reported-error level" in rows["FE_H"][2]
    assert all("no description recorded" not in row[2] for row in rows.values())


def test_simulated_dataset_card_counts_provenance_and_attribution(simulated):
    out, dataset = simulated
    text = DatasetCard.load(out / "README.md").text
    assert _split_rows(text) == {split: len(dataset[split]) for split in dataset}
    assert "`observed` universe" in text and "**Label prior**: `apogee`; **seed** 5; **stars** 8" in text
    assert '"simulator_version"' in text and "gap terms**: all on" in text
    assert "Smith et al. 2013, ApJ 765, 16" in text and "Korg.jl (BSD-3)" in text
    assert "These spectra are simulated" in text
    assert "7514 pixels, 15152." in text and "wavelength.json" in text
    assert schema.metadata_from_files(out / "wavelength.json") == schema.get_metadata(dataset)


def test_the_arrow_folder_loads_with_load_dataset_through_its_card(simulated, tmp_path):
    """The card's `configs` point at the Arrow shards, so `load_dataset(folder)` works on a save_to_disk
    folder too; the grid then comes from the folder (load_dataset drops the description)."""
    from datasets import load_dataset

    out, dataset = simulated
    loaded = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    split = next(s for s in dataset if len(dataset[s]))
    assert loaded[split]["id"] == dataset[split]["id"]
    with pytest.raises(ValueError, match="source="):
        schema.get_wavelength(loaded[split])
    np.testing.assert_array_equal(schema.get_wavelength(loaded[split], source=out), schema.get_wavelength(dataset))


def test_apogee_dataset_card(tmp_path):
    """build-apogee's folder has a card: SDSS licence terms, the files, the cuts and the counts."""
    from test_apogee import _make_folder

    from spectrafm_hf.data import apogee

    spectra, allstar = _make_folder(tmp_path)
    dataset = apogee.build_apogee_dataset(spectra, tmp_path / "out", allstar=allstar, paper_cuts=True, seed=3,
                                          progress=False)
    card = DatasetCard.load(tmp_path / "out" / "README.md")
    assert card.data.license == "other" and card.data.to_dict()["license_name"] == "sdss-public-data"
    text = card.text
    assert "Abdurro'uf et al. 2022" in text and "sdss4.org" in text
    assert f"`{spectra}`" in text and "**The paper's sample cuts**: applied" in text
    assert _split_rows(text) == {split: len(dataset[split]) for split in dataset}
    rows = _column_rows(text)
    assert list(rows) == list(dataset["train"].features) and "ASPCAP" in rows["TEFF"][2]
    assert "These spectra are simulated" not in text


def test_table_dataset_card_says_the_licence_is_unknown(tmp_path):
    from spectrafm_hf.data.tables import load_table

    wavelength = np.linspace(15200.0, 15220.0, 12)
    np.savez(tmp_path / "t.npz", wavelength=wavelength, flux=np.ones((3, 12)), TEFF=np.full(3, 4800.0),
             J_MAG=np.arange(3.0))
    load_table(tmp_path / "t.npz", tmp_path / "out")
    card = DatasetCard.load(tmp_path / "out" / "README.md")
    assert card.data.license == "unknown"
    rows = _column_rows(card.text)
    assert rows["J_MAG"][1] == "not recorded" and "no description recorded" in rows["J_MAG"][2]
    assert "the table `" in card.text


def test_size_categories_and_feature_types():
    from datasets import List, Value

    assert [size_category(n) for n in (0, 999, 1000, 15_000, 250_000, 20_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "n>10M"]
    assert feature_type(List(Value("float32"), length=7514)) == "float32 × 7514"
    assert feature_type(Value("string")) == "string"
