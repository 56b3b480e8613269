"""Speed and peak memory of the paper-size SpectraFM model on this machine's CPU (a script, not a test).

    .venv/bin/python benchmarks/bench_model.py            # all cases, 2 threads, prints a table
    .venv/bin/python benchmarks/bench_model.py --threads 4

Cases (batch 8 spectra on the 7514-pixel APOGEE grid, paper configuration d = 256, 16/8 heads):
inference at context 512, 2048 and all 7514 pixels; one training step (forward, backward, AdamW)
at context 512; and SDPA against eager attention at contexts 512 and 2048 (eager at 7514 would
need the B×H×L×L probabilities: 8 × 16 × 7514² × 4 B ≈ 29 GB). Each case runs in its own
subprocess, so its peak RSS (``ru_maxrss``, including the ~0.4 GB of the Python + torch runtime)
is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = [
    ("inference", 512, "sdpa"),
    ("inference", 2048, "sdpa"),
    ("inference", 7514, "sdpa"),
    ("training", 512, "sdpa"),
    ("inference", 512, "eager"),
    ("inference", 2048, "eager"),
]


def run_case(kind: str, context: int, attention: str, batch: int, threads: int, repeats: int) -> dict:
    """One case in this process; returns spectra/s and peak RSS."""
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
    flux = 1.0 - 0.3 * rng.random((batch, wavelength.size)) ** 8  # continuum with absorption dips
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
            loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        model.eval()

        def step(inputs):
            with torch.inference_mode():
                model(**inputs)

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", nargs=3, metavar=("KIND", "CONTEXT", "ATTENTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # child process: one case, JSON on stdout
        kind, context, attention = args.case
        print(json.dumps(run_case(kind, int(context), attention, args.batch, args.threads, args.repeats)))
        return 0

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
