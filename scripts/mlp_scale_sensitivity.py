"""How much does the scratch-MLP baseline move when its label scale changes by 1.5e-6 (relative)?

Issue 10 replaced the hand-written MAD factor 1.4826 by astropy's ``mad_std`` (1.482602218505602). This
refits the quickstart's scratch MLP for a few run seeds with both factors and prints the iron-poor and
iron-rich [Fe/H] RMSE, next to the spread between seeds, so the change can be judged against the
baseline's own seed noise.

    python scripts/mlp_scale_sensitivity.py --config training/configs/quickstart.yaml --seeds 0 1 2
(run from the folder whose ``runs/cache`` holds the quickstart's simulated data, or it is simulated)
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import numpy as np

from spectrafm_hf.pipeline.config import load_config
from spectrafm_hf.pipeline.data import load_data
from spectrafm_hf.training import baselines as bl
from spectrafm_hf.training.evaluation import binned_stats


def hand_written_scale(values: np.ndarray) -> tuple[float, float]:
    """The factor used before issue 10."""
    values = values[np.isfinite(values)]
    median = float(np.median(values))
    scale = float(1.4826 * np.median(np.abs(values - median)))
    return median, scale if scale > 0 else float(np.std(values) or 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/quickstart.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    astropy_scale = bl._robust_scale
    print("seed  factor      RMSE [Fe/H]<-1  RMSE [Fe/H]>=-1")
    for seed in args.seeds:
        config = load_config(args.config, seed=seed)
        data = load_data(config, Path("runs/mlp_scale_sensitivity"))
        true = data.test.labels["FE_H"]
        for name, scale in (("1.4826", hand_written_scale), ("astropy", astropy_scale)):
            bl._robust_scale = scale
            model = bl.fit_scratch_mlp(data.stage3_train, data.stage3_val, seed=seed,
                                       **asdict(config.baselines.mlp))
            predicted, _ = model.predict(data.test_fe)
            stats = binned_stats(predicted, true, true)
            print(f"{seed:4d}  {name:8s}  {stats['feh_lt_-1']['rmse']:14.4f}  {stats['feh_ge_-1']['rmse']:15.4f}")
    bl._robust_scale = astropy_scale


if __name__ == "__main__":
    main()
