"""Stage-3 recipe variants on finished quickstart runs, chosen on validation stars (issue 15). Prints
figures and writes small JSON results; not a test.

Every quickstart seed's stage 3 picked its best checkpoint in the last 100 of its 600 steps (seeds 0, 1,
11, 13: step 500–575), so the fine-tune may stop while still improving. Each variant here re-trains
stage 3 from a run's own stage-2 folder with one change to ``training/configs/quickstart.yaml``'s stage 3
and measures, for the choice, the iron-rich VALIDATION stars only (the stage's own selection metric, and
the [Fe/H] attention enrichment on the first 200 of them), and, for the report, the test stars (iron-rich
and iron-poor RMSE, the attention check of the pipeline on the first 200 test stars).

Usage (one thread per process; a variant takes ~4–15 min of one core)::

    python benchmarks/stage3_variants.py run --runs runs/quickstart_s6:0 runs/quickstart_seeds/quickstart/seed1:1 \
        --variants quickstart steps2000
    python benchmarks/stage3_variants.py report      # the table, from docs/results/stage3_variants/*.json

``--runs`` takes ``folder:seed`` pairs: a finished quickstart run (its ``stage2/`` is the start) and the
run seed it was made with (it draws the 100 stars); ``folder:seed:name`` names the results when a seed has
more than one run (e.g. the scaling study's longer stage 1:
``runs/scaling/d64-80min-wide-seed0:0:d64-80min-seed0``). The name defaults to ``seed<N>``. Re-trained
stages go to ``runs/stage3_variants/<name>/<variant>/`` (never committed; a finished one is reused) and
results to ``docs/results/stage3_variants/<name>-<variant>.json``, with issue 15's two ratios against the
run's own baselines.

``--members 0 1 2`` trains stage-3 fine-tunes that differ only in their stage-3 seed (member k > 0 goes to
``<variant>-m<k>``; ``stage3_ensembles.py`` combines them). ``--draw FOLDER:SEED`` fine-tunes each run's
stage 2 on another run's 100 stars, against that run's baselines (what the star draw adds to the spread).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np

# same folder: one RMSE for the whole study
import scaling_study
from scaling_study import GOAL_POOR, GOAL_RICH, baseline_bins, gap_bins, goal_ratios, rmse, rmse_by_bin

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "training" / "configs" / "quickstart.yaml"
RESULTS = REPO / "docs" / "results" / "stage3_variants"
RUNS = REPO / "runs" / "stage3_variants"
BUDGET_FIGURE = REPO / "docs" / "figures" / "stage3_budget.png"
N_ATTENTION = 200  # stars of the attention analyses, as the quickstart's attention.n_stars
MEMBER_SEED_STRIDE = 1000  # member k trains with seed + 1000 k: apart from every run seed used (all < 1000)

#: Variant name → changes to the quickstart's stage-3 loop ("loop") and stage spec ("spec").
VARIANTS = {
    "quickstart": {},
    "steps2000": {"loop": {"max_steps": 2000, "patience": 16}},
    "cosine2000": {"loop": {"max_steps": 2000, "schedule": "cosine", "min_lr_ratio": 0.05, "patience": None}},
    "context256": {"spec": {"context_length": 256}},
    "context512": {"spec": {"context_length": 512}},
    "unfrozen": {"spec": {"freeze_decoder": False, "freeze_encoder_blocks": []}},
    # the rehearsal stars (clean synthetic spectra, half of every batch) with one fixed draw of stage 1's
    # observed-like imperfections, so they look like the observed stars they are trained beside
    "context512_rehearsal_aug": {"spec": {"context_length": 512}, "rehearsal_augment": True},
    # stage 2's learning rate (the paper's stage 3 takes stage 2's settings): a gentler fine-tune
    "lr3e-4": {"loop": {"learning_rate": 3e-4}},
    # twice the synthetic rehearsal stars (all [Fe/H], where the molecular bands fade but Fe lines stay)
    "rehearsal64": {"spec": {"rehearsal": 64}},
}


def _variant_spec(base_spec, variant: str):
    change = VARIANTS[variant]
    loop = dataclasses.replace(base_spec.loop, **change.get("loop", {}))
    return dataclasses.replace(base_spec, loop=loop, **change.get("spec", {}))


def _augmented_once(stars, seed: int):
    """``stars`` (whole grid) with one draw of the default observed-like augmentation (stage 1's
    ``augment: true``), from a stream of its own (``[seed, AUGMENT_STREAM, 2]``), 2,048 stars at a time."""
    from spectrafm_hf.data.arrays import subset
    from spectrafm_hf.data.augmentation import ObservedLikeAugmentation
    from spectrafm_hf.data.collator import AUGMENT_STREAM

    augmentation, rng = ObservedLikeAugmentation(), np.random.default_rng([seed, AUGMENT_STREAM, 2])
    out = subset(stars, np.arange(len(stars)))
    for start in range(0, len(stars), 2048):
        rows = slice(start, start + 2048)
        out.flux[rows] = augmentation.apply(stars.flux[rows], stars.mask[rows], stars.wavelength, rng)
    return out


def fe_enrichment(model_dir: Path, stars, options) -> dict:
    """[Fe/H]-query attention enrichment on Fe lines of stage folder ``model_dir`` over the first
    :data:`N_ATTENTION` of ``stars`` (a Fe-window ``WindowData``), with its shuffled control:
    ``{"enrichment": E, "control": C}`` (the pipeline's check wants E > 1.5 and E > C)."""
    from spectrafm_hf.data.arrays import subset
    from spectrafm_hf.training.attention import analyse_model

    first = subset(stars, np.arange(min(len(stars), N_ATTENTION)))
    profile = analyse_model(model_dir, first, ("FE_H",), batch_size=options.batch_size, device="cpu",
                            core_half_width_A=options.core_half_width_A)["profiles"]["FE_H"]
    return {"enrichment": float(profile["enrichment"]), "control": float(profile["enrichment_control"])}


def member_seed(seed: int, member: int) -> int:
    """The stage-3 training seed of ensemble member ``member`` of run seed ``seed``: member 0 is the run's own
    seed (the recipe as the pipeline trains it); the others change only the batch order, contexts and
    evaluation draws, never the 100 stars (those come from the run seed)."""
    return seed if member == 0 else seed + MEMBER_SEED_STRIDE * member


def member_tag(variant: str, member: int) -> str:
    """Folder and result name of a member: the variant itself for member 0 (the results of earlier sessions)."""
    return variant if member == 0 else f"{variant}-m{member}"


def measure(run_dir: Path, seed: int, variant: str, name: str, member: int = 0,
            draw: tuple[Path, int] | None = None) -> dict:
    """Re-train stage 3 of ``run_dir`` (seed ``seed``) as ``variant`` into ``runs/stage3_variants/<name>``,
    as ensemble member ``member`` (see :func:`member_seed`); its validation and test figures.

    ``draw`` = (another run's folder, its seed): fine-tune on THAT run's 100 stars and compare with its
    baselines (trained on those stars), to tell the star draw's share of the seed spread from the
    pre-training's."""
    from spectrafm_hf.checkpoints import load_model
    from spectrafm_hf.data.arrays import cut_window
    from spectrafm_hf.data.grid import FE_WINDOW
    from spectrafm_hf.pipeline.config import load_config
    from spectrafm_hf.pipeline.data import FEH_RICH_MIN, load_data
    from spectrafm_hf.training.stages import predict, run_stage

    draw_dir, draw_seed = draw if draw is not None else (run_dir, seed)
    config = load_config(CONFIG, seed=draw_seed)  # the run seed draws the 100 stars (and nothing else here)
    if not (run_dir / "stage2" / "stage_complete.json").exists():
        raise SystemExit(f"{run_dir}/stage2 is not a finished stage 2; give a finished quickstart run")
    if not (draw_dir / "metrics.json").exists():  # its baselines are the comparison: refuse before training
        raise SystemExit(f"{draw_dir}/metrics.json is missing; give a finished quickstart run")
    data = load_data(config, run_dir)
    spec = _variant_spec(config.stage3.spec, variant)
    rehearsal = None
    if spec.rehearsal:
        synthetic = data.synthetic_train
        if VARIANTS[variant].get("rehearsal_augment"):
            synthetic = _augmented_once(synthetic, seed)
        rehearsal = cut_window(synthetic, FE_WINDOW)
    out = RUNS / name / member_tag(variant, member)
    start = time.perf_counter()
    result = run_stage(spec, data.stage3_train, data.stage3_val, out, init=run_dir / "stage2", rehearsal=rehearsal,
                       seed=member_seed(seed, member))
    seconds = time.perf_counter() - start
    model, feature_extractor = load_model(out, device="cpu")
    val = predict(model, feature_extractor, data.stage3_val, ("FE_H",), 64)["FE_H"][0]
    test = predict(model, feature_extractor, data.test_fe, ("FE_H",), 64)["FE_H"][0]
    rich = data.true_feh > FEH_RICH_MIN
    bins = rmse_by_bin(test, data.true_feh, rich)
    test_rich, test_poor = bins["iron_rich"], bins["iron_poor"]
    baselines = baseline_bins(json.loads((draw_dir / "metrics.json").read_text())["models"])
    return {
        "run": _run_label(run_dir), "draw_run": _run_label(draw_dir), "draw_seed": draw_seed,
        "name": name, "seed": seed, "variant": variant, "changes": VARIANTS[variant],
        "member": member, "train_seed": member_seed(seed, member),
        "best_step": result.best_step, "last_step": result.last_step,
        "train_seconds": None if result.skipped else round(seconds, 1),  # None: trained by an earlier call
        "validation_iron_rich": rmse(val, data.stage3_val.labels["FE_H"]),
        "validation_attention": fe_enrichment(out, data.stage3_val, config.attention),
        "test_iron_rich": test_rich,
        "test_iron_poor": test_poor,
        "test_attention": fe_enrichment(out, data.test_fe, config.attention),
        "test_bins": gap_bins(test, data.true_feh),  # RMSE and bias: iron-rich, −1.5…−1, below −1.5
        # against the run's own baselines (same 100 stars, same test stars), as the scaling study and seeds
        "baselines": {"best_iron_rich": min(b["iron_rich_rmse"] for b in baselines.values()),
                      "scratch_mlp_iron_poor": baselines["scratch_mlp"]["iron_poor_rmse"]},
        "ratios": goal_ratios(test_rich, test_poor, baselines),
    }


def _run_label(folder: Path) -> str:
    """A run folder as results record it: relative to the repository where it lies inside it."""
    return str(folder.relative_to(REPO)) if folder.is_relative_to(REPO) else str(folder)


def run(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if min(args.members) < 0:
        raise SystemExit(f"--members are 0 (the run's own seed) or positive, got {min(args.members)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    draw = _parse_run(args.draw, "--draw")[:2] if args.draw else None  # before any training
    for pair in args.runs:
        folder, seed, name = _parse_run(pair)
        for variant, member in itertools.product(args.variants, args.members):
            path = RESULTS / f"{name}-{member_tag(variant, member)}.json"
            earlier = _earlier_result(path, folder, draw[0] if draw else folder)
            if earlier and not args.rescore:
                print(f"[stage3] {path.name} exists: skipped", flush=True)
                continue
            row = measure(folder, seed, variant, name, member, draw=draw)
            if row["train_seconds"] is None:  # re-scored: the training time is the earlier call's
                row["train_seconds"] = earlier.get("train_seconds")
            path.write_text(json.dumps(row, indent=1) + "\n")
            print(f"[stage3] seed {seed} {member_tag(variant, member)}: validation {row['validation_iron_rich']:.4f} "
                  f"(enrichment {row['validation_attention']['enrichment']:.2f}), test rich "
                  f"{row['test_iron_rich']:.4f} / poor {row['test_iron_poor']:.4f}, test enrichment "
                  f"{row['test_attention']['enrichment']:.2f} (control {row['test_attention']['control']:.2f}), "
                  f"best step {row['best_step']}/{row['last_step']}, trained in {row['train_seconds']} s", flush=True)


def _parse_run(pair: str, option: str = "--runs") -> tuple[Path, int, str]:
    """``folder:seed`` or ``folder:seed:name`` → (folder, seed, name); name defaults to ``seed<N>``."""
    parts = pair.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].isdigit() or (len(parts) == 3 and not parts[2]):
        raise SystemExit(f"{option} takes folder:seed or folder:seed:name (e.g. runs/quickstart_s6:0), got {pair!r}")
    name = parts[2] if len(parts) == 3 else f"seed{parts[1]}"
    return Path(parts[0]).resolve(), int(parts[1]), name


def _earlier_result(path: Path, folder: Path, draw_folder: Path | None = None) -> dict:
    """The result already under this name ({} if none); it must come from the same run folder fine-tuned on
    the same run's stars (``draw_folder``, default the run's own; else the name is taken by another
    measurement, and skipping or overwriting it would be wrong)."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if earlier["run"] != _run_label(folder):
        raise SystemExit(f"{path} holds run {earlier['run']!r}, not {_run_label(folder)!r}: "
                         "name this run with folder:seed:name")
    drawn = _run_label(draw_folder or folder)
    if earlier.get("draw_run", earlier["run"]) != drawn:  # results from before --draw: the run's own stars
        raise SystemExit(f"{path} holds run {earlier['run']!r} on the stars of "
                         f"{earlier.get('draw_run', earlier['run'])!r}, not of {drawn!r}: "
                         "name this run with folder:seed:name")
    return earlier


def report(args) -> None:
    rows = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*-*.json"))]
    if not rows:
        raise SystemExit(f"no results in {RESULTS}; run `python {Path(__file__).name} run` first")
    print("| run | seed | variant | best step | validation iron-rich | validation Fe enrichment | test iron-rich | "
          "test iron-poor | ÷ best baseline (rich) | ÷ MLP (poor) | test Fe enrichment (control) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in sorted(rows, key=lambda r: (r["seed"], r["run"], list(VARIANTS).index(r["variant"]))):
        print(f"| {row['run']} | {row['seed']} | {row['variant']} | {row['best_step']}/{row['last_step']} | "
              f"{row['validation_iron_rich']:.4f} | {row['validation_attention']['enrichment']:.2f} | "
              f"{row['test_iron_rich']:.4f} | {row['test_iron_poor']:.4f} | {_ratios(row)} | "
              f"{row['test_attention']['enrichment']:.2f} ({row['test_attention']['control']:.2f}) |")
    for variant in VARIANTS:
        chosen = [r for r in rows if r["variant"] == variant and r["name"].startswith("seed")]
        if chosen:
            mean = {k: np.mean([r[k] for r in chosen]) for k in ("validation_iron_rich", "test_iron_rich",
                                                                 "test_iron_poor")}
            print(f"mean over {len(chosen)} quickstart seeds, {variant}: "
                  f"validation {mean['validation_iron_rich']:.4f}, "
                  f"test rich {mean['test_iron_rich']:.4f}, poor {mean['test_iron_poor']:.4f}")


def _ratios(row: dict) -> str:
    """The two goal ratios as two table cells ("—" for results written before they were recorded)."""
    if "ratios" not in row:
        return "— | —"
    return f"{row['ratios']['iron_rich_vs_best_baseline']:.2f} | {row['ratios']['iron_poor_vs_mlp']:.2f}"


#: The quickstart's stage 1 (2,500 steps at context 128, d = 64) in the study's budget unit.
QUICKSTART_STAGE1_STEPS = 2500


def budget_rows() -> list[dict]:
    """One row per run that a context-512 stage 3 was measured on, with its stage-1 budget (minutes of one
    idle core) and seed, and both goal ratios with stage 3 at context 128 and at 512: the scaling study's
    runs (this script's context512 variant) and the quickstart over seeds (its ``stage3_context512`` tag)."""
    calibration = json.loads((scaling_study.RESULTS / "calibration.json").read_text())
    quickstart_minutes = QUICKSTART_STAGE1_STEPS * calibration["seconds_per_step"]["64"] / 60
    seeds = REPO / "docs" / "results" / "quickstart_seeds"
    rows = []
    for path in sorted((seeds / "stage3_context512").glob("seed*.json")):
        wide, narrow_path = json.loads(path.read_text()), seeds / "quickstart" / path.name
        if narrow_path.exists():
            attention = wide["acceptance"]
            rows.append({"minutes": quickstart_minutes, "steps": QUICKSTART_STAGE1_STEPS, "seed": wide["seed"],
                         "augment": False,
                         "context128": json.loads(narrow_path.read_text())["ratios"], "context512": wide["ratios"],
                         "enrichment512": attention["FE_H attention enrichment on Fe lines"]["value"],
                         "control512": attention["FE_H attention enrichment on Fe lines"]["value"]
                         - attention["FE_H enrichment above its shuffled control"]["value"]})
    for path in sorted(RESULTS.glob("*-context512.json")):
        wide = json.loads(path.read_text())
        point = scaling_study.RESULTS / f"{Path(wide['run']).name}.json"
        if not wide["run"].startswith("runs/scaling/") or not point.exists():
            continue  # a quickstart run: no budget of its own in the study
        if wide.get("draw_run", wide["run"]) != wide["run"]:
            continue  # fine-tuned on another run's stars (--draw): not this run's point
        narrow = json.loads(point.read_text())
        rows.append({"minutes": narrow["minutes"], "steps": narrow["steps"], "seed": narrow["seed"],
                     "augment": narrow["augment"],
                     "context128": narrow["ratios"], "context512": wide["ratios"],
                     "enrichment512": wide["test_attention"]["enrichment"],
                     "control512": wide["test_attention"]["control"]})
    return sorted(rows, key=lambda r: (r["augment"], r["minutes"], r["seed"]))


def budget(args) -> None:
    """Table and figure: issue 15's two ratios against the stage-1 budget, stage 3 at context 128 and 512."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = budget_rows()
    if not rows:
        raise SystemExit("no context512 results on scaling-study runs; run e.g. `python stage3_variants.py run "
                         "--runs runs/scaling/d64-40min-wide-seed0:0:d64-40min-seed0 --variants context512`")
    lines = ["| stage-1 spectra | stage-1 budget (min, 1 core) | steps | seed | "
             "context 128: ÷ best baseline (rich) | ÷ MLP (poor) | "
             "context 512: ÷ best baseline (rich) | ÷ MLP (poor) | Fe enrichment (control) | goal met |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        narrow, wide = r["context128"], r["context512"]
        met = wide["iron_rich_vs_best_baseline"] <= GOAL_RICH and wide["iron_poor_vs_mlp"] <= GOAL_POOR
        cells = ["augmented" if r["augment"] else "clean", f"{r['minutes']:.0f}", str(r["steps"]), str(r["seed"])]
        cells += [f"{ratios[key]:.2f}" for ratios in (narrow, wide)
                  for key in ("iron_rich_vs_best_baseline", "iron_poor_vs_mlp")]
        cells += [f"{r['enrichment512']:.2f} ({r['control512']:.2f})", "yes" if met else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if scaling_study.write_between("<!-- stage3 budget begin -->", "<!-- stage3 budget end -->", text):
        print(f"table written into {scaling_study.DOC.relative_to(REPO)}")
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.2))
    fig.suptitle("Stage 3 vs stage-1 compute (d = 64, stages 1-2 at context 128; points: runs (circles clean, "
                 "squares augmented stage 1), lines: seed means)",
                 fontsize=11)
    for ax, key, goal, title in ((axes[0], "iron_rich_vs_best_baseline", GOAL_RICH, "iron-rich: ÷ best baseline"),
                                 (axes[1], "iron_poor_vs_mlp", GOAL_POOR, "iron-poor: ÷ scratch MLP")):
        for (context, colour), augment in itertools.product((("context128", "C0"), ("context512", "C3")),
                                                             (False, True)):
            chosen = [r for r in rows if r["augment"] == augment]
            if not chosen:
                continue
            minutes = sorted({r["minutes"] for r in chosen})
            style, marker = ("--", "s") if augment else ("-", "o")
            ax.plot(minutes, [np.mean([r[context][key] for r in chosen if r["minutes"] == m]) for m in minutes],
                    style, color=colour,
                    label=f"{'augmented' if augment else 'clean'} stage 1, stage 3 at {context[len('context'):]} px")
            ax.plot([r["minutes"] for r in chosen], [r[context][key] for r in chosen], marker, color=colour, ms=5)
        ax.axhline(goal, color="k", ls="-.", lw=1, label="goal")
        ax.set_xscale("log", base=2)
        budgets = sorted({r["minutes"] for r in rows})
        ax.set_xticks(budgets, [f"{m:.0f}" for m in budgets])
        ax.set_xlabel("stage-1 budget (minutes of one idle core; 14 = the quickstart)")
        ax.set_ylabel("stage-3 [Fe/H] RMSE ratio")
        ax.set_title(title)
    # one legend for both panels, below them (the points fill the panels)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    BUDGET_FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(BUDGET_FIGURE, dpi=120)
    plt.close(fig)
    print(f"figure: {BUDGET_FIGURE.relative_to(REPO)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="re-train stage 3 as each variant on each run")
    go.add_argument("--runs", nargs="+", required=True, help="folder:seed[:name] of finished quickstart runs")
    go.add_argument("--variants", nargs="+", default=["quickstart", "steps2000"], choices=sorted(VARIANTS))
    go.add_argument("--members", nargs="+", type=int, default=[0],
                    help="ensemble members to train (0: the run's own stage-3 seed; k: seed + 1000 k)")
    go.add_argument("--draw", metavar="FOLDER:SEED",
                    help="fine-tune on this other run's 100 stars, against its baselines (default: each run's own)")
    go.add_argument("--threads", type=int, default=1)
    go.add_argument("--rescore", action="store_true",
                    help="measure finished variants again (their trained stage 3 is reused, never re-trained)")
    sub.add_parser("report", help="the table of every measured variant")
    sub.add_parser("budget", help="goal ratios vs stage-1 budget, stage 3 at context 128 and 512 (table, figure)")
    args = parser.parse_args()
    {"run": run, "report": report, "budget": budget}[args.command](args)


if __name__ == "__main__":
    main()
