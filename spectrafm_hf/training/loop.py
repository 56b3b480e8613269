"""A readable Accelerate training loop, :func:`train`, shared by every stage.

``train`` reads top to bottom: set up (accelerator, AdamW) → resume or seed → per step: learning
rate → batch → forward / backward / optimiser step → log → evaluate and select → save the state →
finish. Each is a short function defined just above ``train``, in the order it calls them.

What it guarantees, and why:

* **Identical schedule on every process.** The learning rate is a pure function of the optimiser step
  (:func:`learning_rate_at`), set on every process before every step. No scheduler object is stepped by
  one rank only (flaw 2 of the original code, where replicas drifted apart under DDP), and nothing
  depends on how Accelerate counts scheduler steps across processes.
* **Stateless, resumable data.** Batches come from ``make_batch(step, process_index, num_processes)``,
  which must be deterministic in its arguments (the stages draw star indices and contexts from
  ``(seed, step)``). Resuming at step k therefore replays exactly the batches an uninterrupted run
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
from typing import Any, Callable, Mapping

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
    """Learning rate used for optimiser step ``step`` (1-based). Pure: the same on every process.

    ``transformers.get_scheduler`` has the same shapes ("constant_with_warmup", "cosine_with_min_lr"
    with ``min_lr_rate``) but is not used here: a ``LambdaLR`` stepped after each optimiser step
    applies its factor for step k - 1 during step k (the first warm-up step runs at learning rate 0),
    and even aligned it rounds differently (up to 4e-16 relative), which would change every trained
    number of earlier runs.
    """
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


@dataclass
class LoopState:
    """The loop's own counters, saved as ``<out>/state/loop_state.json`` next to the Accelerate state.

    Attributes:
        step: last optimiser step covered by the saved state (0 = fresh start).
        best_metric: lowest selection metric so far (None before the first evaluation).
        best_step: step of ``best_metric``.
        stale: evaluations since the last improvement (early stopping compares it with ``patience``).
    """

    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    stale: int = 0

    @classmethod
    def load(cls, path: Path) -> "LoopState":
        return cls(**json.loads(Path(path).read_text()))

    def save(self, path: Path) -> None:
        """Write atomically (temporary file + rename): a half-written file must never be resumed from."""
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    def record(self, step: int, value: float) -> bool:
        """Note the selection metric ``value`` of ``step``; True when it beats the best so far."""
        if self.best_metric is None or value < self.best_metric:
            self.best_metric, self.best_step, self.stale = value, step, 0
            return True
        self.stale += 1
        return False


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

    _release_other_precision(config.mixed_precision)
    out_dir = Path(out_dir)
    trackers: list = [_make_tracker_class()(out_dir / "metrics.jsonl")]
    try:
        import tensorboard  # noqa: F401

        trackers.append("tensorboard")
    except ImportError:
        pass
    return Accelerator(mixed_precision=config.mixed_precision, log_with=trackers, project_dir=str(out_dir / "logs"))


def _release_other_precision(mixed_precision: str) -> None:
    """Clear Accelerate's per-process ``AcceleratorState`` when an earlier stage set another mixed precision.

    Accelerate keeps one such state per process and refuses a new ``Accelerator`` whose mixed precision
    differs from it ("AcceleratorState has already been initialized and cannot be changed"). One pipeline
    run trains every stage in one process, and stages may differ (paper.yaml: stages 1-2 bf16, stage 3
    the default "no"), so without this its stage 3 stopped with that error. The process group lives in
    ``PartialState``, which is kept.
    """
    from accelerate.state import AcceleratorState

    held = AcceleratorState._shared_state.get("_mixed_precision")
    if held is not None and held != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


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


# ----------------------------------------------------------------------------------------------
# The loop's steps, in the order :func:`train` calls them
# ----------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What every step of one :func:`train` call works with (the model and optimiser already prepared)."""

    accelerator: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    trainable: list[torch.nn.Parameter]
    config: LoopConfig
    out_dir: Path

    @property
    def state_dir(self) -> Path:
        return self.out_dir / "state"


def _set_up(model: torch.nn.Module, out_dir: Path, config: LoopConfig, accelerator=None) -> _Run:
    """Accelerator (a fresh one logging to ``out_dir`` unless given), AdamW over the trainable
    parameters, both passed through ``accelerator.prepare``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = accelerator or make_accelerator(out_dir, config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameter; unfreeze something before training")
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    return _Run(accelerator, model, optimizer, trainable, config, out_dir)


def _resume_or_seed(run: _Run) -> LoopState:
    """Restore model, optimiser and RNG states from ``<out>/state`` when its ``loop_state.json`` exists;
    otherwise seed torch/numpy/random, so dropout starts from a known state."""
    from accelerate.utils import set_seed

    path = run.state_dir / "loop_state.json"
    if not path.exists():
        set_seed(run.config.seed)
        return LoopState()
    run.accelerator.load_state(str(run.state_dir))
    state = LoopState.load(path)
    run.accelerator.print(f"resuming {run.out_dir} from step {state.step}")
    if state.step == 0:
        set_seed(run.config.seed)
    return state


class _Logbook:
    """Trackers (``metrics.jsonl``, TensorBoard), the progress bar, the per-rank LR log and the history
    that :class:`LoopResult` returns."""

    def __init__(self, run: _Run, run_config: Mapping | None, resumed_from: int):
        from tqdm.auto import tqdm

        config, accelerator = run.config, run.accelerator
        accelerator.init_trackers(run.out_dir.name, config=_flatten_config({**asdict(config), **(run_config or {})}))
        self.accelerator, self.config, self.rank = accelerator, config, accelerator.process_index
        self.lr_log = (run.out_dir / f"lr_rank{self.rank}.jsonl").open("a") if config.log_lr_per_rank else None
        self.history: list[dict] = []
        self.progress = tqdm(total=config.max_steps, initial=resumed_from, desc=run.out_dir.name,
                             disable=not (config.progress and accelerator.is_main_process), dynamic_ncols=True)

    def training_step(self, step: int, lr: float, loss: torch.Tensor) -> None:
        """Advance the bar; log the LR per rank, and every ``log_every`` steps the loss (mean over processes)."""
        self.progress.update(1)
        if self.lr_log is not None:
            self.lr_log.write(json.dumps({"step": step, "rank": self.rank, "lr": lr}) + "\n")
            self.lr_log.flush()
        if _is_due(step, self.config.log_every, self.config.max_steps):
            loss_value = self.accelerator.reduce(loss.detach(), reduction="mean").item()
            self.accelerator.log({"train/loss": loss_value, "train/lr": lr}, step=step)
            self.history.append({"step": step, "loss": loss_value, "lr": lr})
            self.progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}")

    def evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        self.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        self.history.append({"step": step, **metrics})

    def close(self) -> None:
        self.progress.close()
        if self.lr_log is not None:
            self.lr_log.close()


def _is_due(step: int, every: int, max_steps: int) -> bool:
    """Every ``every`` steps, and always at the last step."""
    return step % every == 0 or step == max_steps


def _set_learning_rate(optimizer: torch.optim.Optimizer, step: int, config: LoopConfig) -> float:
    """Set :func:`learning_rate_at` ``step`` on every parameter group (on every process alike)."""
    lr = learning_rate_at(step, config)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def _batch_on_device(make_batch: Callable, step: int, accelerator) -> dict:
    """This process's share of step ``step``'s batch, tensors moved to the accelerator's device."""
    batch = make_batch(step, accelerator.process_index, accelerator.num_processes)
    return {k: v.to(accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _optimizer_step(run: _Run, batch: Mapping) -> torch.Tensor:
    """Forward (under autocast), backward, gradient clipping, AdamW step; returns the loss."""
    with run.accelerator.autocast():
        loss = run.model(**batch).loss
    run.accelerator.backward(loss)
    if run.config.grad_clip is not None:
        run.accelerator.clip_grad_norm_(run.trainable, run.config.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss


@dataclass
class _Selection:
    """Model selection: ``evaluate`` (model → metrics), the metric to minimise, the best-model writer."""

    evaluate: Callable[[torch.nn.Module], Mapping[str, float]] | None
    metric: str
    save_best: Callable[[torch.nn.Module, Path], None] | None


def _evaluate_and_select(run: _Run, selection: _Selection, state: LoopState, logbook: _Logbook, step: int) -> bool:
    """Evaluate; hand improved weights to ``save_best`` (main process); True when early stopping triggers.

    Every process evaluates, but the main process's decision to stop is broadcast, so all stop together.
    """
    from accelerate.utils import broadcast_object_list

    accelerator = run.accelerator
    run.model.eval()
    with torch.no_grad():
        metrics = {k: float(v) for k, v in selection.evaluate(accelerator.unwrap_model(run.model)).items()}
    run.model.train()
    if selection.metric not in metrics:
        raise ValueError(f"evaluate() returned {sorted(metrics)}; select_metric {selection.metric!r} is not among them")
    improved = state.record(step, metrics[selection.metric])
    if improved and selection.save_best is not None and accelerator.is_main_process:
        selection.save_best(accelerator.unwrap_model(run.model), run.out_dir)
    logbook.evaluation(step, metrics)
    decision = [run.config.patience is not None and state.stale >= run.config.patience]
    broadcast_object_list(decision)
    accelerator.wait_for_everyone()
    return bool(decision[0])


def _save_state(run: _Run, state: LoopState, step: int) -> None:
    """``accelerator.save_state`` (model, optimiser, RNGs) to ``<out>/state``, then ``loop_state.json``:
    written last, so a state folder without it (a job killed mid-save) is never resumed from."""
    state.step = step
    run.accelerator.save_state(str(run.state_dir))
    if run.accelerator.is_main_process:
        state.save(run.state_dir / "loop_state.json")
    run.accelerator.wait_for_everyone()


def _interrupt_if_asked(step: int, config: LoopConfig, logbook: _Logbook) -> None:
    """Simulate a killed job after ``config.interrupt_after`` steps (tests of resume)."""
    if config.interrupt_after is not None and step >= config.interrupt_after:
        logbook.close()
        raise TrainingInterrupted(f"interrupted after step {step} (interrupt_after={config.interrupt_after})")


def _finish(run: _Run, selection: _Selection) -> None:
    """Without evaluations, the last weights are the ones saved; then close the trackers on all ranks."""
    if selection.evaluate is None and selection.save_best is not None and run.accelerator.is_main_process:
        selection.save_best(run.accelerator.unwrap_model(run.model), run.out_dir)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()


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
        model: ``model(**batch).loss`` is minimised; only parameters with ``requires_grad`` are trained.
        make_batch: ``(step, process_index, num_processes) → dict of tensors`` for step ``step``
            (1-based); deterministic in its arguments, each process getting its own share.
        out_dir: the run folder (state, metrics, logs; the stage writes its checkpoint here too).
        evaluate: ``model → {metric: value}``, every ``eval_every`` steps and at the end, on every process.
        select_metric: key of ``evaluate``'s result to minimise.
        save_best: ``(unwrapped model, out_dir) → None``, on the main process when the selected metric
            improves (and at the end when there is no ``evaluate``).
        run_config: hyper-parameters to record with the trackers.
        accelerator: an ``Accelerator`` to use instead of :func:`make_accelerator`'s.
    """
    run = _set_up(model, Path(out_dir), config, accelerator)
    state = _resume_or_seed(run)
    resumed_from = step = state.step
    logbook = _Logbook(run, run_config, resumed_from)
    selection = _Selection(evaluate, select_metric, save_best)
    start_time, stopped_early = time.time(), False
    run.model.train()
    while step < config.max_steps:
        step += 1
        lr = _set_learning_rate(run.optimizer, step, config)
        batch = _batch_on_device(make_batch, step, run.accelerator)
        loss = _optimizer_step(run, batch)
        logbook.training_step(step, lr, loss)
        if evaluate is not None and _is_due(step, config.eval_every, config.max_steps):
            stopped_early = _evaluate_and_select(run, selection, state, logbook, step)
        if _is_due(step, config.checkpoint_every, config.max_steps) or stopped_early:
            _save_state(run, state, step)
        if stopped_early:
            break
        _interrupt_if_asked(step, config, logbook)
    logbook.close()
    _finish(run, selection)
    return LoopResult(last_step=step, best_step=state.best_step, best_metric=state.best_metric,
                      resumed_from=resumed_from, stopped_early=stopped_early, seconds=time.time() - start_time,
                      history=logbook.history)
