"""The run report: ``metrics.json``, ``report.md`` and its figures.

``metrics.json`` layout (schema_version 1). The top-level ``stage1``/``stage2``/``stage3`` entries are the
flat per-label form that :mod:`spectrafm_hf.hub.cards` renders into each stage's ``model-index``; the
``models`` entry is the full, nested record of every model (stages and baselines)::

    {
      "schema_version": 1,
      "stage3": {"_eval": {...}, "FE_H": {"rmse": .., "rmse_feh_ge_-1": .., "rmse_feh_lt_-1": ..,
                                         "bias_feh_lt_-1": .., "sigma_mad_feh_ge_-1": .., "z_std": ..,
                                         "coverage_68": .., "coverage_68_calibrated": ..}},
      "stage2": {"_eval": {...}, "TEFF": {...}, "LOGG": {...}, "FE_H": {...}, "MG_FE": {...}, "O_FE": {...}},
      "models": {
        "<model>": {"description": "...", "pixels": [start, stop], "trained_on": "...",
                    "labels": {"<LABEL>": {"bins": {"all"|"feh_ge_-1"|"feh_lt_-1"|"feh_lt_-1.5":
                                                     {"n", "rmse", "bias", "sigma_mad"}},
                                           "calibration": {"before": {bin: {...}}, "scale": k,
                                                           "after": {bin: {...}}}}}}
      },
      "test_set": {...}, "attention": {...}, "attention_first_half": {...}, "acceptance": {...},
      "timings_s": {...}, "run": {...}
    }

Units: rmse/bias/sigma_mad in the label's physical unit (dex, K); calibration numbers dimensionless.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np

BIN_TITLES = {
    "all": "all",
    "feh_ge_-1": "[Fe/H] ≥ −1",
    "feh_lt_-1": "[Fe/H] < −1",
    "feh_lt_-1.5": "[Fe/H] < −1.5",
}


def card_entry(label_metrics: Mapping, eval_info: Mapping | None = None) -> dict:
    """Flatten ``{label: evaluate_label(...)}`` into the cards' ``{label: {metric: value}}`` form.

    Keys: ``rmse``/``bias``/``sigma_mad`` (all stars), ``<metric>_<bin>`` for the other bins,
    ``z_std``/``coverage_68``/``coverage_95`` (uncalibrated, all stars) and ``*_calibrated`` after the
    validation-fitted variance scale. Non-finite numbers are dropped (the cards never show them).
    """
    entry: dict = {}
    if eval_info:
        entry["_eval"] = dict(eval_info)
    for label, result in label_metrics.items():
        flat: dict[str, float] = {}
        for bin_key, stats in result["bins"].items():
            suffix = "" if bin_key == "all" else f"_{bin_key}"
            for name in ("rmse", "bias", "sigma_mad"):
                flat[f"{name}{suffix}"] = stats[name]
        calibration = result.get("calibration", {})
        for name in ("z_std", "coverage_68", "coverage_95"):
            if "before" in calibration:
                flat[name] = calibration["before"]["all"][name]
            if "after" in calibration:
                flat[f"{name}_calibrated"] = calibration["after"]["all"][name]
        entry[label] = {k: float(v) for k, v in flat.items() if v is not None and math.isfinite(v)}
    return entry


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def write_metrics(path: str | Path, metrics: Mapping) -> Path:
    """Write ``metrics.json`` (NaN → null so strict JSON readers accept it)."""
    path = Path(path)

    def clean(value):
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
            return None
        return value

    path.write_text(json.dumps(clean(metrics), indent=2, default=_json_default) + "\n")
    return path


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["text.usetex"] = False  # TheCannon switches it on at import; LaTeX may be absent
    return plt


def plot_predicted_vs_true(predictions: Mapping[str, Mapping[str, np.ndarray]], path: Path, label: str = "FE_H"):
    """The paper's key figure: predicted vs true [Fe/H], one panel per model, iron-poor stars highlighted.

    ``predictions[model] = {"true": (N,), "pred": (N,), "sigma": (N,)}`` in dex.
    """
    plt = _pyplot()
    names = list(predictions)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
    all_true = np.concatenate([np.asarray(p["true"]) for p in predictions.values()])
    lo, hi = np.nanmin(all_true) - 0.2, np.nanmax(all_true) + 0.2
    for ax, name in zip(axes.flat, names):
        true, pred = np.asarray(predictions[name]["true"]), np.asarray(predictions[name]["pred"])
        poor = true < -1
        ax.scatter(true[~poor], pred[~poor], s=3, alpha=0.4, color="tab:blue", label="[Fe/H] ≥ −1")
        ax.scatter(true[poor], pred[poor], s=4, alpha=0.6, color="tab:red", label="[Fe/H] < −1")
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.axvline(-1, color="gray", ls=":", lw=0.8)
        ok = poor & np.isfinite(pred)
        rmse_poor = float(np.sqrt(np.mean((pred[ok] - true[ok]) ** 2))) if ok.any() else float("nan")
        ax.set_title(f"{name}\nRMSE([Fe/H]<−1) = {rmse_poor:.3f} dex", fontsize=9)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"true {label} (dex)")
        ax.set_ylabel(f"predicted {label} (dex)")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(loc="upper left", fontsize=7, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_residuals(predictions: Mapping[str, Mapping[str, np.ndarray]], path: Path, label: str = "FE_H"):
    """Residual (predicted − true) vs true [Fe/H], with the running median per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    edges = np.arange(-3.0, 1.01, 0.25)
    for name, p in predictions.items():
        true, pred = np.asarray(p["true"]), np.asarray(p["pred"])
        residual = pred - true
        ax.scatter(true, residual, s=1.5, alpha=0.15)
        centres, medians = [], []
        for a, b in zip(edges[:-1], edges[1:]):
            inside = (true >= a) & (true < b) & np.isfinite(residual)
            if inside.sum() >= 5:
                centres.append(0.5 * (a + b))
                medians.append(np.median(residual[inside]))
        ax.plot(centres, medians, lw=2, label=name)
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(-1, color="gray", ls=":", lw=0.8)
    ax.set_ylim(-1.5, 1.5)
    ax.set_xlabel(f"true {label} (dex)")
    ax.set_ylabel("predicted − true (dex); lines: running median")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_metrics_log(path: Path) -> list[dict]:
    """Records of a loop's ``metrics.jsonl`` (config lines skipped)."""
    if not Path(path).exists():
        return []
    records = (json.loads(line) for line in Path(path).read_text().splitlines() if line.strip())
    return [r for r in records if "config" not in r]


def plot_training_curves(stage_dirs: Mapping[str, Path], path: Path):
    """Training loss (and the selection metric) vs step, one panel per stage."""
    plt = _pyplot()
    names = [n for n in stage_dirs if read_metrics_log(Path(stage_dirs[n]) / "metrics.jsonl")]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes.flat, names):
        records = read_metrics_log(Path(stage_dirs[name]) / "metrics.jsonl")
        train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
        if train:
            ax.plot(*zip(*train), lw=1, label="train loss (NLL)")
        evals = [(r["step"], r[k]) for r in records for k in r if k.startswith("eval/")]
        eval_keys = sorted({k for r in records for k in r if k.startswith("eval/")})
        twin = ax.twinx() if eval_keys else None
        for key in eval_keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            twin.plot(*zip(*points), "o-", ms=3, color="tab:red", label=key)
        if twin is not None:
            twin.legend(loc="upper right", fontsize=7)
        del evals
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_calibration(predictions: Mapping[str, Mapping[str, np.ndarray]], scales: Mapping[str, float], path: Path):
    """Histogram of z-scores before/after the validation-fitted variance scale, per model with σ."""
    plt = _pyplot()
    names = [n for n in predictions if n in scales]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(4.0 * len(names), 3.4), squeeze=False)
    grid = np.linspace(-5, 5, 201)
    for ax, name in zip(axes.flat, names):
        p = predictions[name]
        z = (np.asarray(p["pred"]) - np.asarray(p["true"])) / np.asarray(p["sigma"])
        z = z[np.isfinite(z)]
        bins = np.linspace(-5, 5, 41)
        ax.hist(np.clip(z, -5, 5), bins=bins, density=True, histtype="step", label="raw σ")
        ax.hist(np.clip(z / scales[name], -5, 5), bins=bins, density=True, histtype="step",
                label=f"σ × {scales[name]:.2f}")
        ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), "k--", lw=0.8, label="N(0,1)")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("z = (pred − true)/σ")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_attention(attention: Mapping, path: Path):
    """Mean decoder cross-attention over wavelength per query, with that element's line cores marked.

    ``attention["profiles"][query] = {"wavelength": (P,), "weight": (P,), "line_wavelengths": [...],
    "enrichment": float}``.
    """
    plt = _pyplot()
    profiles = attention.get("profiles", {})
    if not profiles:
        return None
    fig, axes = plt.subplots(len(profiles), 1, figsize=(10, 2.4 * len(profiles)), squeeze=False, sharex=True)
    for ax, (query, profile) in zip(axes[:, 0], profiles.items()):
        wavelength, weight = np.asarray(profile["wavelength"]), np.asarray(profile["weight"])
        ax.plot(wavelength, weight, lw=0.8, color="k")
        for line in profile.get("line_wavelengths", []):
            ax.axvline(line, color="tab:orange", lw=0.6, alpha=0.7)
        ax.set_ylabel("attention")
        ax.set_title(
            f"{query} query: enrichment on {profile.get('element', '?')} line cores = "
            f"{profile.get('enrichment', float('nan')):.2f} "
            f"(shuffled control {profile.get('enrichment_control', float('nan')):.2f})",
            fontsize=9,
        )
    axes[-1, 0].set_xlabel("vacuum wavelength (Å)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def model_table(models: Mapping, label: str = "FE_H") -> str:
    """Markdown table: per model, n / RMSE / bias / σ_MAD per [Fe/H] bin and calibration."""
    bins = ["all", "feh_ge_-1", "feh_lt_-1", "feh_lt_-1.5"]
    header = ["model"] + [f"RMSE {BIN_TITLES[b]}" for b in bins] + [
        "bias [Fe/H]<−1", "σ_MAD [Fe/H]≥−1", "z std (raw)", "68 % cov. raw → calibrated", "95 % cov. calibrated"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, model in models.items():
        entry = model.get("labels", {}).get(label)
        if entry is None:
            continue
        stats = entry["bins"]
        calibration = entry.get("calibration", {})
        before = calibration.get("before", {}).get("all", {})
        after = calibration.get("after", {}).get("all", {})
        row = [name] + [_fmt(stats[b]["rmse"]) for b in bins] + [
            _fmt(stats["feh_lt_-1"]["bias"]), _fmt(stats["feh_ge_-1"]["sigma_mad"]), _fmt(before.get("z_std"), 2),
            f"{_fmt(before.get('coverage_68'), 2)} → {_fmt(after.get('coverage_68'), 2)}",
            _fmt(after.get("coverage_95"), 2),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def stage2_table(stage2: Mapping) -> str:
    """Markdown table of stage-2 accuracy on all five labels (physical units)."""
    lines = ["| label | RMSE all | bias all | σ_MAD all | RMSE [Fe/H]<−1 |", "|---|---|---|---|---|"]
    for label, entry in stage2.get("labels", {}).items():
        stats = entry["bins"]
        lines.append(
            f"| {label} | {_fmt(stats['all']['rmse'])} | {_fmt(stats['all']['bias'])} | "
            f"{_fmt(stats['all']['sigma_mad'])} | {_fmt(stats['feh_lt_-1']['rmse'])} |"
        )
    return "\n".join(lines)


def write_report(out_dir: Path, metrics: Mapping, figures: Mapping[str, Path | None]) -> Path:
    """Write ``report.md`` from ``metrics`` (the dict that goes to metrics.json) and figure paths."""
    out_dir = Path(out_dir)
    models = metrics.get("models", {})
    parts = ["# SpectraFM pipeline report", ""]
    run = metrics.get("run", {})
    parts += [
        f"Config `{run.get('config', '?')}`, seed {run.get('seed', '?')}, stage-3 trainer "
        f"`{run.get('stage3_trainer', 'accelerate')}`. All data are **simulated** (built-in APOGEE simulator); "
        "numbers do not transfer to real APOGEE spectra.",
        "",
        "## Test set",
        "",
        metrics.get("test_set", {}).get("description", ""),
        "",
        "## [Fe/H] in the 16106–16220 Å window (pixels 4107–4618)",
        "",
        "Every model below was trained on the SAME 100 observed stars with [Fe/H] > −1 and selected on "
        "iron-rich validation stars only; residuals are predicted − true in dex. 'Calibrated' uses one "
        "variance scale per model fitted on the validation set.",
        "",
        model_table({k: v for k, v in models.items() if "FE_H" in v.get("labels", {}) and k != "stage2"}),
        "",
    ]
    for key, title in (("pred_vs_true", "Predicted vs true [Fe/H]"), ("residuals", "Residuals vs [Fe/H]"),
                       ("calibration", "Calibration"), ("training_curves", "Training curves"),
                       ("attention", "Decoder cross-attention (stage 3, Fe window)"),
                       ("attention_first_half", "Decoder cross-attention (stage 2, first half of the spectrum)")):
        if figures.get(key):
            parts += [f"### {title}", "", f"![{title}]({Path(figures[key]).name})", ""]
    if "stage2" in models:
        parts += ["## Stage 2 (observed, first half of the spectrum) on all five labels", "",
                  stage2_table(models["stage2"]), ""]
    analyses = [metrics[key] for key in ("attention", "attention_first_half") if metrics.get(key)]
    if analyses:
        parts += ["## Attention enrichment", "",
                  "Attention mass on pixels within that element's line cores divided by the fraction of "
                  "pixels that are such cores (1 = no preference); control: the same with the line list "
                  "of a shuffled element assignment. '–': no line of that element in the window.", "",
                  "| model | window | stars | query | element | lines | enrichment | shuffled control "
                  "| core fraction |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for analysis in analyses:
            for query, profile in analysis.get("profiles", {}).items():
                parts.append(
                    f"| {analysis.get('model', '?')} | {analysis.get('window', '?')} "
                    f"| {analysis.get('n_stars', '?')} | {query} | {profile.get('element')} "
                    f"| {profile.get('n_lines')} | {_fmt(profile.get('enrichment'), 2)} "
                    f"| {_fmt(profile.get('enrichment_control'), 2)} | {_fmt(profile.get('core_fraction'), 3)} |"
                )
        parts.append("")
    acceptance = metrics.get("acceptance")
    if acceptance:
        parts += ["## Acceptance checks (issue 5)", "", "| check | value | target | pass |", "|---|---|---|---|"]
        for name, check in acceptance.items():
            verdict = "yes" if check.get("pass") else "NO"
            parts.append(f"| {name} | {_fmt(check.get('value'))} | {check.get('target')} | {verdict} |")
        parts.append("")
    timings = metrics.get("timings_s", {})
    if timings:
        parts += ["## Step timings (wall seconds)", "", "| step | seconds |", "|---|---|"]
        parts += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
        parts.append("")
    path = out_dir / "report.md"
    path.write_text("\n".join(parts))
    return path
