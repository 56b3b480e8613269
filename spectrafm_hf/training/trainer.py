"""Stage 3 (or any stage) through ``transformers.Trainer`` instead of the Accelerate loop.

Same data, freezing, schedule shape and model selection as :func:`~spectrafm_hf.training.stages.run_stage`:

* training rows → :class:`~spectrafm_hf.data.collator.SpectraFMCollator` (per-star random contexts);
* AdamW, linear warm-up then cosine (``lr_scheduler_type="cosine"``; the Accelerate loop's
  ``min_lr_ratio`` has no Trainer equivalent and is ignored), gradient clipping, ``max_steps``;
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

from .baselines import WindowData
from .stages import (COMPLETE_MARKER, StageResult, StageSpec, apply_freezing, finished_stage, load_model, new_model,
                     predict, rows_of)


class _RowDataset(torch.utils.data.Dataset):
    """Schema rows of a :class:`WindowData` (what ``SpectraFMCollator`` consumes)."""

    def __init__(self, data: WindowData):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return rows_of(self.data, [i])[0]


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

    Rehearsal is not offered on this path (raise rather than silently ignore it).
    """
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

    from ..data.collator import SpectraFMCollator
    from ..hub.remote_code import save_checkpoint

    out_dir = Path(out_dir)
    finished = finished_stage(spec, out_dir)
    if finished is not None:
        return finished
    if spec.rehearsal:
        raise ValueError("rehearsal is only implemented in the Accelerate loop; set rehearsal: 0 or use --stage3-trainer accelerate")
    if not spec.select_on.startswith("val_rmse_"):
        raise ValueError(f"the Trainer path selects on a validation RMSE; got select_on={spec.select_on!r}")
    label = spec.select_on[len("val_rmse_"):]
    start = time.time()
    torch.manual_seed(seed)
    if init is None:
        model, feature_extractor = new_model(model_config, train_data)
    else:
        model, feature_extractor = load_model(init)
    apply_freezing(model, spec)

    loop = spec.loop
    collator = SpectraFMCollator(feature_extractor, train_data.wavelength, request=spec.request,
                                 context_length=spec.context_length, seed=seed)
    truth = validation.labels[label]

    class _SelectingTrainer(Trainer):
        """Evaluation = the stage's selection metric (RMSE with all window pixels), not the NLL."""

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            mean, _ = predict(self.model, feature_extractor, validation, (label,), spec.eval_batch_size)[label]
            self.model.train()
            metrics = {f"{metric_key_prefix}_{spec.select_on}": float(np.sqrt(np.nanmean((mean - truth) ** 2)))}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    args = TrainingArguments(
        output_dir=str(out_dir / "trainer"),
        max_steps=loop.max_steps,
        per_device_train_batch_size=spec.batch_size,
        learning_rate=loop.learning_rate,
        weight_decay=loop.weight_decay,
        warmup_steps=loop.warmup_steps,
        lr_scheduler_type="constant_with_warmup" if loop.schedule == "constant" else "cosine",
        max_grad_norm=loop.grad_clip if loop.grad_clip is not None else 0.0,
        eval_strategy="steps",
        eval_steps=loop.eval_every,
        save_strategy="steps",
        save_steps=loop.eval_every,  # load_best_model_at_end needs save steps aligned with eval steps
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model=spec.select_on,
        greater_is_better=False,
        logging_steps=loop.log_every,
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        seed=seed,
        disable_tqdm=not loop.progress,
    )
    callbacks = [EarlyStoppingCallback(early_stopping_patience=loop.patience)] if loop.patience else []
    trainer = _SelectingTrainer(model=model, args=args, train_dataset=_RowDataset(train_data),
                                eval_dataset=_RowDataset(validation), data_collator=collator,
                                processing_class=feature_extractor, callbacks=callbacks)
    checkpoints = sorted((out_dir / "trainer").glob("checkpoint-*"))
    output = trainer.train(resume_from_checkpoint=bool(checkpoints) or None)
    save_checkpoint(trainer.model, feature_extractor, out_dir, card=card)
    best_metric = trainer.state.best_metric
    best_step = None
    if trainer.state.best_model_checkpoint:
        best_step = int(Path(trainer.state.best_model_checkpoint).name.split("-")[-1])
    log_path = out_dir / "metrics.jsonl"
    with log_path.open("w") as fh:  # the same JSONL layout as the Accelerate loop, for the report
        for record in trainer.state.log_history:
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
    summary = {"stage": spec.name, "trainer": "transformers", "best_step": best_step, "best_metric": best_metric,
               "select_on": spec.select_on, "last_step": int(output.global_step), "n_train": len(train_data),
               "n_validation": len(validation), "window": spec.window, "init": str(init) if init else None}
    (out_dir / COMPLETE_MARKER).write_text(json.dumps(summary, indent=2))
    return StageResult(spec.name, out_dir, best_step, best_metric, int(output.global_step), 0, time.time() - start)
