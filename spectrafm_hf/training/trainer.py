"""Stage 3 (or any stage) through ``transformers.Trainer`` instead of the Accelerate loop.

Same data, freezing, schedule shape and model selection as :func:`~spectrafm_hf.training.stages.run_stage`:

* training rows → the stage's :class:`~spectrafm_hf.data.collator.SpectraFMCollator`
  (:func:`~spectrafm_hf.training.stages.stage_collator`, the batcher of the Accelerate path: per-star
  random contexts, the stage's request and narrow windows); its draws are seeded by ``seed`` and the
  star indices of each batch, so a resumed run (Trainer replays the same shuffled order) draws the same;
* AdamW, linear warm-up then a cosine down to ``min_lr_ratio`` of the peak
  (``lr_scheduler_type="cosine_with_min_lr"`` with ``min_lr_rate``) or a constant rate, gradient
  clipping, ``max_steps``. Trainer's ``LambdaLR`` runs optimiser step k at the rate the Accelerate loop
  uses for step k - 1 (:func:`~spectrafm_hf.training.loop.learning_rate_at` ``(k - 1)`` to rounding;
  the first warm-up step at 0). "cosine_restarts" has no equivalent here and is refused;
* evaluation every ``eval_every`` steps computes the stage's selection metric (for stage 3 the RMSE of
  iron-rich validation stars, all window pixels) and ``load_best_model_at_end`` keeps the best;
  ``EarlyStoppingCallback`` implements ``patience``;
* resume: re-running continues from the newest ``checkpoint-*`` folder Trainer wrote.

The final (best) model is written with the same ``save_checkpoint`` as the Accelerate path, so
``AutoModel.from_pretrained(out_dir)`` loads either.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import load_model
from ..data.arrays import WindowData, rows_of
from .stages import (
    COMPLETE_MARKER,
    StageResult,
    StageSpec,
    apply_freezing,
    finished_stage,
    new_model,
    predict,
    record_stage_provenance,
    record_training_window,
    save_stage_checkpoint,
    stage_collator,
    stage_provenance,
)


class _RowDataset(torch.utils.data.Dataset):
    """Schema rows of a :class:`WindowData` (what ``SpectraFMCollator`` consumes), with the star
    index as ``id`` (the collator seeds each batch's draws from its ids)."""

    def __init__(self, data: WindowData):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {**rows_of(self.data, [i])[0], "id": int(i)}


def _selected_label(spec: StageSpec) -> str:
    """The label whose validation RMSE selects the model; refuse what this path does not implement."""
    if spec.rehearsal:
        raise ValueError("rehearsal is only implemented in the Accelerate loop; "
                         "set rehearsal: 0 or use --stage3-trainer accelerate")
    if not spec.select_on.startswith("val_rmse_"):
        raise ValueError(f"the Trainer path selects on a validation RMSE; got select_on={spec.select_on!r}")
    if spec.loop.schedule == "cosine_restarts":
        raise ValueError("schedule 'cosine_restarts' is only implemented in the Accelerate loop; "
                         "use 'cosine' or 'constant' with --stage3-trainer transformers")
    return spec.select_on[len("val_rmse_"):]


def _initial_model(train_data: WindowData, init, model_config, seed: int):
    """(model, feature extractor): loaded from the previous stage ``init`` (on the CPU: the Trainer
    places it), or a fresh model of ``model_config`` seeded by ``seed``."""
    torch.manual_seed(seed)
    if init is not None:
        return load_model(init, device="cpu")
    if model_config is None:
        raise ValueError("give init (a previous stage folder) or model_config for a fresh model")
    return new_model(model_config, train_data)


def _training_arguments(spec: StageSpec, output_dir: Path, seed: int):
    """``TrainingArguments`` mirroring ``spec.loop``: steps, AdamW, schedule, clipping, evaluation,
    checkpoints every ``eval_every`` steps (``load_best_model_at_end`` needs them aligned), logging."""
    from transformers import TrainingArguments

    loop = spec.loop
    if loop.schedule == "constant":
        schedule, schedule_options = "constant_with_warmup", None
    else:
        schedule, schedule_options = "cosine_with_min_lr", {"min_lr_rate": loop.min_lr_ratio}
    return TrainingArguments(
        output_dir=str(output_dir), max_steps=loop.max_steps, per_device_train_batch_size=spec.batch_size,
        learning_rate=loop.learning_rate, weight_decay=loop.weight_decay, warmup_steps=loop.warmup_steps,
        lr_scheduler_type=schedule, lr_scheduler_kwargs=schedule_options,
        max_grad_norm=loop.grad_clip if loop.grad_clip is not None else 0.0,
        eval_strategy="steps", eval_steps=loop.eval_every,
        save_strategy="steps", save_steps=loop.eval_every, save_total_limit=2,
        load_best_model_at_end=True, metric_for_best_model=spec.select_on, greater_is_better=False,
        logging_steps=loop.log_every, remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
        report_to="none", seed=seed, disable_tqdm=not loop.progress,
    )


def _selecting_trainer(spec: StageSpec, label: str, feature_extractor, validation: WindowData, **trainer_kwargs):
    """A ``transformers.Trainer`` whose evaluation is the stage's selection metric: the RMSE of ``label``
    on the ``validation`` stars, all window pixels in one context (not the NLL of random contexts)."""
    from transformers import Trainer

    truth = validation.labels[label]

    class _SelectingTrainer(Trainer):
        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            mean, _ = predict(self.model, feature_extractor, validation, (label,), spec.eval_batch_size)[label]
            self.model.train()
            metrics = {f"{metric_key_prefix}_{spec.select_on}": float(np.sqrt(np.nanmean((mean - truth) ** 2)))}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return _SelectingTrainer(**trainer_kwargs)


def _best_step(state) -> int | None:
    """The step of Trainer's best checkpoint (``checkpoint-<step>``), None when it kept none."""
    if not state.best_model_checkpoint:
        return None
    return int(Path(state.best_model_checkpoint).name.split("-")[-1])


def _write_metrics(log_history: list[dict], path: Path) -> None:
    """Trainer's log history in the Accelerate loop's ``metrics.jsonl`` layout (what the report reads)."""
    with path.open("w") as fh:
        for record in log_history:
            entry = {"step": record.get("step")}
            if "loss" in record:
                entry["train/loss"] = record["loss"]
            if "learning_rate" in record:
                entry["train/lr"] = record["learning_rate"]
            for key, value in record.items():
                if key.startswith("eval_val_"):
                    entry[f"eval/{key[len('eval_'):]}"] = value
            if len(entry) > 1:
                fh.write(json.dumps(entry) + "\n")


def run_stage_with_trainer(
    spec: StageSpec,
    train_data: WindowData,
    validation: WindowData,
    out_dir: str | Path,
    init: str | Path | None = None,
    model_config=None,
    card=None,
    seed: int = 0,
) -> StageResult:
    """Train ``spec`` with ``transformers.Trainer``; arguments as :func:`~spectrafm_hf.training.stages.run_stage`.

    Rehearsal and "cosine_restarts" are not offered on this path (raise rather than silently ignore them).
    """
    from transformers import EarlyStoppingCallback

    out_dir = Path(out_dir)
    provenance = stage_provenance(spec, train_data, validation, seed, init, model_config, trainer="transformers")
    finished = finished_stage(spec, out_dir, provenance)
    if finished is not None:
        return finished
    record_stage_provenance(out_dir, provenance)
    label = _selected_label(spec)
    start = time.time()
    model, feature_extractor = _initial_model(train_data, init, model_config, seed)
    record_training_window(feature_extractor, train_data)
    apply_freezing(model, spec)
    trainer = _selecting_trainer(
        spec, label, feature_extractor, validation, model=model,
        data_collator=stage_collator(spec, feature_extractor, train_data.wavelength, seed=seed),
        args=_training_arguments(spec, out_dir / "trainer", seed),
        train_dataset=_RowDataset(train_data), eval_dataset=_RowDataset(validation), processing_class=feature_extractor,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=spec.loop.patience)] if spec.loop.patience else [],
    )
    resume = bool(sorted((out_dir / "trainer").glob("checkpoint-*"))) or None
    last_step = int(trainer.train(resume_from_checkpoint=resume).global_step)
    save_stage_checkpoint(trainer.model, feature_extractor, out_dir, card=card)
    best_step, best_metric = _best_step(trainer.state), trainer.state.best_metric
    _write_metrics(trainer.state.log_history, out_dir / "metrics.jsonl")
    summary = {"stage": spec.name, "trainer": "transformers", "best_step": best_step, "best_metric": best_metric,
               "select_on": spec.select_on, "last_step": last_step, "n_train": len(train_data),
               "n_validation": len(validation), "window": spec.window, "init": str(init) if init else None}
    (out_dir / COMPLETE_MARKER).write_text(json.dumps(summary, indent=2))
    return StageResult(spec.name, out_dir, best_step, best_metric, last_step, 0, time.time() - start)
