"""Stage 3 through transformers.Trainer (spectrafm_hf.training.trainer) vs the Accelerate path, tiny toy data."""

import json

import numpy as np
import pytest
import torch
from _training_toys import TINY_MODEL, cut, toy_data

from spectrafm_hf.checkpoints import load_model
from spectrafm_hf.training.loop import LoopConfig, learning_rate_at
from spectrafm_hf.training.stages import WINDOWS, StageSpec, predict, run_stage
from spectrafm_hf.training.trainer import run_stage_with_trainer


def test_trainer_stage3_freezes_selects_and_matches_accelerate_path(tmp_path):
    fe = WINDOWS["fe_window"]
    base = run_stage(StageSpec("stage2", "fe_window", "random", 8, 32,
                               LoopConfig(max_steps=2, eval_every=2, progress=False)),
                     cut(toy_data(16, 0), fe), cut(toy_data(8, 1), fe), tmp_path / "base", model_config=TINY_MODEL)
    train, val = cut(toy_data(12, 2, (-1.0, 0.4)), fe), cut(toy_data(8, 3, (-1.0, 0.4)), fe)
    loop = LoopConfig(max_steps=6, learning_rate=1e-3, eval_every=3, log_every=1, progress=False, warmup_steps=1,
                      min_lr_ratio=0.1)
    spec = StageSpec("stage3", "fe_window", ["FE_H"], 4, 32, loop, freeze_decoder=True, freeze_encoder_blocks=[1],
                     select_on="val_rmse_FE_H")
    via_trainer = run_stage_with_trainer(spec, train, val, tmp_path / "trainer", init=base.model_dir)
    run_stage(spec, train, val, tmp_path / "accelerate", init=base.model_dir)
    assert via_trainer.last_step == 6 and via_trainer.best_step in (3, 6)

    before, _ = load_model(base.model_dir)
    after, feature_extractor = load_model(tmp_path / "trainer")
    for key, value in before.state_dict().items():
        if key.startswith(("decoder.", "head.", "encoder.1.")):
            torch.testing.assert_close(after.state_dict()[key], value, rtol=0, atol=0)
    # comparable results: both selected models predict the validation stars about equally well
    truth = val.labels["FE_H"]
    rmse = {}
    for name in ("trainer", "accelerate"):
        model, fx = load_model(tmp_path / name)
        mean, _ = predict(model, fx, val, ("FE_H",))["FE_H"]
        rmse[name] = float(np.sqrt(np.mean((mean - truth) ** 2)))
    assert rmse["trainer"] == pytest.approx(via_trainer.best_metric, rel=1e-4)
    assert rmse["trainer"] < 2 * rmse["accelerate"] + 0.05 and rmse["accelerate"] < 2 * rmse["trainer"] + 0.05
    records = [json.loads(line) for line in (tmp_path / "trainer" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in records) and any("eval/val_rmse_FE_H" in r for r in records)
    # the Accelerate loop's schedule, warm-up and floor included, step for step (transformers'
    # cosine_warmup_with_min_lr scheduler; rounding differs by ~3e-16)
    lrs = {r["step"]: r["train/lr"] for r in records if "train/lr" in r}
    assert sorted(lrs) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert lrs[step] == pytest.approx(learning_rate_at(step, loop), rel=1e-12)
    with pytest.raises(ValueError, match="cosine_restarts"):
        restarts = LoopConfig(max_steps=6, schedule="cosine_restarts", restart_period=3)
        run_stage_with_trainer(StageSpec("stage3", "fe_window", ["FE_H"], 4, 32, restarts, select_on="val_rmse_FE_H"),
                               train, val, tmp_path / "restarts", init=base.model_dir)
    assert not (tmp_path / "restarts").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="rehearsal stars"):  # rehearsal without the stars to draw from
        spec.rehearsal = 2
        run_stage_with_trainer(spec, train, val, tmp_path / "rehearsal", init=base.model_dir)
