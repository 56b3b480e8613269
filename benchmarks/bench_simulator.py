"""Simulator throughput (spectra per second, single thread) for both universes.

    OMP_NUM_THREADS=1 python benchmarks/bench_simulator.py [--n 512] [--batch-size 256] [--repeats 5]

Builds the line model / observed universe first (one-off cost, printed separately), then times
``simulator.simulate`` on ``n`` stars of the "apogee" prior at 7514 pixels, ``repeats`` times per
universe (interleaved). Prints the median and the best CPU-time throughput: on a shared machine
other tenants slow some repeats down, so the best repeat is the closest to one uncontended core
(as ``timeit`` reports its minimum) and the median says how noisy the machine was.
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
    parser.add_argument("--repeats", type=int, default=5)
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
    cpu_ms: dict[str, list[float]] = {"synthetic": [], "observed": []}
    for universe in cpu_ms:  # warm-up (compiles the opacity loop on a first run)
        sim.simulate({k: v[:8] for k, v in labels.items()}, universe=universe, seed=args.seed)
    for _ in range(args.repeats):
        for universe, times in cpu_ms.items():
            c0 = time.process_time()
            for start in range(0, args.n, args.batch_size):
                rows = slice(start, min(start + args.batch_size, args.n))
                sim.simulate({k: v[rows] for k, v in labels.items()}, universe=universe, seed=args.seed,
                             start_index=start)
            times.append(1e3 * (time.process_time() - c0) / args.n)
    for universe, times in cpu_ms.items():
        best, median = min(times), float(np.median(times))
        print(f"{universe:>9}: {1e3 / best:6.1f} spectra per CPU-second at best, {1e3 / median:6.1f} median "
              f"({best:.2f} / {median:.2f} ms CPU per spectrum; n={args.n}, batch {args.batch_size}, "
              f"{args.repeats} repeats)")


if __name__ == "__main__":
    main()
