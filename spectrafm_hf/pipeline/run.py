"""``run_pipeline``: the whole run as six named steps, and its command-line arguments.

    data → stages → baselines → evaluation → attention → report (+ the stage cards)

Each step is one function of :mod:`.data`, :mod:`.train`, :mod:`.evaluate` and :mod:`.report`, taking
and returning typed values; the wall seconds of each go to ``timings.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..output_guard import open_work_folder
from .config import load_config
from .timing import Timer

STOP_AFTER = ("stage1", "stage2", "stage3")


def run_pipeline(args, stop_after: str | None = None) -> int:
    """Entry point of ``spectrafm pipeline`` (args: config, out, seed, stage3_trainer).

    ``stop_after`` ("stage1", "stage2", "stage3"): train up to that stage and return (the thin
    ``training/stage<k>.py`` entry points for ``accelerate launch``); finished stages are reused.
    """
    from .data import load_data
    from .evaluate import AttentionAnalyses, analyse_attention, evaluate_models
    from .report import (
        build_metrics,
        describe_models,
        save_predictions_and_figures,
        stage_cards,
        test_set_summary,
        write_outputs,
    )
    from .train import check_stage_folders, fit_baselines, train_scratch_transformer, train_stages

    if stop_after not in (None, *STOP_AFTER):
        raise ValueError(f"stop_after must be stage1, stage2 or stage3, got {stop_after!r}")
    config = load_config(args.config, seed=getattr(args, "seed", None),
                         stage3_trainer=getattr(args, "stage3_trainer", None) or None)
    open_work_folder(args.out, kind="run")  # never a folder that spectrafm did not write
    out = Path(args.out)  # as given: paths in cards and metrics stay relative
    check_stage_folders(config, out, stop_after)  # seconds, not the minutes of simulating data, for a wrong --out
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    timer = Timer()

    with timer.step("data (simulate or load cache)"):
        data = load_data(config, out)
    test_set = test_set_summary(config, data)
    print(f"[pipeline] {test_set['description']}", flush=True)
    trained = train_stages(config, data, out, timer, stop_after)
    if stop_after is not None:
        _write_cards_of_new_stages(out, stage_cards(config, data, out, trained), trained)
        return 0
    trained.update(train_scratch_transformer(config, data, out, timer))
    fitted = fit_baselines(config, data, timer)
    with timer.step("evaluation"):
        evaluation = evaluate_models(config, data, out, trained, fitted)
    attention = AttentionAnalyses()
    if config.attention.enabled:
        with timer.step("attention analysis"):
            attention = analyse_attention(config.attention, data.test, out)
    with timer.step("report"):
        metrics = build_metrics(config, describe_models(evaluation.models, fitted), test_set, attention, trained)
        figures = save_predictions_and_figures(out, evaluation, attention, trained)
    write_outputs(out, metrics, figures, timer.seconds, stage_cards(config, data, out, trained))
    print(f"[pipeline] report: {out / 'report.md'}; total {sum(timer.seconds.values()):.0f} s", flush=True)
    return 0


def _write_cards_of_new_stages(out: Path, cards, trained) -> None:
    """After an early stop: a card without metrics for each stage trained now or still without one
    (a finished stage keeps the card a full run gave it). Main process only, as the checkpoints."""
    from accelerate import PartialState

    from .report import write_cards

    if PartialState().is_main_process:
        write_cards(out, {folder: card for folder, card in cards.items()
                          if not trained[folder].skipped or not (out / folder / "README.md").exists()})


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the pipeline's arguments (``spectrafm pipeline`` and ``training/stage<k>.py``)."""
    parser.add_argument("--config", required=True, help="YAML config, e.g. training/configs/quickstart.yaml")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    parser.add_argument("--stage3-trainer", choices=["accelerate", "transformers"], default=None,
                        help="run stage 3 through Accelerate (default) or transformers.Trainer")


def run_stage_entry_point(stage: str, description: str, argv: list[str] | None = None) -> int:
    """``training/<stage>.py``: the pipeline's arguments, run up to ``stage`` (for ``accelerate launch``)."""
    parser = argparse.ArgumentParser(description=description)
    add_pipeline_arguments(parser)
    return run_pipeline(parser.parse_args(argv), stop_after=stage)
