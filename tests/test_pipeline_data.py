"""The pipeline reads real datasets instead of the simulator (``data.<role>.path``): a tiny dataset folder
on the APOGEE grid stands in for a ``spectrafm build-apogee`` output."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from _training_toys import toy_data

from spectrafm_hf.data.schema import split_indices, write_dataset
from spectrafm_hf.pipeline import load_config
from spectrafm_hf.pipeline.data import load_data, prepare_datasets

REPO = Path(__file__).resolve().parents[1]


def _batches(data, prefix: str):
    def make():
        yield {"id": np.array([f"{prefix}-{i}" for i in range(len(data))]), "flux": data.flux, "mask": data.mask,
               **{name: values for name, values in data.labels.items()},
               **{f"{name}_ERR": values for name, values in data.label_errors.items()}}
    return make


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """An 'APOGEE' dataset with train/validation/test splits, one with a single split, a foreign grid."""
    tmp = tmp_path_factory.mktemp("datasets")
    splits = {"train": toy_data(40, 1, (-0.9, 0.4)), "validation": toy_data(12, 2), "test": toy_data(10, 3)}
    wavelength = splits["train"].wavelength
    write_dataset(tmp / "apogee", {name: _batches(data, name) for name, data in splits.items()}, wavelength)
    write_dataset(tmp / "single", {"all": _batches(toy_data(30, 4), "s")}, wavelength)
    write_dataset(tmp / "foreign", {"train": _batches(toy_data(5, 5), "f")}, wavelength * 1.0001)
    return tmp, splits


def _config(tmp_path, **data) -> Path:
    config = yaml.safe_load((REPO / "training" / "configs" / "tiny.yaml").read_text())
    config["data"].update(data)
    config["stage3"].update(n_stars=10, n_validation=4)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_stages_and_baselines_read_a_dataset_folder(folders, tmp_path):
    tmp, splits = folders
    path = _config(tmp_path, observed={"path": str(tmp / "apogee")}, synthetic={"path": str(tmp / "single")},
                   test={"n_iron_poor": 0}, cache_dir=str(tmp_path / "cache"))
    config = load_config(path)
    assert config.data.observed.path == str(tmp / "apogee") and config.data.observed.n is None
    data = load_data(config, tmp_path / "run")
    assert not (tmp_path / "cache").exists()  # nothing simulated, nothing cached
    np.testing.assert_array_equal(data.observed_train.flux, splits["train"].flux)
    np.testing.assert_array_equal(data.test.labels["FE_H"], splits["test"].labels["FE_H"].astype(np.float32))
    assert len(data.stage3_train) == 10 and np.all(data.stage3_train.labels["FE_H"] > -1)
    assert data.stage3_train.flux.shape[1] == 512 and len(data.stage3_val) == 4
    # a single split (or a table) is divided by the configured fractions with the data seed
    expected = split_indices(30, {"train": 0.9, "validation": 0.1}, config.data.seed)
    assert (len(data.synthetic_train), len(data.synthetic_val)) == (len(expected["train"]), len(expected["validation"]))


@pytest.mark.parametrize("data, message", [
    ({"observed": {"pth": "x"}}, r"unknown key 'pth' in section 'data.observed'; did you mean 'path'\?"),
    ({"observed": {"n": 10, "path": "x"}}, "needs either n .* or path"),
    ({"observed": {"prior": "apogee"}}, "needs either n .* or path"),
    ({"observed": {"path": "x"}, "test": {"n_iron_poor": 5}}, "n_iron_poor adds SIMULATED"),
])
def test_data_path_settings_are_typed_and_checked(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        load_config(_config(tmp_path, **data))


def test_a_dataset_the_pipeline_cannot_use_is_refused_with_the_fix(folders, tmp_path):
    tmp, _ = folders
    for folder, message in (("foreign", "not the 7514-pixel APOGEE grid"), ("missing", "does not exist")):
        config = load_config(_config(tmp_path, observed={"path": str(tmp / folder)}, test={"n_iron_poor": 0}))
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            prepare_datasets(config, tmp_path / "run")
