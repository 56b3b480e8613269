"""Simulator throughput (spectra per second, single thread) for both universes.

    OMP_NUM_THREADS=1 python benchmarks/bench_simulator.py [--n 512] [--batch-size 256]

Builds the line model / observed universe first (one-off cost, printed separately), then times
``simulator.simulate`` on ``n`` stars of the "apogee" prior at 7514 pixels. Prints wall-clock and
CPU-time throughput: on a shared machine the CPU-time figure is the one-uncontended-core speed.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # single thread, before numpy
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from spectrafm_hf.data import simulator as sim  # noqa: E402
from spectrafm_hf.data.prior import sample_labels  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    model = sim.get_line_model()
    t_model = time.perf_counter() - t0
    t0 = time.perf_counter()
    sim.get_universe(sim.GapConfig(), model)
    t_universe = time.perf_counter() - t0
    print(f"one-off: line model {t_model:.2f} s, observed universe {t_universe:.2f} s "
          f"({len(model.lines)} lines, {model.n_fine} fine pixels, {len(model.wavelength)} output pixels)")
    labels = sample_labels(args.n, seed=args.seed, prior="apogee")
    for universe in ("synthetic", "observed"):
        sim.simulate({k: v[:8] for k, v in labels.items()}, universe=universe, seed=args.seed)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, args.n, args.batch_size):
            rows = slice(start, min(start + args.batch_size, args.n))
            sim.simulate({k: v[rows] for k, v in labels.items()}, universe=universe, seed=args.seed,
                         start_index=start)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        # CPU time is what one uncontended core would take; wall time also counts other processes
        print(f"{universe:>9}: {args.n / dt:7.1f} spectra/s single thread wall-clock, "
              f"{args.n / cpu:7.1f} spectra per CPU-second ({1e3 * cpu / args.n:.2f} ms CPU per spectrum, "
              f"n={args.n}, batch {args.batch_size})")


if __name__ == "__main__":
    main()
