"""Fine-tuning through ``transformers.Trainer``: the pieces a script needs, and any stage through them.

A script of your own (``docs/finetune.md`` is the worked example) uses a plain ``Trainer``::

    collator = SpectraFMCollator(feature_extractor, wavelength, request=["FE_H"], pixel_window=[(16106, 16220)])
    trainer = Trainer(
        model=model, data_collator=collator, processing_class=feature_extractor,
        args=TrainingArguments(out, max_steps=600, eval_strategy="steps", eval_steps=25, save_steps=25,
                               load_best_model_at_end=True, metric_for_best_model="FE_H_rmse",
                               greater_is_better=False, lr_scheduler_type="cosine_warmup_with_min_lr",
                               lr_scheduler_kwargs={"min_lr_rate": 0.05}, ...),
        train_dataset=training_rows(train), eval_dataset=evaluation_rows(validation),
        compute_metrics=make_compute_metrics(feature_extractor, ["FE_H"]),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=8)],
    )

* rows (:func:`~spectrafm_hf.data.collator.training_rows`, :func:`~spectrafm_hf.data.collator.evaluation_rows`):
  no ``remove_unused_columns`` setting is needed, and evaluation batches are whole windows (every usable
  pixel, deterministic), not random contexts;
* :func:`make_compute_metrics`: physical units (the feature extractor's ``to_physical``); per label ``n``,
  ``rmse``, ``bias``, ``sigma_mad`` (all stars, and per [Fe/H] bin when FE_H is evaluated), ``z_std``,
  ``coverage_68``, ``coverage_95``; ``label_ids`` as Trainer passes them (the tuple ``(labels,
  label_errors)``: the model's ``forward`` takes both). The numbers are those of the pipeline's
  evaluation (``stages.predict`` + ``evaluation.evaluate_label``) of the same model on the same stars
  when ``per_device_eval_batch_size`` equals the pipeline's ``eval_batch_size`` (same batches, same
  predictions; truths agree to 1e-16 relative);
* :func:`physical_predictions`: ``Trainer.predict``'s output → values, 1σ and truths per label;
* schedules are transformers' own (``lr_scheduler_type``); :func:`scheduler_arguments` gives the ones
  equal to a :class:`~spectrafm_hf.training.loop.LoopConfig`'s schedule;
* early stopping: ``transformers.EarlyStoppingCallback``.

:func:`run_stage_with_trainer` runs a stage (the pipeline's ``stage3_trainer: transformers``, and
``spectrafm finetune``) with exactly these pieces; same data, freezing, rehearsal, schedule and
selection as :func:`~spectrafm_hf.training.stages.run_stage`:

* training rows → the stage's collator (:func:`~spectrafm_hf.training.stages.stage_collator`: per-star
  random contexts, the stage's request and narrow windows), seeded by ``seed`` and the star indices of
  each batch, so a resumed run (Trainer replays the same shuffled order) draws the same; with
  ``spec.rehearsal`` each batch also carries that many stars of ``rehearsal`` (drawn from the batch
  seed; the Accelerate path draws them from ``(seed, step)``: the same recipe, other draws); with
  ``spec.augment`` the training stars get observed-like imperfections from the batch seed and the
  validation stars one fixed draw (:func:`~spectrafm_hf.training.stages.augmented_validation`), as on the
  Accelerate path;
* AdamW, warm-up then a cosine down to ``min_lr_ratio`` of the peak or a constant rate: optimiser step k
  runs at the Accelerate loop's :func:`~spectrafm_hf.training.loop.learning_rate_at` ``(k)`` (to 3e-16
  relative); gradient clipping; ``max_steps``. "cosine_restarts" is refused (see :func:`scheduler_arguments`);
* evaluation every ``eval_every`` steps on whole windows of the validation stars (for stage 3 the
  iron-rich ones): ``select_on="val_rmse_<LABEL>"`` selects on that label's RMSE, ``"val_loss"`` on the
  whole-window NLL (the Accelerate path's ``val_loss`` uses fixed random contexts instead);
  ``load_best_model_at_end`` keeps the best, ``EarlyStoppingCallback`` implements ``patience``;
* resume: re-running continues from the newest ``checkpoint-*`` folder Trainer wrote.

The final (best) model is written with the same ``save_checkpoint`` as the Accelerate path, so
``AutoModel.from_pretrained(out_dir)`` loads either.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..checkpoints import load_model
from ..data.arrays import WindowData
from ..data.collator import evaluation_rows, training_rows
from ..data.labels import LABELS
from .evaluation import flat_label_metrics
from .loop import LoopConfig
from .stages import (
    COMPLETE_MARKER,
    StageResult,
    StageSpec,
    apply_freezing,
    augmented_validation,
    finished_stage,
    new_model,
    record_stage_provenance,
    record_training_context,
    record_training_window,
    save_stage_checkpoint,
    stage_collator,
    stage_provenance,
)

# ----------------------------------------------------------------------------------------------
# Pieces for a Trainer script
# ----------------------------------------------------------------------------------------------


def physical_predictions(predictions, label_ids, feature_extractor, labels: Sequence[str]
                         ) -> dict[str, dict[str, np.ndarray]]:
    """Trainer's predictions and label ids of whole-window batches → physical units, per label.

    Args:
        predictions: ``EvalPrediction.predictions`` / ``PredictionOutput.predictions``: the model's
            outputs without the loss, ``(mean, log_variance, ...)``, each (N, Q), standardised.
        label_ids: ``(labels, label_errors[, query_mask])`` (Trainer's default label names for this
            model) or the ``labels`` array alone, (N, Q), standardised; NaN (or ``query_mask`` 0) =
            no truth.
        feature_extractor: the model's feature extractor (its label statistics).
        labels: the Q requested labels, in the collator's request order.
    Returns:
        ``{label: {"pred": (N,), "sigma": (N,), "true": (N,)}}`` in the label's unit (dex, K); ``true``
        is NaN for stars without a truth (or None-like all-NaN when ``label_ids`` is None).
    """
    labels = list(labels)
    mean, log_variance = (np.asarray(p, np.float64) for p in predictions[:2])
    if mean.ndim != 2 or mean.shape[1] != len(labels):
        raise ValueError(f"the predictions have shape {mean.shape}, for {len(labels)} labels {labels} they need "
                         f"(n_stars, {len(labels)}); give the labels the collator requests, in its order")
    values, sigma = feature_extractor.to_physical(labels, mean, log_variance)
    truth = np.full(mean.shape, np.nan)
    if label_ids is not None:
        parts = tuple(label_ids) if isinstance(label_ids, (tuple, list)) else (label_ids,)
        target = np.asarray(parts[0], np.float64)
        if target.shape != mean.shape:
            raise ValueError(f"label_ids have shape {target.shape} but the predictions {mean.shape}; evaluate on "
                             "spectrafm_hf.data.collator.evaluation_rows(...)")
        truth = feature_extractor.to_physical(labels, target, np.zeros_like(target))[0]
        if len(parts) > 2:  # label_names = [labels, label_errors, query_mask]
            truth = np.where(np.asarray(parts[2]) > 0, truth, np.nan)
    return {name: {"pred": values[:, q], "sigma": sigma[:, q], "true": truth[:, q]} for q, name in enumerate(labels)}


def make_compute_metrics(feature_extractor, labels: Sequence[str]) -> Callable[..., dict[str, float]]:
    """``compute_metrics`` for ``transformers.Trainer`` in physical units.

    For each of ``labels`` (the collator's request, in its order): ``<LABEL>_n``, ``_rmse``, ``_bias``,
    ``_sigma_mad``, ``_z_std``, ``_coverage_68``, ``_coverage_95`` over the evaluated stars with a truth,
    and with FE_H among the labels ``_rmse_feh_ge_-1``, ``_rmse_feh_lt_-1``, ... by true [Fe/H]
    (:func:`~spectrafm_hf.training.evaluation.flat_label_metrics`). Trainer prefixes them with ``eval_``
    (``metric_for_best_model="FE_H_rmse"``). Evaluate on
    :func:`~spectrafm_hf.data.collator.evaluation_rows` (whole windows).
    """
    labels = list(labels)
    for name in labels:
        feature_extractor.token_id(name)  # an unknown label fails here, not after the first evaluation

    def compute_metrics(eval_prediction) -> dict[str, float]:
        per_label = physical_predictions(eval_prediction.predictions, eval_prediction.label_ids,
                                         feature_extractor, labels)
        true_feh = per_label["FE_H"]["true"] if "FE_H" in per_label else None
        metrics = {}
        for name, arrays in per_label.items():
            flat = flat_label_metrics(arrays["pred"], arrays["sigma"], arrays["true"], true_feh)
            metrics.update({f"{name}_{key}": float(value) for key, value in flat.items()})
        return metrics

    return compute_metrics


def scheduler_arguments(loop: LoopConfig) -> dict:
    """``TrainingArguments`` keywords for the learning-rate schedule of ``loop``, with transformers'
    own schedulers: ``warmup_steps``, ``lr_scheduler_type``, ``lr_scheduler_kwargs``.

    "cosine" → ``cosine_warmup_with_min_lr`` with ``min_lr_rate = min_lr_ratio``; "constant" → the same
    with ``min_lr_rate = 1`` (warm-up, then the peak). That scheduler (unlike ``cosine_with_min_lr`` or
    ``constant_with_warmup``, whose ``LambdaLR`` runs step k at the factor of step k − 1) gives
    optimiser step k the rate :func:`~spectrafm_hf.training.loop.learning_rate_at` gives it, to
    3e-16 relative rounding. "cosine_restarts" is refused: transformers' ``cosine_with_restarts`` has no
    floor and runs one step behind.
    """
    if loop.schedule == "cosine_restarts":
        raise ValueError("schedule 'cosine_restarts' has no transformers scheduler with the same rates "
                         "(cosine_with_restarts has no min_lr floor and runs one step behind); use 'cosine' or "
                         "'constant', or the Accelerate loop (--stage3-trainer accelerate)")
    floor = 1.0 if loop.schedule == "constant" else loop.min_lr_ratio
    return {"warmup_steps": loop.warmup_steps, "lr_scheduler_type": "cosine_warmup_with_min_lr",
            "lr_scheduler_kwargs": {"min_lr_rate": float(floor)}}


# ----------------------------------------------------------------------------------------------
# A stage through Trainer
# ----------------------------------------------------------------------------------------------


def evaluation_labels(spec: StageSpec) -> list[str]:
    """The labels evaluation batches ask for every star: the stage's request list, or all five."""
    return list(LABELS) if isinstance(spec.request, str) else list(spec.request)


def selection_metric(spec: StageSpec) -> str:
    """Trainer's ``metric_for_best_model`` for ``spec.select_on``: ``"loss"`` (the whole-window NLL) for
    "val_loss", ``"<LABEL>_rmse"`` for "val_rmse_<LABEL>" (a label the evaluation asks for)."""
    if spec.select_on == "val_loss":
        return "loss"
    label = spec.select_on[len("val_rmse_"):]
    if label not in evaluation_labels(spec):
        raise ValueError(f"select_on={spec.select_on!r} needs {label} among the stage's labels "
                         f"{evaluation_labels(spec)}; request it or select on val_loss")
    return f"{label}_rmse"


def _check_rehearsal(spec: StageSpec, rehearsal: WindowData | None) -> None:
    if spec.rehearsal and (rehearsal is None or len(rehearsal) == 0):
        raise ValueError(f"{spec.name}: rehearsal: {spec.rehearsal} needs rehearsal stars (the rehearsal= data); "
                         "give them or set rehearsal: 0")


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
    checkpoints every ``eval_every`` steps (``load_best_model_at_end`` needs them aligned), logging.
    Evaluation batches hold ``spec.eval_batch_size`` stars, as the pipeline's predictions do."""
    from transformers import TrainingArguments

    loop = spec.loop
    return TrainingArguments(
        output_dir=str(output_dir), max_steps=loop.max_steps, per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.eval_batch_size, learning_rate=loop.learning_rate,
        weight_decay=loop.weight_decay, **scheduler_arguments(loop),
        max_grad_norm=loop.grad_clip if loop.grad_clip is not None else 0.0,
        eval_strategy="steps", eval_steps=loop.eval_every,
        save_strategy="steps", save_steps=loop.eval_every, save_total_limit=2,
        load_best_model_at_end=True, metric_for_best_model=selection_metric(spec), greater_is_better=False,
        logging_steps=loop.log_every, use_cpu=not torch.cuda.is_available(),
        report_to="none", seed=seed, disable_tqdm=not loop.progress,
    )


def _best_step(state) -> int | None:
    """The step of Trainer's best checkpoint (``checkpoint-<step>``), None when it kept none."""
    if not state.best_model_checkpoint:
        return None
    return int(Path(state.best_model_checkpoint).name.split("-")[-1])


def _write_metrics(log_history: list[dict], path: Path, spec: StageSpec) -> None:
    """Trainer's log history in the Accelerate loop's ``metrics.jsonl`` layout (what the report reads):
    ``train/loss``, ``train/lr``, the selection metric as ``eval/<select_on>``; every other evaluation
    number as ``validation/<name>`` (physical units)."""
    selected = f"eval_{selection_metric(spec)}"
    with path.open("w") as fh:
        for record in log_history:
            entry = {"step": record.get("step")}
            if "loss" in record:
                entry["train/loss"] = record["loss"]
            if "learning_rate" in record:
                entry["train/lr"] = record["learning_rate"]
            for key, value in record.items():
                if key == selected:
                    entry[f"eval/{spec.select_on}"] = value
                elif key.startswith("eval_") and isinstance(value, (int, float)):
                    entry[f"validation/{key[len('eval_'):]}"] = value
            if len(entry) > 1:
                fh.write(json.dumps(entry) + "\n")


def _stage_trainer(spec: StageSpec, model, feature_extractor, train_data: WindowData, validation: WindowData,
                   rehearsal: WindowData | None, out_dir: Path, seed: int):
    """A plain ``transformers.Trainer`` for the stage: the package's collator, rows, metrics and callbacks."""
    from transformers import EarlyStoppingCallback, Trainer

    collator = stage_collator(spec, feature_extractor, train_data.wavelength, seed=seed, training=True)
    if spec.rehearsal:
        collator.add_rehearsal(rehearsal, spec.rehearsal)
    callbacks = [EarlyStoppingCallback(early_stopping_patience=spec.loop.patience)] if spec.loop.patience else []
    return Trainer(
        model=model, args=_training_arguments(spec, out_dir / "trainer", seed), data_collator=collator,
        train_dataset=training_rows(train_data),
        eval_dataset=evaluation_rows(augmented_validation(validation, spec, seed)),  # perturbed once, as run_stage's
        processing_class=feature_extractor, callbacks=callbacks,
        compute_metrics=make_compute_metrics(feature_extractor, evaluation_labels(spec)),
    )


def run_stage_with_trainer(
    spec: StageSpec,
    train_data: WindowData,
    validation: WindowData,
    out_dir: str | Path,
    init: str | Path | None = None,
    model_config: Mapping | None = None,
    rehearsal: WindowData | None = None,
    card=None,
    seed: int = 0,
) -> StageResult:
    """Train ``spec`` with ``transformers.Trainer``; arguments as :func:`~spectrafm_hf.training.stages.run_stage`
    (``rehearsal``: the stars ``spec.rehearsal`` draws from, on the training stars' pixels)."""
    out_dir = Path(out_dir)
    provenance = stage_provenance(spec, train_data, validation, seed, init, model_config,
                                  rehearsal if spec.rehearsal else None, trainer="transformers")
    finished = finished_stage(spec, out_dir, provenance)
    if finished is not None:
        return finished
    selection_metric(spec)  # refuse what this path cannot select on, and a schedule it cannot run,
    scheduler_arguments(spec.loop)  # before anything is written
    _check_rehearsal(spec, rehearsal)
    record_stage_provenance(out_dir, provenance)
    start = time.time()
    model, feature_extractor = _initial_model(train_data, init, model_config, seed)
    record_training_window(feature_extractor, train_data)
    record_training_context(model, feature_extractor, spec)
    apply_freezing(model, spec)
    trainer = _stage_trainer(spec, model, feature_extractor, train_data, validation, rehearsal, out_dir, seed)
    resume = bool(sorted((out_dir / "trainer").glob("checkpoint-*"))) or None
    last_step = int(trainer.train(resume_from_checkpoint=resume).global_step)
    save_stage_checkpoint(trainer.model, feature_extractor, out_dir, card=card)
    best_step, best_metric = _best_step(trainer.state), trainer.state.best_metric
    _write_metrics(trainer.state.log_history, out_dir / "metrics.jsonl", spec)
    summary = {"stage": spec.name, "trainer": "transformers", "best_step": best_step, "best_metric": best_metric,
               "select_on": spec.select_on, "last_step": last_step, "n_train": len(train_data),
               "n_validation": len(validation), "window": spec.window, "init": str(init) if init else None,
               "rehearsal": spec.rehearsal, "n_rehearsal_pool": len(rehearsal) if spec.rehearsal else 0}
    (out_dir / COMPLETE_MARKER).write_text(json.dumps(summary, indent=2))
    return StageResult(spec.name, out_dir, best_step, best_metric, last_step, 0, time.time() - start)
