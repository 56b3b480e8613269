"""The quickstart recipe over several seeds: its acceptance checks and issue 15's goal, per seed (a script).

Issue 15 asks whether the quickstart's stage 3 is the best model in both [Fe/H] bins, in seeds that were
never looked at while the recipe was chosen. This script runs ``spectrafm pipeline`` with the quickstart
config (or another) once per seed, keeps the few numbers that matter in
``docs/results/quickstart_seeds/seed<N>.json`` and tabulates them with their mean and worst seed::

    python benchmarks/quickstart_seeds.py run --seeds 11 12 --threads 1      # one run after the other
    python benchmarks/quickstart_seeds.py collect --seed 0 --run runs/quickstart   # a run made before
    python benchmarks/quickstart_seeds.py report     # the table, also written into docs/scaling.md
    # another recipe: its own --tag (results and table apart), e.g. the paper's protocol
    python benchmarks/quickstart_seeds.py run --seeds 0 --threads 1 --tag paper_protocol \
        --config training/configs/quickstart_paper_protocol.yaml

Runs go to ``runs/quickstart_seeds/<tag>/seed<N>`` (never committed), results to
``docs/results/quickstart_seeds/<tag>/seed<N>.json``. ``--threads`` overrides the config's
``torch_threads`` (one thread lets two jobs share the two cores); a different thread count sums floats
in a different order, so a seed's numbers then differ from a run with the config's own thread count
within the seed-to-seed spread, not bit for bit.

Seeds 0, 1 and 2 were used to choose the recipe (the comments in ``quickstart.yaml``); every other seed
is reported as unseen.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

# same folder: the numbers and goal the scaling study uses
from scaling_study import GOAL_POOR, GOAL_RICH, LABELS, REPO, summarise, write_between

from spectrafm_hf.pipeline import load_config

CONFIG = REPO / "training" / "configs" / "quickstart.yaml"
RESULTS = REPO / "docs" / "results" / "quickstart_seeds"
RUNS = REPO / "runs" / "quickstart_seeds"
DOC = REPO / "docs" / "scaling.md"
TUNING_SEEDS = (0, 1, 2)


def record(out: Path, seed: int, config_path: Path, threads: int | None, wall_s: float | None) -> dict:
    """The scaling study's summary of run ``out`` plus its acceptance checks."""
    metrics = json.loads((out / "metrics.json").read_text())
    if metrics["run"]["seed"] != seed:
        raise SystemExit(f"{out} was run with seed {metrics['run']['seed']}, not {seed}")
    prior = load_config(config_path).data.synthetic.prior
    summary = summarise(out, seed=seed, prior=prior, config=str(config_path), threads=threads, wall_s=wall_s)
    summary["acceptance"] = metrics["acceptance"]
    summary["unseen"] = seed not in TUNING_SEEDS
    return summary


def run(args) -> None:
    config_path = Path(args.config).resolve()
    threads = args.threads or load_config(config_path).torch_threads
    runs = RUNS / args.tag
    runs.mkdir(parents=True, exist_ok=True)
    if args.threads is not None:  # the config itself, with the thread count on top (``base:``)
        config_path = runs / f"config-threads{threads}.yaml"
        config_path.write_text(yaml.safe_dump({"base": str(Path(args.config).resolve()), "torch_threads": threads}))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    for seed in args.seeds:
        result_path = RESULTS / args.tag / f"seed{seed}.json"
        if result_path.exists():
            print(f"[seeds] seed {seed}: done before ({result_path.relative_to(REPO)})", flush=True)
            continue
        out, log = runs / f"seed{seed}", runs / f"seed{seed}.log"
        if args.stages_from:
            _copy_stages(_stages_source(args.stages_from, seed), out)
        print(f"[seeds] seed {seed} → {out.relative_to(REPO)} (log {log.name})", flush=True)
        start = time.perf_counter()
        with open(log, "a") as handle:
            done = subprocess.run([sys.executable, "-m", "spectrafm_hf.cli", "pipeline", "--config", str(config_path),
                                   "--out", str(out), "--seed", str(seed)], cwd=REPO, env=env, stdout=handle,
                                  stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise SystemExit(f"seed {seed} failed (exit {done.returncode}); see {log}")
        write(record(out, seed, Path(args.config), threads, time.perf_counter() - start), args.tag)


def _stages_source(pattern: str, seed: int) -> Path:
    """``--stages-from``'s folder for ``seed`` (``{seed}`` in the pattern is replaced)."""
    try:
        return Path(pattern.format(seed=seed))
    except (KeyError, IndexError, ValueError) as error:
        raise SystemExit(f"--stages-from {pattern!r}: only {{seed}} may appear in braces ({error!r})") from None


def _copy_stages(source: Path, out: Path) -> None:
    """Start ``out`` with copies of ``source``'s finished stage 1 and stage 2, for a recipe that changes
    only what comes after them; the pipeline reuses a copied stage only if its recorded settings and data
    are this run's (else it trains it again, in the copy). Copies, not links: the source stays untouched."""
    import shutil

    for stage in ("stage1", "stage2"):
        if not (source / stage / "stage_complete.json").exists():
            raise SystemExit(f"--stages-from: {source / stage} is not a finished stage; give a finished run's folder")
        if (out / stage).exists():
            continue  # this run's own (or an earlier copy): never overwritten
        shutil.copytree(source / stage, out / stage)


def collect(args) -> None:
    """Keep the numbers of a quickstart run made elsewhere (its config's thread count, wall time unknown)."""
    write(record(Path(args.run), args.seed, Path(args.config), None, None), args.tag)


def write(summary: dict, tag: str) -> None:
    (RESULTS / tag).mkdir(parents=True, exist_ok=True)
    path = RESULTS / tag / f"seed{summary['seed']}.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    ratios = summary["ratios"]
    print(f"[seeds] seed {summary['seed']}: iron-rich ÷ best baseline {ratios['iron_rich_vs_best_baseline']:.2f}, "
          f"iron-poor ÷ MLP {ratios['iron_poor_vs_mlp']:.2f} → {path.relative_to(REPO)}", flush=True)


def table(results: list[dict]) -> str:
    """Markdown: one row per seed, then the mean and the worst seed of each column that has a direction."""
    head = ("| seed | unseen | stage 3 iron-rich | best baseline (rich) | ÷ (goal ≤ 0.9) | stage 3 iron-poor | "
            "MLP (poor) | ÷ (goal ≤ 0.25) | calibrated 68 % | Fe enrichment (− control) | acceptance checks failed |\n"
            "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    rows, columns = [], []
    for result in sorted(results, key=lambda r: r["seed"]):
        stage3, ratios, checks = result["stage3"], result["ratios"], result["acceptance"]
        best_rich = min(b["iron_rich_rmse"] for b in result["baselines"].values())
        enrichment = checks["FE_H attention enrichment on Fe lines"]["value"]
        control = checks["FE_H enrichment above its shuffled control"]["value"]
        values = [stage3["iron_rich_rmse"], best_rich, ratios["iron_rich_vs_best_baseline"], stage3["iron_poor_rmse"],
                  result["baselines"]["scratch_mlp"]["iron_poor_rmse"], ratios["iron_poor_vs_mlp"],
                  stage3["coverage_68"], enrichment, control]
        columns.append(values)
        failed = [f"{name} ({check['value']:.3g}, target {check['target']})" for name, check in checks.items()
                  if not check["pass"]]
        rows.append(f"| {result['seed']} | {'yes' if result['unseen'] else 'no'} | {values[0]:.3f} | {values[1]:.3f} | "
                    f"{values[2]:.2f} | {values[3]:.3f} | {values[4]:.3f} | {values[5]:.2f} | {values[6]:.3f} | "
                    f"{values[7]:.2f} ({values[8]:+.2f}) | {'; '.join(failed) or 'none'} |")
    matrix = np.array(columns)
    mean = matrix.mean(axis=0)
    # worst: the larger RMSE and ratio, the coverage farthest from 0.68, the smaller enrichment and margin
    worst = [matrix[:, 0].max(), None, matrix[:, 2].max(), matrix[:, 3].max(), None, matrix[:, 5].max(),
             matrix[np.argmax(abs(matrix[:, 6] - 0.68)), 6], matrix[:, 7].min(), matrix[:, 8].min()]
    rows.append(f"| mean | | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.2f} | {mean[3]:.3f} | {mean[4]:.3f} | "
                f"{mean[5]:.2f} | {mean[6]:.3f} | {mean[7]:.2f} ({mean[8]:+.2f}) | |")
    rows.append(f"| worst | | {worst[0]:.3f} | | {worst[2]:.2f} | {worst[3]:.3f} | | {worst[5]:.2f} | {worst[6]:.3f} | "
                f"{worst[7]:.2f} ({worst[8]:+.2f}) | |")
    goal = [r["ratios"]["iron_rich_vs_best_baseline"] <= GOAL_RICH and r["ratios"]["iron_poor_vs_mlp"] <= GOAL_POOR
            for r in results]
    stage2 = np.array([[r["stage2_rmse"][label] for label in LABELS] for r in results]).mean(axis=0)
    note = (f"\nIssue 15's goal (both ratios) met in {sum(goal)} of {len(results)} seeds. Stage 2, mean test RMSE: "
            f"Teff {stage2[0]:.0f} K, logg {stage2[1]:.2f}, [Fe/H] {stage2[2]:.3f}, [Mg/Fe] {stage2[3]:.3f}, "
            f"[O/Fe] {stage2[4]:.3f}.\n")
    return head + "\n".join(rows) + "\n" + note


def report(args) -> None:
    """Print the table of ``--tag`` and write it between ``<!-- <tag> seeds begin/end -->`` in docs/scaling.md."""
    results = [json.loads(path.read_text()) for path in sorted((RESULTS / args.tag).glob("seed*.json"))]
    if not results:
        raise SystemExit(f"no results in {RESULTS / args.tag}; "
                         f"run `python {Path(__file__).name} run --seeds ...` first")
    text = table(results)
    print(text)
    if write_between(f"<!-- {args.tag} seeds begin -->", f"<!-- {args.tag} seeds end -->", text):
        print(f"table written into {DOC.relative_to(REPO)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the pipeline once per seed")
    run_parser.add_argument("--seeds", type=int, nargs="+", required=True)
    run_parser.add_argument("--threads", type=int, default=None, help="override the config's torch_threads")
    run_parser.add_argument("--stages-from", default=None,
                            help="copy stage 1-2 from this run folder ({seed} = the seed), e.g. "
                                 "runs/quickstart_seeds/quickstart/seed{seed}: for recipes that change stage 3 only")
    collect_parser = commands.add_parser("collect", help="keep the numbers of a finished quickstart run")
    collect_parser.add_argument("--seed", type=int, required=True)
    collect_parser.add_argument("--run", required=True, help="its run folder (metrics.json, timings.json)")
    report_parser = commands.add_parser("report", help="print the table and write it into docs/scaling.md")
    for sub in (run_parser, collect_parser):
        sub.add_argument("--config", default=str(CONFIG))
    for sub in (run_parser, collect_parser, report_parser):
        sub.add_argument("--tag", default="quickstart", help="the recipe's name: its results and table apart")
    args = parser.parse_args(argv)
    {"run": run, "collect": collect, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
