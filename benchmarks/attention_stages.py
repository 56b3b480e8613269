"""Where a run's [Fe/H] attention on Fe lines is born: stage 1, 2 or 3 (issue 15; a script, not a test).

The pipeline checks the finished stage 3 only: in the Fe window, the [Fe/H] query's last-block attention
must sit on Fe line cores (enrichment E > 1.5) and above its shuffled control. Two quickstart seeds of six
fail it. This script measures the same enrichment for EVERY stage folder of a run (stage 1 and stage 2
have an [Fe/H] query too, trained on all five labels), on the first 200 iron-rich VALIDATION stars, so
that a recipe change aimed at the check can be chosen without looking at test stars. (On the test stars,
the pipeline's check agrees with this validation figure within 0.06 in the 36 stage-3 results of
``docs/results/stage3_variants``.)

Usage (one thread is enough; ~10 s a stage)::

    python benchmarks/attention_stages.py run runs/quickstart_seeds/rerun_s13/seed1 \
        runs/scaling/d64-40min-wide-seed1:d64-40min-seed1
    python benchmarks/attention_stages.py report    # the table and docs/figures/attention_stages.png

A run is ``folder`` or ``folder:name`` (the name of its result, default the folder's last two parts
joined by "-"). Results go to ``docs/results/attention_stages/<name>.json``; a name that already holds
a result of another folder is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# same folder: the enrichment as stage3_variants measures it (first 200 stars, the pipeline's options)
from stage3_variants import CONFIG, N_ATTENTION, fe_enrichment

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results" / "attention_stages"
FIGURE = REPO / "docs" / "figures" / "attention_stages.png"
STAGES = ("stage1", "stage2", "stage3")
THRESHOLD = 1.5  # the pipeline's check (pipeline/report.py)


def parse_run(text: str) -> tuple[Path, str]:
    """``folder`` or ``folder:name`` → (absolute folder, result name)."""
    folder, _, name = text.partition(":")
    if not folder:
        raise SystemExit(f"a run is folder or folder:name, got {text!r}")
    path = Path(folder).resolve()
    return path, name or f"{path.parent.name}-{path.name}"


def _test_check(run_dir: Path) -> dict | None:
    """The run's own stage-3 attention check on test stars (metrics.json), None where it has none."""
    metrics = run_dir / "metrics.json"
    if not metrics.exists():
        return None
    checks = json.loads(metrics.read_text()).get("acceptance", {})
    value = checks.get("FE_H attention enrichment on Fe lines", {}).get("value")
    margin = checks.get("FE_H enrichment above its shuffled control", {}).get("value")
    if value is None or margin is None:
        return None
    return {"enrichment": value, "control": value - margin}


def measure(run_dir: Path, name: str, data, options) -> dict:
    """Validation enrichment of each finished stage folder of ``run_dir``."""
    missing = [stage for stage in STAGES if not (run_dir / stage / "stage_complete.json").exists()]
    if missing:
        raise SystemExit(f"{run_dir} has no finished {', '.join(missing)}; give a finished pipeline run folder")
    stages = {stage: fe_enrichment(run_dir / stage, data.stage3_val, options) for stage in STAGES}
    return {"run": _relative(run_dir), "name": name, "n_stars": min(len(data.stage3_val), N_ATTENTION),
            "stars": "iron-rich validation",
            "validation": stages, "test_stage3_check": _test_check(run_dir)}


def run(args) -> None:
    from spectrafm_hf.pipeline.config import load_config
    from spectrafm_hf.pipeline.data import load_data

    runs = [parse_run(text) for text in args.runs]
    for run_dir, name in runs:  # refuse clashes before loading anything
        path = RESULTS / f"{name}.json"
        if path.exists() and json.loads(path.read_text())["run"] not in (str(run_dir), _relative(run_dir)):
            raise SystemExit(f"{path} holds another run's result; give this run another name (folder:name)")
    config = load_config(CONFIG)  # the validation stars depend on the data seed only, not the run seed
    data = None
    RESULTS.mkdir(parents=True, exist_ok=True)
    for run_dir, name in runs:
        path = RESULTS / f"{name}.json"
        if path.exists():
            print(f"[attention] {name}: done before ({path.relative_to(REPO)})")
            continue
        data = data or load_data(config, run_dir)
        result = measure(run_dir, name, data, config.attention)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"[attention] {name}: " + ", ".join(
            f"{stage} {v['enrichment']:.2f} ({v['control']:.2f})" for stage, v in result["validation"].items()))


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def load_results() -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))]


def passes(result: dict) -> bool:
    """Whether the run's stage 3 passes the pipeline's check: on its test stars where the run has one
    (what its report says), else on these validation stars."""
    stage3 = result.get("test_stage3_check") or result["validation"]["stage3"]
    return stage3["enrichment"] > THRESHOLD and stage3["enrichment"] > stage3["control"]


def table(results: list[dict]) -> str:
    """Markdown: one row per run, validation E (control) per stage and the run's test-star check."""
    lines = ["| run | stage 1 | stage 2 | stage 3 | stage-3 check on test stars | passes |",
             "|---|---:|---:|---:|---:|:---:|"]
    for r in results:
        cells = [f"{r['validation'][s]['enrichment']:.2f} ({r['validation'][s]['control']:.2f})" for s in STAGES]
        test = r.get("test_stage3_check")
        test_cell = "—" if test is None else f"{test['enrichment']:.2f} ({test['control']:.2f})"
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {test_cell} | {'yes' if passes(r) else 'NO'} |")
    return "\n".join(lines)


def figure(results: list[dict], path: Path) -> None:
    """Enrichment against stage, one line per run (dashed where its stage 3 fails), with the check's bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        values = [r["validation"][s]["enrichment"] for s in STAGES]
        ax.plot(range(len(STAGES)), values, "o-" if passes(r) else "o--", label=r["name"], alpha=0.85)
    top = max([THRESHOLD] + [r["validation"][s]["enrichment"] for r in results for s in STAGES])
    ax.set_ylim(top=top + 0.2)
    ax.axhline(THRESHOLD, color="k", lw=0.8)
    ax.text(-0.1, THRESHOLD + 0.02, "check: E > 1.5 (and above its shuffled control)", fontsize=8, va="bottom")
    ax.axhline(1.0, color="grey", lw=0.6, ls=":")
    ax.set_xticks(range(len(STAGES)), ["stage 1\n(synthetic)", "stage 2\n(observed, first half)",
                                       "stage 3\n(100 stars, Fe window)"])
    ax.set_ylabel("[Fe/H] attention on Fe line cores (E)")
    ax.set_title("Fe-window attention of each stage, 200 iron-rich validation stars\n(dashed: stage 3 fails the check)",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(args) -> None:
    results = load_results()
    if not results:
        raise SystemExit(f"no results in {RESULTS.relative_to(REPO)}; run `python {Path(__file__).name} run ...` first")
    print(table(results))
    figure(results, FIGURE)
    print(f"figure: {FIGURE.relative_to(REPO)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    go = commands.add_parser("run", help="measure finished runs")
    go.add_argument("runs", nargs="+", help="folder or folder:name")
    commands.add_parser("report", help="table and figure from the results")
    args = parser.parse_args()
    {"run": run, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
