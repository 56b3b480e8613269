"""Step 6: metrics.json, report.md and figures, predictions.npz, timings.json and the stage cards.

Everything is written once, at the end of the run (metrics.json layout: :mod:`spectrafm_hf.training.report`).
Prose (each stage's training data, each model's description, the test set) comes from the package
resource ``spectrafm_hf/hub/templates/descriptions.yaml``, not from this code.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..data.grid import FE_WINDOW, FIRST_HALF, apogee_wavelength
from ..data.labels import LABELS
from .config import PipelineConfig
from .data import ALL_PIXELS, PipelineData
from .evaluate import AttentionAnalyses, Evaluation

if TYPE_CHECKING:
    from ..hub.cards import CardInfo

#: Stage folder → (card template, labels, pixels, parent folder or None, PipelineData field counted
#: as training stars or None for config.stage3.n_stars). The scratch transformer gets no card.
STAGE_CARDS = {
    "stage1": ("stage1", LABELS, ALL_PIXELS, None, "synthetic_train"),
    "stage2": ("stage2", LABELS, FIRST_HALF, "stage1", "observed_train"),
    "stage3": ("stage3", ("FE_H",), FE_WINDOW, "stage2", None),
    "stage3_from_stage1": ("stage3", ("FE_H",), FE_WINDOW, "stage1", None),
}

#: Models whose predicted σ is drawn in the calibration figure.
CALIBRATION_MODELS = ("stage3", "scratch_mlp", "scratch_transformer", "cannon")


def test_set_summary(config: PipelineConfig, data: PipelineData) -> dict:
    """metrics.json's ``test_set``: size, iron-poor count and a description in prose."""
    from ..hub.cards import load_descriptions

    true_feh = data.true_feh
    n_poor = int(np.sum(true_feh < -1))
    description = load_descriptions()["test_set"].format(
        n_test=len(data.test), n_observed_test=data.n_observed_test, n_supplement=len(data.test) - data.n_observed_test,
        n_below_1=n_poor, n_below_1_5=int(np.sum(true_feh < -1.5)), n_stage3=config.stage3.n_stars,
        seed=config.seed, n_stage3_val=len(data.stage3_val))
    return {"n": int(len(data.test)), "n_feh_lt_-1": n_poor, "description": description}


def describe_models(models: Mapping[str, dict], fitted: Mapping[str, Any]) -> dict[str, dict]:
    """``models`` with each entry's "description" (from descriptions.yaml; unknown models: their name)."""
    from ..hub.cards import load_descriptions

    templates = load_descriptions()["models"]
    values = {"widths": fitted["scratch_mlp"].model.widths if "scratch_mlp" in fitted else [],
              "labels": list(fitted["cannon"].label_names) if "cannon" in fitted else []}
    return {name: {**meta, "description": templates[name].format(**values) if name in templates else name}
            for name, meta in models.items()}


def build_metrics(config: PipelineConfig, models: Mapping, test_set: Mapping, attention: AttentionAnalyses,
                  results: Mapping) -> dict:
    """Assemble metrics.json (layout in :mod:`spectrafm_hf.training.report`), without the timings."""
    from ..training.report import card_entry

    eval_info = {"dataset_name": "simulated observed test set", "dataset_type": "spectrafm-sim-observed",
                 "split": "test", "n_spectra": int(test_set["n"])}
    metrics: dict[str, Any] = {"schema_version": 1}
    if "stage3" in models:
        metrics["stage3"] = card_entry(models["stage3"]["labels"], eval_info)
    if "stage2" in models:
        metrics["stage2"] = card_entry(models["stage2"]["labels"], eval_info)
    if "stage1_zero_shot" in models:
        zero_shot_info = {**eval_info, "dataset_name": "simulated observed test set, Fe window, zero-shot"}
        metrics["stage1"] = card_entry(models["stage1_zero_shot"]["labels"], zero_shot_info)
    metrics["models"] = dict(models)
    metrics["test_set"] = dict(test_set)
    if attention.fe_window:
        metrics["attention"] = attention.fe_window
    if attention.first_half:
        metrics["attention_first_half"] = attention.first_half
    metrics["acceptance"] = acceptance_checks(models, attention.fe_window)
    metrics["training"] = {name: {"best_step": r.best_step, "best_metric": r.best_metric, "last_step": r.last_step,
                                  "resumed_from": r.resumed_from, "skipped": r.skipped} for name, r in results.items()}
    metrics["run"] = {"config": config.path, "seed": config.seed, "stage3_trainer": config.stage3_trainer,
                      "model": config.model}
    return metrics


def acceptance_checks(models: Mapping, attention: Mapping | None = None) -> dict:
    """Issue 5's acceptance numbers, computed from the test metrics (no thresholds are tuned here)."""
    def bins(name):
        return models[name]["labels"]["FE_H"]["bins"]

    checks = {}
    if "stage3" in models and "scratch_mlp" in models:
        s3, mlp = bins("stage3"), bins("scratch_mlp")
        ratio = s3["feh_lt_-1"]["rmse"] / mlp["feh_lt_-1"]["rmse"]
        checks["iron-poor RMSE stage3 / scratch MLP"] = {"value": ratio, "target": "≤ 0.5", "pass": bool(ratio <= 0.5)}
        bias_ratio = abs(s3["feh_lt_-1"]["bias"]) / abs(mlp["feh_lt_-1"]["bias"])
        checks["iron-poor |bias| stage3 / scratch MLP"] = {"value": bias_ratio, "target": "≤ 0.5",
                                                            "pass": bool(bias_ratio <= 0.5)}
        baselines = [n for n in ("scratch_mlp", "scratch_transformer", "ridge", "cannon") if n in models]
        best = min(bins(n)["feh_ge_-1"]["rmse"] for n in baselines)
        rich_ratio = s3["feh_ge_-1"]["rmse"] / best
        checks["iron-rich RMSE stage3 / best baseline"] = {"value": rich_ratio, "target": "≤ 1.3",
                                                            "pass": bool(rich_ratio <= 1.3)}
    if "stage3" in models:
        cal = models["stage3"]["labels"]["FE_H"]["calibration"].get("after", {}).get("all", {})
        coverage = cal.get("coverage_68", float("nan"))
        checks["stage3 68 % coverage after calibration"] = {"value": coverage, "target": "0.60–0.76",
                                                            "pass": bool(0.60 <= coverage <= 0.76)}
    fe_profile = (attention or {}).get("profiles", {}).get("FE_H")
    if fe_profile:
        value, control = fe_profile.get("enrichment", float("nan")), fe_profile.get("enrichment_control", float("nan"))
        checks["FE_H attention enrichment on Fe lines"] = {"value": value, "target": "> 1.5", "pass": bool(value > 1.5)}
        checks["FE_H enrichment above its shuffled control"] = {
            "value": value - control, "target": "> 0 (enrichment − control)", "pass": bool(value > control)}
    return checks


def save_predictions_and_figures(out: Path, evaluation: Evaluation, attention: AttentionAnalyses,
                                 trained: Mapping[str, Any]) -> dict[str, Path | None]:
    """Write predictions.npz and the report's figures; the figure paths by report section."""
    from ..training import report as rp

    predictions, models = evaluation.predictions, evaluation.models
    np.savez(out / "predictions.npz", **{f"{m}__{k}": v for m, p in predictions.items() for k, v in p.items()})
    fe_window = {k: v for k, v in predictions.items() if "true" in v}
    return {
        "pred_vs_true": rp.plot_predicted_vs_true(fe_window, out / "pred_vs_true_feh.png"),
        "residuals": rp.plot_residuals(fe_window, out / "residuals_feh.png"),
        "calibration": rp.plot_calibration(
            {k: v for k, v in predictions.items() if k in CALIBRATION_MODELS},
            {k: m["labels"]["FE_H"]["calibration"]["scale"] for k, m in models.items()
             if "FE_H" in m["labels"] and k != "stage2"},
            out / "calibration_feh.png"),
        "training_curves": rp.plot_training_curves({k: out / k for k in trained}, out / "training_curves.png"),
        "attention": rp.plot_attention(attention.fe_window, out / "attention.png") if attention.fe_window else None,
        "attention_first_half": rp.plot_attention(attention.first_half, out / "attention_first_half.png")
        if attention.first_half else None,
    }


def write_outputs(out: Path, metrics: Mapping, figures: Mapping[str, Path | None], timings: Mapping[str, float],
                  cards: Mapping[str, CardInfo]) -> dict:
    """Write metrics.json (with ``timings``), report.md, timings.json and every stage card, once."""
    from ..training import report as rp

    metrics = {**metrics, "timings_s": dict(timings)}
    rp.write_metrics(out / "metrics.json", metrics)
    rp.write_report(out, metrics, figures)
    (out / "timings.json").write_text(json.dumps(dict(timings), indent=2))
    write_cards(out, cards, metrics)
    return metrics


# ----------------------------------------------------------------------------------------------
# Model cards
# ----------------------------------------------------------------------------------------------


def stage_cards(config: PipelineConfig, data: PipelineData, out: Path, folders) -> dict[str, CardInfo]:
    """The card of each stage folder in ``folders`` that has one (the scratch transformer has none),
    without metrics; :func:`write_cards` adds them."""
    from ..hub.cards import CardInfo, load_descriptions

    training_data = load_descriptions()["cards"]
    wavelength = apogee_wavelength()
    cards = {}
    for folder in folders:
        if folder not in STAGE_CARDS:
            continue
        template, labels, pixels, parent, counted = STAGE_CARDS[folder]
        n_train = len(getattr(data, counted)) if counted else config.stage3.n_stars
        seen = wavelength[pixels]
        cards[folder] = CardInfo(stage=template, labels=list(labels), data_kind="simulated",
                                 training_data=training_data[folder].format(n_train=n_train),
                                 wavelength_range_A=(float(seen[0]), float(seen[-1])), n_pixels=len(seen),
                                 base_model=str(out / parent) if parent else None)
    return cards


def write_cards(out: Path, cards: Mapping[str, CardInfo], metrics: Mapping | None = None) -> None:
    """Render each card with its stage's measured metrics (none when ``metrics`` is None) into
    ``<out>/<folder>/README.md``: a card holds exactly the numbers of metrics.json, nothing else."""
    from ..hub.cards import render_card, stage_metrics

    for folder, card in cards.items():
        if (out / folder).is_dir():
            measured, eval_info = stage_metrics(metrics, folder)
            render_card(replace(card, metrics=measured or None, eval_info=eval_info)).save(out / folder / "README.md")
