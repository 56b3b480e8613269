"""Fitting a feature extractor from a dataset: the data layer reads the arrays, ``fit`` sees only arrays."""

import numpy as np
import pytest
from conftest import toy_spectra

from spectrafm_hf import SpectraFMFeatureExtractor
from spectrafm_hf.data.schema import dataset_in_memory, write_dataset
from spectrafm_hf.data.standardisation import fit_feature_extractor_from_dataset


@pytest.fixture
def spectra() -> dict:
    """30 toy spectra with some masked pixels and a VMICRO column (an extra named input)."""
    spectra = toy_spectra(30, seed=4)
    spectra["mask"][2, :40] = True
    spectra["mask"][9, 100:] = True
    spectra["VMICRO"] = np.linspace(0.8, 2.0, 30)
    return spectra


def _batches(spectra):
    def generate():
        n = len(spectra["flux"])
        yield {"id": np.array([f"s{i}" for i in range(n)]), "flux": spectra["flux"], "mask": spectra["mask"],
               "FE_H": spectra["labels"]["FE_H"], "TEFF": spectra["labels"]["TEFF"], "VMICRO": spectra["VMICRO"]}
    return generate


def _fitted_state(fe) -> tuple:
    return fe.flux_median, fe.flux_std, fe.flux_outlier_threshold, fe.trained_wavelength_range


@pytest.mark.parametrize("max_spectra, seed", [(2000, 0), (12, 0), (12, 5)])
def test_a_dataset_fits_exactly_like_its_arrays(tmp_path, spectra, max_spectra, seed):
    dataset = write_dataset(tmp_path / "ds", {"train": _batches(spectra)}, spectra["wavelength"],
                            extra_scalars=("VMICRO",))
    from_dataset = fit_feature_extractor_from_dataset(
        SpectraFMFeatureExtractor(), dataset["train"], max_spectra=max_spectra, seed=seed)
    from_arrays = SpectraFMFeatureExtractor().fit(
        wavelength=spectra["wavelength"], flux=spectra["flux"], mask=spectra["mask"], labels=spectra["labels"],
        max_spectra=max_spectra, seed=seed)
    # same spectra drawn, same float32 flux: bit-identical flux statistics
    assert _fitted_state(from_dataset) == _fitted_state(from_arrays)
    # labels are stored as float32 in the dataset, hence approx; every row counts, not only the drawn ones
    for name in ("FE_H", "TEFF"):
        assert from_dataset.named_token_statistics[name] == pytest.approx(from_arrays.named_token_statistics[name])
    assert "VMICRO" not in from_dataset.named_token_statistics  # not a named token of this extractor


def test_a_dataset_dict_fits_on_its_train_split_and_reads_extra_named_tokens(spectra):
    fe = SpectraFMFeatureExtractor()
    fe.add_named_tokens(["VMICRO"])
    half = {k: spectra[k][:15] for k in ("flux", "mask", "VMICRO")} | {
        "labels": {k: v[:15] for k, v in spectra["labels"].items()}}
    dataset = dataset_in_memory({"validation": _batches(half), "train": _batches(spectra)}, spectra["wavelength"],
                                extra_scalars=("VMICRO",))
    fit_feature_extractor_from_dataset(fe, dataset)
    expected = fit_feature_extractor_from_dataset(SpectraFMFeatureExtractor(), dataset["train"])
    assert _fitted_state(fe) == _fitted_state(expected)
    assert fe.named_token_statistics["VMICRO"][0] == pytest.approx(np.median(spectra["VMICRO"]), rel=1e-6)


def test_given_wavelength_and_labels_take_precedence_over_the_dataset(spectra):
    dataset = dataset_in_memory({"train": _batches(spectra)}, spectra["wavelength"])
    fe = fit_feature_extractor_from_dataset(SpectraFMFeatureExtractor(), dataset, wavelength=spectra["wavelength"] + 1,
                                            labels={"FE_H": np.full(30, 0.25)})
    assert fe.trained_wavelength_range[0] == pytest.approx(spectra["wavelength"][0] + 1)
    assert fe.named_token_statistics["FE_H"][0] == 0.25


@pytest.mark.parametrize("bad, message", [
    (lambda ds: {"validation": ds},
     r"DatasetDict with a 'train' split, got a DatasetDict with splits \['validation'\]"),
    (lambda ds: np.zeros((3, 160)), "got ndarray; .*feature_extractor.fit\\(wavelength=..., flux=...\\)"),
])
def test_anything_but_a_dataset_or_a_train_split_is_refused_with_the_fix(spectra, bad, message):
    dataset = dataset_in_memory({"train": _batches(spectra)}, spectra["wavelength"])["train"]
    with pytest.raises(ValueError, match=message):
        fit_feature_extractor_from_dataset(SpectraFMFeatureExtractor(), bad(dataset))


def test_a_dataset_without_a_wavelength_grid_asks_for_one(spectra):
    from datasets import Dataset

    dataset = Dataset.from_dict({"flux": spectra["flux"].tolist()})
    with pytest.raises(ValueError, match="pass wavelength="):
        fit_feature_extractor_from_dataset(SpectraFMFeatureExtractor(), dataset)
    fe = fit_feature_extractor_from_dataset(SpectraFMFeatureExtractor(), dataset, wavelength=spectra["wavelength"])
    assert fe.is_fitted


def test_the_feature_extractor_itself_takes_arrays_only(spectra):
    dataset = dataset_in_memory({"train": _batches(spectra)}, spectra["wavelength"])
    with pytest.raises(TypeError):
        SpectraFMFeatureExtractor().fit(dataset)
