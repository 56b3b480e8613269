"""Re-run the first-half attention analysis of a finished pipeline run with more (or cooler) stars.

    python scripts/attention_first_half.py --run runs/final_seed0 --cache runs/cache_final0 --n 200 [--max-teff 4300]

Loads ``<run>/stage2`` and the run's observed test stars (the observed test split plus the iron-poor
supplement, in the pipeline's order) from ``--cache``; takes the first ``--n`` of them (optionally only
those with reported Teff below ``--max-teff``), cut to the first half (pixels 0–3756); and prints the
enrichment of the FE_H, MG_FE and O_FE queries with their shuffled-species controls. This is the same
analysis as ``attention_first_half`` in the run's metrics.json, but with a sample you choose.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="pipeline output folder (with stage2/)")
    parser.add_argument("--cache", required=True, help="the run's data.cache_dir")
    parser.add_argument("--n", type=int, default=200, help="test stars to analyse (default 200)")
    parser.add_argument("--max-teff", type=float, default=None,
                        help="keep only stars with reported Teff below this (K)")
    parser.add_argument("--observed", default="observed-apogee-n3000-seed1",
                        help="observed dataset folder in the cache")
    parser.add_argument("--iron-poor", default="observed-apogee-n400-seed2-feh_below-1",
                        help="iron-poor supplement folder")
    args = parser.parse_args(argv)

    import datasets

    from spectrafm_hf.data.arrays import concatenate, subset, window_data
    from spectrafm_hf.training.attention import analyse_model
    from spectrafm_hf.training.stages import WINDOWS

    cache = Path(args.cache)
    for name in (args.observed, args.iron_poor):
        if not (cache / name).exists():
            raise SystemExit(f"{cache / name} not found: pass the run's data.cache_dir as --cache")
    half = WINDOWS["first_half"]
    test = concatenate(window_data(datasets.load_from_disk(str(cache / args.observed))["test"], half),
                       window_data(datasets.load_from_disk(str(cache / args.iron_poor))["test"], half))
    rows = np.arange(len(test))
    if args.max_teff is not None:
        rows = rows[test.labels["TEFF"] < args.max_teff]
    source = subset(test, rows[: args.n])
    if len(source) == 0:
        raise SystemExit("no test star passes the selection; raise --max-teff or --n")
    result = analyse_model(Path(args.run) / "stage2", source, ("FE_H", "MG_FE", "O_FE"), batch_size=4)
    print(f"{len(source)} stars, stage 2 of {args.run}, pixels 0–3756")
    for query, entry in result["profiles"].items():
        print(f"  {query}: enrichment {entry['enrichment']:.2f}, shuffled control {entry['enrichment_control']:.2f} "
              f"({entry['n_lines']} {entry['element']} lines)")


if __name__ == "__main__":
    main()
