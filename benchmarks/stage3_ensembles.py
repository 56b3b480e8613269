"""Several stage-3 fine-tunes of one run, combined (issue 15: the seed spread of stage 3). Prints figures and
writes small JSON results; not a test.

Stage 3 fits 100 stars; its iron-rich RMSE moves by ~0.2x the best baseline between seeds of the same
recipe. Members are fine-tunes of the same stage-2 folder on the same 100 stars that differ only in their
stage-3 seed (batch order, contexts, evaluation draws; ``stage3_variants.py run --members``). Two ways to
combine K of them are measured, each against the members alone:

* **ensemble**: the mean of the members' [Fe/H] predictions; 1σ = sqrt(mean σ² + variance of the means)
  (each member's own uncertainty plus their disagreement). K forward passes per star.
* **soup**: one model whose weights are the mean of the members' weights (they start from the same stage-2
  weights and share the frozen blocks, so the mean is a model of the same shape): one checkpoint, one
  forward pass, and its own attention maps, as any stage-3 model.

Choices are read on the iron-rich VALIDATION stars (the stage's selection metric); the test figures are for
the report.

Usage (after ``stage3_variants.py run --variants context512 --members 0 1 2 --runs F:S:NAME``)::

    python benchmarks/stage3_ensembles.py run --variant context512 --members 0 1 2 \\
        --runs runs/scaling/d64-40min-wide-seed11-aug:11:d64-40min-seed11-aug
    python benchmarks/stage3_ensembles.py report     # table, from docs/results/stage3_ensembles/*.json

Results go to ``docs/results/stage3_ensembles/<name>-<variant>-k<K>.json``; the soup's checkpoint to
``runs/stage3_variants/<name>/<variant>-soup<K>/`` (never committed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# same folder: one RMSE, one set of ratios and one stage-3 data set for all issue-15 benchmarks
import stage3_variants
from scaling_study import GOAL_POOR, GOAL_RICH, baseline_bins, goal_ratios, rmse, rmse_by_bin
from stage3_variants import CONFIG, REPO, RUNS, member_tag

RESULTS = REPO / "docs" / "results" / "stage3_ensembles"


def soup(member_dirs: list[Path], out: Path) -> Path:
    """Save into ``out`` the model whose every floating-point tensor is the mean of the members' (the first
    member's feature extractor and config); a finished soup of the same members is reused."""
    import torch

    from spectrafm_hf.checkpoints import load_model, save_checkpoint

    recipe = out / "soup_members.json"
    names = [str(d) for d in member_dirs]
    if recipe.exists() and json.loads(recipe.read_text())["members"] == names:
        return out
    model, feature_extractor = load_model(member_dirs[0], device="cpu")  # the soup's shape, config and tokens
    states = [model.state_dict()] + [load_model(d, device="cpu")[0].state_dict() for d in member_dirs[1:]]
    mean = {key: torch.stack([s[key] for s in states]).mean(0) if value.is_floating_point() else value
            for key, value in states[0].items()}  # integer buffers (none trained) are member 0's
    model.load_state_dict(mean)
    save_checkpoint(model, feature_extractor, out)
    recipe.write_text(json.dumps({"members": names}, indent=1) + "\n")  # written last: the soup is complete
    return out


def ensemble_mean(predictions: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Members' (mean, 1σ), each (N,) → the ensemble's: mean of means, sqrt(mean σ² + variance of means)."""
    means = np.stack([m for m, _ in predictions])
    sigmas = np.stack([s for _, s in predictions])
    return means.mean(0), np.sqrt((sigmas ** 2).mean(0) + means.var(0))


def _scores(val: np.ndarray, test: tuple[np.ndarray, np.ndarray], data, baselines: dict) -> dict:
    """Validation iron-rich RMSE, test bins, goal ratios and raw 1σ coverage of one set of predictions."""
    from spectrafm_hf.pipeline.data import FEH_RICH_MIN

    mean, sigma = test
    bins = rmse_by_bin(mean, data.true_feh, data.true_feh > FEH_RICH_MIN)
    inside = np.abs(mean - data.true_feh) <= sigma
    return {"validation_iron_rich": rmse(val, data.stage3_val.labels["FE_H"]),
            "test_iron_rich": bins["iron_rich"], "test_iron_poor": bins["iron_poor"],
            "test_coverage_1sigma": float(np.mean(inside[np.isfinite(data.true_feh)])),
            "ratios": goal_ratios(bins["iron_rich"], bins["iron_poor"], baselines)}


def combine(run_dir: Path, seed: int, variant: str, name: str, members: list[int]) -> dict:
    """Score each member, their ensemble and their soup on validation and test stars."""
    from spectrafm_hf.checkpoints import load_model
    from spectrafm_hf.pipeline.config import load_config
    from spectrafm_hf.pipeline.data import load_data
    from spectrafm_hf.training.stages import COMPLETE_MARKER, predict

    dirs = [RUNS / name / member_tag(variant, m) for m in members]
    missing = [str(d) for d in dirs if not (d / COMPLETE_MARKER).exists()]
    if missing:
        raise SystemExit(f"members not trained yet: {', '.join(missing)}; run `python stage3_variants.py run "
                         f"--variants {variant} --members {' '.join(map(str, members))} "
                         f"--runs {run_dir}:{seed}:{name}`")
    config = load_config(CONFIG, seed=seed)
    data = load_data(config, run_dir)
    baselines = baseline_bins(json.loads((run_dir / "metrics.json").read_text())["models"])

    def predictions(folder: Path):
        model, feature_extractor = load_model(folder, device="cpu")
        return (predict(model, feature_extractor, data.stage3_val, ("FE_H",), 64)["FE_H"],
                predict(model, feature_extractor, data.test_fe, ("FE_H",), 64)["FE_H"])

    each = [predictions(d) for d in dirs]
    row = {"run": stage3_variants._run_label(run_dir), "name": name, "seed": seed, "variant": variant,
           "members": members, "train_seeds": [stage3_variants.member_seed(seed, m) for m in members],
           "each": [_scores(val[0], test, data, baselines) for val, test in each]}
    row["ensemble"] = _scores(ensemble_mean([v for v, _ in each])[0], ensemble_mean([t for _, t in each]), data,
                              baselines)
    soup_dir = soup(dirs, RUNS / name / f"{variant}-soup{len(members)}")
    val, test = predictions(soup_dir)
    row["soup"] = _scores(val[0], test, data, baselines)
    row["soup"]["validation_attention"] = stage3_variants.fe_enrichment(soup_dir, data.stage3_val, config.attention)
    row["soup"]["test_attention"] = stage3_variants.fe_enrichment(soup_dir, data.test_fe, config.attention)
    return row


def run(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if len(set(args.members)) < 2:
        raise SystemExit(f"--members needs at least two different members to combine, got {args.members}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for pair in args.runs:
        folder, seed, name = stage3_variants._parse_run(pair)
        row = combine(folder, seed, args.variant, name, sorted(set(args.members)))
        path = RESULTS / f"{name}-{args.variant}-k{len(row['members'])}.json"
        path.write_text(json.dumps(row, indent=1) + "\n")
        print(f"[ensemble] {name}: " + _line(row), flush=True)


def _line(row: dict) -> str:
    members = " / ".join(f"{m['ratios']['iron_rich_vs_best_baseline']:.2f}" for m in row["each"])
    return (f"iron-rich ÷ best baseline: members {members}, ensemble "
            f"{row['ensemble']['ratios']['iron_rich_vs_best_baseline']:.2f}, soup "
            f"{row['soup']['ratios']['iron_rich_vs_best_baseline']:.2f}")


def report(args) -> None:
    rows = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))]
    if not rows:
        raise SystemExit(f"no results in {RESULTS}; run `python {Path(__file__).name} run` first")
    print("| run | seed | K | validation iron-rich: members → ensemble / soup | test ÷ best baseline (rich): "
          "members | ensemble | soup | test ÷ MLP (poor): members mean | ensemble | soup | "
          "soup Fe enrichment (control) | goal met: ensemble / soup |")
    print("|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|:---:|")
    for row in sorted(rows, key=lambda r: (r["seed"], r["name"], len(r["members"]))):
        ens, sp = row["ensemble"], row["soup"]
        cells = [row["name"], str(row["seed"]), str(len(row["members"])),
                 " / ".join(f"{m['validation_iron_rich']:.4f}" for m in row["each"])
                 + f" → {ens['validation_iron_rich']:.4f} / {sp['validation_iron_rich']:.4f}",
                 " / ".join(f"{m['ratios']['iron_rich_vs_best_baseline']:.2f}" for m in row["each"]),
                 f"{ens['ratios']['iron_rich_vs_best_baseline']:.2f}",
                 f"{sp['ratios']['iron_rich_vs_best_baseline']:.2f}",
                 f"{np.mean([m['ratios']['iron_poor_vs_mlp'] for m in row['each']]):.2f}",
                 f"{ens['ratios']['iron_poor_vs_mlp']:.2f}", f"{sp['ratios']['iron_poor_vs_mlp']:.2f}",
                 f"{sp['test_attention']['enrichment']:.2f} ({sp['test_attention']['control']:.2f})",
                 f"{_met(ens)} / {_met(sp)}"]
        print("| " + " | ".join(cells) + " |")
    largest = {}  # the summary reads each run once, at its largest K
    for row in rows:
        if len(row["members"]) >= len(largest.get(row["name"], {"members": []})["members"]):
            largest[row["name"]] = row
    rows = list(largest.values())
    for how in ("ensemble", "soup"):
        rich = [r[how]["ratios"]["iron_rich_vs_best_baseline"] for r in rows]
        poor = [r[how]["ratios"]["iron_poor_vs_mlp"] for r in rows]
        print(f"{how} (largest K of each run): iron-rich mean {np.mean(rich):.2f}, worst {max(rich):.2f}; "
              f"iron-poor mean {np.mean(poor):.2f}, "
              f"worst {max(poor):.2f}; goal met in {sum(_met(r[how]) == 'yes' for r in rows)} of {len(rows)}")
    single = [r["each"][0]["ratios"]["iron_rich_vs_best_baseline"] for r in rows]
    print(f"member 0 alone: iron-rich mean {np.mean(single):.2f}, worst {max(single):.2f}")


def _met(scores: dict) -> str:
    ratios = scores["ratios"]
    return "yes" if ratios["iron_rich_vs_best_baseline"] <= GOAL_RICH and ratios["iron_poor_vs_mlp"] <= GOAL_POOR \
        else "no"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="combine finished stage-3 members of each run")
    go.add_argument("--runs", nargs="+", required=True, help="folder:seed[:name] as for stage3_variants.py")
    go.add_argument("--variant", default="context512", choices=sorted(stage3_variants.VARIANTS))
    go.add_argument("--members", nargs="+", type=int, default=[0, 1, 2])
    go.add_argument("--threads", type=int, default=1)
    sub.add_parser("report", help="the table of every combined run")
    args = parser.parse_args()
    {"run": run, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
