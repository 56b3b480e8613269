"""SpectraFMFeatureExtractor: statistics, context selection, chunk combination, and every input error."""

import json

import numpy as np
import pytest
import torch
from conftest import toy_spectra

from spectrafm_hf import SpectraFMFeatureExtractor, SpectraFMTokenizer
from spectrafm_hf.feature_extraction_spectrafm import MAD_TO_STD


def test_alias_and_class_name():
    assert SpectraFMTokenizer is SpectraFMFeatureExtractor
    assert "Tokenizer" not in SpectraFMFeatureExtractor.__name__  # remote-code saving special-cases that word


def test_fit_uses_one_global_flux_statistic_and_label_statistics(toy):
    fe = SpectraFMFeatureExtractor().fit(wavelength=toy["wavelength"], flux=toy["flux"], labels=toy["labels"])
    flux = toy["flux"].astype(np.float64).ravel()
    assert fe.flux_median == pytest.approx(np.median(flux))
    lo, hi = np.quantile(flux, [1e-4, 1 - 1e-4])
    assert fe.flux_std == pytest.approx(np.std(flux[(flux >= lo) & (flux <= hi)]))
    fe_h = toy["labels"]["FE_H"]
    assert fe.named_token_statistics["FE_H"][0] == pytest.approx(np.median(fe_h))
    assert fe.named_token_statistics["LOGG"] == [2.478, 1.308]  # not in the data: the default is kept
    assert fe.trained_wavelength_range == [pytest.approx(toy["wavelength"][0]), pytest.approx(toy["wavelength"][-1])]


def test_save_load_round_trip(feature_extractor, toy, tmp_path):
    feature_extractor.pixel_statistics = None
    feature_extractor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["feature_extractor_type"] == "SpectraFMFeatureExtractor"
    assert saved["flux_median"] == feature_extractor.flux_median
    loaded = SpectraFMFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == feature_extractor.to_dict()
    a = feature_extractor(toy["wavelength"], toy["flux"], request=["FE_H"], sampling="random", seed=3)
    b = loaded(toy["wavelength"], toy["flux"], request=["FE_H"], sampling="random", seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batch_contract(feature_extractor, toy):
    mask = np.zeros_like(toy["mask"])
    mask[0, :10] = True
    batch = feature_extractor(toy["wavelength"], toy["flux"], mask=mask, scalars={"TEFF": toy["labels"]["TEFF"]},
                              request=["FE_H", "LOGG"])
    n = len(toy["flux"])
    assert batch["input_ids"].dtype == torch.long and batch["input_values"].dtype == torch.float32
    assert batch["input_ids"].shape == (n, 1 + 160)  # one named input + all valid pixels
    assert torch.all(batch["input_ids"][:, 0] == feature_extractor.token_id("TEFF"))
    assert torch.all(batch["input_wavelength"][:, 0] == 0)  # named tokens carry no wavelength
    assert batch["attention_mask"][0].sum() == 1 + 150 and torch.all(batch["input_ids"][0, -10:] == 0)
    assert batch["query_ids"].tolist() == [[4, 3]] * n
    assert torch.all(batch["input_values"][batch["attention_mask"] == 0] == 0)
    z = (toy["flux"][1] - feature_extractor.flux_median) / feature_extractor.flux_std
    np.testing.assert_allclose(batch["input_values"][1, 1:].numpy(), z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batch["input_wavelength"][1, 1:].numpy(), toy["wavelength"], rtol=1e-7)


def test_outliers_and_non_finite_flux_are_missing(feature_extractor, toy):
    flux = toy["flux"].copy()
    limit = feature_extractor.flux_outlier_threshold
    flux[0, 5] = feature_extractor.flux_median + 1.01 * limit * feature_extractor.flux_std
    flux[0, 6] = np.nan
    flux_err = toy["flux_err"].copy()
    flux_err[0, 7] = np.inf  # an infinite error marks a bad pixel
    batch = feature_extractor(toy["wavelength"], flux, flux_err=flux_err, request=["FE_H"])
    assert batch["attention_mask"][0].sum() == 157 and batch["attention_mask"][1].sum() == 160
    wavelengths = set(batch["input_wavelength"][0].tolist())
    assert not {float(np.float32(toy["wavelength"][i])) for i in (5, 6, 7)} & wavelengths


def test_flux_scale_sees_the_lines_and_the_outlier_limit_keeps_them(feature_extractor, toy):
    """A MAD-std pooled over pixels measures only the continuum noise: line cores would sit at
    |z| >> 10. The fitted scale keeps them O(1-10), and the fitted limit keeps every real pixel while
    rejecting garbage."""
    flux = toy["flux"].astype(np.float64)
    mad_z = (flux - np.median(flux)) / (MAD_TO_STD * np.median(np.abs(flux - np.median(flux))))
    assert np.abs(mad_z).max() > 30
    z = (flux - feature_extractor.flux_median) / feature_extractor.flux_std
    assert 2 < np.abs(z).max() < 10
    expected_threshold = max(10.0, 2 * np.abs(np.quantile(z, [1e-4, 1 - 1e-4])).max())
    assert feature_extractor.flux_outlier_threshold == pytest.approx(expected_threshold, rel=1e-3)
    assert feature_extractor.usable_pixels(toy["wavelength"], toy["flux"]).all()
    garbage = toy["flux"].copy()
    garbage[0, :3] = [-5.0, 1e4, 0.0]
    usable = feature_extractor.usable_pixels(toy["wavelength"], garbage)
    assert not usable[0, :2].any() and usable.sum() == toy["flux"].size - 2 - (not usable[0, 2])


def test_random_context_each_star_its_own_subset_of_valid_pixels(feature_extractor):
    toy = toy_spectra(2, seed=5)
    flux = np.repeat(toy["flux"][:1], 6, axis=0)  # six identical stars
    mask = np.zeros(flux.shape, bool)
    mask[:, ::2] = True
    batch = feature_extractor(toy["wavelength"], flux, mask=mask, request=["FE_H"], sampling="random",
                              context_length=20, seed=0)
    assert batch["input_ids"].shape == (6, 20)
    chosen = [frozenset(row.tolist()) for row in batch["input_wavelength"]]
    assert len(set(chosen)) == 6  # not one permutation for all stars (flaw 1 of the original)
    odd = {float(np.float32(w)) for w in toy["wavelength"][1::2]}
    assert all(c <= odd for c in chosen)  # masked pixels are never drawn
    again = feature_extractor(toy["wavelength"], flux, mask=mask, request=["FE_H"], sampling="random",
                              context_length=20, seed=0)
    assert torch.equal(again["input_wavelength"], batch["input_wavelength"])
    short = feature_extractor(toy["wavelength"][:30], flux[:, :30], mask=mask[:, :30], request=["FE_H"],
                              sampling="random", context_length=20, seed=0)
    assert short["attention_mask"].sum(1).tolist() == [15] * 6  # fewer valid pixels than the context


def test_chunks_are_disjoint_and_cover_every_valid_pixel(feature_extractor, toy):
    mask = np.zeros_like(toy["mask"])
    mask[2, 50:] = True  # star 2 has 50 valid pixels
    batch = feature_extractor(toy["wavelength"], toy["flux"], mask=mask, request=["FE_H"], context_length=48)
    index = batch["spectrum_index"]
    assert index.tolist().count(0) == 4 and index.tolist().count(2) == 2  # ceil(160/48), ceil(50/48)
    assert batch["attention_mask"].sum(1).max() <= 48
    for star in range(len(toy["flux"])):
        rows = batch["input_wavelength"][index == star]
        pixels = rows[rows > 0].tolist()
        assert len(pixels) == len(set(pixels)) == int((~mask[star]).sum())


def test_chunked_and_full_inference_agree_when_the_context_covers_the_spectrum(tiny_model, feature_extractor, toy):
    full = feature_extractor(toy["wavelength"], toy["flux"], request=["FE_H", "TEFF"])
    chunked = feature_extractor(toy["wavelength"], toy["flux"], request=["FE_H", "TEFF"], context_length=160)
    with torch.no_grad():
        a = tiny_model(**full)
        b = tiny_model(**chunked)
    mean, log_variance = feature_extractor.combine_chunks(chunked["spectrum_index"], b.mean, b.log_variance)
    np.testing.assert_allclose(mean, a.mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_variance, a.log_variance.numpy(), rtol=1e-5, atol=1e-6)


def test_combine_chunks_precision_weights_without_shrinking_and_adds_the_spread():
    index = np.array([0, 0, 1])
    mean = np.array([[1.0], [3.0], [5.0]])
    log_variance = np.log(np.array([[1.0], [3.0], [2.0]]))
    mu, log_var = SpectraFMFeatureExtractor.combine_chunks(index, mean, log_variance)
    w = np.array([1.0, 1 / 3])
    expected_mu = (w * [1.0, 3.0]).sum() / w.sum()  # 1.5
    mean_chunk_variance = (w * [1.0, 3.0]).sum() / w.sum()  # precision-weighted mean of the variances
    expected_var = mean_chunk_variance + (w * (np.array([1.0, 3.0]) - expected_mu) ** 2).sum() / w.sum()
    assert mu[0, 0] == pytest.approx(expected_mu) and np.exp(log_var[0, 0]) == pytest.approx(expected_var)
    assert mu[1, 0] == 5.0 and np.exp(log_var[1, 0]) == pytest.approx(2.0)  # one chunk: unchanged
    agree = SpectraFMFeatureExtractor.combine_chunks([0, 0], [[1.0], [1.0]], np.log([[1.0], [1.0]]))
    # agreeing chunks of one star share its systematic errors: no 1/n shrinkage (was 0.5)
    assert np.exp(agree[1][0, 0]) == pytest.approx(1.0)


def test_to_physical(feature_extractor):
    median, std = feature_extractor.statistics("FE_H")
    values, sigma = feature_extractor.to_physical(["FE_H"], torch.tensor([[1.0], [-2.0]]),
                                                  torch.log(torch.tensor([[0.25], [4.0]])))
    np.testing.assert_allclose(values[:, 0], [median + std, median - 2 * std])
    np.testing.assert_allclose(sigma[:, 0], [0.5 * std, 2.0 * std])
    by_id, _ = feature_extractor.to_physical(torch.tensor([[4], [4]]), torch.tensor([[1.0], [-2.0]]), torch.zeros(2, 1))
    np.testing.assert_allclose(by_id, values)


def test_training_labels_are_standardised_and_missing_ones_never_requested(feature_extractor, toy):
    fe_h = toy["labels"]["FE_H"].copy()
    teff = toy["labels"]["TEFF"].copy()
    fe_h[:4] = np.nan
    teff[2:6] = np.nan  # stars 2, 3 have no label at all
    batch = feature_extractor(toy["wavelength"], toy["flux"], request="random", sampling="random", seed=1,
                              labels={"FE_H": fe_h, "TEFF": teff}, label_errors={"TEFF": np.full(12, 50.0)})
    ids = batch["query_ids"][:, 0].numpy()
    qmask = batch["query_mask"][:, 0].numpy()
    assert qmask.tolist() == [1, 1, 0, 0] + [1] * 8
    assert all(ids[i] == 2 for i in (0, 1)) and all(ids[i] == 4 for i in (4, 5))
    assert set(ids[6:]) <= {2, 4} and len(set(ids[6:])) == 2  # a random choice when both exist
    median, std = feature_extractor.statistics("FE_H")
    star = 6 + np.flatnonzero(ids[6:] == 4)[0]
    assert batch["labels"][star, 0].item() == pytest.approx((fe_h[star] - median) / std, rel=1e-5)
    teff_rows = ids == 2
    np.testing.assert_allclose(batch["label_errors"][teff_rows & (qmask == 1), 0].numpy(),
                               50.0 / feature_extractor.statistics("TEFF")[1], rtol=1e-5)


def test_per_pixel_statistics_table(toy):
    wl = toy["wavelength"]
    table = {"wavelength": wl[:80].tolist(), "median": [0.9] * 80, "std": [0.02] * 79 + [0.0]}
    fe = SpectraFMFeatureExtractor(flux_median=1.0, flux_std=0.1, pixel_statistics=table)
    flux = np.full((1, 160), 0.95)
    batch = fe(wl, flux, request=["FE_H"])
    values = batch["input_values"][0].numpy()
    np.testing.assert_allclose(values[:79], 2.5, rtol=1e-5)  # (0.95 − 0.9) / 0.02
    assert values[79] == pytest.approx(0.95)  # std 0: left as is, like the original
    np.testing.assert_allclose(values[80:], -0.5, rtol=1e-5)  # not in the table: global statistics


# ---- every input error names the problem (issue 2, item 7) ---------------------------------------

@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(wavelength=d["wavelength"][:-1]), "wavelength has 159 pixels but flux has 160"),
        (lambda d: d["wavelength"].__setitem__(3, np.nan), "non-finite"),
        (lambda d: d.update(wavelength=d["wavelength"][::-1].copy()), "strictly increasing"),
        (lambda d: d["mask"].__setitem__(2, True), r"every pixel is masked.*indices \[2\]"),
        (lambda d: d["flux_err"].__setitem__((0, 4), -0.1), "negative"),
        (lambda d: d.update(flux=d["flux"][None]), r"shape \(n_spectra, n_pixels\)"),
        (lambda d: d.update(request=["FE_H", "NA_FE"]), "unknown label or named input 'NA_FE'"),
        (lambda d: d.update(scalars={"K_MAG": np.ones(12)}), "unknown label or named input 'K_MAG'"),
        (lambda d: d.update(wavelength=d["wavelength"] / 1e4), "micrometres"),
        (lambda d: d.update(wavelength=d["wavelength"] / 10), "nanometres"),
        (lambda d: d.update(mask=d["mask"][:, :5]), "mask of shape"),
        (lambda d: d.update(request=["TEFF"], scalars={"TEFF": np.ones(12)}), "requested and also given"),
    ],
)
def test_bad_input_raises_a_clear_value_error(feature_extractor, toy, change, message):
    inputs = {"wavelength": toy["wavelength"].copy(), "flux": toy["flux"].copy(), "flux_err": toy["flux_err"].copy(),
              "mask": toy["mask"].copy(), "request": ["FE_H"]}
    change(inputs)
    with pytest.raises(ValueError, match=message):
        feature_extractor(**inputs)


def test_unit_checks_without_a_trained_range(toy):
    fe = SpectraFMFeatureExtractor(flux_median=1.0, flux_std=0.05)
    with pytest.raises(ValueError, match="micrometres"):
        fe(toy["wavelength"] / 1e4, toy["flux"])
    with pytest.raises(ValueError, match="nanometres"):
        fe(toy["wavelength"] / 10, toy["flux"])
    fe(np.linspace(4000, 7000, 160), toy["flux"])  # optical Å: fine


def test_pixels_outside_the_trained_range_warn_with_the_count_then_predict(feature_extractor, toy):
    wavelength = toy["wavelength"] + (toy["wavelength"][-1] - toy["wavelength"][0]) / 2  # half beyond the range
    outside = 12 * int((wavelength > feature_extractor.trained_wavelength_range[1]).sum())  # 12 stars
    with pytest.warns(UserWarning, match=f"{outside} of 1920 valid pixels lie outside"):
        batch = feature_extractor(wavelength, toy["flux"], request=["FE_H"])
    assert batch["attention_mask"].sum() == 1920


def test_an_unfitted_extractor_says_how_to_fit(toy):
    with pytest.raises(ValueError, match="call fit"):
        SpectraFMFeatureExtractor()(toy["wavelength"], toy["flux"])


def test_nanometre_check_with_a_trained_range_outside_the_optical(feature_extractor):
    flux = np.ones((1, 100))
    with pytest.raises(ValueError, match="nanometres"):  # Gaia RVS in nm, model trained in the H band
        feature_extractor(np.linspace(846.0, 870.0, 100), flux)


def test_per_star_wavelength_grids_equal_a_shared_grid(feature_extractor, toy):
    shared = feature_extractor(toy["wavelength"], toy["flux"], request=["FE_H"])
    per_star = feature_extractor(np.tile(toy["wavelength"], (12, 1)), toy["flux"], request=["FE_H"])
    assert all(torch.equal(shared[k], per_star[k]) for k in shared)
    shifted = toy["wavelength"][None] * (1 + 1e-4 * np.arange(12)[:, None])  # e.g. not rest-frame shifted
    with pytest.warns(UserWarning, match="outside the model's trained wavelength range"):
        batch = feature_extractor(shifted, toy["flux"], request=["FE_H"])
    np.testing.assert_allclose(batch["input_wavelength"][5].numpy(), shifted[5], rtol=1e-7)
