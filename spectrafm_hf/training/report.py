"""The run report: ``metrics.json`` and the text of ``report.md`` (figures: :mod:`.report_figures`;
the HTML version: :mod:`.report_html`, built from the same blocks).

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
      "test_set": {"n", "n_feh_known", "n_feh_lt_-1", "n_feh_lt_-1.5", "n_observed_split",
                   "n_iron_poor_supplement", "description"},
      "attention": {...}, "attention_first_half": {...},   # profiles per query (+ "mean_flux")
      "acceptance": {...},
      "timings_s": {...}, "run": {...}
    }

Units: rmse/bias/sigma_mad in the label's physical unit (dex, K); calibration numbers dimensionless.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..data.labels import LABEL_DISPLAY_NAMES, LABEL_UNITS, LABELS

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

    return write_text_atomic(path, json.dumps(clean(metrics), indent=2, default=_json_default) + "\n")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary name in the same folder (never half a file)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path


def read_metrics_log(path: Path) -> list[dict]:
    """Records of a loop's ``metrics.jsonl`` (config lines skipped)."""
    if not Path(path).exists():
        return []
    records = (json.loads(line) for line in Path(path).read_text().splitlines() if line.strip())
    return [r for r in records if "config" not in r]


# ----------------------------------------------------------------------------------------------
# The report as blocks (rendered to Markdown here, to HTML by report_html)
# ----------------------------------------------------------------------------------------------


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    """A paragraph; inline ``**bold**`` and ```code``` only."""

    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class Figure:
    """A figure of the report: ``key`` in the figures mapping (its PNG), with a caption."""

    key: str
    caption: str


#: Baselines the stage-3 model is compared with (the paper's: trained on the same 100 stars).
BASELINES = ("scratch_mlp", "scratch_transformer", "ridge", "cannon")


def _num(value) -> float:
    """A metrics.json number as float (null → NaN)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _fmt(value, digits=3, signed=False):
    value = _num(value) if not isinstance(value, int) else value
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def label_with_unit(label: str) -> str:
    """``"Teff (K)"``, ``"[Fe/H] (dex)"``: display name and unit for tables."""
    return f"{LABEL_DISPLAY_NAMES[label]} ({LABEL_UNITS[label].split(' ')[0]})"


def display_check_name(name: str) -> str:
    """A check name of metrics.json with label names typeset (``FE_H`` → ``[Fe/H]``)."""
    for label in LABELS:
        name = name.replace(label, LABEL_DISPLAY_NAMES[label])
    return name


def test_set_counts(metrics: Mapping) -> dict:
    """Test-set composition: n, n with known [Fe/H], below −1 and −1.5, supplement size (None = unknown).

    Read from ``test_set`` (older runs lack some keys: they are then taken from stage 3's bin counts).
    """
    test_set = metrics.get("test_set", {})
    bins = next((m["labels"]["FE_H"]["bins"] for m in metrics.get("models", {}).values()
                 if "FE_H" in m.get("labels", {})), {})
    return {
        "n": test_set.get("n"),
        "n_known": test_set.get("n_feh_known", bins.get("all", {}).get("n")),
        "n_poor": test_set.get("n_feh_lt_-1", bins.get("feh_lt_-1", {}).get("n")),
        "n_very_poor": test_set.get("n_feh_lt_-1.5", bins.get("feh_lt_-1.5", {}).get("n")),
        "n_supplement": test_set.get("n_iron_poor_supplement"),
    }


def composition_sentence(metrics: Mapping) -> str:
    """One sentence stating the test set's size and how many stars are iron-poor (next to every number)."""
    c = test_set_counts(metrics)
    if c["n"] is None:
        return ""
    text = f"**Test set:** {c['n']} simulated stars"
    if c["n_known"] is not None and c["n_known"] != c["n"]:
        text += f" ({c['n_known']} with a known [Fe/H])"
    if c["n_poor"] is not None:
        share = 100 * c["n_poor"] / max(c["n_known"] or c["n"], 1)
        text += f"; {c['n_poor']} ({share:.0f} %) with [Fe/H] < −1"
        if c["n_very_poor"] is not None:
            text += f", {c['n_very_poor']} below −1.5"
    if c["n_supplement"]:
        text += (f". {c['n_supplement']} of them were drawn from the prior restricted to [Fe/H] < −1, so the "
                 "'all stars' numbers weigh iron-poor stars far more than an APOGEE-like sample (≈ 2.5 % below "
                 "−1) would; compare the per-bin columns")
    return text + "."


def _fe_bins(models: Mapping, name: str) -> Mapping:
    return models[name]["labels"]["FE_H"]["bins"]


def accuracy_findings(models: Mapping) -> list[str]:
    """Plain-language comparison of stage 3 with the best baseline, per [Fe/H] regime; negatives say so."""
    if "stage3" not in models:
        return []
    baselines = [n for n in BASELINES if n in models and "FE_H" in models[n].get("labels", {})]
    s3 = _fe_bins(models, "stage3")
    items = []
    for key, regime in (("feh_lt_-1", "iron-poor stars ([Fe/H] < −1"), ("feh_ge_-1", "iron-rich stars ([Fe/H] ≥ −1")):
        if not baselines:
            break
        best = min(baselines, key=lambda n: _num(_fe_bins(models, n)[key]["rmse"]))
        ours, theirs = _num(s3[key]["rmse"]), _num(_fe_bins(models, best)[key]["rmse"])
        text = (f"On {regime}, n = {s3[key]['n']}): stage 3 [Fe/H] RMSE {_fmt(ours)} dex (bias "
                f"{_fmt(s3[key]['bias'], signed=True)}), best baseline {best} {_fmt(theirs)} dex.")
        if ours > theirs:
            text += (f" **Negative result:** here stage 3 is worse than {best}, by {100 * (ours / theirs - 1):.0f} %"
                     " in RMSE.")
        items.append(text)
    calibration = models["stage3"]["labels"]["FE_H"].get("calibration", {})
    before, after = calibration.get("before", {}).get("all", {}), calibration.get("after", {}).get("all", {})
    if before:
        items.append(f"Stage 3's predicted σ cover {_fmt(before.get('coverage_68'), 2)} of the test stars within "
                     f"±1σ (0.68 if calibrated); {_fmt(after.get('coverage_68'), 2)} after multiplying σ by the "
                     f"validation-fitted {_fmt(calibration.get('scale'), 2)}.")
    return items


def attention_sentences(metrics: Mapping) -> list[str]:
    """One sentence per attention query; where the enrichment is not above its shuffled control the
    sentence starts with "Negative result"."""
    sentences = []
    for key in ("attention", "attention_first_half"):
        analysis = metrics.get(key) or {}
        for query, profile in analysis.get("profiles", {}).items():
            name, element = LABEL_DISPLAY_NAMES.get(query, query), profile.get("element", "?")
            value, control = _num(profile.get("enrichment")), _num(profile.get("enrichment_control"))
            where = f"{analysis.get('model', '?')} ({analysis.get('window', '?')})"
            if not (math.isfinite(value) and math.isfinite(control)):
                sentences.append(f"{where}: no {element} line in the window, so the {name} query's "
                                 "enrichment is not measured.")
            elif value > control:
                sentences.append(f"{where}: the {name} query puts {value:.2f}× the uniform attention on {element} "
                                 f"line cores, above its shuffled control ({control:.2f}×).")
            else:
                below_uniform = ", and even below uniform attention" if value < 1 else ""
                sentences.append(
                    f"**Negative result** — {where}: the {name} query puts only {value:.2f}× the uniform attention "
                    f"on {element} line cores, below its shuffled control ({control:.2f}×, as many lines of other "
                    f"species){below_uniform}. This analysis gives no evidence that the model reads {name} from "
                    f"{element} lines.")
    return sentences


def unmet_targets(metrics: Mapping) -> list[str]:
    """A "Not met" sentence for each target check that failed."""
    return [f"**Not met:** {display_check_name(name)} = {_fmt(check.get('value'))} (target {check.get('target')})."
            for name, check in (metrics.get("acceptance") or {}).items() if not check.get("pass")]


def fe_window_table(models: Mapping, metrics: Mapping) -> Table:
    """Per Fe-window model: RMSE per [Fe/H] bin (with n), iron-poor bias, σ_MAD and calibration."""
    bins = ["all", "feh_ge_-1", "feh_lt_-1", "feh_lt_-1.5"]
    names = [n for n, m in models.items() if "FE_H" in m.get("labels", {}) and n != "stage2"]
    counts = _fe_bins(models, names[0]) if names else {}
    header = ["model"] + [f"RMSE {BIN_TITLES[b]} (n={counts.get(b, {}).get('n', '?')})" for b in bins] + [
        "bias [Fe/H] < −1", "σ_MAD [Fe/H] ≥ −1", "z std (σ as predicted)", "68 % coverage: as predicted → scaled",
        "95 % coverage scaled"]
    table = Table(header)
    for name in names:
        entry = models[name]["labels"]["FE_H"]
        stats, calibration = entry["bins"], entry.get("calibration", {})
        before = calibration.get("before", {}).get("all", {})
        after = calibration.get("after", {}).get("all", {})
        table.rows.append([name] + [_fmt(stats[b]["rmse"]) for b in bins] + [
            _fmt(stats["feh_lt_-1"]["bias"], signed=True), _fmt(stats["feh_ge_-1"]["sigma_mad"]),
            _fmt(before.get("z_std"), 2), f"{_fmt(before.get('coverage_68'), 2)} → {_fmt(after.get('coverage_68'), 2)}",
            _fmt(after.get("coverage_95"), 2)])
    return table


def stage2_table(stage2: Mapping) -> Table:
    """Stage-2 accuracy and calibration on all five labels, in each label's unit."""
    table = Table(["label", "RMSE all", "bias all", "σ_MAD all", "RMSE [Fe/H] < −1",
                   "68 % coverage: as predicted → scaled"])
    for label, entry in stage2.get("labels", {}).items():
        stats, calibration = entry["bins"], entry.get("calibration", {})
        digits = 0 if LABEL_UNITS.get(label, "").startswith("K") else 3
        table.rows.append([
            label_with_unit(label), _fmt(stats["all"]["rmse"], digits), _fmt(stats["all"]["bias"], digits, True),
            _fmt(stats["all"]["sigma_mad"], digits), _fmt(stats["feh_lt_-1"]["rmse"], digits),
            f"{_fmt(calibration.get('before', {}).get('all', {}).get('coverage_68'), 2)} → "
            f"{_fmt(calibration.get('after', {}).get('all', {}).get('coverage_68'), 2)}"])
    return table


def attention_table(metrics: Mapping) -> Table:
    """Enrichment vs shuffled control per analysed query, with a plain verdict column."""
    table = Table(["model", "window", "stars", "query", "element", "lines", "enrichment", "shuffled control",
                   "core fraction", "verdict"])
    for key in ("attention", "attention_first_half"):
        analysis = metrics.get(key) or {}
        for query, p in analysis.get("profiles", {}).items():
            value, control = _num(p.get("enrichment")), _num(p.get("enrichment_control"))
            verdict = ("not measured" if not (math.isfinite(value) and math.isfinite(control))
                       else "above control" if value > control else "**below control (negative)**")
            table.rows.append([str(analysis.get("model", "?")), str(analysis.get("window", "?")),
                               str(analysis.get("n_stars", "?")), LABEL_DISPLAY_NAMES.get(query, query),
                               str(p.get("element")), str(p.get("n_lines")), _fmt(value, 2), _fmt(control, 2),
                               _fmt(p.get("core_fraction"), 3), verdict])
    return table


def simple_tables(metrics: Mapping) -> dict[str, Table]:
    """The models, targets and timings tables (those present in ``metrics``)."""
    tables = {}
    models = metrics.get("models", {})
    if models:
        tables["models"] = Table(["model", "pixels", "what it is"], [
            [name, "–".join(str(p) for p in m.get("pixels", [])), str(m.get("description", name))]
            for name, m in models.items()])
    if metrics.get("acceptance"):
        tables["targets"] = Table(["check", "value", "target", "met"], [
            [display_check_name(name), _fmt(c.get("value")), str(c.get("target")),
             "yes" if c.get("pass") else "**no**"] for name, c in metrics["acceptance"].items()])
    if metrics.get("timings_s"):
        tables["timings"] = Table(["step", "wall seconds"],
                                  [[k, f"{_num(v):.1f}"] for k, v in metrics["timings_s"].items()])
    return tables


#: Captions of the figures (key of the figures mapping → caption).
CAPTIONS = {
    "pred_vs_true": "Predicted vs true [Fe/H] of every Fe-window model on the test stars. Dots: every star "
                    "(red: [Fe/H] < −1); open circles with bars: 60 random stars with their predicted ±1σ; "
                    "triangles: predictions beyond the axis, drawn at the edge. RMSE and bias (median "
                    "residual) in dex.",
    "residuals": "[Fe/H] residual (predicted − true) against true [Fe/H], T_eff and S/N: running medians "
                 "(equal-count bins) of every model; stage 3's stars and 16–84 % band. The y-range encloses "
                 "every running median; points beyond it are drawn at the edge as triangles.",
    "stage2_one_to_one": "Stage 2 on its own pixels (0–3756): predicted vs true for each of the five labels, "
                         "with ±1σ error bars on 60 random stars.",
    "kiel": "Kiel diagram (T_eff against log g, both axes reversed as usual) coloured by [Fe/H]: true labels "
            "(left) and stage 2's predictions of all three (right), on one colour scale.",
    "coverage": "Fraction of test stars whose truth lies within the central Gaussian interval of the predicted "
                "σ, against the interval's nominal probability; the diagonal is perfect calibration. Left: σ "
                "as predicted; middle: σ times the scale fitted on validation stars; right: stage 2's labels.",
    "attention": "Stage 3's [Fe/H]-query attention over the Fe window (log scale, relative to uniform), under "
                 "the mean spectrum of the same stars. Orange ticks: the Fe lines counted; dashed: mean "
                 "attention on Fe line cores and on the cores of as many lines of shuffled species (control); "
                 "the strongest peaks are named from the simulator's line list (species, vacuum Å).",
    "attention_first_half": "Stage 2's attention over its first half, for the [Fe/H], [Mg/Fe] and [O/Fe] "
                            "queries, under the mean spectrum; the chip gap (15800–15868 Å) is left blank.",
    "training_curves": "Training curves: Gaussian negative log-likelihood per label in standardised units "
                       "(training loss, with its running mean, and validation loss), the validation RMSE in "
                       "physical units where the stage selects on it, and the checkpoint kept.",
}


def _figure_blocks(figures: Mapping[str, Path | None], keys: Sequence[str]) -> list:
    return [Figure(key, CAPTIONS[key]) for key in keys if figures.get(key)]


def _intro_blocks(metrics: Mapping) -> list:
    run = metrics.get("run", {})
    blocks: list = [Heading("SpectraFM pipeline report", 1), Paragraph(
        f"Config `{run.get('config', '?')}`, seed {run.get('seed', '?')}, stage-3 trainer "
        f"`{run.get('stage3_trainer', 'accelerate')}`. All data are **simulated** (the built-in APOGEE simulator); "
        "the numbers do not transfer to real APOGEE spectra.")]
    blocks += [Heading("Test set"), Paragraph(metrics.get("test_set", {}).get("description", "")),
               Paragraph(composition_sentence(metrics))]
    findings = accuracy_findings(metrics.get("models", {})) + attention_sentences(metrics) + unmet_targets(metrics)
    if findings:
        blocks += [Heading("Findings"), Bullets(findings)]
    return blocks


def report_blocks(metrics: Mapping, figures: Mapping[str, Path | None]) -> list:
    """The whole report as blocks, from metrics.json's dict and the figure paths by key."""
    models, tables = metrics.get("models", {}), simple_tables(metrics)
    composition = Paragraph(composition_sentence(metrics))
    blocks = _intro_blocks(metrics)
    blocks += [Heading("[Fe/H] in the 16106–16220 Å window (pixels 4107–4618): stage 3 vs baselines"), Paragraph(
        "Every model below was trained on the SAME 100 observed stars with [Fe/H] > −1 and selected on iron-rich "
        "validation stars only; residuals are predicted − true in dex; bias is the median residual. 'Scaled' "
        "multiplies σ by one variance scale per model, fitted on the validation set."), composition,
        fe_window_table(models, metrics)]
    blocks += _figure_blocks(figures, ("pred_vs_true", "residuals"))
    if "stage2" in models:
        blocks += [Heading("Stage 2 on all five labels (observed spectra, pixels 0–3756)"), composition,
                   stage2_table(models["stage2"])]
        blocks += _figure_blocks(figures, ("stage2_one_to_one", "kiel"))
    if figures.get("coverage"):
        blocks += [Heading("Uncertainties: coverage against nominal level")] + _figure_blocks(figures, ("coverage",))
    attention = attention_table(metrics)
    if attention.rows:
        blocks += [Heading("Where the label queries look: attention on element lines"), Paragraph(
            "Enrichment: the attention mass on pixels within ±0.4 Å of that element's line cores divided by the "
            "fraction of pixels that are such cores (1 = no preference). Control: the same for as many lines "
            "drawn from the other species (mean of 50 shuffles). An enrichment above its control means the "
            "query prefers that element's lines to absorption lines in general; a verdict 'below control' is a "
            "negative result (see Findings)."), attention]
        blocks += _figure_blocks(figures, ("attention", "attention_first_half"))
    if "targets" in tables:
        blocks += [Heading("Targets"), Paragraph("The project's acceptance targets: the paper's claims, expressed "
                                                 "against the baselines. The pipeline measures them; nothing in it "
                                                 "is tuned to meet them."), tables["targets"]]
    if figures.get("training_curves"):
        blocks += [Heading("Training")] + _figure_blocks(figures, ("training_curves",))
    for key, title in (("models", "Models"), ("timings", "Step timings")):
        if key in tables:
            blocks += [Heading(title), tables[key]]
    return blocks


def _markdown_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence, figures: Mapping[str, Path | None]) -> str:
    """Markdown of ``blocks``; figures are linked by file name (they sit beside report.md)."""
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""] if block.text else []
        elif isinstance(block, Bullets):
            lines += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(_markdown_cell(h) for h in block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, Figure):
            name = Path(figures[block.key]).name
            lines += [f"![{block.key}]({name})", "", f"*{block.caption}*", ""]
    return "\n".join(lines)


def write_report(out_dir: Path, metrics: Mapping, figures: Mapping[str, Path | None]) -> Path:
    """Write ``report.md`` from ``metrics`` (the dict that goes to metrics.json) and figure paths."""
    text = render_markdown(report_blocks(metrics, figures), figures)
    return write_text_atomic(Path(out_dir) / "report.md", text)
