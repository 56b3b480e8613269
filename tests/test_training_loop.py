"""The Accelerate loop (spectrafm_hf.training.loop) on a toy regression model: schedule, resume, selection."""

import json

import pytest
import torch
from torch import nn

from spectrafm_hf.training.loop import LoopConfig, TrainingInterrupted, learning_rate_at, train


class ToyOutput(dict):
    @property
    def loss(self):
        return self["loss"]


class ToyModel(nn.Module):
    """y = w·x with dropout, so a resumed run only matches if RNG states are restored too."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.dropout = nn.Dropout(0.2)

    def forward(self, x, y):
        prediction = self.linear(self.dropout(x)).squeeze(-1)
        return ToyOutput(loss=((prediction - y) ** 2).mean())


TRUE_W = torch.tensor([1.0, -2.0, 0.5, 3.0])


def make_batch(step, rank, world):
    generator = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(16, 4, generator=generator)
    return {"x": x, "y": x @ TRUE_W}


def evaluate(model):
    batch = make_batch(0, 0, 1)
    return {"val_loss": float(((model.linear(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean())}


def test_learning_rate_schedules():
    cfg = LoopConfig(max_steps=100, learning_rate=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate_at(5, cfg) == pytest.approx(0.5)
    assert learning_rate_at(10, cfg) == pytest.approx(1.0)
    assert learning_rate_at(100, cfg) == pytest.approx(0.1)
    assert learning_rate_at(55, cfg) == pytest.approx(0.55)
    restarts = LoopConfig(max_steps=100, learning_rate=1.0, schedule="cosine_restarts", restart_period=20)
    assert learning_rate_at(20, restarts) == pytest.approx(1.0)  # restart
    assert learning_rate_at(10, restarts) == pytest.approx(0.5)
    assert learning_rate_at(7, LoopConfig(max_steps=10, learning_rate=0.3, schedule="constant")) == 0.3
    with pytest.raises(ValueError, match="restart_period"):
        LoopConfig(max_steps=10, schedule="cosine_restarts")
    with pytest.raises(ValueError, match="unknown training option"):
        LoopConfig.from_dict({"max_steps": 10, "lerning_rate": 1e-3})


def test_train_learns_logs_and_saves_best(tmp_path):
    saved = []
    cfg = LoopConfig(max_steps=60, learning_rate=0.05, eval_every=20, checkpoint_every=30, log_every=10,
                     progress=False, schedule="constant")
    result = train(ToyModel(), make_batch, tmp_path / "run", cfg, evaluate=evaluate,
                   save_best=lambda model, out: saved.append(float(model.linear.weight[0, 0].detach())))
    assert result.last_step == 60 and result.resumed_from == 0
    assert result.best_metric < 1.0  # started near sum(w²) ≈ 14
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "train/loss" in r]
    assert steps == [10, 20, 30, 40, 50, 60]
    assert [r["step"] for r in records if "eval/val_loss" in r] == [20, 40, 60]
    assert 1 <= len(saved) <= 3
    assert (tmp_path / "run" / "state" / "loop_state.json").exists()


def test_resume_after_interruption_reproduces_uninterrupted_run(tmp_path):
    cfg = dict(max_steps=12, learning_rate=0.05, checkpoint_every=4, log_every=1, progress=False,
               warmup_steps=3, schedule="cosine")
    torch.manual_seed(0)
    reference = ToyModel()
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    train(reference, make_batch, tmp_path / "ref", LoopConfig(**cfg))

    interrupted = ToyModel()
    interrupted.load_state_dict(initial)
    with pytest.raises(TrainingInterrupted):
        train(interrupted, make_batch, tmp_path / "run", LoopConfig(**cfg, interrupt_after=6))
    assert json.loads((tmp_path / "run" / "state" / "loop_state.json").read_text())["step"] == 4

    resumed = ToyModel()  # a fresh process would build the model again from its initial weights
    resumed.load_state_dict(initial)
    result = train(resumed, make_batch, tmp_path / "run", LoopConfig(**cfg))
    assert result.resumed_from == 4 and result.last_step == 12
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=1e-6)


def test_early_stopping_and_frozen_model_errors(tmp_path):
    calls = iter([1.0, 2.0, 3.0, 4.0, 5.0])
    cfg = LoopConfig(max_steps=50, eval_every=2, patience=2, progress=False)
    result = train(ToyModel(), make_batch, tmp_path / "es", cfg, evaluate=lambda m: {"val_loss": next(calls)})
    assert result.stopped_early and result.last_step == 6 and result.best_step == 2
    frozen = ToyModel()
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        train(frozen, make_batch, tmp_path / "frozen", cfg)


def test_loop_state_records_improvements_and_saves_atomically(tmp_path):
    from spectrafm_hf.training.loop import LoopState

    state = LoopState()
    assert state.record(2, 1.0) and not state.record(4, 1.0) and state.stale == 1
    assert state.record(6, 0.5) and (state.best_step, state.best_metric, state.stale) == (6, 0.5, 0)
    state.step = 6
    path = tmp_path / "loop_state.json"
    state.save(path)
    assert LoopState.load(path) == state and not path.with_suffix(".tmp").exists()
    assert json.loads(path.read_text()) == {"step": 6, "best_metric": 0.5, "best_step": 6, "stale": 0}


def test_stages_with_different_mixed_precision_train_in_one_process(tmp_path):
    """paper.yaml trains stages 1-2 in bf16 and stage 3 in fp32 in one pipeline process: Accelerate's
    per-process state used to refuse the second precision; now each run gets its own and trains."""
    from accelerate.state import AcceleratorState

    for name, precision in (("bf16", "bf16"), ("fp32", "no"), ("bf16_again", "bf16")):
        torch.manual_seed(0)
        model = ToyModel()
        result = train(model, make_batch, tmp_path / name,
                       LoopConfig(max_steps=3, learning_rate=0.05, eval_every=3, mixed_precision=precision,
                                  progress=False), evaluate=evaluate)
        assert result.last_step == 3 and result.best_metric is not None
        assert AcceleratorState().mixed_precision == precision
