"""A readable Accelerate training loop: one function, :func:`train`, shared by every stage.

What it guarantees, and why:

* **Identical schedule on every process.** The learning rate is a pure function of the optimiser step
  (:func:`learning_rate_at`), set on every process before every step. No scheduler object is stepped by
  one rank only (flaw 2 of the original code, where replicas drifted apart under DDP), and nothing
  depends on how Accelerate counts scheduler steps across processes.
* **Stateless, resumable data.** Batches come from ``make_batch(step, process_index, num_processes)``,
  which must be deterministic in its arguments (the stages draw star indices and contexts from
  ``seed + step``). Resuming at step k therefore replays exactly the batches an uninterrupted run
  would have seen, without a data-loader state to save.
* **Resume after interruption.** Every ``checkpoint_every`` steps the full Accelerate state (model,
  optimiser, RNG states) goes to ``<out>/state`` via ``accelerator.save_state``, and the loop's own
  counters to ``<out>/state/loop_state.json`` (written last, atomically: a state folder without it is
  ignored). Re-running the same command continues from there.
* **Model selection.** ``evaluate(model)`` returns metrics; the one named ``select_metric`` (lower is
  better) decides the best step, whose weights are handed to ``save_best`` (the stage writes a full
  checkpoint: ``save_pretrained`` + feature extractor + card). Early stopping after ``patience``
  evaluations without improvement.
* **Tracking.** ``<out>/metrics.jsonl`` (one JSON object per logged step, main process), TensorBoard
  under ``<out>/logs`` when ``tensorboard`` is installed, a tqdm progress bar on the main process, and
  with ``log_lr_per_rank`` a ``lr_rank<r>.jsonl`` per process (used by the 2-process test to prove the
  schedules agree).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch

SCHEDULES = ("constant", "cosine", "cosine_restarts")


@dataclass
class LoopConfig:
    """Optimiser, schedule and bookkeeping of one training run.

    Attributes:
        max_steps: optimiser steps in total (not epochs: stages differ wildly in dataset size).
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up from 0 to ``learning_rate``.
        schedule: "constant", "cosine" (one decay to ``min_lr_ratio`` at ``max_steps``) or
            "cosine_restarts" (the paper's warm restarts, period ``restart_period`` steps).
        restart_period: period of "cosine_restarts" in steps.
        min_lr_ratio: floor of the cosine as a fraction of ``learning_rate``.
        grad_clip: max global gradient norm (None = no clipping).
        eval_every: steps between evaluations (and best-checkpoint decisions).
        checkpoint_every: steps between ``save_state`` snapshots for resuming.
        patience: stop after this many evaluations without improvement (None = never).
        log_every: steps between training-loss log lines.
        mixed_precision: "no", "bf16" or "fp16" (passed to ``Accelerator``).
        log_lr_per_rank: also write each process's LR per step to ``lr_rank<r>.jsonl``.
        progress: show a tqdm bar on the main process.
        interrupt_after: raise :class:`TrainingInterrupted` after this step (tests of resume).
        seed: seeds torch/numpy/random (dropout) at a fresh start; a resumed run restores saved RNGs.
    """

    max_steps: int
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    restart_period: int | None = None
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    eval_every: int = 100
    checkpoint_every: int = 200
    patience: int | None = None
    log_every: int = 10
    mixed_precision: str = "no"
    log_lr_per_rank: bool = False
    progress: bool = True
    interrupt_after: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be ≥ 1, got {self.max_steps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "cosine_restarts" and not self.restart_period:
            raise ValueError("schedule 'cosine_restarts' needs restart_period (steps), e.g. restart_period: 500")
        for name in ("eval_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")

    @classmethod
    def from_dict(cls, values: Mapping) -> "LoopConfig":
        """Build from a YAML mapping; unknown keys are an error naming them (typos must not pass)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; valid options: {sorted(known)}")
        return cls(**dict(values))


def learning_rate_at(step: int, config: LoopConfig) -> float:
    """Learning rate used for optimiser step ``step`` (1-based). Pure: the same on every process."""
    peak = config.learning_rate
    if config.warmup_steps and step <= config.warmup_steps:
        return peak * step / config.warmup_steps
    if config.schedule == "constant":
        return peak
    after = step - config.warmup_steps
    if config.schedule == "cosine":
        span = max(1, config.max_steps - config.warmup_steps)
        progress = min(1.0, after / span)
    else:  # cosine_restarts
        progress = (after % config.restart_period) / config.restart_period
    floor = config.min_lr_ratio * peak
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class TrainingInterrupted(RuntimeError):
    """Raised by ``interrupt_after`` to simulate a killed job (the state saved before it survives)."""


@dataclass
class LoopResult:
    """What a finished (or early-stopped) run reports."""

    last_step: int
    best_step: int | None
    best_metric: float | None
    resumed_from: int
    stopped_early: bool
    seconds: float
    history: list[dict] = field(default_factory=list)


class JSONLTracker:
    """An Accelerate tracker writing one JSON object per ``log`` call (works offline, diff-able)."""

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def tracker(self):
        return self.path

    def start(self):
        pass

    def store_init_configuration(self, values: dict):
        with self.path.open("a") as fh:
            fh.write(json.dumps({"config": values}, default=str) + "\n")

    def log(self, values: dict, step: int | None = None, **kwargs):
        record = {"step": step, "time": time.time(), **{k: _jsonable(v) for k, v in values.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def finish(self):
        pass


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def _make_tracker_class():
    # Subclass accelerate's GeneralTracker lazily, so importing this module stays light.
    from accelerate.tracking import GeneralTracker

    class _Tracker(JSONLTracker, GeneralTracker):
        def __init__(self, path):
            JSONLTracker.__init__(self, path)
            GeneralTracker.__init__(self)

    return _Tracker


def make_accelerator(out_dir: str | os.PathLike, config: LoopConfig):
    """An ``Accelerator`` logging to ``<out>/metrics.jsonl`` (+ TensorBoard under ``<out>/logs`` if installed)."""
    from accelerate import Accelerator

    out_dir = Path(out_dir)
    trackers: list = [_make_tracker_class()(out_dir / "metrics.jsonl")]
    try:
        import tensorboard  # noqa: F401

        trackers.append("tensorboard")
    except ImportError:
        pass
    return Accelerator(mixed_precision=config.mixed_precision, log_with=trackers, project_dir=str(out_dir / "logs"))


def _flatten_config(values: Mapping, prefix: str = "") -> dict:
    # TensorBoard hparams accept only scalars and strings.
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten_config(value, name + "."))
        elif isinstance(value, (bool, int, float, str)) or value is None:
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def train(
    model: torch.nn.Module,
    make_batch: Callable[[int, int, int], Mapping[str, torch.Tensor]],
    out_dir: str | os.PathLike,
    config: LoopConfig,
    evaluate: Callable[[torch.nn.Module], Mapping[str, float]] | None = None,
    select_metric: str = "val_loss",
    save_best: Callable[[torch.nn.Module, Path], None] | None = None,
    run_config: Mapping | None = None,
    accelerator=None,
) -> LoopResult:
    """Train ``model`` for ``config.max_steps`` AdamW steps; resume from ``<out>/state`` if present.

    Args:
        model: returns an output with ``.loss`` when called as ``model(**batch)``. Only parameters with
            ``requires_grad`` are optimised (stages freeze blocks before calling).
        make_batch: ``(step, process_index, num_processes) → dict of tensors`` for step ``step``
            (1-based); deterministic in its arguments, each process getting its own share.
        out_dir: the run folder (state, metrics, logs; the stage writes its checkpoint here too).
        evaluate: ``model → {metric: value}``, called every ``eval_every`` steps and at the end, on
            every process (all ranks must agree on early stopping).
        select_metric: key of ``evaluate``'s result to minimise.
        save_best: ``(unwrapped model, out_dir) → None`` called on the main process when the selected
            metric improves (and at the end when there is no ``evaluate``).
        run_config: hyper-parameters to record with the trackers.
    Returns:
        :class:`LoopResult`.
    """
    from accelerate.utils import broadcast_object_list, set_seed
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = accelerator or make_accelerator(out_dir, config)
    state_dir = out_dir / "state"
    loop_state_path = state_dir / "loop_state.json"

    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameter; unfreeze something before training")
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)

    loop_state = {"step": 0, "best_metric": None, "best_step": None, "stale": 0}
    if loop_state_path.exists():
        accelerator.load_state(str(state_dir))
        loop_state = json.loads(loop_state_path.read_text())
        accelerator.print(f"resuming {out_dir} from step {loop_state['step']}")
    resumed_from = loop_state["step"]
    if resumed_from == 0:
        set_seed(config.seed)  # dropout RNG from a known state; resumed runs restore the saved RNG states instead

    accelerator.init_trackers(
        out_dir.name, config=_flatten_config({**asdict(config), **(run_config or {})})
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    lr_log = (out_dir / f"lr_rank{rank}.jsonl").open("a") if config.log_lr_per_rank else None
    history: list[dict] = []
    progress = tqdm(
        total=config.max_steps, initial=resumed_from, desc=out_dir.name,
        disable=not (config.progress and accelerator.is_main_process), dynamic_ncols=True,
    )
    start_time, stopped_early = time.time(), False

    def run_evaluation(step: int) -> bool:
        """Evaluate, maybe save the best weights; return True when early stopping triggers."""
        model.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in evaluate(accelerator.unwrap_model(model)).items()}
        model.train()
        if select_metric not in metrics:
            raise ValueError(f"evaluate() returned {sorted(metrics)}; select_metric {select_metric!r} is not among them")
        value = metrics[select_metric]
        improved = loop_state["best_metric"] is None or value < loop_state["best_metric"]
        if improved:
            loop_state.update(best_metric=value, best_step=step, stale=0)
            if save_best is not None and accelerator.is_main_process:
                save_best(accelerator.unwrap_model(model), out_dir)
        else:
            loop_state["stale"] += 1
        accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        history.append({"step": step, **metrics})
        stop = config.patience is not None and loop_state["stale"] >= config.patience
        decision = [stop]
        broadcast_object_list(decision)  # the main process decides for everyone
        accelerator.wait_for_everyone()
        return bool(decision[0])

    def checkpoint(step: int) -> None:
        loop_state["step"] = step
        accelerator.save_state(str(state_dir))
        if accelerator.is_main_process:
            tmp = loop_state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(loop_state))
            os.replace(tmp, loop_state_path)  # last: a state folder without it is never resumed from
        accelerator.wait_for_everyone()

    model.train()
    step = resumed_from
    while step < config.max_steps:
        step += 1
        lr = learning_rate_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = make_batch(step, rank, world)
        batch = {k: v.to(accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with accelerator.autocast():
            loss = model(**batch).loss
        accelerator.backward(loss)
        if config.grad_clip is not None:
            accelerator.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress.update(1)
        if lr_log is not None:
            lr_log.write(json.dumps({"step": step, "rank": rank, "lr": lr}) + "\n")
            lr_log.flush()
        if step % config.log_every == 0 or step == config.max_steps:
            loss_value = accelerator.reduce(loss.detach(), reduction="mean").item()
            accelerator.log({"train/loss": loss_value, "train/lr": lr}, step=step)
            history.append({"step": step, "loss": loss_value, "lr": lr})
            progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}")
        if evaluate is not None and (step % config.eval_every == 0 or step == config.max_steps):
            stopped_early = run_evaluation(step)
        if step % config.checkpoint_every == 0 or step == config.max_steps or stopped_early:
            checkpoint(step)
        if stopped_early:
            break
        if config.interrupt_after is not None and step >= config.interrupt_after:
            progress.close()
            if lr_log is not None:
                lr_log.close()
            raise TrainingInterrupted(f"interrupted after step {step} (interrupt_after={config.interrupt_after})")

    progress.close()
    if lr_log is not None:
        lr_log.close()
    if evaluate is None and save_best is not None and accelerator.is_main_process:
        save_best(accelerator.unwrap_model(model), out_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return LoopResult(
        last_step=step,
        best_step=loop_state["best_step"],
        best_metric=loop_state["best_metric"],
        resumed_from=resumed_from,
        stopped_early=stopped_early,
        seconds=time.time() - start_time,
        history=history,
    )
