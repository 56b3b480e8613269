"""SpectraFM stage 2: fine-tune on observed spectra, pixels 0–3756, all five labels (runs stage 1 first if needed).

Thin entry point for ``accelerate launch`` (see training/README.md); the work is done by
``spectrafm_hf.pipeline.run_pipeline(..., stop_after="stage2")``, which reuses finished stages and
cached simulated data in the run folder / cache. Arguments are those of ``spectrafm pipeline``.

    accelerate launch training/stage2.py --config training/configs/quickstart.yaml --out runs/quickstart
"""

import sys

from spectrafm_hf.pipeline import run_stage_entry_point

if __name__ == "__main__":
    sys.exit(run_stage_entry_point("stage2", __doc__.splitlines()[0]))
