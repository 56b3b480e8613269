"""SpectraFM stage 1: pre-train on synthetic spectra, all 7514 pixels, all five labels.

Thin entry point for ``accelerate launch`` (see training/README.md); the work is done by
``spectrafm_hf.pipeline.run_pipeline(..., stop_after="stage1")``, which reuses finished stages and
cached simulated data in the run folder / cache.

    accelerate launch training/stage1.py --config training/configs/quickstart.yaml --out runs/quickstart
"""

import argparse
import sys

from spectrafm_hf.pipeline import run_pipeline


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="pipeline YAML, e.g. training/configs/quickstart.yaml")
    parser.add_argument("--out", required=True, help="run folder (stage folders are written inside)")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    parser.add_argument("--stage3-trainer", choices=["accelerate", "transformers"], default=None)
    return run_pipeline(parser.parse_args(argv), stop_after="stage1")


if __name__ == "__main__":
    sys.exit(main())
