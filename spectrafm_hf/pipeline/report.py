"""Step 6: metrics.json, report.md / report.html and figures, predictions.npz, timings.json and the stage cards.

Everything is written once, at the end of the run (metrics.json layout: :mod:`spectrafm_hf.training.report`).
The figures are drawn from what the run folder keeps (predictions.npz, metrics.json, each stage's
metrics.jsonl), so :func:`rebuild_report` (``spectrafm report RUN``) redraws them without retraining.

predictions.npz keys (arrays of the N_test test stars)::

    <model>__true / __pred / __sigma      [Fe/H] (dex) of every Fe-window model
    stage2__<LABEL>__true / __pred / __sigma   stage 2 on its own pixels, physical units
    stage2_all_labels__<LABEL>            the same predictions (the older key)
    test__<LABEL>, test__snr              true labels (NaN = unknown) and S/N per pixel of the test stars
Prose (each stage's training data, each model's description, the test set) comes from the package
resource ``spectrafm_hf/hub/templates/descriptions.yaml``, not from this code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..data.grid import FE_WINDOW, FIRST_HALF, apogee_wavelength
from ..data.labels import LABELS
from ..output_guard import UnsafeOutputError, open_work_folder, written_by_spectrafm
from .config import PipelineConfig
from .data import ALL_PIXELS, PipelineData
from .evaluate import AttentionAnalyses, Evaluation

if TYPE_CHECKING:
    from ..hub.cards import CardInfo

#: Checkpoint folder → (card template, labels, pixels, parent folder or None, PipelineData field
#: counted as training stars or None for config.stage3.n_stars). Every checkpoint folder has a card.
STAGE_CARDS = {
    "stage1": ("stage1", LABELS, ALL_PIXELS, None, "synthetic_train"),
    "stage2": ("stage2", LABELS, FIRST_HALF, "stage1", "observed_train"),
    "stage3": ("stage3", ("FE_H",), FE_WINDOW, "stage2", None),
    "stage3_from_stage1": ("stage3", ("FE_H",), FE_WINDOW, "stage1", None),
    "scratch_transformer": ("scratch", ("FE_H",), FE_WINDOW, None, None),
}

#: Checkpoint folder → the entry of metrics.json's ``models`` its card's numbers were measured with.
CARD_MODELS = {"stage1": "stage1_zero_shot", "stage2": "stage2", "stage3": "stage3",
               "stage3_from_stage1": "stage3_from_stage1", "scratch_transformer": "scratch_transformer"}

#: Checkpoint folders whose metrics.jsonl is drawn in the training-curves figure, in this order.
TRAINING_FOLDERS = ("stage1", "stage2", "stage3", "stage3_from_stage1", "scratch_transformer")


def test_set_summary(config: PipelineConfig, data: PipelineData) -> dict:
    """metrics.json's ``test_set``: size, how many stars have a known [Fe/H] and how many are iron-poor,
    where they come from, and a description in prose."""
    from ..hub.cards import load_descriptions

    true_feh = data.true_feh
    n_poor = int(np.sum(true_feh < -1))
    description = load_descriptions()["test_set"].format(
        n_test=len(data.test), n_observed_test=data.n_observed_test, n_supplement=len(data.test) - data.n_observed_test,
        n_below_1=n_poor, n_below_1_5=int(np.sum(true_feh < -1.5)), n_stage3=config.stage3.n_stars,
        seed=config.seed, n_stage3_val=len(data.stage3_val))
    return {"n": int(len(data.test)), "n_feh_known": int(np.isfinite(true_feh).sum()), "n_feh_lt_-1": n_poor,
            "n_feh_lt_-1.5": int(np.sum(true_feh < -1.5)), "n_observed_split": int(data.n_observed_test),
            "n_iron_poor_supplement": int(len(data.test) - data.n_observed_test), "description": description}


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
    """The targets fixed before the runs (the paper's claims), measured on the test metrics; no
    threshold is tuned here."""
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
    """Write predictions.npz, then draw the report's figures from it; the figure paths by report section."""
    save_predictions(out / "predictions.npz", evaluation)
    inputs = {"models": evaluation.models, "attention": attention.fe_window,
              "attention_first_half": attention.first_half,
              "training": {name: {"best_step": getattr(result, "best_step", None)} for name, result in trained.items()}}
    return draw_figures(out, out, load_predictions(out / "predictions.npz"), inputs)


def save_predictions(path: Path, evaluation: Evaluation) -> Path:
    """predictions.npz (keys in the module docstring), written through a temporary name."""
    arrays = {f"{m}__{k}": v for m, p in evaluation.predictions.items() for k, v in p.items()}
    arrays.update({f"stage2__{label}__{k}": v for label, p in evaluation.stage2.items() for k, v in p.items()})
    arrays.update({f"test__{k}": v for k, v in evaluation.test_stars.items()})
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(temporary, **{k: np.asarray(v) for k, v in arrays.items()})
    os.replace(temporary, path)
    return path


@dataclass
class ReportArrays:
    """predictions.npz as the figures use it (all (N_test,) arrays of the same test stars).

    Attributes:
        fe_window: model → {"true", "pred", "sigma"}, [Fe/H] in dex.
        stage2: label → {"true", "pred", "sigma"} in physical units (NaN where an older run saved none).
        stars: true labels and "snr" of the test stars (older runs: FE_H only).
    """

    fe_window: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    stage2: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    stars: dict[str, np.ndarray] = field(default_factory=dict)


def load_predictions(path: str | Path) -> ReportArrays:
    """Read predictions.npz (this layout or the older one without ``stage2__``/``test__`` keys)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; give a run folder written by `spectrafm pipeline`")
    arrays = ReportArrays()
    legacy: dict[str, np.ndarray] = {}
    with np.load(path) as saved:
        for key in saved.files:
            parts, values = key.split("__"), np.asarray(saved[key], np.float64)
            if parts[0] == "test":
                arrays.stars[parts[1]] = values
            elif parts[0] == "stage2" and len(parts) == 3:
                arrays.stage2.setdefault(parts[1], {})[parts[2]] = values
            elif parts[0] == "stage2_all_labels":
                legacy[parts[1]] = values
            elif len(parts) == 2:
                arrays.fe_window.setdefault(parts[0], {})[parts[1]] = values
    if "FE_H" not in arrays.stars and arrays.fe_window:
        arrays.stars["FE_H"] = next(iter(arrays.fe_window.values()))["true"]
    for label, pred in legacy.items():
        if label not in arrays.stage2:  # an older run: predictions only, truth only for [Fe/H]
            missing = np.full(pred.shape, np.nan)
            arrays.stage2[label] = {"pred": pred, "sigma": missing, "true": arrays.stars.get(label, missing)}
    return arrays


#: File name of each figure of the report (key as in the figures mapping).
FIGURE_FILES = {"pred_vs_true": "pred_vs_true_feh.png", "residuals": "residuals_feh.png", "coverage": "coverage.png",
                "stage2_one_to_one": "stage2_one_to_one.png", "kiel": "kiel_stage2.png",
                "attention": "attention.png", "attention_first_half": "attention_first_half.png",
                "training_curves": "training_curves.png"}


def draw_figures(run_dir: Path, out: Path, arrays: ReportArrays, metrics: Mapping) -> dict[str, Path | None]:
    """Every figure of the report into ``out``, from ``arrays``, ``metrics`` (its models, attention and
    training entries) and the stage folders' metrics.jsonl in ``run_dir``; the paths by report section
    (None: nothing to draw)."""
    from ..training import report_figures as rf
    from ..training.report import read_metrics_log

    models, drawn = metrics.get("models", {}), {}
    path = {key: Path(out) / name for key, name in FIGURE_FILES.items()}
    fe_window = {k: v for k, v in arrays.fe_window.items() if {"true", "pred"} <= set(v)}
    stage2 = {k: v for k, v in arrays.stage2.items() if np.isfinite(v["true"]).any()}
    if fe_window:
        drawn["pred_vs_true"] = rf.plot_fe_window_one_to_one(fe_window, path["pred_vs_true"])
        drawn["residuals"] = rf.plot_residuals(fe_window, arrays.stars, path["residuals"])
        with_sigma = {k: v for k, v in stage2.items() if np.isfinite(v.get("sigma", np.nan)).any()}
        drawn["coverage"] = rf.plot_coverage(fe_window, _scales(models, fe_window, "FE_H"), path["coverage"],
                                             with_sigma, _stage2_scales(models))
    if stage2 and "FE_H" in arrays.stars:
        drawn["stage2_one_to_one"] = rf.plot_stage2_one_to_one(stage2, arrays.stars["FE_H"], path["stage2_one_to_one"])
    kiel = ("TEFF", "LOGG", "FE_H")
    if set(kiel) <= set(stage2):
        drawn["kiel"] = rf.plot_kiel({k: stage2[k]["true"] for k in kiel}, {k: stage2[k]["pred"] for k in kiel},
                                     path["kiel"])
    for key in ("attention", "attention_first_half"):
        if metrics.get(key):
            drawn[key] = rf.plot_attention(metrics[key], path[key])
    logs = {name: read_metrics_log(Path(run_dir) / name / "metrics.jsonl") for name in TRAINING_FOLDERS}
    best = {name: entry.get("best_step") for name, entry in (metrics.get("training") or {}).items()}
    drawn["training_curves"] = rf.plot_training_curves(logs, path["training_curves"], best)
    return {key: (path[key] if figure is not None else None) for key, figure in drawn.items()}


def _scales(models: Mapping, names, label: str) -> dict[str, float]:
    """The validation-fitted variance scale of ``label`` per model in ``names`` (those that have one)."""
    scales = {}
    for name in names:
        scale = models.get(name, {}).get("labels", {}).get(label, {}).get("calibration", {}).get("scale")
        if scale is not None:
            scales[name] = float(scale)
    return scales


def _stage2_scales(models: Mapping) -> dict[str, float]:
    labels = models.get("stage2", {}).get("labels", {})
    return {label: float(entry["calibration"]["scale"]) for label, entry in labels.items()
            if entry.get("calibration", {}).get("scale") is not None}


def write_outputs(out: Path, metrics: Mapping, figures: Mapping[str, Path | None], timings: Mapping[str, float],
                  cards: Mapping[str, CardInfo]) -> dict:
    """Write metrics.json (with ``timings``), report.md, report.html, timings.json and every stage card, once."""
    from ..training import report as rp
    from ..training.report_html import write_html_report

    metrics = {**metrics, "timings_s": dict(timings)}
    rp.write_metrics(out / "metrics.json", metrics)
    rp.write_report(out, metrics, figures)
    write_html_report(out, metrics, figures)
    rp.write_text_atomic(out / "timings.json", json.dumps(dict(timings), indent=2))
    write_cards(out, cards, metrics)
    return metrics


def rebuild_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Redraw every figure and rewrite report.md and report.html of a finished run, without retraining.

    Reads ``run_dir``'s metrics.json, predictions.npz and the stage folders' metrics.jsonl; writes into
    ``out_dir`` (default: ``run_dir`` itself, which must be a folder spectrafm wrote). Returns the path
    of report.html.
    """
    from ..training.report import write_report
    from ..training.report_html import write_html_report

    run_dir = Path(run_dir)
    for name in ("metrics.json", "predictions.npz"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} not found; give a run folder written by `spectrafm pipeline`")
    if out_dir is None and not written_by_spectrafm(run_dir):
        raise UnsafeOutputError(f"{run_dir} was not written by spectrafm; pass --out to write the report elsewhere")
    out = Path(out_dir) if out_dir is not None else run_dir
    if out_dir is not None:
        open_work_folder(out, kind="report")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    figures = draw_figures(run_dir, out, load_predictions(run_dir / "predictions.npz"), metrics)
    write_report(out, metrics, figures)
    return write_html_report(out, metrics, figures)


def run_report(args) -> int:
    """Entry point of ``spectrafm report RUN [--out DIR]``."""
    path = rebuild_report(args.run_dir, getattr(args, "out", None))
    print(f"[report] {path} and {path.with_name('report.md')}", flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# Model cards
# ----------------------------------------------------------------------------------------------


def stage_cards(config: PipelineConfig, data: PipelineData, out: Path, folders) -> dict[str, CardInfo]:
    """The card of each checkpoint folder in ``folders``, without metrics; :func:`write_cards` adds them."""
    from ..hub.cards import CardInfo, load_descriptions

    training_data = load_descriptions()["cards"]
    wavelength = apogee_wavelength()
    specs = {"stage1": config.stage1, "stage2": config.stage2, "stage3": config.stage3.spec,
             "stage3_from_stage1": config.stage3.spec, "scratch_transformer": config.baselines.scratch_transformer}
    cards = {}
    for folder in folders:
        if folder not in STAGE_CARDS:
            continue
        template, labels, pixels, parent, counted = STAGE_CARDS[folder]
        n_train = len(getattr(data, counted)) if counted else config.stage3.n_stars
        seen = wavelength[pixels]
        context = getattr(specs.get(folder), "context_length", None)
        described = training_data[folder].format(n_train=n_train)
        augmentation = getattr(specs.get(folder), "augmentation", None)
        if augmentation is not None:  # the card must say the spectra were not the clean ones
            described = described.rstrip() + " " + augmentation.describe()
        cards[folder] = CardInfo(stage=template, labels=list(labels), data_kind="simulated",
                                 training_data=described,
                                 wavelength_range_A=(float(seen[0]), float(seen[-1])), n_pixels=len(seen),
                                 base_model=str(out / parent) if parent else None,
                                 pixels=(pixels.start, pixels.stop), context_length=context,
                                 local_path=str(out / folder))
    return cards


def write_cards(out: Path, cards: Mapping[str, CardInfo], metrics: Mapping | None = None) -> None:
    """Render each card with its stage's measured metrics (none when ``metrics`` is None) into
    ``<out>/<folder>/README.md``: a card holds exactly the numbers of metrics.json, nothing else, each
    with the number of test stars it was measured on and the test set's composition."""
    from ..hub.cards import render_card, stage_metrics

    for folder, card in cards.items():
        if (out / folder).is_dir():
            measured, eval_info = stage_metrics(card_metrics(metrics, folder), folder, model=CARD_MODELS.get(folder))
            render_card(replace(card, metrics=measured or None, eval_info=eval_info)).save(out / folder / "README.md")


def card_metrics(metrics: Mapping | None, folder: str) -> Mapping | None:
    """metrics.json, plus the cards' flat entry of ``folder`` when it has none at the top level (the
    scratch transformer, stage 3 from stage 1): built from ``metrics["models"]`` as for the stages."""
    from ..training.report import card_entry

    model = (metrics or {}).get("models", {}).get(CARD_MODELS.get(folder, ""))
    if metrics is None or folder in metrics or model is None:
        return metrics
    eval_info = (metrics.get("stage3") or {}).get("_eval")
    return {**metrics, folder: card_entry(model["labels"], eval_info)}
