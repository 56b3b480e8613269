"""SpectraFM stage 3: fine-tune on 100 iron-rich observed stars, pixels 4107–4618, FE_H (runs stages 1–2 if needed).

Thin entry point for ``accelerate launch`` (see training/README.md); the work is done by
``spectrafm_hf.pipeline.run_pipeline(..., stop_after="stage3")``, which reuses finished stages and
cached simulated data in the run folder / cache. Arguments are those of ``spectrafm pipeline``.

    accelerate launch training/stage3.py --config training/configs/quickstart.yaml --out runs/quickstart
"""

import sys

from spectrafm_hf.pipeline import run_stage_entry_point

if __name__ == "__main__":
    sys.exit(run_stage_entry_point("stage3", __doc__.splitlines()[0]))
