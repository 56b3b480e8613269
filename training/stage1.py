"""SpectraFM stage 1: pre-train on synthetic spectra, all 7514 pixels, all five labels.

Thin entry point for ``accelerate launch`` (see training/README.md); the work is done by
``spectrafm_hf.pipeline.run_pipeline(..., stop_after="stage1")``, which reuses finished stages and
cached simulated data in the run folder / cache. Arguments are those of ``spectrafm pipeline``.

    accelerate launch training/stage1.py --config training/configs/quickstart.yaml --out runs/quickstart
"""

import sys

from spectrafm_hf.pipeline import run_stage_entry_point

if __name__ == "__main__":
    sys.exit(run_stage_entry_point("stage1", __doc__.splitlines()[0]))
