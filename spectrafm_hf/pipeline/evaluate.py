"""Steps 4 and 5: test-set predictions and metrics of every model, then the attention analyses.

Every [Fe/H] model is scored on the same test stars in the Fe window, with its variance scale fitted on
the iron-rich validation stars (``training.evaluation.evaluate_label``). Stage 2 is also scored on its
own pixels (the first half) for all five labels. Zero-shot rows apply stage 1 / stage 2 to the Fe window
without any stage-3 fine-tune.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..data.arrays import WindowData, cut_window
from ..data.grid import FE_WINDOW, FIRST_HALF
from ..data.labels import LABELS
from .config import AttentionConfig, PipelineConfig
from .data import PipelineData, first_rows, process_state

#: Validation stars on which stage 2's variance scales are fitted (the first ones of the split).
N_STAGE2_VALIDATION = 500

#: Transformer checkpoints scored in the Fe window: model name → stage folder. Zero-shot rows reuse
#: the stage-1/2 folders; fine-tuned ones are scored only when they were trained.
FE_WINDOW_TRANSFORMERS = {
    "stage3": "stage3",
    "stage3_from_stage1": "stage3_from_stage1",
    "scratch_transformer": "scratch_transformer",
    "stage2_zero_shot": "stage2",
    "stage1_zero_shot": "stage1",
}


@dataclass
class Evaluation:
    """What evaluation measured.

    Attributes:
        predictions: test-set predictions, model → {"true", "pred", "sigma"} (N_test,) dex for the
            Fe-window models; "stage2_all_labels" → label → (N_test,) physical units.
        models: metrics.json's ``models`` entry: model → {"pixels": [first, last], "labels": {label:
            evaluate_label(...)}} (descriptions are added by the report).
        stage2: stage 2 on its own pixels, label → {"true", "pred", "sigma"} (N_test,) physical units.
        test_stars: the test stars' true labels (label → (N_test,), NaN = unknown) and "snr" (N_test,),
            the S/N per pixel (:func:`snr_per_pixel`), for the report's residual figures.
    """

    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage2: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    test_stars: dict[str, np.ndarray] = field(default_factory=dict)


def evaluate_models(config: PipelineConfig, data: PipelineData, out: Path, trained: Mapping[str, Any],
                    fitted: Mapping[str, Any]) -> Evaluation:
    """Score every model: transformers of ``trained`` (stage folders) and zero-shot stages, then the
    ``fitted`` baselines, in the Fe window; then stage 2 on its own pixels."""
    evaluation = _evaluate_fe_window(config, data, out, trained, fitted)
    evaluation.models["stage2"], evaluation.stage2 = _evaluate_stage2(config, data, out)
    evaluation.predictions["stage2_all_labels"] = {label: p["pred"] for label, p in evaluation.stage2.items()}
    evaluation.test_stars = {**{label: data.test.labels[label] for label in LABELS if label in data.test.labels},
                             "snr": snr_per_pixel(data.test)}
    return evaluation


def evaluation_device():
    """This process's accelerator (its own GPU under ``accelerate launch``, else the CPU), where the
    trained models are evaluated, so that a GPU run does not evaluate a paper-size model on the CPU."""
    return process_state().device


def snr_per_pixel(data: WindowData) -> np.ndarray:
    """(N,) signal-to-noise per pixel of each star: 1 / median flux error over its valid pixels.

    Continuum-normalised flux is ≈ 1, so this is the continuum S/N. For the simulator it equals the
    ``snr`` column (flux_err = 1/snr outside the blue chip, which holds 40 % of the pixels). NaN for a
    star without any valid, positive flux error.
    """
    error = np.where(~data.mask & (data.flux_err > 0), data.flux_err.astype(np.float64), np.nan)
    valid = np.isfinite(error).any(axis=1)
    median = np.full(len(data), np.nan)
    if valid.any():
        median[valid] = np.nanmedian(error[valid], axis=1)
    return 1.0 / median


def _evaluate_fe_window(config: PipelineConfig, data: PipelineData, out: Path, trained: Mapping[str, Any],
                        fitted: Mapping[str, Any]) -> Evaluation:
    from ..checkpoints import load_model
    from ..training.evaluation import evaluate_label
    from ..training.stages import predict

    batch = config.eval_batch_size
    test_predictions, val_predictions = {}, {}
    for name, folder in FE_WINDOW_TRANSFORMERS.items():
        if name.endswith("_zero_shot") or name in trained:
            model, feature_extractor = load_model(out / folder, device=evaluation_device())
            test_predictions[name] = predict(model, feature_extractor, data.test_fe, ("FE_H",), batch)["FE_H"]
            val_predictions[name] = predict(model, feature_extractor, data.stage3_val, ("FE_H",), batch)["FE_H"]
    for name, model in fitted.items():
        test_predictions[name] = model.predict(data.test_fe)
        val_predictions[name] = model.predict(data.stage3_val)
    true, val_true = data.true_feh, data.stage3_val.labels["FE_H"]
    evaluation = Evaluation()
    for name, (mean, sigma) in test_predictions.items():
        val_mean, val_sigma = val_predictions[name]
        evaluation.predictions[name] = {"true": true, "pred": mean, "sigma": sigma}
        evaluation.models[name] = {
            "pixels": [FE_WINDOW.start, FE_WINDOW.stop - 1],
            "labels": {"FE_H": evaluate_label(mean, sigma, true, true, val_mean, val_sigma, val_true)},
        }
    return evaluation


def _evaluate_stage2(config: PipelineConfig, data: PipelineData, out: Path) -> tuple[dict, dict[str, dict]]:
    """Stage 2 on the first half, all five labels: (its ``models`` entry, label → {"true", "pred",
    "sigma"} (N_test,) physical units)."""
    from ..checkpoints import load_model
    from ..training.evaluation import evaluate_label
    from ..training.stages import predict

    model, feature_extractor = load_model(out / "stage2", device=evaluation_device())
    test = cut_window(data.test, FIRST_HALF)
    validation = cut_window(first_rows(data.observed_val, N_STAGE2_VALIDATION), FIRST_HALF)
    # The 3757-pixel half in one context costs O(P²) per star: chunked (config stage2_eval_context).
    context, batch = config.stage2_eval_context, config.eval_batch_size
    test_predictions = predict(model, feature_extractor, test, LABELS, batch, context=context)
    val_predictions = predict(model, feature_extractor, validation, LABELS, batch, context=context)
    entry = {"pixels": [FIRST_HALF.start, FIRST_HALF.stop - 1], "labels": {
        label: evaluate_label(*test_predictions[label], test.labels[label], data.true_feh,
                              *val_predictions[label], validation.labels[label])
        for label in LABELS}}
    return entry, {label: {"true": test.labels[label], "pred": test_predictions[label][0],
                           "sigma": test_predictions[label][1]} for label in LABELS}


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------


@dataclass
class AttentionAnalyses:
    """``training.attention.analyse_model`` results (+ "window"), None when not run.

    Attributes:
        fe_window: the configured model (stage 3) in the Fe window: the [Fe/H] query, the paper's claim.
        first_half: stage 2 over its whole first half, the only place with Mg I and OH lines, for the
            [Mg/Fe] and [O/Fe] queries.
    """

    fe_window: dict | None = None
    first_half: dict | None = None


def analyse_attention(options: AttentionConfig, test: WindowData, out: Path) -> AttentionAnalyses:
    """Both attention analyses on the first test stars (``options.first_half`` None: only the first)."""
    fe_window = _analysis(out / options.model, test, FE_WINDOW, "fe_window", options.n_stars, options.queries,
                          options.batch_size, options.core_half_width_A)
    half = options.first_half
    first_half = None if half is None else _analysis(out / half.model, test, FIRST_HALF, "first_half", half.n_stars,
                                                     half.queries, half.batch_size, options.core_half_width_A)
    return AttentionAnalyses(fe_window, first_half)


def _analysis(model_dir: Path, test: WindowData, window: slice, window_name: str, n_stars: int, queries,
              batch_size: int, core_half_width_A: float) -> dict:
    from ..training.attention import analyse_model

    stars = cut_window(first_rows(test, int(n_stars)), window)
    result = analyse_model(model_dir, stars, queries, batch_size=int(batch_size), device=evaluation_device(),
                           core_half_width_A=float(core_half_width_A))
    result["window"] = window_name
    result["mean_flux"] = mean_spectrum(stars).tolist()  # drawn under the attention in the report
    return result


def mean_spectrum(data: WindowData) -> np.ndarray:
    """(P,) mean flux over stars, bad pixels excluded; NaN where no star has a valid pixel."""
    good = ~data.mask & np.isfinite(data.flux)
    total = np.where(good, data.flux, 0.0).sum(axis=0, dtype=np.float64)
    count = good.sum(axis=0)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)
