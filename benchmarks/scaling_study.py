"""Scaling study: stage-3 and stage-2 accuracy vs stage-1 compute, model width and the number of
metal-poor pre-training spectra (issue 15). Prints figures and writes small JSON results; not a test.

Each grid point is the quickstart recipe (``training/configs/quickstart.yaml``) with five knobs:

* ``d`` (model width): 64 (the quickstart), 96 or 128, heads fixed at 4, MLP widths scaled with d;
* the stage-1 budget in minutes of ONE idle core of this machine, turned into optimiser steps with the
  seconds per step measured by ``calibrate`` (stage 2 gets a fifth of stage 1's steps, as in the
  quickstart: 2500 / 500). Steps, not wall time, make a point: a busy machine slows a run down but
  does not change its result;
* the synthetic prior (``apogee``: ~2.5 % of stars below [Fe/H] = −1; ``wide<P>``: P % more drawn in
  [−2.5, −1]; ``wide`` = ``wide20``, the quickstart), i.e. the number of metal-poor pre-training spectra
  at a fixed 12,000 synthetic spectra;
* the run seed (the simulated data, test set included, stay those of data seed 0 for every point);
* the precision of stages 1–2: float32, or ``bf16`` autocast (``--precision bf16``; the same budget then
  buys the steps that bf16's measured step time allows);
* the context (pixels per star and step) of all three stages: 128 (the quickstart) or, with
  ``--context``, 256 or 512 (the paper's), each with its own calibrated seconds per step;
* ``--augment``: stage 1 reads its synthetic spectra with fresh observed-like imperfections at every
  step (noise, continuum residual, line-strength errors, line-spread jitter:
  :class:`spectrafm_hf.data.augmentation.ObservedLikeAugmentation` with its defaults) and picks its
  best step on validation spectra perturbed the same way; point names end in ``-aug`` and the
  perturbation's cost per step has its own calibration (``calibrate --augment``).

Every point shares the quickstart's test set and stage-3 protocol, and trains the scratch MLP and ridge
baselines on the same 100 stars; the scratch transformer, The Cannon and the first-half attention
analysis are skipped (they do not depend on the knobs). The Fe-window [Fe/H] attention enrichment (an
acceptance check, ~7 s) is measured on the first 200 test stars (points run before it was added lack it).
Usage (one thread per run; ``--jobs 2`` runs two at once)::

    python benchmarks/scaling_study.py calibrate                     # s/step per width → results/calibration.json
    python benchmarks/scaling_study.py run --widths 64 128 --budgets 5 10 20 --priors wide --seeds 0 --jobs 2
    python benchmarks/scaling_study.py run --widths 64 --budgets 10 --priors apogee wide5 wide50
    python benchmarks/scaling_study.py calibrate --widths 64 --precisions no --contexts 512
    python benchmarks/scaling_study.py run --widths 64 --budgets 20 40 --context 512 --jobs 2
    python benchmarks/scaling_study.py calibrate --widths 64 --precisions no --augment
    python benchmarks/scaling_study.py run --widths 64 --budgets 20 40 --augment --jobs 2
    python benchmarks/scaling_study.py report                        # figure + table in docs/scaling.md

Runs go to ``runs/scaling/<point>`` (never committed); each finished point writes
``docs/results/scaling/<point>.json``. A point whose JSON exists is not run again.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "training" / "configs" / "quickstart.yaml"
RESULTS = REPO / "docs" / "results" / "scaling"
RUNS = REPO / "runs" / "scaling"
FIGURE = REPO / "docs" / "figures" / "scaling.png"
DOC = REPO / "docs" / "scaling.md"
TABLE_BEGIN, TABLE_END = "<!-- scaling table begin -->", "<!-- scaling table end -->"

#: Model block per width: 4 heads everywhere, MLP widths 4d / 2d as in the quickstart (d = 64).
WIDTHS = {
    d: {"d_model": d, "encoder_heads": [4, 4], "encoder_mlp": [4 * d, 2 * d], "decoder_heads": [4, 4, 4],
        "decoder_mlp": [4 * d, 2 * d, 2 * d], "head_mlp": [4 * d, 2 * d, d]}
    for d in (64, 96, 128)
}
BUDGETS_MIN = (5, 10, 20, 40, 80)
LABELS = ("TEFF", "LOGG", "FE_H", "MG_FE", "O_FE")
#: Issue 15's goal: stage-3 iron-rich RMSE ≤ 0.9× the best baseline AND iron-poor ≤ 0.25× the scratch MLP.
GOAL_RICH, GOAL_POOR = 0.9, 0.25


#: The quickstart's context (pixels per star and step); other contexts get a ``-ctx<N>`` suffix.
DEFAULT_CONTEXT = 128
CONTEXTS = (128, 256, 512)


def point_name(d: int, minutes: float, prior: str, seed: int, precision: str = "no",
               context: int = DEFAULT_CONTEXT, augment: bool = False) -> str:
    return f"d{d}-{minutes:g}min-{prior}-seed{seed}" + _suffix(precision, context, augment)


def _suffix(precision: str, context: int, augment: bool = False) -> str:
    """``-bf16`` / ``-ctx512`` / ``-aug`` for what differs from the quickstart (float32, context 128, clean)."""
    return ("" if precision == "no" else f"-{precision}") + ("" if context == DEFAULT_CONTEXT else f"-ctx{context}") \
        + ("-aug" if augment else "")


def stage1_steps(d: int, minutes: float, calibration: dict, precision: str = "no",
                 context: int = DEFAULT_CONTEXT, augment: bool = False) -> int:
    """Optimiser steps that take ``minutes`` on one idle core at width ``d`` (``calibrate``), rounded to 50."""
    key = _key(d, precision, context, augment)
    if key not in calibration["seconds_per_step"]:
        raise SystemExit(f"no calibrated seconds per step for {key!r} (have {sorted(calibration['seconds_per_step'])});"
                         f" run `python {Path(__file__).name} calibrate --widths {d} --precisions {precision} "
                         f"--contexts {context}{' --augment' if augment else ''}`")
    seconds_per_step = calibration["seconds_per_step"][key]
    return max(100, int(round(minutes * 60 / seconds_per_step / 50)) * 50)


def _key(d: int, precision: str, context: int = DEFAULT_CONTEXT, augment: bool = False) -> str:
    """Calibration key: ``64``, ``64-bf16``, ``64-ctx512``, ``64-aug`` (the quickstart's settings have no suffix)."""
    return str(d) + _suffix(precision, context, augment)


def point_config(d: int, steps: int, prior: str, seed: int, precision: str = "no",
                 context: int = DEFAULT_CONTEXT, augment: bool = False) -> dict:
    """The quickstart config with this point's knobs (see the module docstring)."""
    config = yaml.safe_load(BASE_CONFIG.read_text())
    config["seed"] = seed
    config["torch_threads"] = 1
    config["data"]["cache_dir"] = str(RUNS / "cache")
    config["data"]["synthetic"]["prior"] = prior
    config["model"].update(copy.deepcopy(WIDTHS[d]))
    stage1, stage2 = config["stage1"], config["stage2"]
    if context != DEFAULT_CONTEXT:  # the model's positional table must hold the longest context
        config["model"]["context_length"] = max(config["model"]["context_length"], context)
        for stage in ("stage1", "stage2", "stage3"):
            config[stage]["context_length"] = context
    stage1.update(max_steps=steps, eval_every=max(50, steps // 5), checkpoint_every=max(50, steps // 5),
                  warmup_steps=min(100, steps // 10), progress=False)
    stage2_steps = max(100, steps // 5)
    stage2.update(max_steps=stage2_steps, eval_every=max(20, stage2_steps // 5),
                  checkpoint_every=max(20, stage2_steps // 5), progress=False)
    if precision != "no":
        stage1["mixed_precision"] = stage2["mixed_precision"] = precision
    if augment:
        stage1["augment"] = True  # ObservedLikeAugmentation's defaults
    config["stage3"]["progress"] = False
    config["baselines"] = {"scratch_transformer": None, "cannon": None, "ridge": {},
                           "mlp": config["baselines"]["mlp"]}
    # the [Fe/H] attention check of the Fe window only (~7 s): a point that reads more pixels may move its
    # attention off the Fe lines (the context-512 stage 3 did), which the RMSE alone would not show
    config["attention"] = {"enabled": True, "model": "stage3", "n_stars": 200, "batch_size": 16,
                           "queries": ["FE_H"], "first_half": None}
    return config


def calibrate(args) -> None:
    """Seconds per stage-1 step per width on one thread: two short runs (steps and 3 × steps) of the
    stage-1 loop on the quickstart's synthetic spectra; the difference removes start-up and evaluation."""
    import torch

    sys.path.insert(0, str(REPO))
    from spectrafm_hf.data.arrays import window_data
    from spectrafm_hf.data.augmentation import ObservedLikeAugmentation
    from spectrafm_hf.pipeline.config import load_config
    from spectrafm_hf.pipeline.data import prepare_datasets
    from spectrafm_hf.training.stages import run_stage

    torch.set_num_threads(1)
    base = point_config(64, 100, "wide", 0)
    RUNS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="calibration-", dir=RUNS))  # fresh: a finished stage folder is reused
    (work / "config.yaml").write_text(yaml.safe_dump(base))
    config = load_config(work / "config.yaml")
    synthetic = prepare_datasets(config, work)["synthetic"]
    train = window_data(synthetic["train"], rows=range(2000))
    validation = window_data(synthetic["validation"], rows=range(100))
    path = RESULTS / "calibration.json"
    # earlier keys are kept (a context calibrated later joins the widths calibrated before)
    result = json.loads(path.read_text()) if path.exists() else {"threads": 1, "steps": args.steps}
    result.setdefault("seconds_per_step", {})
    for d, precision, context in itertools.product(args.widths, args.precisions, args.contexts):
        key, times = _key(d, precision, context, args.augment), []
        for steps in (args.steps, 3 * args.steps):
            spec = copy.deepcopy(config.stage1)
            spec.context_length = context
            spec.augment = ObservedLikeAugmentation().to_dict() if args.augment else None
            spec.loop.max_steps = spec.loop.eval_every = spec.loop.checkpoint_every = steps
            spec.loop.progress, spec.loop.mixed_precision = False, precision
            start = time.perf_counter()
            run_stage(spec, train, validation, work / f"{key}-{steps}",
                      model_config={**config.model, **WIDTHS[d],
                                    "context_length": max(config.model["context_length"], context)})
            times.append(time.perf_counter() - start)
        if times[1] <= times[0]:
            raise RuntimeError(f"calibration of {key}: {3 * args.steps} steps took no longer than "
                               f"{args.steps} ({times}); was a finished stage reused?")
        result["seconds_per_step"][key] = (times[1] - times[0]) / (2 * args.steps)
        print(f"{key}: {result['seconds_per_step'][key]:.3f} s/step (1 thread)", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def run_point(d: int, minutes: float, prior: str, seed: int, precision: str, context: int, augment: bool,
              calibration: dict) -> Path:
    """Run one point's pipeline (its own process, one thread) and write its result JSON."""
    name = point_name(d, minutes, prior, seed, precision, context, augment)
    result_path = RESULTS / f"{name}.json"
    if result_path.exists():
        print(f"[scaling] {name}: done before ({result_path.relative_to(REPO)})", flush=True)
        return result_path
    steps = stage1_steps(d, minutes, calibration, precision, context, augment)
    config = point_config(d, steps, prior, seed, precision, context, augment)
    config_path = RUNS / "configs" / f"{name}.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    out, log = RUNS / name, RUNS / f"{name}.log"
    print(f"[scaling] {name}: stage 1 {steps} steps → {out.relative_to(REPO)} (log {log.name})", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    with open(log, "a") as handle:
        done = subprocess.run([sys.executable, "-m", "spectrafm_hf.cli", "pipeline", "--config", str(config_path),
                               "--out", str(out)], cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {done.returncode}); see {log}")
    summary = summarise(out, d=d, minutes=minutes, prior=prior, seed=seed, precision=precision, context=context,
                        augment=augment,
                        steps=steps, wall_s=time.perf_counter() - start)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"[scaling] {name}: stage 3 iron-rich {summary['stage3']['iron_rich_rmse']:.3f}, iron-poor "
          f"{summary['stage3']['iron_poor_rmse']:.3f} dex", flush=True)
    return result_path


def summarise(out: Path, **point) -> dict:
    """The few numbers of a finished run that the study compares (test set; validation where chosen)."""
    metrics = json.loads((out / "metrics.json").read_text())
    timings = json.loads((out / "timings.json").read_text())
    models = metrics["models"]

    stage3 = feh_bins(models, "stage3")
    stage3["validation_iron_rich_rmse"] = metrics["training"]["stage3"]["best_metric"]
    stage3["coverage_68"] = models["stage3"]["labels"]["FE_H"]["calibration"].get("after", {}).get("all", {}) \
        .get("coverage_68")
    baselines = baseline_bins(models)
    stage2 = {label: models["stage2"]["labels"][label]["bins"]["all"]["rmse"] for label in LABELS}
    n_metal_poor = _metal_poor_count(point["prior"])
    profile = metrics.get("attention", {}).get("profiles", {}).get("FE_H")
    if profile:
        stage3["fe_enrichment"] = profile["enrichment"]
        stage3["fe_enrichment_control"] = profile["enrichment_control"]
    return {**point, "n_metal_poor_synthetic": n_metal_poor, "stage3": stage3, "baselines": baselines,
            "stage2_rmse": stage2, "stage1_wall_s": _timing(timings, "stage 1"), "timings_s": timings,
            "ratios": goal_ratios(stage3["iron_rich_rmse"], stage3["iron_poor_rmse"], baselines)}


def feh_bins(models: dict, model: str) -> dict[str, float]:
    """A model's test [Fe/H] RMSE in the two bins of the goal (and its iron-poor bias), from metrics.json."""
    bins = models[model]["labels"]["FE_H"]["bins"]
    return {"iron_rich_rmse": bins["feh_ge_-1"]["rmse"], "iron_poor_rmse": bins["feh_lt_-1"]["rmse"],
            "iron_poor_bias": bins["feh_lt_-1"]["bias"]}


def baseline_bins(models: dict) -> dict[str, dict[str, float]]:
    """:func:`feh_bins` of the baselines the goal compares with (scratch MLP, ridge) that the run has."""
    return {name: feh_bins(models, name) for name in ("scratch_mlp", "ridge") if name in models}


def goal_ratios(iron_rich: float, iron_poor: float, baselines: dict) -> dict[str, float]:
    """Issue 15's two ratios: iron-rich RMSE ÷ the better baseline's, iron-poor RMSE ÷ the scratch MLP's."""
    if "scratch_mlp" not in baselines:
        raise SystemExit("no scratch_mlp baseline to compare with (the goal's iron-poor ratio needs it)")
    return {"iron_rich_vs_best_baseline": iron_rich / min(b["iron_rich_rmse"] for b in baselines.values()),
            "iron_poor_vs_mlp": iron_poor / baselines["scratch_mlp"]["iron_poor_rmse"]}


def _timing(timings: dict, prefix: str) -> float | None:
    return next((seconds for step, seconds in timings.items() if step.startswith(prefix)), None)


def _metal_poor_count(prior: str, n: int = 12000) -> int:
    """Synthetic spectra (train + validation, true [Fe/H] < −1) of the quickstart's 12,000 under ``prior``."""
    sys.path.insert(0, str(REPO))
    from spectrafm_hf.data.prior import sample_labels

    return int((sample_labels(n, seed=0, prior=prior)["FE_H"] < -1.0).sum())


def run(args) -> None:
    calibration_path = RESULTS / "calibration.json"
    if not calibration_path.exists():
        raise SystemExit(f"{calibration_path} is missing; run `python {Path(__file__).name} calibrate` first")
    calibration = json.loads(calibration_path.read_text())
    points = list(itertools.product(args.widths, args.budgets, args.priors, args.seeds, [args.precision],
                                    [args.context], [args.augment]))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(run_point, *point, calibration) for point in points]:
            future.result()


def load_results() -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(RESULTS.glob("d*-*min-*.json"))]


def table(results: list[dict]) -> str:
    """Markdown table, one row per point, sorted by prior, width, budget, seed."""
    header = ("| d | stage-1 budget (min, 1 core) | steps | synthetic prior (metal-poor spectra) | seed | "
              "stage 3 iron-rich RMSE | iron-poor RMSE | ÷ best baseline (rich) | ÷ MLP (poor) | "
              "val. iron-rich | Fe enrichment (control) | stage 2 Teff / logg / [Fe/H] / [Mg/Fe] / [O/Fe] |\n"
              "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    rows = []
    for r in sorted(results, key=lambda r: (r["prior"], r["precision"], r["context"], r["augment"], r["d"],
                                            r["minutes"], r["seed"])):
        s2 = r["stage2_rmse"]
        bf16 = " (bf16)" if r["precision"] != "no" else ""
        context = "" if r["context"] == DEFAULT_CONTEXT else f", context {r['context']}"
        context += ", augmented stage 1" if r["augment"] else ""
        rows.append(f"| {r['d']}{bf16}{context} | {r['minutes']:g} | {r['steps']} | "
                    f"{r['prior']} ({r['n_metal_poor_synthetic']:,}) | "
                    f"{r['seed']} | {r['stage3']['iron_rich_rmse']:.3f} | {r['stage3']['iron_poor_rmse']:.3f} | "
                    f"{r['ratios']['iron_rich_vs_best_baseline']:.2f} | {r['ratios']['iron_poor_vs_mlp']:.2f} | "
                    f"{r['stage3']['validation_iron_rich_rmse']:.3f} | {_enrichment(r['stage3'])} | "
                    f"{s2['TEFF']:.0f} K / {s2['LOGG']:.2f} / "
                    f"{s2['FE_H']:.3f} / {s2['MG_FE']:.3f} / {s2['O_FE']:.3f} |")
    return "\n".join([header, *rows])


def _enrichment(stage3: dict) -> str:
    """The [Fe/H] attention enrichment on Fe lines and its shuffled control; "—" where not measured."""
    if "fe_enrichment" not in stage3:
        return "—"
    return f"{stage3['fe_enrichment']:.2f} ({stage3['fe_enrichment_control']:.2f})"


def figure(results: list[dict], path: Path) -> None:
    """Stage-3 RMSE vs stage-1 budget (one curve per width, iron-rich and iron-poor panels) and
    iron-poor RMSE vs the number of metal-poor pre-training spectra."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 3, figsize=(15, 6.2))
    default = [r for r in results if r["prior"] == "wide" and r["precision"] == "no"]
    curves = sorted({(r["d"], r["context"], r["augment"]) for r in default})
    goals = {"iron_rich_rmse": (GOAL_RICH, "goal: 0.9 × best baseline"),
             "iron_poor_rmse": (GOAL_POOR, "goal: 0.25 × scratch MLP")}
    for ax, key, title in ((axes[0], "iron_rich_rmse", "iron-rich test stars ([Fe/H] ≥ −1)"),
                           (axes[1], "iron_poor_rmse", "iron-poor test stars ([Fe/H] < −1)")):
        for colour, (d, context, augmented) in zip(("C0", "C1", "C2", "C4", "C5", "C6"), curves):
            runs = [r for r in default if r["d"] == d and r["context"] == context and r["augment"] == augmented]
            budgets = sorted({r["minutes"] for r in runs})
            ax.plot(budgets, [_mean(r["stage3"][key] for r in runs if r["minutes"] == m) for m in budgets], "-",
                    color=colour, label=f"SpectraFM stage 3, d = {d}, context {context}"
                    f"{', augmented stage 1' if augmented else ''} (line: mean over seeds)")
            ax.plot([r["minutes"] for r in runs], [r["stage3"][key] for r in runs], "o", color=colour, ms=5)
        for name, style in (("scratch_mlp", "--"), ("ridge", ":")):
            values = [r["baselines"][name][key] for r in default if name in r["baselines"]]
            if values:
                ax.axhline(_mean(values), color="k", ls=style, lw=1, label=f"{name} (mean over runs)")
        factor, label = goals[key]
        if key == "iron_rich_rmse":
            reference = _mean(min(b["iron_rich_rmse"] for b in r["baselines"].values()) for r in default)
        else:
            reference = _mean(r["baselines"]["scratch_mlp"]["iron_poor_rmse"] for r in default)
        ax.axhline(factor * reference, color="C3", ls="-.", lw=1, label=label)
        ticks = sorted({r["minutes"] for r in default})
        fit = rich_fit(results) if key == "iron_rich_rmse" else None
        if fit is not None and fit["slope"] < 0:
            reach = minutes_to_goal(fit, fit["slope"])
            span = np.geomspace(fit["minutes"].min(), min(max(reach, fit["minutes"].max()) * 1.2, 5000), 50)
            ax.plot(span, fit["intercept"] + fit["slope"] * np.log2(span), color="0.5", ls="--", lw=1,
                    label=f"fit, d = 64: {fit['slope']:+.4f} dex per doubling (extrapolated)")
            ticks.append(round(reach))
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("stage-1 budget (minutes of one idle core)")
        ax.set_ylabel("[Fe/H] RMSE (dex)")
        ax.set_title(title)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below: the curves fill the panel
    by_prior = [r for r in results if r["d"] == 64 and r["minutes"] == 10 and r["precision"] == "no"
                and r["context"] == DEFAULT_CONTEXT and not r["augment"]]
    counts = sorted({r["n_metal_poor_synthetic"] for r in by_prior})
    series = (("iron_poor_rmse", "C3", "iron-poor stars"), ("iron_rich_rmse", "C0", "iron-rich stars"))
    for key, colour, label in series:
        axes[2].plot(counts, [_mean(r["stage3"][key] for r in by_prior if r["n_metal_poor_synthetic"] == c)
                              for c in counts], "-", color=colour, label=f"{label} (mean over seeds)")
        axes[2].plot([r["n_metal_poor_synthetic"] for r in by_prior], [r["stage3"][key] for r in by_prior], "o",
                     color=colour, ms=5)
    for r in by_prior:
        axes[2].annotate(f"{r['prior']} s{r['seed']}", (r["n_metal_poor_synthetic"], r["stage3"]["iron_poor_rmse"]),
                         fontsize=7, textcoords="offset points", xytext=(4, 4))
    axes[2].set_xscale("log")
    axes[2].set_xticks(counts)
    axes[2].xaxis.set_major_formatter(ScalarFormatter())
    axes[2].xaxis.set_minor_formatter(NullFormatter())
    axes[2].set_xlabel("metal-poor synthetic spectra ([Fe/H] < −1, of 12,000)")
    axes[2].set_ylabel("stage-3 [Fe/H] RMSE (dex)")
    axes[2].set_title("d = 64, 10 min: vs metal-poor pre-training spectra")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rich_fit(results: list[dict], d: int = 64, prior: str = "wide") -> dict | None:
    """Straight-line fit of stage-3 iron-rich RMSE against log2(stage-1 minutes) at width ``d`` and
    ``prior`` (float32, every seed), and the goal it is aimed at; None with fewer than 3 budgets.

    A straight line in log-compute is the simplest reading of the measured points; a curve that
    flattens (as such curves do near a noise floor) would put the goal further away, never closer.
    Returns slope and its 1σ error (dex per doubling), intercept (at 1 minute), goal (dex), the runs.
    """
    runs = [r for r in results if r["d"] == d and r["prior"] == prior and r["precision"] == "no"
            and r["context"] == DEFAULT_CONTEXT and not r["augment"]]
    minutes = np.array([r["minutes"] for r in runs], float)
    if len(set(minutes)) < 3:
        return None
    rich = np.array([r["stage3"]["iron_rich_rmse"] for r in runs])
    (slope, intercept), covariance = np.polyfit(np.log2(minutes), rich, 1, cov=True)
    goal = GOAL_RICH * _mean(min(b["iron_rich_rmse"] for b in r["baselines"].values()) for r in runs)
    return {"slope": float(slope), "error": float(np.sqrt(covariance[0, 0])), "intercept": float(intercept),
            "goal": goal, "runs": runs, "minutes": minutes}


def minutes_to_goal(fit: dict, slope: float) -> float:
    """Stage-1 minutes of one core at which a line of ``slope`` through the fit's centre meets the goal."""
    centre = np.log2(fit["minutes"]).mean()
    level = fit["intercept"] + fit["slope"] * centre
    return float(2 ** (centre + (fit["goal"] - level) / slope))


def budget_to_goal(results: list[dict], d: int = 64, prior: str = "wide") -> str:
    """One sentence: :func:`rich_fit`'s slope and the budget where it meets the goal."""
    fit = rich_fit(results, d, prior)
    if fit is None:
        return f"(too few budgets at d = {d}, {prior} prior for a fit)"
    slope, error, minutes = fit["slope"], fit["error"], fit["minutes"]
    text = (f"Fit over the {len(fit['runs'])} runs at d = {d}, {prior} prior ({minutes.min():g}–{minutes.max():g} "
            f"min): iron-rich RMSE changes by {slope:+.4f} ± {error:.4f} dex per doubling of stage-1 compute; "
            f"the goal ({GOAL_RICH:g} × the best baseline's mean {fit['goal'] / GOAL_RICH:.3f} = {fit['goal']:.3f} "
            "dex) ")
    if slope + error >= 0:
        return text + "is not approached by more compute within the fit's uncertainty."
    hours = [minutes_to_goal(fit, s) / 60 for s in (slope, slope - error, slope + error)]
    budgets = sorted(set(minutes))
    mean_at = [_mean(r["stage3"]["iron_rich_rmse"] for r in fit["runs"] if r["minutes"] == m) for m in budgets[-2:]]
    return text + (f"is met after ≈ {hours[0]:.1f} h of one core (slope ± 1σ: {hours[1]:.1f}–{hours[2]:.1f} h), "
                   f"an extrapolation beyond the {minutes.max():g} minutes measured, whose last step "
                   f"({budgets[-2]:g} → {budgets[-1]:g} min) changed the RMSE by {mean_at[1] - mean_at[0]:+.4f} dex.")


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def report(args) -> None:
    results = load_results()
    if not results:
        raise SystemExit(f"no results under {RESULTS}; run the study first")
    figure(results, FIGURE)
    text = table(results) + "\n\n" + budget_to_goal(results)
    print(text)
    if write_between(TABLE_BEGIN, TABLE_END, text + "\n"):
        print(f"table written into {DOC.relative_to(REPO)}; figure {FIGURE.relative_to(REPO)}")


def write_between(begin: str, end: str, text: str) -> bool:
    """Replace what lies between the ``begin`` and ``end`` markers of docs/scaling.md with ``text``
    (the rest of the page is kept as it is); False, and nothing written, where either marker is missing."""
    doc = DOC.read_text() if DOC.exists() else ""
    if begin not in doc or end not in doc:
        return False
    before, rest = doc.split(begin, 1)
    DOC.write_text(before + begin + "\n" + text + end + rest.split(end, 1)[1])
    return True


def stage3_context(args) -> None:
    """Stage 3's test-time context on finished points: the 512-pixel Fe window in one context ("all",
    what the pipeline does) vs disjoint chunks of 256 or 128 pixels (the training context) combined by
    precision weighting. The choice is read on the iron-rich validation stars; test RMSE is shown beside."""
    import torch

    sys.path.insert(0, str(REPO))
    from spectrafm_hf.checkpoints import load_model
    from spectrafm_hf.pipeline import load_config
    from spectrafm_hf.pipeline.data import load_data
    from spectrafm_hf.training.stages import predict

    torch.set_num_threads(1)
    result = {}
    for name in args.points:
        out = RUNS / name
        data = load_data(load_config(RUNS / "configs" / f"{name}.yaml"), out)
        model, feature_extractor = load_model(out / "stage3", device="cpu")
        rich = data.true_feh > -1.0
        rows = {}
        for context in ("all", 256, 128):
            val = predict(model, feature_extractor, data.stage3_val, ("FE_H",), 64, context=context)["FE_H"][0]
            test = predict(model, feature_extractor, data.test_fe, ("FE_H",), 64, context=context)["FE_H"][0]
            rows[str(context)] = {"validation_iron_rich": rmse(val, data.stage3_val.labels["FE_H"]),
                                  "test_iron_rich": rmse(test[rich], data.true_feh[rich]),
                                  "test_iron_poor": rmse(test[~rich], data.true_feh[~rich])}
        chosen = min(rows, key=lambda context: rows[context]["validation_iron_rich"])
        result[name] = {"contexts": rows, "chosen_on_validation": chosen}
        print(f"{name}: " + ", ".join(f"{c}: val {r['validation_iron_rich']:.4f} / test rich {r['test_iron_rich']:.4f}"
                                      f" / poor {r['test_iron_poor']:.4f}" for c, r in rows.items())
              + f" → chosen: {chosen}", flush=True)
    (RESULTS / "stage3_context.json").write_text(json.dumps(result, indent=1) + "\n")


def stage1_precision(args) -> None:
    """How precisely each point's stage 1 reads [Fe/H] in the Fe window of CLEAN synthetic validation
    spectra (its own training distribution, no noise, no model mismatch), iron-rich and iron-poor; beside
    it, the scratch MLP trained on ``--mlp-stars`` synthetic Fe-window spectra: what a plain regressor
    reads from the same pixels. If stage 1 is far above that, the foundation model's own precision, not
    the 100 stage-3 stars, bounds stage 3."""
    import torch

    sys.path.insert(0, str(REPO))
    from spectrafm_hf.checkpoints import load_model
    from spectrafm_hf.data.arrays import cut_window, subset
    from spectrafm_hf.data.grid import FE_WINDOW
    from spectrafm_hf.pipeline import load_config
    from spectrafm_hf.pipeline.data import FEH_RICH_MIN, load_data
    from spectrafm_hf.training.baselines import fit_scratch_mlp
    from spectrafm_hf.training.stages import predict

    torch.set_num_threads(1)
    result, reference = {}, {}
    for name in args.points:
        out = RUNS / name
        data = load_data(load_config(RUNS / "configs" / f"{name}.yaml"), out)
        validation = cut_window(subset(data.synthetic_val, np.arange(min(len(data.synthetic_val), args.stars))),
                                FE_WINDOW)
        truth = validation.labels["FE_H"]
        rich = truth > FEH_RICH_MIN
        model, feature_extractor = load_model(out / "stage1", device="cpu")
        pred = predict(model, feature_extractor, validation, ("FE_H",), 64)["FE_H"][0]
        row = {**rmse_by_bin(pred, truth, rich), "n_iron_rich": int(rich.sum()), "n_iron_poor": int((~rich).sum())}
        prior = name.split("-")[2]
        if prior not in reference:  # one MLP per synthetic universe (prior)
            train = cut_window(subset(data.synthetic_train, np.arange(args.mlp_stars)), FE_WINDOW)
            rest = cut_window(subset(data.synthetic_val, np.arange(args.stars, len(data.synthetic_val))), FE_WINDOW)
            mlp_pred = fit_scratch_mlp(train, rest, max_steps=3000, eval_every=100, patience=8).predict(validation)[0]
            reference[prior] = {**rmse_by_bin(mlp_pred, truth, rich), "n_train": args.mlp_stars}
        row["scratch_mlp_same_pixels"] = reference[prior]
        result[name] = row
        print(f"{name}: stage 1 on clean synthetic Fe-window spectra: iron-rich {row['iron_rich']:.4f}, iron-poor "
              f"{row['iron_poor']:.4f} dex; scratch MLP on {args.mlp_stars} synthetic spectra: "
              f"{reference[prior]['iron_rich']:.4f} / {reference[prior]['iron_poor']:.4f}", flush=True)
    (RESULTS / "stage1_precision.json").write_text(json.dumps(result, indent=1) + "\n")


#: One term of the observed-like augmentation at a time (the others off), for ``perturbation-probe``.
PROBE_TERMS = {
    "clean": {},
    "noise (SNR 50-1000)": {"snr": [50, 1000]},
    "continuum residual (0.3-1 %)": {"continuum_rms": [0.003, 0.01]},
    "line-depth errors (10 %)": {"line_depth_scatter": 0.1},
    "line spread (R 20-25k)": {"resolving_power": [20000, 25000]},
    "all four": None,
}


def perturbation_probe(args) -> None:
    """Which observed-like imperfection a stage 1 is fragile to: its zero-shot [Fe/H] RMSE and bias on
    synthetic Fe-window VALIDATION spectra, clean and with each term of the augmentation alone (one fixed
    draw per star). A model that overfits the clean simulator loses most on the term it relies on."""
    import torch

    sys.path.insert(0, str(REPO))
    from spectrafm_hf.checkpoints import load_model
    from spectrafm_hf.data.arrays import cut_window, subset
    from spectrafm_hf.data.augmentation import ObservedLikeAugmentation
    from spectrafm_hf.data.grid import FE_WINDOW
    from spectrafm_hf.pipeline import load_config
    from spectrafm_hf.pipeline.data import FEH_RICH_MIN, load_data
    from spectrafm_hf.training.stages import predict

    torch.set_num_threads(1)
    off = {"snr": None, "continuum_rms": None, "line_depth_scatter": 0.0, "resolving_power": None}
    path = RESULTS / "perturbation_probe.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    validation = None
    for name in args.points:
        if validation is None:  # every point's synthetic validation stars are those of data seed 0
            data = load_data(load_config(RUNS / "configs" / f"{name}.yaml"), RUNS / name)
            clean = subset(data.synthetic_val, np.arange(min(len(data.synthetic_val), args.stars)))
            validation = {}
            for term, settings in PROBE_TERMS.items():
                stars = subset(clean, np.arange(len(clean)))
                if term != "clean":
                    augmentation = ObservedLikeAugmentation(**({**off, **settings} if settings is not None else {}))
                    stars.flux = augmentation.apply(stars.flux, stars.mask, stars.wavelength,
                                                    np.random.default_rng([0, 17]))
                validation[term] = cut_window(stars, FE_WINDOW)  # perturbed on the whole grid, then cut
        model, feature_extractor = load_model(RUNS / name / "stage1", device="cpu")
        row = {}
        for term, stars in validation.items():
            truth = stars.labels["FE_H"]
            rich = truth > FEH_RICH_MIN
            pred = predict(model, feature_extractor, stars, ("FE_H",), 64)["FE_H"][0]
            row[term] = {**rmse_by_bin(pred, truth, rich), "bias_iron_rich": float(np.mean(pred[rich] - truth[rich]))}
        result[name] = row
        print(f"{name}: " + "; ".join(f"{t} {v['iron_rich']:.3f} ({v['bias_iron_rich']:+.3f}) / {v['iron_poor']:.3f}"
                                      for t, v in row.items()), flush=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def window_probe(args) -> None:
    """The quickstart's d = 64 transformer trained from scratch on the synthetic Fe window ONLY (512
    pixels, ``--context`` pixels per star and step, ``--steps`` steps), scored like ``stage1-precision``:
    does the transformer read [Fe/H] precisely when all its steps are spent on these pixels?"""
    import torch

    sys.path.insert(0, str(REPO))
    from spectrafm_hf.checkpoints import load_model
    from spectrafm_hf.data.arrays import cut_window, subset
    from spectrafm_hf.data.grid import FE_WINDOW
    from spectrafm_hf.pipeline import load_config
    from spectrafm_hf.pipeline.data import FEH_RICH_MIN, load_data
    from spectrafm_hf.training.stages import predict, run_stage

    torch.set_num_threads(1)
    base = "d64-10min-wide-seed0"
    config = load_config(RUNS / "configs" / f"{base}.yaml")
    data = load_data(config, RUNS / base)
    n_val = len(data.synthetic_val)
    scored = cut_window(subset(data.synthetic_val, np.arange(args.stars)), FE_WINDOW)  # as stage1-precision
    selection = cut_window(subset(data.synthetic_val, np.arange(args.stars, min(n_val, args.stars + 256))), FE_WINDOW)
    spec = copy.deepcopy(config.stage1)
    spec.window, spec.context_length, spec.narrow_window_fraction = "fe_window", args.context, 0.0
    spec.loop.max_steps = args.steps
    spec.loop.eval_every = spec.loop.checkpoint_every = max(50, args.steps // 5)
    name = f"window-probe-ctx{args.context}-{args.steps}steps"
    start = time.perf_counter()
    run_stage(spec, cut_window(data.synthetic_train, FE_WINDOW), selection, RUNS / name,
              model_config=dict(config.model), seed=0)
    seconds = time.perf_counter() - start
    model, feature_extractor = load_model(RUNS / name, device="cpu")
    pred = predict(model, feature_extractor, scored, ("FE_H",), 64)["FE_H"][0]
    truth = scored.labels["FE_H"]
    rich = truth > FEH_RICH_MIN
    row = {"context": args.context, "steps": args.steps, "train_seconds": round(seconds, 1),
           **rmse_by_bin(pred, truth, rich)}
    print(f"{name}: [Fe/H] on clean synthetic Fe-window spectra: iron-rich {row['iron_rich']:.4f}, iron-poor "
          f"{row['iron_poor']:.4f} dex ({seconds:.0f} s)", flush=True)
    path = RESULTS / "window_probe.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[name] = row
    path.write_text(json.dumps(results, indent=1) + "\n")


#: [Fe/H] bins of the domain-gap table: iron-rich, the iron-poor edge and the most iron-poor test stars.
GAP_BINS = {"feh_ge_-1": (-1.0, np.inf), "feh_-1.5_-1": (-1.5, -1.0), "feh_lt_-1.5": (-np.inf, -1.5)}


def domain_gap(args) -> None:
    """How each stage's [Fe/H] reads the OBSERVED test stars of finished runs, from their saved
    predictions (no training): stage 1 zero-shot (trained on clean synthetic spectra only), stage 2
    zero-shot and stage 3; RMSE and bias per [Fe/H] bin. Against ``stage1-precision`` (the same stage 1 on
    clean synthetic spectra) it separates the model's precision from the synthetic-to-observed gap."""
    path = RESULTS / "domain_gap.json"
    result = json.loads(path.read_text()) if path.exists() else {}  # other runs' entries are kept
    for folder in args.runs:
        if not (Path(folder) / "predictions.npz").exists():
            raise SystemExit(f"{folder} has no predictions.npz: give finished pipeline run folders")
    validation = _observed_validation() if args.validation else None
    for folder in args.runs:
        predictions = np.load(Path(folder) / "predictions.npz")
        row = {model: gap_bins(predictions[f"{model}__pred"], predictions[f"{model}__true"])
               for model in ("stage1_zero_shot", "stage2_zero_shot", "stage3")}
        if validation is not None:
            row["stage1_zero_shot_validation"] = _stage1_on(Path(folder), validation)
        result[folder] = row  # as given: quickstart_seeds' folders are all named seed<N>
        print(folder + ": " + "; ".join(
            f"{model} " + ", ".join(f"{b} {v['rmse']:.3f} ({v['bias']:+.3f})" for b, v in bins.items())
            for model, bins in row.items()), flush=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def _observed_validation():
    """The observed validation stars of every point (data seed 0), Fe window: the stars a choice may look at."""
    sys.path.insert(0, str(REPO))
    from spectrafm_hf.data.arrays import cut_window
    from spectrafm_hf.data.grid import FE_WINDOW
    from spectrafm_hf.pipeline import load_config
    from spectrafm_hf.pipeline.data import load_data

    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "config.yaml").write_text(yaml.safe_dump(point_config(64, 100, "wide", 0)))
        data = load_data(load_config(Path(work) / "config.yaml"), Path(work))
    return cut_window(data.observed_val, FE_WINDOW)


def _stage1_on(folder: Path, validation) -> dict[str, dict[str, float]]:
    """Stage 1's zero-shot [Fe/H] RMSE / bias on observed VALIDATION stars (:func:`gap_bins`, with counts)."""
    import torch

    from spectrafm_hf.checkpoints import load_model
    from spectrafm_hf.training.stages import predict

    torch.set_num_threads(1)
    model, feature_extractor = load_model(folder / "stage1", device="cpu")
    truth = validation.labels["FE_H"]
    bins = gap_bins(predict(model, feature_extractor, validation, ("FE_H",), 64)["FE_H"][0], truth)
    for name, (low, high) in GAP_BINS.items():
        bins[name]["n"] = int(((truth >= low) & (truth < high)).sum())
    return bins


def gap_bins(prediction: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, float]]:
    """RMSE and bias (prediction − truth, dex) in each of :data:`GAP_BINS`."""
    out = {}
    for name, (low, high) in GAP_BINS.items():
        inside = (truth >= low) & (truth < high)
        out[name] = {"rmse": rmse(prediction[inside], truth[inside]),
                     "bias": float(np.nanmean(prediction[inside] - truth[inside]))}
    return out


def rmse(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Root-mean-square error (dex for [Fe/H]); shared by the issue-15 benchmarks."""
    return float(np.sqrt(np.nanmean((prediction - truth) ** 2)))  # NaN: a missing true label


def rmse_by_bin(prediction: np.ndarray, truth: np.ndarray, rich: np.ndarray) -> dict[str, float]:
    """RMSE of the iron-rich (``rich``) and the other stars."""
    return {"iron_rich": rmse(prediction[rich], truth[rich]), "iron_poor": rmse(prediction[~rich], truth[~rich])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibrate", help="seconds per stage-1 step per width (1 thread)")
    cal.add_argument("--widths", type=int, nargs="+", default=sorted(WIDTHS), choices=sorted(WIDTHS))
    cal.add_argument("--steps", type=int, default=20)
    cal.add_argument("--precisions", nargs="+", default=["no", "bf16"], choices=["no", "bf16"])
    cal.add_argument("--contexts", type=int, nargs="+", default=[DEFAULT_CONTEXT], choices=CONTEXTS)
    cal.add_argument("--augment", action="store_true", help="with stage 1's observed-like augmentation")
    go = sub.add_parser("run", help="run grid points (skips finished ones)")
    go.add_argument("--widths", type=int, nargs="+", default=[64], choices=sorted(WIDTHS))
    go.add_argument("--budgets", type=float, nargs="+", default=[5, 10, 20])
    go.add_argument("--priors", nargs="+", default=["wide"])
    go.add_argument("--seeds", type=int, nargs="+", default=[0])
    go.add_argument("--precision", default="no", choices=["no", "bf16"], help="stages 1-2 mixed precision")
    go.add_argument("--context", type=int, default=DEFAULT_CONTEXT, choices=CONTEXTS,
                    help="pixels per star and step in all three stages")
    go.add_argument("--augment", action="store_true",
                    help="stage 1 on synthetic spectra with fresh observed-like imperfections (names end in -aug)")
    go.add_argument("--jobs", type=int, default=1, help="points run at once (one thread each)")
    sub.add_parser("report", help="figure + table from the results")
    context = sub.add_parser("stage3-context", help="stage-3 test-time context (all / 256 / 128) on finished points")
    context.add_argument("--points", nargs="+", required=True, help="point names, e.g. d64-10min-wide-seed0")
    precision = sub.add_parser("stage1-precision", help="stage 1's [Fe/H] RMSE on clean synthetic Fe-window spectra")
    precision.add_argument("--points", nargs="+", required=True, help="point names, e.g. d64-10min-wide-seed0")
    precision.add_argument("--stars", type=int, default=600, help="synthetic validation stars scored")
    precision.add_argument("--mlp-stars", type=int, default=2000, help="synthetic spectra for the MLP reference")
    probe = sub.add_parser("window-probe", help="the transformer trained on the synthetic Fe window only")
    probe.add_argument("--context", type=int, default=128)
    probe.add_argument("--steps", type=int, default=1750)
    probe.add_argument("--stars", type=int, default=600, help="synthetic validation stars scored")
    gap = sub.add_parser("domain-gap", help="each stage's [Fe/H] on observed test stars of finished runs (saved "
                         "predictions): the synthetic-to-observed gap")
    gap.add_argument("--runs", nargs="+", required=True,
                     help="finished run folders, e.g. runs/scaling/d64-40min-wide-seed0")
    gap.add_argument("--validation", action="store_true",
                     help="also stage 1 zero-shot on the observed VALIDATION stars (what choices may look at)")
    probe_terms = sub.add_parser("perturbation-probe", help="stage 1 on synthetic validation spectra with each "
                                 "observed-like imperfection alone: which one it is fragile to")
    probe_terms.add_argument("--points", nargs="+", required=True, help="point names, e.g. d64-80min-wide-seed0")
    probe_terms.add_argument("--stars", type=int, default=600, help="synthetic validation stars scored")
    args = parser.parse_args()
    {"perturbation-probe": perturbation_probe,
     "domain-gap": domain_gap, "calibrate": calibrate, "run": run, "report": report, "stage3-context": stage3_context,
     "stage1-precision": stage1_precision, "window-probe": window_probe}[args.command](args)


if __name__ == "__main__":
    main()
