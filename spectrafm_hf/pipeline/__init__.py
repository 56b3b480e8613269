"""``spectrafm pipeline``: simulate (or reuse) data, train the three stages and the baselines, evaluate,
analyse attention and write the report — one command, one run folder.

Read in this order: :mod:`.run` (``run_pipeline``, six named steps), then each step's module:

=================  ==============================================================================
module             step
=================  ==============================================================================
:mod:`.config`     the YAML as typed dataclasses (:class:`PipelineConfig`); every default lives there
:mod:`.data`       simulate or load the datasets; the arrays of every role (:class:`PipelineData`)
:mod:`.train`      stage 1 → 2 → 3 (+ stage 3 from stage 1), the scratch transformer, the baselines
:mod:`.evaluate`   test-set predictions and metrics of every model; the attention analyses
:mod:`.report`     metrics.json, report.md/.html + figures, predictions.npz, timings.json, the stage cards
=================  ==============================================================================

Run folder layout (``--out``)::

    stage1/ stage2/ stage3/ [stage3_from_stage1/] scratch_transformer/   checkpoints (+ state/, metrics.jsonl)
    predictions.npz        test-set predictions of every model (FE_H; stage 2: all labels, with σ), the
                           test stars' true labels and S/N (keys: spectrafm_hf.pipeline.report)
    metrics.json           see spectrafm_hf.training.report
    report.md + *.png      the report; report.html: the same with the figures embedded (one file);
                           `spectrafm report RUN` redraws both from the files above
    timings.json           wall seconds per step

The run ``seed`` (config or ``--seed``) sets the stage-3 star draw, initialisations and data order; the
simulated universes are fixed by ``data.seed`` so runs with different seeds are comparable.
"""

from .config import PipelineConfig, load_config
from .data import FEH_RICH_MIN, PipelineData, stage3_draw
from .report import acceptance_checks, build_metrics
from .run import add_pipeline_arguments, run_pipeline, run_stage_entry_point

__all__ = [
    "FEH_RICH_MIN",
    "PipelineConfig",
    "PipelineData",
    "acceptance_checks",
    "add_pipeline_arguments",
    "build_metrics",
    "load_config",
    "run_pipeline",
    "run_stage_entry_point",
    "stage3_draw",
]
