"""Throughput and peak memory of ``spectrafm predict`` on simulated surveys, and the bf16 accuracy cost.

``run`` (default): for each model (a paper-size d=256 model with random weights, and an optional
trained checkpoint such as the quickstart's stage 3) × context (``all``, 512) × dtype (float32,
bfloat16) × N (``--sizes``), runs ``spectrafm predict`` on a simulated dataset folder of N
spectra (``spectrafm simulate --universe observed``, cached under ``--workdir``) in its own
process, and prints a table:

* wall time and spectra/s of the whole command (model load, reading, writing included);
* peak RSS of that process (``os.wait4`` → ``ru_maxrss``: everything it held, memory maps included);
* for the 733,000 spectra of APOGEE DR17: time = (733,000 − N_max) / marginal rate + wall(N_max),
  the marginal rate being (N_max − N_min) / (wall(N_max) − wall(N_min)) — the assumption is that
  each spectrum costs the same (true of the simulated grid, whose spectra have similar numbers of
  valid pixels) and that memory stays at its N_max peak (streaming: it does not grow with N).

``accuracy``: the largest |bf16 − fp32| shift of the predictions, in units of the fp32 σ, per label.

Threads: set ``OMP_NUM_THREADS`` (the figures are per thread count; the machine's other load counts
too). Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_predict.py run --sizes 2000 20000 \\
        --trained /work/runs_arch/quickstart/stage3
    OMP_NUM_THREADS=1 python benchmarks/bench_predict.py run --sizes 500 2000 --models trained --contexts 512
    python benchmarks/bench_predict.py accuracy --model runs/quickstart/stage3 --input /tmp/obs
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DR17_SPECTRA = 733_000
LABELS = ("TEFF", "LOGG", "FE_H", "MG_FE", "O_FE")
#: The model block of training/configs/paper.yaml (d = 256).
PAPER_MODEL = dict(d_model=256, encoder_heads=[16, 8], encoder_mlp=[2048, 1024], decoder_heads=[16, 8, 4],
                   decoder_mlp=[2048, 1024, 512], head_mlp=[2048, 1024, 512, 256], dropout=0.05, context_length=512)


def _spectrafm() -> list[str]:
    return [sys.executable, "-m", "spectrafm_hf.cli"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def simulated(workdir: Path, n: int) -> Path:
    """A simulated observed-universe dataset folder of n spectra (all splits), built once."""
    folder = workdir / f"obs-{n}"
    if not (folder / "dataset_dict.json").exists():
        subprocess.run([*_spectrafm(), "simulate", "--universe", "observed", "--n", str(n), "--seed", "0",
                        "--out", str(folder), "--no-progress", "--overwrite"], check=True, env=_env())
    return folder


def paper_checkpoint(workdir: Path, data: Path) -> Path:
    """A paper-size model with random weights; the feature extractor fitted on ``data``'s train split."""
    folder = workdir / "paper-random"
    if (folder / "model.safetensors").exists():
        return folder
    sys.path.insert(0, str(REPO))
    import torch
    from datasets import load_from_disk

    from spectrafm_hf.checkpoints import save_checkpoint
    from spectrafm_hf.data.arrays import window_data
    from spectrafm_hf.training.stages import new_model

    torch.manual_seed(0)
    train = window_data(load_from_disk(str(data))["train"], rows=range(200))
    model, feature_extractor = new_model(PAPER_MODEL, train)
    save_checkpoint(model.eval(), feature_extractor, folder)
    return folder


def measure(model: Path, data: Path, n: int, context: str, dtype: str, batch_size: int, workdir: Path,
            heap_reuse: bool = False) -> dict:
    """Run one ``spectrafm predict`` in a child process; its wall time and peak RSS."""
    out = workdir / "out" / f"{model.name}-{context}-{dtype}-{n}{'-heap' if heap_reuse else ''}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [*_spectrafm(), "predict", "--model", str(model), "--input", str(data), "--output", str(out),
               "--context", context, "--dtype", dtype, "--batch-size", str(batch_size), "--device", "cpu",
               "--no-progress", "--overwrite", *(arg for label in LABELS for arg in ("--request", label)),
               *(["--cpu-heap-reuse"] if heap_reuse else [])]
    start = time.perf_counter()
    child = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    stderr = child.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
    return {"model": model.name, "context": context, "dtype": dtype, "n": n, "batch": batch_size,
            "heap_reuse": heap_reuse, "wall_s": wall,
            "spectra_per_s": n / wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def extrapolate(rows: list[dict]) -> dict:
    """733,000-spectra time and memory from the smallest and largest N of one configuration."""
    small, large = min(rows, key=lambda r: r["n"]), max(rows, key=lambda r: r["n"])
    if large["n"] == small["n"] or large["wall_s"] <= small["wall_s"]:
        rate = large["spectra_per_s"]
    else:
        rate = (large["n"] - small["n"]) / (large["wall_s"] - small["wall_s"])
    hours = (large["wall_s"] + (DR17_SPECTRA - large["n"]) / rate) / 3600
    return {"marginal_spectra_per_s": rate, "dr17_hours": hours, "dr17_peak_rss_mb": large["peak_rss_mb"],
            "rss_ratio": large["peak_rss_mb"] / small["peak_rss_mb"]}


def run(args) -> None:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    datasets = {n: simulated(workdir, n) for n in args.sizes}
    models = {}
    if "paper" in args.models:
        models["paper"] = paper_checkpoint(workdir, datasets[min(args.sizes)])
    if "trained" in args.models and args.trained:
        models["trained"] = Path(args.trained)
    rows = []
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"OMP_NUM_THREADS={threads}; outputs under {workdir}/out", flush=True)
    print(f"{'model':<14} {'context':>7} {'dtype':>8} {'heap':>4} {'N':>7} {'batch':>5} {'wall s':>8} {'spec/s':>8} "
          f"{'peak RSS MB':>11}", flush=True)
    for name, model in models.items():
        for context, dtype, heap in itertools.product(args.contexts, args.dtypes, args.heap_reuse):
            batch = args.batch_all if context == "all" else args.batch_chunks
            group = []
            for n in args.sizes:
                row = measure(model, datasets[n], n, context, dtype, batch, workdir, heap_reuse=heap == "on")
                row["model"] = name
                group.append(row)
                print(f"{name:<14} {context:>7} {dtype:>8} {heap:>4} {n:>7} {batch:>5} {row['wall_s']:>8.1f} "
                      f"{row['spectra_per_s']:>8.2f} {row['peak_rss_mb']:>11.0f}", flush=True)
            rows.extend(group)
            if len(group) > 1:
                estimate = extrapolate(group)
                group[-1]["dr17"] = estimate
                print(f"{'':<14} → DR17 ({DR17_SPECTRA:,} spectra): {estimate['dr17_hours']:.1f} h at "
                      f"{estimate['marginal_spectra_per_s']:.2f} spectra/s (marginal), peak RSS "
                      f"{estimate['dr17_peak_rss_mb']:.0f} MB (RSS N_max/N_min = {estimate['rss_ratio']:.2f})",
                      flush=True)
    result = json.dumps({"threads": threads, "rows": rows}, indent=1) + "\n"
    (workdir / "bench_predict.json").write_text(result)
    if args.json:
        Path(args.json).write_text(result)


def accuracy(args) -> None:
    """max |bf16 − fp32| / σ(fp32) per label, over every spectrum of ``--input``."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from spectrafm_hf.data.sources import open_source
    from spectrafm_hf.predict import load_model, predict_labels

    model, feature_extractor = load_model(args.model, device="cpu")
    source = open_source(args.input, args.split)
    spectra = source.read(0, len(source))
    results = {}
    for context in args.contexts:
        shifts = {}
        for dtype in ("float32", "bfloat16"):
            results[dtype] = predict_labels(model, feature_extractor, spectra.wavelength, spectra.flux,
                                            flux_err=spectra.flux_err, mask=spectra.mask, request=list(LABELS),
                                            batch_size=args.batch_size, context=context, dtype=dtype, progress=False,
                                            pixels=args.pixels)
        fp32, bf16 = results["float32"], results["bfloat16"]
        for label in LABELS:
            ok = np.isfinite(fp32.values[label]) & np.isfinite(bf16.values[label])
            shift = np.abs(bf16.values[label] - fp32.values[label])[ok] / fp32.errors[label][ok]
            shifts[label] = {"max_sigma": float(shift.max()), "median_sigma": float(np.median(shift)),
                             "p99_sigma": float(np.quantile(shift, 0.99))}
        print(f"context {context}, pixels {args.pixels}, {len(spectra)} spectra of {args.input}: "
              "|bf16 - fp32| / sigma")
        for label, figures in shifts.items():
            print(f"  {label:<6} max {figures['max_sigma']:.4f}  p99 {figures['p99_sigma']:.4f}  "
                  f"median {figures['median_sigma']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what")
    bench = sub.add_parser("run", help="throughput and peak RSS of spectrafm predict")
    bench.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    bench.add_argument("--workdir", default="/tmp/bench_predict")
    bench.add_argument("--models", nargs="+", default=["paper", "trained"], choices=["paper", "trained"])
    bench.add_argument("--trained", default=None, help="a trained checkpoint, e.g. runs/quickstart/stage3")
    bench.add_argument("--contexts", nargs="+", default=["all", "512"])
    bench.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    bench.add_argument("--batch-all", type=int, default=8, help="batch size at --context all")
    bench.add_argument("--batch-chunks", type=int, default=64, help="batch size at --context 512")
    bench.add_argument("--heap-reuse", nargs="+", default=["off"], choices=["off", "on"],
                       help="run with spectrafm predict --cpu-heap-reuse off and/or on")
    bench.add_argument("--json", default=None, help="also write the results to this file")
    check = sub.add_parser("accuracy", help="bf16 shift from fp32 in units of the predicted sigma")
    check.add_argument("--model", required=True)
    check.add_argument("--input", required=True)
    check.add_argument("--split", default=None)
    check.add_argument("--contexts", nargs="+", default=["all"])
    check.add_argument("--batch-size", type=int, default=64)
    check.add_argument("--pixels", choices=["window", "all"], default="window",
                       help="all = every pixel, not only the checkpoint's training window (--all-pixels)")
    args = parser.parse_args()
    accuracy(args) if args.what == "accuracy" else run(args if args.what else parser.parse_args(["run"]))


if __name__ == "__main__":
    main()
