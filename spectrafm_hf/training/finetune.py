"""``spectrafm finetune``: fine-tune a checkpoint on your own labelled stars, in your own window.

    spectrafm finetune --model runs/quickstart/stage2 --train my_stars.parquet --validation my_val.parquet \\
        --labels FE_H --window 16106 16220 --freeze decoder,encoder.1 --out runs/my_finetune

Inputs (``--train``, ``--validation``, ``--test``, ``--rehearsal-data``) are anything
:func:`spectrafm_hf.data.sources.open_source` reads: a dataset folder (``spectrafm build-apogee`` /
``simulate`` output; ``--<role>-split`` picks the split, default the role's name when the folder has
it), a Parquet / FITS / npz / CSV table of spectra with a wavelength grid (CSV: a row per pixel or a
column per pixel, :mod:`spectrafm_hf.data.csv_spectra`), or a folder (or quoted glob) of
aspcapStar / apStar files. ``--labels FE_H,TEFF`` names the model's labels and their columns
(``FE_H=feh_column`` for another column name), in the input or in ``--label-table`` (CSV, FITS or
Parquet, joined on the star id); ``<column>_ERR`` is the label's 1σ when present. NaN = unknown: left
out of the loss and of the metrics. Without ``--validation``, ``--validation-fraction`` of the training
stars are held out for model selection.

Every input is read and checked before training starts; a bad one stops the command with one line
naming the fix: an absent label column, a window with no pixel in the model's trained range or in the
data, a block to freeze that the model does not have (the valid names are listed), a table without
wavelengths, an output folder that exists (``--overwrite`` replaces only a folder spectrafm wrote).

Training is :func:`spectrafm_hf.training.trainer.run_stage_with_trainer` (``transformers.Trainer``, the
pipeline's ``stage3_trainer: transformers``) with the defaults of the quickstart's stage 3. Evaluation
is the pipeline's (``stages.predict`` on whole windows + ``evaluation.evaluate_label``, σ calibrated on
the validation stars). ``--out`` gets a complete checkpoint (weights, config, preprocessor config, the
model code, ``README.md`` card with the evaluation), ``metrics.json`` (the pipeline's layout: the
card's flat entry ``finetuned``, ``models.finetuned``, ``validation``), ``finetune.json`` (the settings),
``metrics.jsonl`` (the training log), ``stage_config.json`` and ``stage_complete.json``. The folder is
built aside and moved into place only when complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Defaults of the quickstart's stage 3 (training/configs/quickstart.yaml), the paper's recipe scaled down.
DEFAULTS = {"max_steps": 600, "batch_size": 32, "learning_rate": 1e-3, "warmup_steps": 20, "schedule": "constant",
            "min_lr_ratio": 0.0, "eval_every": 25, "patience": 8, "eval_batch_size": 64,
            "freeze": "decoder,encoder.1", "validation_fraction": 0.2}


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    """Declare ``spectrafm finetune``'s arguments."""
    p.add_argument("--model", required=True, help="checkpoint folder or Hub repo id to start from (e.g. a stage 2)")
    p.add_argument("--train", required=True, help="training stars: dataset folder, Parquet/FITS/npz/CSV table, or "
                   "aspcapStar/apStar files (folder or quoted glob)")
    p.add_argument("--labels", required=True, nargs="+",
                   help="labels to fine-tune, comma- or space-separated (FE_H,TEFF or FE_H TEFF); LABEL=COLUMN "
                        "when the column has another name")
    p.add_argument("--out", required=True, help="output folder (the fine-tuned checkpoint and its evaluation)")
    p.add_argument("--validation", default=None, help="validation stars for model selection (same formats)")
    p.add_argument("--validation-fraction", type=float, default=DEFAULTS["validation_fraction"],
                   help="without --validation: fraction of the training stars held out for selection")
    p.add_argument("--test", default=None, help="test stars, evaluated at the end (same formats)")
    for role in ("train", "validation", "test", "rehearsal"):
        p.add_argument(f"--{role}-split", default=None, help=f"split of a --{role} dataset folder")
    p.add_argument("--label-table", default=None, help="CSV/FITS/Parquet table of labels joined on the star id")
    p.add_argument("--window", type=float, nargs=2, metavar=("MIN_A", "MAX_A"), default=None,
                   help="vacuum Å window to fine-tune and evaluate on (default: every pixel of the training "
                        "grid; evaluation reads the whole window at once, its cost grows as pixels²)")
    p.add_argument("--freeze", default=DEFAULTS["freeze"],
                   help="blocks to freeze, comma-separated: decoder, encoder, encoder.K, or none "
                        "(default: the paper's stage 3, decoder,encoder.1)")
    p.add_argument("--rehearsal", type=int, default=0, help="stars of --rehearsal-data added to every batch")
    p.add_argument("--rehearsal-data", default=None, help="rehearsal stars (e.g. the pipeline's synthetic dataset)")
    p.add_argument("--max-steps", type=int, default=DEFAULTS["max_steps"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--context-length", type=int, default=None, help="pixels per star per step (default: the model's)")
    p.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"])
    p.add_argument("--warmup-steps", type=int, default=DEFAULTS["warmup_steps"])
    p.add_argument("--schedule", choices=["constant", "cosine"], default=DEFAULTS["schedule"])
    p.add_argument("--min-lr-ratio", type=float, default=DEFAULTS["min_lr_ratio"], help="floor of the cosine")
    p.add_argument("--eval-every", type=int, default=DEFAULTS["eval_every"])
    p.add_argument("--patience", type=int, default=DEFAULTS["patience"],
                   help="stop after this many evaluations without improvement (0 = never)")
    p.add_argument("--eval-batch-size", type=int, default=DEFAULTS["eval_batch_size"])
    p.add_argument("--data-kind", choices=["simulated", "real", "unknown"], default="unknown",
                   help="what the training spectra are, for the model card's caveats")
    p.add_argument("--seed", type=int, default=0, help="batches, contexts, rehearsal draws, held-out validation")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder spectrafm wrote")
    p.add_argument("--no-progress", action="store_true")


# ----------------------------------------------------------------------------------------------
# Checks of the options (each raises one line naming the fix)
# ----------------------------------------------------------------------------------------------


def parse_labels(text: str, feature_extractor) -> dict[str, str]:
    """``"FE_H,TEFF=teff_col"`` → ``{"FE_H": "FE_H", "TEFF": "teff_col"}``; each a label of the model."""
    labels: dict[str, str] = {}
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        label, _, column = item.partition("=")
        label, column = label.strip(), (column.strip() or label.strip())
        if label not in feature_extractor.named_tokens:
            raise ValueError(f"--labels: the model has no label {label!r}; its labels are "
                             f"{', '.join(feature_extractor.named_tokens)}")
        labels[label] = column
    if not labels:
        raise ValueError("--labels is empty; name at least one label, e.g. --labels FE_H")
    return labels


def parse_freeze(text: str, model) -> tuple[bool, list[int]]:
    """``"decoder,encoder.1"`` → (freeze the decoder and head, encoder blocks to freeze)."""
    n_encoder = len(model.encoder)
    valid = ["decoder", "encoder", *(f"encoder.{k}" for k in range(n_encoder)), "none"]
    names = [part.strip() for part in str(text).split(",") if part.strip()]
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ValueError(f"--freeze: this model has no block {unknown[0]!r} ({n_encoder} encoder blocks); valid "
                         f"names: {', '.join(valid)}")
    if "none" in names:
        if len(names) > 1:
            raise ValueError("--freeze none cannot be combined with other blocks")
        return False, []
    blocks = list(range(n_encoder)) if "encoder" in names else sorted({int(n.split(".")[1]) for n in names
                                                                        if n.startswith("encoder.")})
    return "decoder" in names, blocks


def check_window(window, feature_extractor) -> tuple[float, float] | None:
    """``--window`` as (min, max) Å; it must overlap the model's trained wavelength range."""
    if window is None:
        return None
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"--window {lo:g} {hi:g}: give the shorter wavelength first, e.g. --window 16106 16220")
    trained = getattr(feature_extractor, "trained_wavelength_range", None)
    if trained is not None and (hi < trained[0] or lo > trained[1]):
        raise ValueError(f"--window {lo:g}–{hi:g} Å has no pixel in the model's trained range "
                         f"{trained[0]:.1f}–{trained[1]:.1f} Å; choose a window inside it")
    return lo, hi


def resolve_model(name: str) -> Path:
    """``--model`` as a local folder: the folder itself, or a Hub repo downloaded (or found in the cache)."""
    path = Path(name)
    if path.is_dir():
        return path
    from ..hub.cards import is_hub_id

    if not is_hub_id(name):
        raise FileNotFoundError(f"--model {name}: no such checkpoint folder (and not a Hub repo id owner/name)")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name))


def _split_for(path: str, given: str | None, default: str, option: str) -> str | None:
    """The split of a dataset folder to read: the one given, else ``default`` when the folder has it,
    else its only split; None for inputs that are not dataset folders with splits."""
    listing = Path(path) / "dataset_dict.json"
    if given is not None or not listing.is_file():
        return given
    splits = json.loads(listing.read_text()).get("splits", [])
    if default in splits:
        return default
    if len(splits) == 1:
        return splits[0]
    raise ValueError(f"{path} has splits {splits} and none is named {default!r}; choose one with "
                     f"--{option.replace('_', '-')}")


# ----------------------------------------------------------------------------------------------
# The plan: every input read and checked before training
# ----------------------------------------------------------------------------------------------


@dataclass
class FinetunePlan:
    """Everything a fine-tune needs, read and checked.

    Attributes:
        base: local folder of the starting checkpoint.
        spec: the stage recipe (``training.stages.StageSpec``).
        labels: model label → column in the inputs.
        train, validation, test, rehearsal: the stars (``WindowData``, the window's pixels); test and
            rehearsal may be None.
        settings: the options as recorded in ``finetune.json``.
    """

    base: Path
    spec: Any
    labels: dict[str, str]
    train: Any
    validation: Any
    test: Any = None
    rehearsal: Any = None
    settings: dict = field(default_factory=dict)


#: role → (option holding the path, option holding the split, the split read by default)
_ROLES = {"train": ("train", "train_split", "train"), "validation": ("validation", "validation_split", "validation"),
          "test": ("test", "test_split", "test"), "rehearsal": ("rehearsal_data", "rehearsal_split", "train")}


def _read(args, role: str, labels: dict[str, str], window, label_table):
    from ..data.labelled import read_labelled_stars

    path_option, split_option, default_split = _ROLES[role]
    path = getattr(args, path_option)
    split = _split_for(path, getattr(args, split_option), default_split, split_option)
    where = f"--{path_option.replace('_', '-')} {path}" + (f" (split {split})" if split else "")
    return read_labelled_stars(path, labels, window, split=split, label_table=label_table, where=where)


def _labelled_rows(data, labels) -> np.ndarray:
    """(N,) True for stars with at least one of ``labels`` known."""
    return np.any([np.isfinite(data.labels[name]) for name in labels], axis=0)


def _held_out(train, fraction: float, seed: int):
    """(train, validation): ``fraction`` of the stars (at least one) held out, drawn with ``seed``."""
    from ..data.arrays import subset

    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--validation-fraction must be in (0, 1), got {fraction}")
    n = len(train)
    n_val = max(1, int(round(fraction * n)))
    if n - n_val < 1:
        raise ValueError(f"--train holds {n} labelled star(s): too few to hold out validation stars; give "
                         "--validation")
    order = np.random.default_rng([seed, 17]).permutation(n)
    return subset(train, np.sort(order[n_val:])), subset(train, np.sort(order[:n_val]))


def _same_grid(data, reference, role: str) -> None:
    if data.wavelength.shape != reference.wavelength.shape or not np.allclose(data.wavelength, reference.wavelength,
                                                                                rtol=1e-9):
        raise ValueError(f"--{role}: its pixels in the window ({len(data.wavelength)}, {data.wavelength[0]:.2f}–"
                         f"{data.wavelength[-1]:.2f} Å) are not those of --train ({len(reference.wavelength)}, "
                         f"{reference.wavelength[0]:.2f}–{reference.wavelength[-1]:.2f} Å); give stars on one grid")


def _read_stars(args, labels: dict[str, str], window) -> dict[str, Any]:
    """train / validation / test / rehearsal stars, checked (labelled, one grid where the Trainer needs it)."""
    from ..data.arrays import subset
    from ..data.labelled import read_label_table

    table = read_label_table(args.label_table) if args.label_table else None
    train = _read(args, "train", labels, window, table)
    keep = _labelled_rows(train, labels)
    if not keep.any():
        raise ValueError(f"--train {args.train}: no star has a value of {', '.join(labels)} (all NaN)")
    if not keep.all():
        print(f"[finetune] {int((~keep).sum())} training star(s) without any of {list(labels)} left out", flush=True)
        train = subset(train, np.flatnonzero(keep))
    if args.validation:
        validation = _read(args, "validation", labels, window, table)
    else:
        train, validation = _held_out(train, args.validation_fraction, args.seed)
        print(f"[finetune] no --validation: {len(validation)} of the training stars held out for selection",
              flush=True)
    _same_grid(validation, train, "validation")
    if not _labelled_rows(validation, labels).any():
        raise ValueError(f"--validation: no star has a value of {', '.join(labels)}; selection needs labelled stars")
    test = _read(args, "test", labels, window, table) if args.test else None
    rehearsal = None
    if args.rehearsal:
        if not args.rehearsal_data:
            raise ValueError(f"--rehearsal {args.rehearsal} needs --rehearsal-data (e.g. the pipeline's synthetic "
                             "dataset folder)")
        rehearsal = _read(args, "rehearsal", {k: k for k in labels}, window, None)
        _same_grid(rehearsal, train, "rehearsal-data")
    return {"train": train, "validation": validation, "test": test, "rehearsal": rehearsal}


def _stage_spec(args, labels: list[str], model, freeze: tuple[bool, list[int]]):
    from .loop import LoopConfig
    from .stages import StageSpec

    loop = LoopConfig(max_steps=args.max_steps, learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
                      schedule=args.schedule, min_lr_ratio=args.min_lr_ratio, eval_every=args.eval_every,
                      checkpoint_every=args.eval_every, patience=args.patience or None,
                      log_every=min(10, args.eval_every), progress=not args.no_progress, seed=args.seed)
    # window "all": the stars arrive cut to --window already (recorded in finetune.json)
    return StageSpec(name="finetune", window="all", request=list(labels), batch_size=args.batch_size,
                     context_length=args.context_length or int(model.config.context_length), loop=loop,
                     freeze_decoder=freeze[0], freeze_encoder_blocks=freeze[1],
                     select_on=f"val_rmse_{labels[0]}" if len(labels) == 1 else "val_loss",
                     rehearsal=int(args.rehearsal), eval_batch_size=args.eval_batch_size)


def plan_finetune(args) -> FinetunePlan:
    """Read and check every input of ``args`` (raising one line naming the fix); nothing is trained or written."""
    from ..checkpoints import load_model
    from ..output_guard import check_output_folder
    from .trainer import scheduler_arguments

    inputs = [getattr(args, name) for name in ("model", "train", "validation", "test", "rehearsal_data",
                                               "label_table") if getattr(args, name)]
    check_output_folder(args.out, overwrite=args.overwrite, inputs=[p for p in inputs if Path(p).exists()])
    if args.rehearsal < 0:
        raise ValueError(f"--rehearsal must be ≥ 0, got {args.rehearsal}")
    base = resolve_model(args.model)
    model, feature_extractor = load_model(base, device="cpu")
    labels = parse_labels(",".join(args.labels), feature_extractor)  # FE_H TEFF = FE_H,TEFF
    freeze = parse_freeze(args.freeze, model)
    window = check_window(args.window, feature_extractor)
    spec = _stage_spec(args, list(labels), model, freeze)
    scheduler_arguments(spec.loop)
    stars = _read_stars(args, labels, window)
    settings = {name: (value if isinstance(value, (int, float, str, bool, type(None), list)) else str(value))
                for name, value in vars(args).items() if name not in ("debug",)}
    settings.update(window_A=[float(stars["train"].wavelength[0]), float(stars["train"].wavelength[-1])],
                    n_pixels=int(len(stars["train"].wavelength)), labels=labels, freeze_decoder=freeze[0],
                    freeze_encoder_blocks=freeze[1], select_on=spec.select_on,
                    context_length=spec.context_length, n_train=len(stars["train"]),
                    n_validation=len(stars["validation"]))
    return FinetunePlan(base=base, spec=spec, labels=labels, settings=settings, **stars)


# ----------------------------------------------------------------------------------------------
# Evaluation, card, command
# ----------------------------------------------------------------------------------------------


def _true_feh(data) -> np.ndarray:
    return data.labels.get("FE_H", np.full(len(data), np.nan))


def evaluate_finetuned(folder: Path, plan: FinetunePlan) -> dict:
    """The pipeline's evaluation of the checkpoint in ``folder`` on the validation (and test) stars:
    metrics.json's ``finetuned`` (cards' flat form, the test set when given), ``models``, ``validation``."""
    from ..checkpoints import load_model
    from ..training.report import card_entry
    from .evaluation import evaluate_label, flat_label_metrics
    from .stages import predict

    model, feature_extractor = load_model(folder, device="cpu")
    labels, batch = list(plan.labels), plan.spec.eval_batch_size
    validation = predict(model, feature_extractor, plan.validation, labels, batch)
    metrics: dict[str, Any] = {"schema_version": 1, "validation": {
        label: flat_label_metrics(*validation[label], plan.validation.labels[label], _true_feh(plan.validation))
        for label in labels}}
    scored, split = (plan.test, "test") if plan.test is not None else (plan.validation, "validation")
    predicted = validation if plan.test is None else predict(model, feature_extractor, plan.test, labels, batch)
    results = {label: evaluate_label(*predicted[label], scored.labels[label], _true_feh(scored), *validation[label],
                                     plan.validation.labels[label]) for label in labels}
    source = plan.settings["test"] if plan.test is not None else plan.settings["validation"] or "held-out stars"
    eval_info = {"dataset_name": f"{split} stars ({source})", "dataset_type": "spectrafm-finetune", "split": split,
                 "n_spectra": len(scored)}
    metrics["finetuned"] = card_entry(results, eval_info)
    metrics["models"] = {"finetuned": {"labels": results, "window_A": plan.settings["window_A"]}}
    metrics["test_set"] = {"n": len(scored), "description": f"{len(scored)} {split} stars from {source}, "
                           f"{plan.settings['window_A'][0]:.1f}–{plan.settings['window_A'][1]:.1f} Å"}
    return metrics


def _card(plan: FinetunePlan, metrics: dict, out: str):
    from ..data import grid
    from ..hub.cards import CardInfo, render_card, stage_metrics

    s = plan.settings
    frozen = ", ".join((["decoder and head"] if s["freeze_decoder"] else [])
                       + [f"encoder block {k}" for k in s["freeze_encoder_blocks"]]) or "nothing"
    rehearsal = (f"; every batch also carried {plan.spec.rehearsal} rehearsal stars of {s['rehearsal_data']}"
                 if plan.spec.rehearsal else "")
    training_data = (f"{s['n_train']} stars of {s['train']}, pixels {s['window_A'][0]:.1f}–{s['window_A'][1]:.1f} Å "
                     f"({s['n_pixels']} pixels), labels {', '.join(plan.labels)}{rehearsal}; frozen: {frozen}; "
                     f"selected on {plan.spec.select_on} of {s['n_validation']} validation stars")
    measured, eval_info = stage_metrics(metrics, "finetuned", model="finetuned")
    wavelength = plan.train.wavelength
    apogee = grid.apogee_wavelength()
    pixels = None
    start = int(np.searchsorted(apogee, wavelength[0] - 1e-6))
    if start + len(wavelength) <= apogee.size and np.allclose(apogee[start:start + len(wavelength)], wavelength):
        pixels = (start, start + len(wavelength))
    info = CardInfo(stage="finetuned", labels=list(plan.labels), training_data=training_data,
                    data_kind=s["data_kind"], wavelength_range_A=(float(wavelength[0]), float(wavelength[-1])),
                    n_pixels=len(wavelength), base_model=s["model"], metrics=measured or None,
                    eval_info=eval_info, pixels=pixels, context_length=plan.spec.context_length, local_path=out)
    return render_card(info)


def print_evaluation(metrics: dict, out=None) -> None:
    """A short table: validation and the scored set, per label and [Fe/H] subset (physical units);
    ``out`` defaults to the stdout of the moment (not of import time)."""
    out = sys.stdout if out is None else out
    rows = [("validation", label, values) for label, values in metrics["validation"].items()]
    for label, result in metrics["models"]["finetuned"]["labels"].items():
        for subset, stats in result["bins"].items():
            if stats["n"]:
                calibration = result["calibration"]["before"].get(subset, {})
                rows.append((f"{metrics['finetuned']['_eval']['split']} {subset}", label,
                             {**stats, "coverage_68": calibration.get("coverage_68", float("nan"))}))
    print(f"{'set':<24}{'label':<8}{'n':>6}{'rmse':>10}{'bias':>10}{'σ_MAD':>10}{'cov68':>8}", file=out)
    for name, label, values in rows:
        print(f"{name:<24}{label:<8}{int(values['n']):>6}{values['rmse']:>10.4f}{values['bias']:>10.4f}"
              f"{values['sigma_mad']:>10.4f}{values['coverage_68']:>8.3f}", file=out)


#: Below this many stars a set is named in a note: the paper's stage 3 trains on 100 stars, and an RMSE
#: over fewer than ~20 validation stars moves by more than the differences it is asked to select on.
FEW_STARS = 20


def few_star_notes(n_train: int, n_validation: int) -> list[str]:
    """One line per set smaller than :data:`FEW_STARS` (the command still runs: the user may know why)."""
    notes = []
    if n_train < FEW_STARS:
        notes.append(f"[finetune] note: {n_train} training star(s); the paper fine-tunes on 100, and with fewer "
                     f"than {FEW_STARS} expect a fine-tune that varies with --seed")
    if n_validation < FEW_STARS:
        notes.append(f"[finetune] note: model selection reads {n_validation} validation star(s); fewer than "
                     f"{FEW_STARS} make the best step a matter of chance: give --validation with more stars")
    return notes


def run_finetune(args) -> int:
    """``spectrafm finetune``: plan (every check), train through Trainer, evaluate, card; one folder."""
    from ..output_guard import staged_folder
    from ..training.report import write_metrics
    from .trainer import run_stage_with_trainer

    plan = plan_finetune(args)
    lo, hi = plan.settings["window_A"]
    print(f"[finetune] {len(plan.train)} training and {len(plan.validation)} validation stars, "
          f"{plan.settings['n_pixels']} pixels ({lo:.1f}–{hi:.1f} Å), labels {list(plan.labels)}, from {args.model}",
          flush=True)
    for note in few_star_notes(len(plan.train), len(plan.validation)):
        print(note, flush=True)
    with staged_folder(args.out, kind="checkpoint") as folder:
        result = run_stage_with_trainer(plan.spec, plan.train, plan.validation, folder, init=plan.base,
                                        rehearsal=plan.rehearsal, seed=args.seed)
        shutil.rmtree(folder / "trainer", ignore_errors=True)  # Trainer's intermediate checkpoints (optimiser states)
        metrics = evaluate_finetuned(folder, plan)
        metrics["training"] = {"best_step": result.best_step, "best_metric": result.best_metric,
                               "last_step": result.last_step}
        write_metrics(folder / "metrics.json", metrics)
        (folder / "finetune.json").write_text(json.dumps(plan.settings, indent=2) + "\n", encoding="utf-8")
        _card(plan, metrics, str(args.out)).save(folder / "README.md")
    print_evaluation(metrics)
    print(f"[finetune] checkpoint, card and metrics.json in {args.out} (best step {result.best_step})", flush=True)
    return 0
