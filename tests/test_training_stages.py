"""Stages 1 → 2 → 3 and the scratch transformer on tiny toy data (spectrafm_hf.training.stages)."""

import json

import numpy as np
import pytest
import torch
from _training_toys import TINY_MODEL, cut, toy_data

from spectrafm_hf.checkpoints import load_model
from spectrafm_hf.training.loop import LoopConfig
from spectrafm_hf.training.stages import WINDOWS, StageSpec, predict, run_stage


def _loop(steps, **kw):
    return LoopConfig(max_steps=steps, learning_rate=1e-3, eval_every=2, checkpoint_every=2, log_every=1,
                      progress=False, **kw)


@pytest.fixture(scope="module")
def three_stages(tmp_path_factory):
    out = tmp_path_factory.mktemp("stages")
    synthetic, observed, validation = toy_data(24, 0), toy_data(24, 1), toy_data(12, 2, feh_range=(-1.0, 0.4))
    s1 = run_stage(StageSpec("stage1", "all", "random", 8, 32, _loop(4)), synthetic, validation, out / "stage1",
                   model_config=TINY_MODEL, seed=0)
    half = WINDOWS["first_half"]
    s2 = run_stage(StageSpec("stage2", "first_half", "random", 8, 32, _loop(4)), cut(observed, half),
                   cut(validation, half), out / "stage2", init=out / "stage1", seed=0)
    fe = WINDOWS["fe_window"]
    spec3 = StageSpec("stage3", "fe_window", ["FE_H"], 8, 32, _loop(4), freeze_decoder=True,
                      freeze_encoder_blocks=[1], select_on="val_rmse_FE_H", rehearsal=4)
    s3 = run_stage(spec3, cut(toy_data(10, 3, feh_range=(-1.0, 0.4)), fe), cut(validation, fe), out / "stage3",
                   init=out / "stage2", rehearsal=cut(synthetic, fe), seed=0)
    return out, (s1, s2, s3)


def test_each_stage_writes_a_loadable_checkpoint_and_marker(three_stages):
    out, results = three_stages
    data = cut(toy_data(5, 9), WINDOWS["fe_window"])
    for result in results:
        assert (result.model_dir / "model.safetensors").exists()
        assert (result.model_dir / "preprocessor_config.json").exists()
        marker = json.loads((result.model_dir / "stage_complete.json").read_text())
        assert marker["last_step"] == 4 and marker["best_step"] in (2, 4)
        model, fe = load_model(result.model_dir)
        mean, sigma = predict(model, fe, data, ("FE_H",))["FE_H"]
        assert mean.shape == (5,) and np.all(np.isfinite(mean)) and np.all(sigma > 0)
    stage3 = json.loads((out / "stage3" / "stage_complete.json").read_text())
    assert stage3["select_on"] == "val_rmse_FE_H"


def test_stage3_keeps_decoder_and_second_encoder_block_frozen(three_stages):
    out, _ = three_stages
    stage2, _ = load_model(out / "stage2")
    stage3, _ = load_model(out / "stage3")
    before, after = stage2.state_dict(), stage3.state_dict()
    frozen = [k for k in before if k.startswith(("decoder.", "head.", "encoder.1."))]
    trainable = [k for k in before if k.startswith(("embeddings.", "encoder.0."))]
    assert frozen and trainable
    for key in frozen:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    assert any(not torch.equal(after[k], before[k]) for k in trainable)


def test_completed_stage_is_skipped_on_rerun_only_with_the_same_settings_and_data(three_stages):
    out, (s1, _, _) = three_stages
    spec = StageSpec("stage1", "all", "random", 8, 32, _loop(4))
    validation = toy_data(12, 2, feh_range=(-1.0, 0.4))
    again = run_stage(spec, toy_data(24, 0), validation, out / "stage1", model_config=TINY_MODEL)
    assert again.skipped and again.best_step == s1.best_step
    recorded = (out / "stage1" / "stage_config.json").read_text()
    with pytest.raises(ValueError, match=r"data\.validation"):  # other validation stars select another model
        run_stage(spec, toy_data(24, 0), toy_data(12, 2), out / "stage1", model_config=TINY_MODEL)
    with pytest.raises(ValueError, match=r"spec\.loop\.max_steps: 4 → 5"):
        run_stage(StageSpec("stage1", "all", "random", 8, 32, _loop(5)), toy_data(24, 0), validation, out / "stage1",
                  model_config=TINY_MODEL)
    with pytest.raises(ValueError, match=r"seed: 0 → 3"):
        run_stage(spec, toy_data(24, 0), validation, out / "stage1", model_config=TINY_MODEL, seed=3)
    assert (out / "stage1" / "stage_config.json").read_text() == recorded


def test_a_stage_folder_without_a_settings_record_is_not_reused(three_stages, tmp_path):
    import shutil

    out, _ = three_stages
    legacy = tmp_path / "stage1"
    shutil.copytree(out / "stage1", legacy)
    (legacy / "stage_config.json").unlink()
    with pytest.raises(ValueError, match="without a record"):
        run_stage(StageSpec("stage1", "all", "random", 8, 32, _loop(4)), toy_data(24, 0),
                  toy_data(12, 2, feh_range=(-1.0, 0.4)), legacy, model_config=TINY_MODEL)


def test_stage_spec_errors():
    with pytest.raises(ValueError, match="unknown window"):
        StageSpec("x", "blue", "random", 8, 32, _loop(1))
    with pytest.raises(ValueError, match="unknown label"):
        StageSpec("x", "all", ["FEH"], 8, 32, _loop(1))
    with pytest.raises(ValueError, match="unknown training option"):
        StageSpec.from_dict("x", {"window": "all", "request": "random", "batch_size": 8, "context_length": 8,
                                  "max_steps": 2, "learnig_rate": 1})
    spec = StageSpec.from_dict("stage3", {"window": "fe_window", "request": ["FE_H"], "batch_size": 8,
                                          "context_length": 8, "max_steps": 3, "learning_rate": 2e-4})
    assert spec.loop.max_steps == 3 and spec.loop.learning_rate == 2e-4


def test_narrow_window_mask_keeps_one_contiguous_run_per_chosen_star():
    import numpy as np

    from spectrafm_hf.data.collator import narrow_window_mask

    mask = np.zeros((400, 1000), bool)
    mask[:, 10] = True  # an originally bad pixel stays bad
    out = narrow_window_mask(mask, 0.5, 100, np.random.default_rng(0))
    narrowed = out.sum(axis=1) > 1
    assert 0.4 < narrowed.mean() < 0.6
    for row in out[narrowed]:
        kept = np.flatnonzero(~row)
        assert kept.max() - kept.min() <= 99  # one run of at most 100 pixels
    assert np.array_equal(out[~narrowed], mask[~narrowed])
    assert out[:, 10].all()
    assert np.array_equal(narrow_window_mask(mask, 0.0, 100, np.random.default_rng(0)), mask)


def test_narrow_window_contexts_stay_inside_one_run():
    """With fraction 1, every star's training context spans at most the run's wavelength width;
    rehearsal stars appended to the batch keep their whole window."""
    import numpy as np

    from spectrafm_hf import SpectraFMFeatureExtractor
    from spectrafm_hf.data.arrays import WindowData
    from spectrafm_hf.training.loop import LoopConfig
    from spectrafm_hf.training.stages import StageSpec, stage_collator

    rng = np.random.default_rng(1)
    n, p = 8, 600
    wavelength = np.linspace(15200.0, 16900.0, p)
    flux = 1 - 0.1 * rng.random((n, p))
    labels = {"FE_H": rng.normal(size=n)}
    data = WindowData(wavelength=wavelength, flux=flux, flux_err=np.full((n, p), 0.01), mask=np.zeros((n, p), bool),
                      labels=labels, label_errors={"FE_H": np.full(n, 0.01)})
    fe = SpectraFMFeatureExtractor()
    fe.fit(wavelength=wavelength, flux=flux, labels=labels)
    spec = StageSpec(name="t", window="all", request=["FE_H"], batch_size=n, context_length=32,
                     loop=LoopConfig(max_steps=1), narrow_window_fraction=1.0, narrow_window_pixels=50)
    batch = stage_collator(spec, fe, wavelength).select(data, np.arange(n), seed=3, rehearsal=(data, np.arange(4)))
    step = wavelength[1] - wavelength[0]
    spans = []
    for row_wl, row_mask in zip(batch["input_wavelength"].numpy(), batch["attention_mask"].numpy()):
        used = row_wl[(row_mask == 1) & (row_wl > 0)]
        assert len(used) == 32
        spans.append(used.max() - used.min())
    assert max(spans[:n]) <= 49 * step + 0.01  # float32 Å
    assert min(spans[n:]) > 49 * step  # rehearsal stars: contexts from all 600 pixels


def test_request_all_asks_every_label_and_skips_missing_ones():
    """request="all": one query per label for every star; a star's missing label is masked out
    (query_mask 0), so the loss equals the mean NLL over the labels the stars have."""
    from spectrafm_hf import SpectraFMFeatureExtractor
    from spectrafm_hf.data.labels import LABELS
    from spectrafm_hf.training.stages import new_model, stage_collator

    data = toy_data(6, 4)
    data.labels["O_FE"][[1, 4]] = np.nan  # two stars without [O/Fe]
    fe = SpectraFMFeatureExtractor()
    fe.fit(wavelength=data.wavelength, flux=data.flux, labels=data.labels)
    spec = StageSpec("t", "all", "all", 6, 32, _loop(1))
    batch = stage_collator(spec, fe, data.wavelength).select(data, np.arange(6), seed=1)
    ids = [fe.token_id(k) for k in LABELS]
    assert batch["query_ids"].shape == (6, len(LABELS))
    assert (batch["query_ids"] == torch.tensor(ids)).all()
    o_fe = LABELS.index("O_FE")
    known = batch["query_mask"].bool()
    assert not known[[1, 4], o_fe].any() and known.sum() == 6 * len(LABELS) - 2

    torch.manual_seed(0)
    model, _ = new_model(TINY_MODEL, data, fe)
    model.eval()
    with torch.no_grad():
        out = model(**batch)
        v = out.log_variance.exp() + batch["label_errors"] ** 2 + 1e-8
        nll = 0.5 * ((batch["labels"] - out.mean) ** 2 / v + v.log())
        torch.testing.assert_close(out.loss, nll[known].mean())
    with pytest.raises(ValueError, match="'random', 'all'"):
        StageSpec("t", "all", "every", 6, 32, _loop(1))
