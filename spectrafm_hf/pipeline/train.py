"""Steps 2 and 3: train the three stages (each from the previous one) and the baselines.

=========================  ======================  ==================  ===================================
folder                     initialised from        trained on          pixels
=========================  ======================  ==================  ===================================
stage1/                    ``model`` (random)      synthetic train     all 7514
stage2/                    stage1/                 observed train      0–3756 (first half)
stage3/                    stage2/                 the stage-3 draw    4107–4618 (Fe window)
stage3_from_stage1/        stage1/ (optional)      the stage-3 draw    Fe window
scratch_transformer/       ``model`` (random)      the stage-3 draw    Fe window
=========================  ======================  ==================  ===================================

A stage folder that is already complete is reused as is (``run_stage`` skips it). The checkpoints are
saved without a model card: the pipeline writes each card once, at the end, with the measured metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.arrays import cut_window
from ..data.grid import FE_WINDOW, FIRST_HALF
from .config import PipelineConfig
from .data import PipelineData, first_rows

if TYPE_CHECKING:
    from ..training.stages import StageResult
    from .timing import Timer

#: Validation stars used for stage 1 and stage 2 model selection (the first ones of each split).
N_STAGE_VALIDATION = 256

STAGE_ORDER = ("stage1", "stage2", "stage3")


def check_stage_folders(config: PipelineConfig, out: Path, stop_after: str | None = None) -> None:
    """Refuse, before any data is simulated or read, a run folder whose stage folders (those this run
    trains: up to ``stop_after``) were trained with other settings (recipe, seed, trainer, model). The
    full check (:func:`run_stage`: data hashes and starting weights too) comes later; this one saves the
    minutes of data loading a wrong ``--out`` would cost."""
    from ..training.stages import check_stage_reuse, stage_settings

    fresh = dict(config.model)
    folders = [("stage1", config.stage1, fresh, "accelerate"), ("stage2", config.stage2, None, "accelerate"),
               ("stage3", config.stage3.spec, None, config.stage3_trainer)]
    if stop_after is not None:
        folders = folders[:STAGE_ORDER.index(stop_after) + 1]
    if config.stage3.from_stage1 and stop_after is None:
        folders.append(("stage3_from_stage1", config.stage3.spec, None, "accelerate"))
    if config.baselines.scratch_transformer is not None and stop_after is None:
        folders.append(("scratch_transformer", config.baselines.scratch_transformer, fresh, "accelerate"))
    for name, spec, model_config, trainer in folders:
        check_stage_reuse(out / name, stage_settings(spec, config.seed, model_config, trainer), partial=True)


def train_stages(config: PipelineConfig, data: PipelineData, out: Path, timer: Timer,
                 stop_after: str | None = None) -> dict[str, StageResult]:
    """Train stage 1, 2, 3 (and stage 3 from stage 1 when configured) in order; stop after
    ``stop_after`` if given. Returns the results by stage folder name, in training order."""
    from ..training.stages import run_stage

    seed = config.seed
    results: dict[str, StageResult] = {}
    with timer.step("stage 1 (synthetic pre-training)"):
        results["stage1"] = run_stage(config.stage1, data.synthetic_train,
                                      first_rows(data.synthetic_val, N_STAGE_VALIDATION), out / "stage1",
                                      model_config=dict(config.model), seed=seed)
    if stop_after == "stage1":
        return results
    with timer.step("stage 2 (observed, first half)"):
        results["stage2"] = run_stage(config.stage2, cut_window(data.observed_train, FIRST_HALF),
                                      cut_window(first_rows(data.observed_val, N_STAGE_VALIDATION), FIRST_HALF),
                                      out / "stage2", init=out / "stage1", seed=seed)
    if stop_after == "stage2":
        return results
    rehearsal = cut_window(data.synthetic_train, FE_WINDOW) if config.stage3.spec.rehearsal else None
    with timer.step(f"stage 3 ([Fe/H] window, {config.stage3_trainer})"):
        results["stage3"] = _train_stage3(config, data, out, rehearsal)
    if stop_after == "stage3":
        return results
    if config.stage3.from_stage1:
        with timer.step("stage 3 from stage 1 (no stage 2)"):
            results["stage3_from_stage1"] = run_stage(
                config.stage3.spec, data.stage3_train, data.stage3_val, out / "stage3_from_stage1",
                init=out / "stage1", rehearsal=rehearsal, seed=seed)
    return results


def _train_stage3(config: PipelineConfig, data: PipelineData, out: Path, rehearsal) -> StageResult:
    """Stage 3 from stage 2, through the Accelerate loop or ``transformers.Trainer``."""
    spec, init = config.stage3.spec, out / "stage2"
    if config.stage3_trainer == "accelerate":
        from ..training.stages import run_stage

        return run_stage(spec, data.stage3_train, data.stage3_val, out / "stage3", init=init,
                         rehearsal=rehearsal, seed=config.seed)
    from ..training.trainer import run_stage_with_trainer

    return run_stage_with_trainer(spec, data.stage3_train, data.stage3_val, out / "stage3", init=init,
                                  rehearsal=rehearsal, seed=config.seed)


def train_scratch_transformer(config: PipelineConfig, data: PipelineData, out: Path,
                              timer: Timer) -> dict[str, StageResult]:
    """The same transformer, randomly initialised, trained on the stage-3 stars ({} when skipped)."""
    from ..training.stages import run_stage

    spec = config.baselines.scratch_transformer
    if spec is None:
        return {}
    with timer.step("baseline: same transformer from scratch"):
        result = run_stage(spec, data.stage3_train, data.stage3_val, out / "scratch_transformer",
                           model_config=dict(config.model), seed=config.seed)
    return {"scratch_transformer": result}


def fit_baselines(config: PipelineConfig, data: PipelineData, timer: Timer) -> dict[str, Any]:
    """The scratch MLP, ridge and The Cannon on the stage-3 stars: fitted models by name (each has
    ``predict(WindowData) → (mean, sigma)``), in that order; skipped ones are absent."""
    from dataclasses import asdict

    from ..training import baselines as bl

    options = config.baselines
    fitted: dict[str, Any] = {}
    if options.mlp is not None:
        with timer.step("baseline: scratch MLP"):
            fitted["scratch_mlp"] = bl.fit_scratch_mlp(data.stage3_train, data.stage3_val, seed=config.seed,
                                                       **asdict(options.mlp))
    if options.ridge is not None:
        with timer.step("baseline: ridge"):
            fitted["ridge"] = bl.fit_ridge(data.stage3_train, data.stage3_val, **asdict(options.ridge))
    if options.cannon is not None:
        with timer.step("baseline: The Cannon"):
            fitted["cannon"] = bl.fit_cannon(data.stage3_train, label_names=tuple(options.cannon.labels))
    return fitted
