"""Speed of the paper-size SpectraFM model on this machine's CPU (a script, not a test).

    .venv/bin/python benchmarks/bench_model.py                 # current code vs the code before issue 11
    .venv/bin/python benchmarks/bench_model.py --repeats 9 --clock cpu --threads 1   # steadier on a busy machine
    .venv/bin/python benchmarks/bench_model.py --cases         # per-context table: speed and peak RSS

Comparison (default): the paper configuration (d = 256, encoder heads 16/8, MLPs 2048/1024, decoder
16/8/4), context 512, batch 64, 5 labels queried per spectrum, 2 threads. The batch is tokenised once:
only the model is timed. The "old" model is ``benchmarks/reference/modeling_spectrafm_before_issue11.py``
(the model code before issue 11's speed work) holding the same weights as the current one. Each code
runs with glibc's default allocator and with ``spectrafm_hf.cpu_allocator.reuse_large_allocations()``
(large tensors from the reused heap; switched on and off between measurements). Each repeat times every
(code, allocator) back to back, in alternating order, so that load from other processes falls on all of
them; printed are the medians over repeats and the medians of the per-repeat ratios to "today" (old
code, default allocator, float32). bf16 = ``torch.autocast`` (weights stay float32), what
``spectrafm predict --dtype bfloat16`` runs. Training step: forward, backward and AdamW at batch 16,
context 512, random requests with labels (dropout on). The run also prints the largest difference
between old and new outputs in float32.

Cases (``--cases``): batch 8 spectra on the 7514-pixel APOGEE grid, inference at context 512, 2048 and
all 7514 pixels; one training step at context 512; and SDPA against eager attention at contexts 512 and
2048 (eager at 7514 would need the B×H×L×L probabilities: 8 × 16 × 7514² × 4 B ≈ 29 GB). Each case runs
in its own subprocess, so its peak RSS (``ru_maxrss``, including the ~0.4 GB of the Python + torch
runtime) is its own.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent / "reference" / "modeling_spectrafm_before_issue11.py"
LABELS = ["TEFF", "LOGG", "FE_H", "MG_FE", "O_FE"]
CASES = [
    ("inference", 512, "sdpa"),
    ("inference", 2048, "sdpa"),
    ("inference", 7514, "sdpa"),
    ("training", 512, "sdpa"),
    ("inference", 512, "eager"),
    ("inference", 2048, "eager"),
]


def load_reference_modeling():
    """The model module before issue 11, imported as a submodule of the package (its relative import of
    the configuration then resolves)."""
    spec = importlib.util.spec_from_file_location("spectrafm_hf._modeling_before_issue11", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def paper_batch(batch: int, context: int, seed: int, labels: bool = False):
    """A tokenised batch of synthetic full-grid spectra: ``batch`` spectra, ``context`` random pixels,
    the five labels requested (with targets when ``labels``)."""
    import numpy as np

    from spectrafm_hf import SpectraFMFeatureExtractor
    from spectrafm_hf.data.grid import apogee_wavelength

    wavelength = apogee_wavelength()
    rng = np.random.default_rng(seed)
    flux = 1.0 - 0.3 * rng.random((batch, wavelength.size)) ** 8  # continuum with absorption dips
    extractor = SpectraFMFeatureExtractor(flux_median=0.98, flux_std=0.08)
    targets = {"FE_H": rng.normal(-0.2, 0.3, batch), "TEFF": rng.normal(4700, 500, batch)} if labels else None
    return extractor(wavelength, flux, request="random" if labels else LABELS, sampling="random",
                     context_length=context, seed=seed, labels=targets)


def _models():
    import torch

    from spectrafm_hf import SpectraFMConfig, SpectraFMModel

    torch.manual_seed(0)
    new = SpectraFMModel(SpectraFMConfig()).eval()
    old = load_reference_modeling().SpectraFMModel(SpectraFMConfig()).eval()
    old.load_state_dict(new.state_dict())
    return {"old": old, "new": new}


def _inference_seconds(model, inputs, bf16: bool, clock) -> float:
    import torch

    precision = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), precision:
        start = clock()
        model(**inputs)
        return clock() - start


def _training_step_seconds(model, optimizer, inputs, clock) -> float:
    start = clock()
    model(**inputs).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return clock() - start


def _largest_difference(models, inputs) -> dict:
    """Largest |new − old| of the float32 outputs (standardised units)."""
    import torch

    with torch.inference_mode():
        old, new = (models[name](**inputs) for name in ("old", "new"))
    return {key: float((getattr(new, key) - getattr(old, key)).abs().max()) for key in ("mean", "log_variance")}


def _configurations() -> list[tuple[str, str]]:
    """(code, allocator) pairs to time: both codes with the default allocator, and with heap reuse
    where the C library allows it."""
    from spectrafm_hf import cpu_allocator

    allocators = ["default", "heap"] if cpu_allocator.available() else ["default"]
    return [(code, allocator) for allocator in allocators for code in ("old", "new")]


def compare(args) -> dict:
    """Every (code, allocator), interleaved: inference fp32 and bf16 (seconds per batch), training step."""
    import torch

    from spectrafm_hf.cpu_allocator import reuse_large_allocations

    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    models = _models()
    inputs = paper_batch(args.batch, args.context, seed=1)
    configurations = _configurations()
    seconds = {(code, allocator, mode): [] for code, allocator in configurations for mode in ("fp32", "bf16", "train")}
    difference = _largest_difference(models, inputs)  # before the training steps make the weights differ
    for model in models.values():  # warm-up, with the default allocator: its mmap threshold adapts as in
        for bf16 in (False, True):  # any process before the first switch fixes it
            _inference_seconds(model, inputs, bf16, clock)
    for repeat in range(args.repeats):
        for mode in ("fp32", "bf16"):
            for code, allocator in configurations[:: 1 if repeat % 2 == 0 else -1]:
                reuse_large_allocations(allocator == "heap")
                seconds[code, allocator, mode].append(_inference_seconds(models[code], inputs, mode == "bf16", clock))
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-5) for name, model in models.items()}
    steps = [paper_batch(args.train_batch, args.context, seed=10 + i, labels=True) for i in range(args.repeats + 1)]
    for name, model in models.items():
        model.train()
        _training_step_seconds(model, optimizers[name], steps[0], clock)  # warm-up
    for repeat, step in enumerate(steps[1:]):
        for code, allocator in configurations[:: 1 if repeat % 2 == 0 else -1]:
            reuse_large_allocations(allocator == "heap")
            step_seconds = _training_step_seconds(models[code], optimizers[code], step, clock)
            seconds[code, allocator, "train"].append(step_seconds)
    reuse_large_allocations(False)
    return {"seconds": {"/".join(key): value for key, value in seconds.items()}, "difference": difference}


def print_comparison(result: dict, args) -> None:
    s = {tuple(key.split("/")): values for key, values in result["seconds"].items()}
    configurations = sorted({key[:2] for key in s}, key=lambda c: (c[1] != "default", c[0] != "old"))
    today = s["old", "default", "fp32"]

    def paired(reference, values):  # median of per-repeat ratios: robust to load drifting between repeats
        return statistics.median(a / b for a, b in zip(reference, values))

    print(f"SpectraFM paper configuration, CPU, {args.threads} threads, context {args.context}, batch {args.batch}, "
          f"{len(LABELS)} labels per spectrum; {args.clock} clock, median of {args.repeats} interleaved repeats")
    print(f"{'code':<5} {'allocator':<9} {'fp32 spectra/s':>15} {'bf16 spectra/s':>15} {'x today fp32':>13} "
          f"{'x today bf16':>13} {'train step ms':>14} {'train x today':>14}")
    for code, allocator in configurations:
        fp32, bf16, train = (s[code, allocator, mode] for mode in ("fp32", "bf16", "train"))
        print(f"{code:<5} {allocator:<9} {args.batch / statistics.median(fp32):>15.1f} "
              f"{args.batch / statistics.median(bf16):>15.1f} {paired(today, fp32):>13.2f} "
              f"{paired(today, bf16):>13.2f} "
              f"{1000 * statistics.median(train):>14.0f} {paired(s['old', 'default', 'train'], train):>14.2f}")
    print('"today" = old code, default allocator, float32; training steps at batch', args.train_batch)
    d = result["difference"]
    print(f"largest |new - old| in float32: mean {d['mean']:.1e}, log_variance {d['log_variance']:.1e} "
          "(standardised units)")


def run_case(kind: str, context: int, attention: str, batch: int, threads: int, repeats: int) -> dict:
    """One case of the per-context table in this process; returns spectra/s and peak RSS."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from spectrafm_hf import SpectraFMConfig, SpectraFMFeatureExtractor, SpectraFMModel
    from spectrafm_hf.data.grid import apogee_wavelength

    torch.manual_seed(0)
    model = SpectraFMModel(SpectraFMConfig())
    model.set_attn_implementation(attention)
    wavelength = apogee_wavelength()
    rng = np.random.default_rng(0)
    flux = 1.0 - 0.3 * rng.random((batch, wavelength.size)) ** 8
    fe = SpectraFMFeatureExtractor(flux_median=0.98, flux_std=0.08)
    labels = {"FE_H": rng.normal(-0.2, 0.3, batch), "TEFF": rng.normal(4700, 500, batch)}
    sampling = "all" if context >= wavelength.size else "random"

    def make_batch(step):
        return fe(wavelength, flux, request="random" if kind == "training" else ["FE_H"], sampling=sampling,
                  context_length=None if sampling == "all" else context, seed=step,
                  labels=labels if kind == "training" else None)

    if kind == "training":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(inputs):
            _training_step_seconds(model, optimizer, inputs, time.perf_counter)
    else:
        model.eval()

        def step(inputs):
            _inference_seconds(model, inputs, False, time.perf_counter)

    step(make_batch(0))  # warm-up
    inputs = [make_batch(i + 1) for i in range(repeats)]
    start = time.perf_counter()
    for item in inputs:
        step(item)
    seconds = (time.perf_counter() - start) / repeats
    return {
        "case": kind, "context": int(inputs[0]["input_ids"].shape[1]), "attention": attention, "batch": batch,
        "threads": threads, "seconds_per_batch": seconds, "spectra_per_s": batch / seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }


def run_cases(args) -> None:
    """The per-context table, one subprocess per case."""
    results = []
    print(f"SpectraFM paper configuration, CPU, {args.threads} threads, batch {args.batch}, "
          f"mean of {args.repeats} batches after one warm-up")
    print(f"{'case':<10} {'context':>7} {'attention':>9} {'s/batch':>9} {'spectra/s':>10} {'peak RSS GB':>12}")
    for kind, context, attention in CASES:
        command = [sys.executable, __file__, "--case", kind, str(context), attention, "--threads", str(args.threads),
                   "--batch", str(args.batch), "--repeats", str(args.repeats)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{kind:<10} {context:>7} {attention:>9} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{r['case']:<10} {r['context']:>7} {r['attention']:>9} {r['seconds_per_batch']:>9.3f} "
              f"{r['spectra_per_s']:>10.2f} {r['peak_rss_gb']:>12.2f}")
    by = {(r["case"], r["context"], r["attention"]): r for r in results}
    for context in (512, 2048):
        sdpa, eager = by.get(("inference", context, "sdpa")), by.get(("inference", context, "eager"))
        if sdpa and eager:
            speedup = eager["seconds_per_batch"] / sdpa["seconds_per_batch"]
            print(f"SDPA vs eager, inference at context {context}: {speedup:.2f}x "
                  f"faster, peak RSS {sdpa['peak_rss_gb']:.2f} vs {eager['peak_rss_gb']:.2f} GB")
    full = by.get(("inference", 7514, "sdpa"))
    if full:
        verdict = "within" if full["peak_rss_gb"] <= 4.0 else "OVER"
        print(f"All 7514 pixels in one context at batch {args.batch}: "
              f"peak RSS {full['peak_rss_gb']:.2f} GB ({verdict} the 4 GB target)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=None, help="spectra per batch (default 64; 8 with --cases)")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: spectra/s as a user sees them; cpu: process CPU time (with --threads 1, "
                             "little affected by other processes on the machine)")
    parser.add_argument("--cases", action="store_true", help="the per-context speed and peak-RSS table")
    parser.add_argument("--json", help="also write the raw timings of the comparison to this file")
    parser.add_argument("--case", nargs=3, metavar=("KIND", "CONTEXT", "ATTENTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # child process of --cases: one case, JSON on stdout
        kind, context, attention = args.case
        print(json.dumps(run_case(kind, int(context), attention, args.batch or 8, args.threads, args.repeats)))
        return 0
    if args.cases:
        args.batch = args.batch or 8
        run_cases(args)
        return 0
    args.batch = args.batch or 64
    result = compare(args)
    print_comparison(result, args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
