"""Peak memory of building a dataset by streaming (spectrafm_hf.data.schema.write_dataset).

Builds datasets of N spectra on the 7514-pixel grid from a cheap fake generator (random flux, batches
of 256; the simulator is not used because it is far slower than the writer) — each N in its own
subprocess so ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is that build's peak resident memory —
and prints peak RSS, build time and dataset size. Streaming works when the peak does not grow with N.

Disk: N × 7514 × (4 + 4 + 1) B (≈ 2.7 GB for 40k) temporarily, under --workdir (default /tmp), deleted
afterwards.

Usage:  python benchmarks/bench_dataset_memory.py [--sizes 10000 40000] [--workdir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _child(n: int, out_dir: str) -> None:
    import resource
    import threading

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

    import numpy as np

    from spectrafm_hf.data import grid
    from spectrafm_hf.data.schema import write_dataset

    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wavelength = grid.apogee_wavelength()
    batch = 256

    def batches():
        rng = np.random.default_rng(0)
        for start in range(0, n, batch):
            b = min(batch, n - start)
            flux = rng.uniform(0.5, 1.05, (b, wavelength.size)).astype(np.float32)
            yield {
                "id": np.array([f"fake-{start + i}" for i in range(b)]),
                "flux": flux,
                "flux_err": np.full_like(flux, 0.01),
                "mask": flux > 1.04,
                "TEFF": rng.uniform(3500, 6500, b), "FE_H": rng.uniform(-2, 0.5, b), "snr": np.full(b, 100.0),
            }

    # ru_maxrss also counts file-backed pages of the memory-mapped Arrow files that datasets reads
    # while saving (reclaimable page cache, not heap). Sample anonymous memory (RssAnon: heap, numpy
    # and Arrow buffers) separately to see which of the two grows with N.
    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            for field in peaks:
                peaks[field] = max(peaks[field], _proc_status_kb(field))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    ds = write_dataset(out_dir, {"train": batches}, wavelength, {"source": "benchmark"})
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    assert len(ds["train"]) == n
    size = sum(f.stat().st_size for f in Path(out_dir).rglob("*") if f.is_file())
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kB
    print(json.dumps({"n": n, "peak_rss_MiB": peak_kb / 1024, "rss_after_imports_MiB": baseline_kb / 1024,
                      "peak_anon_MiB": peaks["RssAnon"] / 1024, "peak_file_MiB": peaks["RssFile"] / 1024,
                      "seconds": seconds, "rows_per_s": n / seconds, "dataset_GB": size / 1e9}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--_child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child is not None:
        _child(args._child, args._out)
        return
    free = shutil.disk_usage(args.workdir).free
    need = max(args.sizes) * 7514 * 9 * 1.2
    if free < need:
        sys.exit(f"{args.workdir} has {free / 1e9:.1f} GB free; N={max(args.sizes)} needs ≈ {need / 1e9:.1f} GB")
    results = []
    for n in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="spectrafm-bench-mem-", dir=args.workdir))
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--_child", str(n), "--_out", str(work / "ds")],
                capture_output=True, text=True, env={**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"},
            )
            if proc.returncode != 0:
                sys.exit(f"N={n} failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'N':>8} {'peak RSS':>9} {'anon':>6} {'file':>6} {'build (s)':>10} {'rows/s':>7} {'disk (GB)':>10}"
          "   (MiB; RSS = ru_maxrss, anon/file = sampled peaks of RssAnon/RssFile)")
    for r in results:
        print(f"{r['n']:>8} {r['peak_rss_MiB']:>9.0f} {r['peak_anon_MiB']:>6.0f} {r['peak_file_MiB']:>6.0f} "
              f"{r['seconds']:>10.1f} {r['rows_per_s']:>7.0f} {r['dataset_GB']:>10.2f}")
    if len(results) > 1:
        first, last = results[0], results[-1]
        print(f"N={first['n']} → {last['n']}: peak RSS {last['peak_rss_MiB'] - first['peak_rss_MiB']:+.0f} MiB, "
              f"anonymous {last['peak_anon_MiB'] - first['peak_anon_MiB']:+.0f} MiB, "
              f"file-backed {last['peak_file_MiB'] - first['peak_file_MiB']:+.0f} MiB")


if __name__ == "__main__":
    main()
