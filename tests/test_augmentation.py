"""Observed-like augmentation of clean synthetic spectra (spectrafm_hf.data.augmentation) and its use in
stage training (StageSpec.augment)."""

import numpy as np
import pytest
import torch
from _training_toys import toy_data

from spectrafm_hf.data import grid
from spectrafm_hf.data.arrays import subset
from spectrafm_hf.data.augmentation import ObservedLikeAugmentation, detector_segments
from spectrafm_hf.data.simulated import simulate_arrays
from spectrafm_hf.pipeline.config import _stage_section
from spectrafm_hf.training.loop import LoopConfig
from spectrafm_hf.training.stages import StageSpec, augmented_validation, batch_sampler, new_model

WAVELENGTH = grid.apogee_wavelength()
OFF = dict(snr=None, continuum_rms=None, line_depth_scatter=0.0, resolving_power=None)


def _only(**term) -> ObservedLikeAugmentation:
    return ObservedLikeAugmentation(**{**OFF, **term})


def test_chip_gaps_split_the_grid_into_three_detectors():
    segments = detector_segments(WAVELENGTH)
    assert [(s.start, s.stop) for s in segments] == [(0, 3028), (3028, 5523), (5523, 7514)]
    assert detector_segments(WAVELENGTH[grid.FE_WINDOW]) == [slice(0, 512)]


def test_same_generator_same_spectra_and_masked_pixels_untouched():
    data = toy_data(6, 0)
    augmentation = ObservedLikeAugmentation()
    a = augmentation.apply(data.flux, data.mask, WAVELENGTH, np.random.default_rng(3))
    b = augmentation.apply(data.flux, data.mask, WAVELENGTH, np.random.default_rng(3))
    c = augmentation.apply(data.flux, data.mask, WAVELENGTH, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[~data.mask], c[~data.mask])
    assert np.isnan(a[data.mask]).all()  # bad pixels stay bad, and are not spread into their neighbours
    assert np.isfinite(a[~data.mask]).all()
    assert a.dtype == np.float32 and a.shape == data.flux.shape


def test_fraction_leaves_the_other_stars_exactly_clean():
    data = toy_data(200, 1)
    out = ObservedLikeAugmentation(fraction=0.3).apply(data.flux, data.mask, WAVELENGTH, np.random.default_rng(0))
    changed = ~np.all((out == data.flux) | data.mask, axis=1)
    assert 0.2 < changed.mean() < 0.4
    none = ObservedLikeAugmentation(fraction=0.0).apply(data.flux, data.mask, WAVELENGTH, np.random.default_rng(0))
    np.testing.assert_array_equal(none, data.flux)


def test_noise_has_the_drawn_snr():
    flux = np.ones((400, 1000), np.float32)
    out = _only(snr=(100.0, 100.0)).apply(flux, np.zeros_like(flux, bool), WAVELENGTH[:1000], np.random.default_rng(0))
    assert np.std(out - flux) == pytest.approx(0.01, rel=0.02)


def test_continuum_residual_is_smooth_with_the_drawn_rms():
    flux = np.ones((50, 7514), np.float32)
    out = _only(continuum_rms=(0.005, 0.005)).apply(flux, np.zeros_like(flux, bool), WAVELENGTH,
                                                     np.random.default_rng(0))
    for s in detector_segments(WAVELENGTH):
        residual = out[:, s] - 1.0
        np.testing.assert_allclose(np.sqrt(np.mean(residual**2, axis=1)), 0.005, rtol=1e-3)
        assert np.abs(np.diff(residual, axis=1)).max() < 1e-4  # a cubic, not pixel noise


def test_line_depth_errors_leave_the_continuum_and_scale_depths_about_ten_percent():
    data = toy_data(100, 2)
    out = _only(line_depth_scatter=0.1).apply(data.flux, data.mask, WAVELENGTH, np.random.default_rng(0))
    # the change is a multiple of the depth 1 − f (so the continuum, f = 1, is never moved), at most 6σ
    depth = 1.0 - data.flux.astype(np.float64)
    assert np.all(np.abs(out - data.flux)[~data.mask] <= 0.6 * np.abs(depth[~data.mask]) + 1e-6)
    centre = np.argmin(np.abs(WAVELENGTH - 16169.4))
    ratio = (1 - out[:, centre]) / (1 - data.flux[:, centre])
    ok = ~data.mask[:, centre]
    assert np.std(ratio[ok]) == pytest.approx(0.1, rel=0.25) and abs(np.mean(ratio[ok]) - 1) < 0.03


def test_line_spread_matches_the_simulator_at_the_drawn_resolving_power():
    clean = simulate_arrays(3, "synthetic", seed=5)
    mask = clean["mask"]
    for power in (20000.0, 25000.0):  # broadened, then sharpened
        truth = simulate_arrays(3, "synthetic", seed=5, resolving_power=power)["flux"]
        out = _only(resolving_power=(power, power)).apply(clean["flux"], mask, WAVELENGTH, np.random.default_rng(0))
        before = np.sqrt(np.nanmean((clean["flux"] - truth) ** 2))
        after = np.sqrt(np.nanmean((out - truth) ** 2))
        assert after < 0.25 * before, (power, before, after)


def test_line_spread_does_not_mix_detectors():
    flux = np.concatenate([np.full(3028, 1.0), np.full(2495, 0.5), np.full(1991, 0.8)])[None].astype(np.float32)
    out = _only(resolving_power=(20000.0, 20000.0)).apply(flux, np.zeros_like(flux, bool), WAVELENGTH,
                                                          np.random.default_rng(0))
    np.testing.assert_allclose(out, flux, atol=1e-6)


@pytest.mark.parametrize("values, match", [
    ({"snr": [500, 50]}, "augment.snr"), ({"snr": 100}, "augment.snr"), ({"fraction": 1.5}, "augment.fraction"),
    ({"nosie": 1}, "unknown augment key"), ("yes", "must be a mapping"),
])
def test_bad_settings_name_the_key(values, match):
    with pytest.raises(ValueError, match=match):
        ObservedLikeAugmentation.from_dict(values)


def test_stage_yaml_accepts_augment_and_records_it_in_one_spelling():
    defaults = {"window": "all", "request": "all", "batch_size": 4, "context_length": 16, "max_steps": 10}
    spec = _stage_section({"augment": {"snr": [100, 200]}}, "stage1", defaults)
    assert spec.augment["snr"] == [100.0, 200.0] and spec.augment["fraction"] == 1.0
    assert _stage_section({"augment": True}, "stage1", defaults).augmentation == ObservedLikeAugmentation()
    assert _stage_section({}, "stage1", defaults).augmentation is None
    with pytest.raises(ValueError, match="section 'stage1'.*unknown augment key"):
        _stage_section({"augment": {"snrr": [1, 2]}}, "stage1", defaults)


def test_augmented_batches_replay_on_resume_and_leave_the_data_clean():
    data = toy_data(16, 3)
    before = data.flux.copy()
    loop = LoopConfig(max_steps=2, progress=False)
    plain = StageSpec("stage1", "all", "all", 4, 64, loop)
    augmented = StageSpec("stage1", "all", "all", 4, 64, loop, augment={"snr": [50, 50]})
    _, feature_extractor = new_model({"d_model": 16, "encoder_heads": [2], "encoder_mlp": [16], "decoder_heads": [2],
                                      "decoder_mlp": [16], "head_mlp": [16], "context_length": 64}, data)
    first = batch_sampler(data, augmented, feature_extractor, seed=0)(5, 0, 1)
    again = batch_sampler(data, augmented, feature_extractor, seed=0)(5, 0, 1)  # a resumed run's sampler
    clean = batch_sampler(data, plain, feature_extractor, seed=0)(5, 0, 1)
    for key in first:
        np.testing.assert_array_equal(np.asarray(first[key]), np.asarray(again[key]))
    # same stars, same contexts, same labels; only the flux values differ
    np.testing.assert_array_equal(np.asarray(first["labels"]), np.asarray(clean["labels"]))
    assert not np.allclose(np.asarray(first["input_values"]), np.asarray(clean["input_values"]))
    np.testing.assert_array_equal(data.flux, before)
    validation = augmented_validation(data, augmented, seed=0)
    np.testing.assert_array_equal(validation.flux, augmented_validation(data, augmented, seed=0).flux)
    assert augmented_validation(data, plain, seed=0) is data and not np.allclose(validation.flux, before,
                                                                                  equal_nan=True)


def test_the_accelerate_batch_draws_its_augmentation_from_the_batch_seed():
    """Pinned draw: stars of step k get ``apply`` with ``default_rng([batch seed, AUGMENT_STREAM])`` on the
    stage's grid before their contexts are drawn, so committed augmented runs replay exactly."""
    from spectrafm_hf.data.collator import AUGMENT_STREAM
    from spectrafm_hf.training.stages import stage_collator, step_seed

    data = toy_data(16, 3)
    spec = StageSpec("stage1", "all", "all", 4, 64, LoopConfig(max_steps=2, progress=False), augment=True)
    _, feature_extractor = new_model({"d_model": 16, "encoder_heads": [2], "encoder_mlp": [16], "decoder_heads": [2],
                                      "decoder_mlp": [16], "head_mlp": [16], "context_length": 64}, data)
    batch = batch_sampler(data, spec, feature_extractor, seed=5)(7, 0, 1)
    index = np.random.default_rng([5, 7]).choice(len(data), size=4, replace=False)
    perturbed = subset(data, index)
    perturbed.flux = spec.augmentation.apply(perturbed.flux, perturbed.mask, data.wavelength,
                                             np.random.default_rng([step_seed(5, 7, 0), AUGMENT_STREAM]))
    by_hand = stage_collator(spec, feature_extractor, data.wavelength).select(perturbed, np.arange(4),
                                                                             seed=step_seed(5, 7, 0))
    for key in batch:
        np.testing.assert_array_equal(np.asarray(batch[key]), np.asarray(by_hand[key]))


def test_the_trainer_path_trains_on_augmented_rows_and_selects_on_perturbed_validation(tmp_path):
    import json

    from spectrafm_hf.data.collator import evaluation_rows, training_rows
    from spectrafm_hf.training.stages import stage_collator
    from spectrafm_hf.training.trainer import run_stage_with_trainer

    data, pool = toy_data(8, 4), toy_data(5, 6)
    spec = StageSpec("stage3", "all", ["FE_H"], 4, 16, LoopConfig(max_steps=2, eval_every=2, progress=False),
                     augment={"snr": [50, 50]}, select_on="val_rmse_FE_H")
    _, feature_extractor = new_model({"d_model": 16, "encoder_heads": [2], "encoder_mlp": [16], "decoder_heads": [2],
                                      "decoder_mlp": [16], "head_mlp": [16], "context_length": 16}, data)
    augmented = stage_collator(spec, feature_extractor, data.wavelength, training=True).add_rehearsal(pool, 2)
    clean = stage_collator(spec, feature_extractor, data.wavelength).add_rehearsal(pool, 2)
    rows = [training_rows(data)[i] for i in range(4)]
    first, again, plain = augmented(rows), augmented(rows), clean(rows)
    for key in first:  # a replayed batch (resume) is the same batch
        assert torch.equal(first[key], again[key])
    # same contexts and labels; the 4 training stars' flux differs, the 2 rehearsal stars' does not
    assert torch.equal(first["input_wavelength"], plain["input_wavelength"])
    assert torch.equal(first["labels"], plain["labels"])
    assert not torch.allclose(first["input_values"][:4], plain["input_values"][:4])
    assert torch.equal(first["input_values"][4:], plain["input_values"][4:])
    evaluation = [evaluation_rows(data)[i] for i in range(4)]  # evaluation rows are never perturbed here
    assert torch.equal(augmented(evaluation)["input_values"], clean(evaluation)["input_values"])

    result = run_stage_with_trainer(spec, data, toy_data(6, 5), tmp_path / "stage", model_config={"d_model": 16},
                                    seed=3)
    assert result.last_step == 2 and np.isfinite(result.best_metric)
    recorded = json.loads((tmp_path / "stage" / "stage_config.json").read_text())
    assert recorded["trainer"] == "transformers" and recorded["spec"]["augment"]["snr"] == [50.0, 50.0]


def test_a_pixel_window_cuts_after_the_augmentation_has_seen_the_whole_grid():
    """The continuum residual is a cubic per DETECTOR: a collator restricted to the Fe window must cut the
    perturbed full-grid spectrum, not draw a cubic over its 512 pixels."""
    from spectrafm_hf.data.collator import AUGMENT_STREAM, SpectraFMCollator, training_rows

    data = toy_data(3, 8)
    augmentation = _only(continuum_rms=(0.01, 0.01))
    _, feature_extractor = new_model({"d_model": 16, "encoder_heads": [2], "encoder_mlp": [16], "decoder_heads": [2],
                                      "decoder_mlp": [16], "head_mlp": [16], "context_length": 16}, data)
    collator = SpectraFMCollator(feature_extractor, WAVELENGTH, request="all", pixel_window=grid.FE_WINDOW,
                                 augmentation=augmentation)
    stars = collator.stack([training_rows(data)[i] for i in range(3)], seed=[4, 2])
    whole = augmentation.apply(data.flux, data.mask, WAVELENGTH, np.random.default_rng([4, 2, AUGMENT_STREAM]))
    np.testing.assert_array_equal(stars.flux, whole[:, grid.FE_WINDOW])
    assert not np.allclose(stars.flux, data.flux[:, grid.FE_WINDOW], equal_nan=True)
    # the YAML spellings work here too; anything else is refused when the collator is built, not at step 1
    assert SpectraFMCollator(feature_extractor, WAVELENGTH, augmentation={"snr": [50, 60]}).augmentation.snr == (50, 60)
    defaults = SpectraFMCollator(feature_extractor, WAVELENGTH, augmentation=True).augmentation
    assert defaults == ObservedLikeAugmentation()
    with pytest.raises(ValueError, match="augment must be a mapping, true or null, got 'yes'"):
        SpectraFMCollator(feature_extractor, WAVELENGTH, augmentation="yes")
    with pytest.raises(ValueError, match="the rows have 512 pixels per star; this collator's grid has 7514"):
        collator.stack([{"flux": data.flux[0, grid.FE_WINDOW]}], seed=[4, 2])
