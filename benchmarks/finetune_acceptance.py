"""`spectrafm finetune` against the pipeline's stage 3, same stars, same test set, several seeds (a script).

Issue 12's acceptance: fine-tuning the quickstart's stage 2 with ``spectrafm finetune`` on the 100
iron-rich simulated stars of the pipeline's stage 3, in the Fe window, reproduces the pipeline's
stage-3 result within noise on the same test set.

    # 1. the pipeline's data (regenerated deterministically into the config's cache_dir when missing),
    #    written as the inputs a user would bring: per seed the pipeline's 100-star draw, the iron-rich
    #    validation stars, the test set (observed test split + iron-poor supplement), the rehearsal stars
    .venv/bin/python benchmarks/finetune_acceptance.py --run runs_arch/quickstart --out runs/finetune_acceptance
    # 2. the printed `spectrafm finetune` commands, one per seed (or add --run-cli to run them here)
    # 3. optionally the pipeline's own stage 3 (Accelerate loop) from the same stage 2 for the other seeds
    #    (--pipeline-stage3), then the table: test [Fe/H] RMSE iron-rich / iron-poor per seed, both ways

Every dataset is cut to the Fe window (APOGEE pixels 4107–4618, 16105.9–16220.0 Å), so ``--window``
selects all of it. The run seed sets the stage-3 draw and the training seed, as ``spectrafm pipeline
--seed`` does; stage 2 is the same for all seeds (the run folder's).
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np

from spectrafm_hf.data.arrays import WindowData, cut_window
from spectrafm_hf.data.grid import FE_WINDOW
from spectrafm_hf.data.labels import LABELS, error_column
from spectrafm_hf.data.schema import write_dataset
from spectrafm_hf.pipeline import load_config
from spectrafm_hf.pipeline.data import load_data


def write_stars(folder: Path, data: WindowData, split: str) -> None:
    """``data`` (already cut to the Fe window) as a one-split dataset folder of the package schema."""
    def batches():
        for start in range(0, len(data), 1024):
            rows = slice(start, start + 1024)
            batch = {"id": np.array([f"star-{i}" for i in range(start, min(start + 1024, len(data)))]),
                     "flux": data.flux[rows], "flux_err": data.flux_err[rows], "mask": data.mask[rows]}
            batch.update({name: data.labels[name][rows] for name in LABELS if name in data.labels})
            batch.update({error_column(name): data.label_errors[name][rows] for name in LABELS
                          if name in data.label_errors})
            yield batch

    write_dataset(folder, {split: batches}, data.wavelength, {"source": "simulator", "role": folder.name},
                  overwrite=True)


def command(args, config, seed: int, data_dir: Path) -> list[str]:
    """The `spectrafm finetune` command of one seed: the config's stage-3 recipe, written out (for the
    quickstart: freeze decoder + encoder.1, rehearsal 32, 600 steps of 32 stars, context 128, 1e-3
    constant after 20 warm-up steps, evaluation every 25 steps, patience 8)."""
    spec, loop = config.stage3.spec, config.stage3.spec.loop
    blocks = [f"encoder.{k}" for k in spec.freeze_encoder_blocks]
    freeze = ",".join((["decoder"] if spec.freeze_decoder else []) + blocks)
    argv = ["spectrafm", "finetune", "--model", str(Path(args.run) / "stage2"),
            "--train", str(data_dir / f"own_seed{seed}"), "--validation", str(data_dir / "validation"),
            "--test", str(data_dir / "test"), "--labels", "FE_H", "--window", "16105.8", "16220",
            "--freeze", freeze or "none", "--max-steps", str(loop.max_steps), "--batch-size", str(spec.batch_size),
            "--context-length", str(spec.context_length), "--learning-rate", f"{loop.learning_rate:g}",
            "--warmup-steps", str(loop.warmup_steps), "--schedule", loop.schedule,
            "--min-lr-ratio", f"{loop.min_lr_ratio:g}", "--eval-every", str(loop.eval_every),
            "--patience", str(loop.patience or 0), "--eval-batch-size", str(spec.eval_batch_size),
            "--seed", str(seed), "--data-kind", "simulated", "--out", str(Path(args.out) / f"finetune_seed{seed}")]
    if spec.rehearsal:
        argv += ["--rehearsal", str(spec.rehearsal), "--rehearsal-data", str(data_dir / "rehearsal")]
    return argv + shlex.split(args.cli_extra)


def prepare(args) -> tuple[object, dict[int, object], Path]:
    """Write the datasets; (config, PipelineData per seed, data folder)."""
    config = load_config(args.config)
    if config.data.cache_dir is None:  # the run folder's own cache (<run>/data), as the pipeline uses it
        config = replace(config, data=replace(config.data, cache_dir=str(Path(args.run) / "data")))
    data_dir = Path(args.out) / "data"
    per_seed = {seed: load_data(replace(config, seed=seed), Path(args.run)) for seed in args.seeds}
    first = per_seed[args.seeds[0]]
    if not (data_dir / "test").exists():
        write_stars(data_dir / "validation", first.stage3_val, "validation")
        write_stars(data_dir / "test", first.test_fe, "test")
        write_stars(data_dir / "rehearsal", cut_window(first.synthetic_train, FE_WINDOW), "train")
    recorded = Path(args.run) / "stage3" / "stage_config.json"
    if config.seed in per_seed and recorded.is_file():
        # the regenerated stars are the run's own when their fingerprints match its stage-3 record
        data, record = per_seed[config.seed], json.loads(recorded.read_text())["data"]
        same = (record["train"] == data.stage3_train.fingerprint()
                and record["validation"] == data.stage3_val.fingerprint())
        print(f"regenerated stage-3 stars identical to those of {recorded.parent}: {same}", flush=True)
    for seed, data in per_seed.items():
        if not (data_dir / f"own_seed{seed}").exists():
            write_stars(data_dir / f"own_seed{seed}", data.stage3_train, "train")
    return config, per_seed, data_dir


def pipeline_stage3(args, config, data, seed: int) -> Path:
    """The pipeline's stage 3 of ``seed`` from the run's stage 2: the run's own ``stage3/`` for the run's
    seed, else trained here (Accelerate loop, the config's recipe); its folder."""
    from spectrafm_hf.training.stages import run_stage

    if seed == config.seed:
        return Path(args.run) / "stage3"
    folder = Path(args.out) / f"pipeline_stage3_seed{seed}"
    rehearsal = cut_window(data.synthetic_train, FE_WINDOW) if config.stage3.spec.rehearsal else None
    run_stage(config.stage3.spec, data.stage3_train, data.stage3_val, folder, init=Path(args.run) / "stage2",
              rehearsal=rehearsal, seed=seed)
    return folder


def test_rmse(folder: Path, data) -> dict[str, float]:
    """The pipeline's evaluation of a checkpoint on the Fe-window test set: RMSE per [Fe/H] bin."""
    from spectrafm_hf.checkpoints import load_model
    from spectrafm_hf.training.evaluation import binned_stats
    from spectrafm_hf.training.stages import predict

    model, feature_extractor = load_model(folder, device="cpu")
    mean, _ = predict(model, feature_extractor, data.test_fe, ("FE_H",), 64)["FE_H"]
    bins = binned_stats(mean, data.true_feh, data.true_feh)
    return {key: bins[key]["rmse"] for key in ("feh_ge_-1", "feh_lt_-1")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/quickstart.yaml")
    parser.add_argument("--run", required=True, help="the pipeline run folder holding stage2/ (and stage3/)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--run-cli", action="store_true", help="run the finetune commands here")
    parser.add_argument("--cli-extra", default="", help="more finetune options, e.g. '--max-steps 4' (smoke tests)")
    parser.add_argument("--pipeline-stage3", action="store_true",
                        help="also train the pipeline's stage 3 for seeds other than the run's")
    args = parser.parse_args()
    config, per_seed, data_dir = prepare(args)
    rows = []
    for seed in args.seeds:
        argv = command(args, config, seed, data_dir)
        print(shlex.join(argv), flush=True)
        if args.run_cli and not (Path(args.out) / f"finetune_seed{seed}").exists():
            from spectrafm_hf.cli import main as cli

            assert cli(argv[1:]) == 0
        finetuned = Path(args.out) / f"finetune_seed{seed}"
        if finetuned.exists():
            rows.append((seed, "spectrafm finetune", test_rmse(finetuned, per_seed[seed])))
        if seed == config.seed or args.pipeline_stage3:
            rows.append((seed, "pipeline stage 3",
                         test_rmse(pipeline_stage3(args, config, per_seed[seed], seed), per_seed[seed])))
    print(f"{'seed':>4}  {'model':20s} {'[Fe/H] ≥ −1':>12s} {'[Fe/H] < −1':>12s}   (test [Fe/H] RMSE, dex)")
    for seed, name, rmse in rows:
        print(f"{seed:>4}  {name:20s} {rmse['feh_ge_-1']:12.4f} {rmse['feh_lt_-1']:12.4f}")
    (Path(args.out) / "comparison.json").write_text(json.dumps(
        [{"seed": s, "model": n, **r} for s, n, r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
