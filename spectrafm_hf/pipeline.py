"""``spectrafm pipeline``: simulate (or reuse) data, train the three stages and the baselines, evaluate,
analyse attention and write the report — one command, one run folder.

Run folder layout (``--out``)::

    stage1/ stage2/ stage3/ [stage3_from_stage1/] scratch_transformer/   checkpoints (+ state/, metrics.jsonl)
    predictions.npz        test-set predictions of every model (FE_H; stage 2: all labels)
    metrics.json           see spectrafm_hf.training.report
    report.md + *.png      the report
    timings.json           wall seconds per step

Data (cached under ``data.cache_dir``, keyed by size and data seed, so several runs share them):

* synthetic: ``data.synthetic.n`` spectra, "wide" prior (more metal-poor stars than APOGEE), split
  train / validation.
* observed: ``data.observed.n`` spectra, APOGEE-like prior, split train / validation / test. Stage 2
  trains on train; stage 3 draws its 100 stars from the iron-rich ([Fe/H] > −1) part of train with the
  run seed; stage-3 and baseline selection use the iron-rich part of validation.
* test set: the observed test split (realistic [Fe/H] distribution, ~2.5 % below −1) PLUS an iron-poor
  supplement of ``data.test.n_iron_poor`` observed stars drawn from the same APOGEE prior restricted to
  [Fe/H] < −1, so that the iron-poor bins hold ≥ 300 stars. Per-bin metrics do not depend on this mix;
  the "all" bin does, and is reported for the mixed set.

The run ``seed`` (config or ``--seed``) sets the 100-star draw, initialisations and data order; the
simulated universes are fixed by ``data.seed`` so runs with different seeds are comparable.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .data import grid

FEH_RICH_MIN = -1.0


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def load_config(path: str | Path) -> dict:
    """Read a pipeline YAML; a missing file or section is a clear error."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pipeline config {path} not found; try training/configs/quickstart.yaml")
    config = yaml.safe_load(path.read_text()) or {}
    for section in ("data", "model", "stage1", "stage2", "stage3"):
        if section not in config:
            raise ValueError(f"{path}: missing section {section!r} (see training/configs/quickstart.yaml)")
    config["_path"] = str(path)
    return config


@dataclass
class Timer:
    """Wall seconds per named step, printed as they finish."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str):
        start = time.time()
        print(f"[pipeline] {name} ...", flush=True)
        try:
            yield
        finally:
            self.seconds[name] = time.time() - start
            print(f"[pipeline] {name} done in {self.seconds[name]:.1f} s", flush=True)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def _cached_dataset(cache_dir: Path, universe: str, n: int, seed: int, prior: str, splits: Mapping[str, float],
                    feh_below: float | None = None):
    """Build a simulated DatasetDict once; later runs (and other processes) load it from the cache.

    ``feh_below``: draw the stars from ``prior`` restricted to [Fe/H] < ``feh_below`` (the prior is
    sampled until ``n`` such stars are found, i.e. rejection sampling of the same distribution).
    """
    from datasets import load_from_disk

    from .data.prior import sample_labels
    from .data.schema import get_metadata
    from .data.simulated import build_simulated_dataset
    from .data.simulator import SIMULATOR_VERSION

    tag = f"-feh_below{feh_below:g}" if feh_below is not None else ""
    folder = cache_dir / f"{universe}-{prior}-n{n}-seed{seed}{tag}"
    if folder.exists():
        cached = load_from_disk(str(folder))
        version = get_metadata(cached).get("simulator_version")
        if version != SIMULATOR_VERSION:
            # a cache from another simulator version would silently mix data generations: rebuild it
            print(f"[pipeline] {folder} was simulated by simulator {version}, this is {SIMULATOR_VERSION}: rebuilding",
                  flush=True)
        elif not _same_split_assignment(cached, n, splits, seed):
            # e.g. built with other split fractions (not in the folder name), or by a version of
            # split_indices that depended on the order of the names
            print(f"[pipeline] {folder} holds other train/validation/test assignments than {dict(splits)}: rebuilding",
                  flush=True)
        else:
            return cached
    labels = None
    if feh_below is not None:
        pool = sample_labels(max(1000, 100 * n), seed=seed, prior=prior)
        keep = np.flatnonzero(np.asarray(pool["FE_H"]) < feh_below)
        if len(keep) < n:
            raise ValueError(f"the {prior!r} prior gave only {len(keep)} stars below [Fe/H] {feh_below}; lower n_iron_poor")
        labels = {k: np.asarray(v)[keep[:n]] for k, v in pool.items()}
    return build_simulated_dataset(folder, universe, n, seed, prior=prior, splits=dict(splits), labels=labels,
                                   progress=True, overwrite=True)


def _same_split_assignment(cached, n: int, splits: Mapping[str, float], seed: int) -> bool:
    """True when every split of ``cached`` holds exactly the star indices ``split_indices`` gives now."""
    from .data.schema import split_indices
    from .data.simulated import star_index

    expected = split_indices(n, dict(splits), seed)
    if set(cached) != set(expected):
        return False
    for name, index in expected.items():
        try:
            held = [star_index(i) for i in cached[name]["id"]]
        except ValueError:
            return False
        if held != index.tolist():
            return False
    return True


def prepare_data(config: Mapping, out_dir: Path) -> dict:
    """Simulate or load every dataset the pipeline needs; return the DatasetDicts by role."""
    data = config["data"]
    cache_dir = Path(data.get("cache_dir", out_dir / "data"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    seed = int(data.get("seed", 0))
    synthetic = _cached_dataset(cache_dir, "synthetic", int(data["synthetic"]["n"]), seed,
                                data["synthetic"].get("prior", "wide"), {"train": 0.9, "validation": 0.1})
    observed_cfg = data["observed"]
    observed = _cached_dataset(cache_dir, "observed", int(observed_cfg["n"]), seed + 1,
                               observed_cfg.get("prior", "apogee"),
                               observed_cfg.get("splits", {"train": 0.6, "validation": 0.2, "test": 0.2}))
    result = {"synthetic": synthetic, "observed": observed}
    n_poor = int(data.get("test", {}).get("n_iron_poor", 0))
    if n_poor:
        result["iron_poor"] = _cached_dataset(cache_dir, "observed", n_poor, seed + 2,
                                              observed_cfg.get("prior", "apogee"), {"test": 1.0}, feh_below=FEH_RICH_MIN)
    return result


def stage3_draw(feh: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` stars with finite [Fe/H] > −1, drawn with ``seed`` (sorted)."""
    candidates = np.flatnonzero(np.isfinite(feh) & (feh > FEH_RICH_MIN))
    if len(candidates) < n:
        raise ValueError(
            f"only {len(candidates)} iron-rich ([Fe/H] > −1) observed training stars for a {n}-star stage 3; "
            "raise data.observed.n"
        )
    return np.sort(np.random.default_rng([seed, 3]).choice(candidates, size=n, replace=False))


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------


def _card(stage: str, labels, training_data: str, window: slice, base_model: str | None = None):
    from .hub.cards import CardInfo

    wavelength = grid.apogee_wavelength()[window]
    return CardInfo(stage=stage, labels=list(labels), training_data=training_data, data_kind="simulated",
                    wavelength_range_A=(float(wavelength[0]), float(wavelength[-1])),
                    n_pixels=len(wavelength), base_model=base_model)


def _stage_spec(config: Mapping, name: str, defaults: Mapping):
    from .training.stages import StageSpec

    values = dict(defaults)
    values.update(config.get(name, {}) or {})
    return StageSpec.from_dict(name, values)


def run_pipeline(args, stop_after: str | None = None) -> int:
    """Entry point of ``spectrafm pipeline`` (args: config, out, seed, stage3_trainer).

    ``stop_after`` ("stage1", "stage2", "stage3"): train up to that stage and return (the thin
    ``training/stage<k>.py`` entry points for ``accelerate launch``); finished stages are reused.
    """
    from accelerate import PartialState

    from .data.schema import LABELS
    from .training import baselines as bl
    from .training import evaluation as ev
    from .training import report as rp
    from .training.stages import WINDOWS, concatenate, predict, run_stage, subset, window_data

    config = load_config(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed = int(args.seed if getattr(args, "seed", None) is not None else config.get("seed", 0))
    trainer_kind = getattr(args, "stage3_trainer", None) or config.get("stage3_trainer", "accelerate")
    if trainer_kind not in ("accelerate", "transformers"):
        raise ValueError(f"stage3_trainer must be 'accelerate' or 'transformers', got {trainer_kind!r}")
    if trainer_kind == "transformers" and int((config.get("stage3") or {}).get("rehearsal", 0) or 0):
        # Checked before any training: the Trainer path has no rehearsal batches (Accelerate loop only).
        raise ValueError("--stage3-trainer transformers does not support stage3.rehearsal > 0; set "
                         "stage3.rehearsal: 0 in the config (the paper's protocol) or use the Accelerate path")
    timer = Timer()
    threads = config.get("torch_threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))

    # ---- data ----------------------------------------------------------------------------
    if stop_after not in (None, "stage1", "stage2", "stage3"):
        raise ValueError(f"stop_after must be stage1, stage2 or stage3, got {stop_after!r}")
    with timer.step("data (simulate or load cache)"):
        # Under accelerate launch: simulate once, the other processes load the cache. (cpu= from the
        # launcher's env, or a CPU-only PartialState created here would ignore the process group.)
        from accelerate.utils import parse_flag_from_env

        with PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).main_process_first():
            datasets = prepare_data(config, out)
        fe_win, half, full = WINDOWS["fe_window"], WINDOWS["first_half"], WINDOWS["all"]
        synthetic_train = window_data(datasets["synthetic"]["train"], full)
        synthetic_val = window_data(datasets["synthetic"]["validation"], full)
        observed_train = window_data(datasets["observed"]["train"], full)
        observed_val = window_data(datasets["observed"]["validation"], full)
        test = window_data(datasets["observed"]["test"], full)
        if "iron_poor" in datasets:
            test = concatenate(test, window_data(datasets["iron_poor"]["test"], full))

        def cut(data, window):
            return bl.WindowData(data.flux[:, window], data.mask[:, window], data.flux_err[:, window],
                                 data.labels, data.label_errors, data.wavelength[window])

        s3 = config["stage3"]
        n_stage3 = int(s3.get("n_stars", 100))
        draw = stage3_draw(observed_train.labels["FE_H"], n_stage3, seed)
        stage3_train = cut(subset(observed_train, draw), fe_win)
        rich_val_index = np.flatnonzero(observed_val.labels["FE_H"] > FEH_RICH_MIN)[: int(s3.get("n_validation", 300))]
        stage3_val = cut(subset(observed_val, rich_val_index), fe_win)
        test_fe = cut(test, fe_win)
        true_feh = test.labels["FE_H"]
    n_poor = int(np.sum(true_feh < -1))
    test_description = (
        f"{len(test)} simulated observed stars: the observed test split ({len(datasets['observed']['test'])} stars, "
        f"APOGEE-like prior) plus {len(test) - len(datasets['observed']['test'])} stars of the same prior restricted to "
        f"[Fe/H] < −1. {n_poor} stars below −1, {int(np.sum(true_feh < -1.5))} below −1.5. Disjoint from all "
        f"training and validation stars. Stage-3 training: {n_stage3} stars with [Fe/H] > −1 drawn with seed {seed}; "
        f"selection on {len(stage3_val)} iron-rich validation stars."
    )
    print(f"[pipeline] {test_description}", flush=True)

    model_config = dict(config["model"])
    common = {"eval_batch_size": int(config.get("eval_batch_size", 64))}
    results = {}

    # ---- stages ---------------------------------------------------------------------------
    stage_cards: dict[str, Any] = {}  # stage folder → CardInfo, re-rendered with metrics at the end
    spec1 = _stage_spec(config, "stage1", {"window": "all", "request": "random", **common})
    with timer.step("stage 1 (synthetic pre-training)"):
        results["stage1"] = run_stage(
            spec1, synthetic_train, subset(synthetic_val, np.arange(min(len(synthetic_val), 256))), out / "stage1",
            model_config=model_config, seed=seed,
            card=stage_cards.setdefault("stage1", _card(
                "stage1", LABELS, f"{len(synthetic_train)} simulated synthetic spectra (wide prior), all 7514 "
                "pixels, all five labels", full)),
        )
    if stop_after == "stage1":
        return 0
    spec2 = _stage_spec(config, "stage2", {"window": "first_half", "request": "random", **common})
    with timer.step("stage 2 (observed, first half)"):
        results["stage2"] = run_stage(
            spec2, cut(observed_train, half), cut(subset(observed_val, np.arange(min(len(observed_val), 256))), half),
            out / "stage2", init=out / "stage1", seed=seed,
            card=stage_cards.setdefault("stage2", _card(
                "stage2", LABELS, f"{len(observed_train)} simulated observed spectra (APOGEE-like prior), "
                "pixels 0–3756, all five labels; initialised from stage 1", half, base_model=str(out / "stage1"))),
        )
    if stop_after == "stage2":
        return 0
    rehearsal_data = cut(synthetic_train, fe_win) if int(s3.get("rehearsal", 0)) else None
    stage3_defaults = {"window": "fe_window", "request": ["FE_H"], "freeze_decoder": True,
                       "freeze_encoder_blocks": [1], "select_on": "val_rmse_FE_H", **common}
    spec3_cfg = {k: v for k, v in s3.items() if k not in ("n_stars", "n_validation", "from_stage1")}
    spec3 = _stage_spec({"stage3": spec3_cfg}, "stage3", stage3_defaults)
    stage3_card = _card("stage3", ["FE_H"], f"{n_stage3} simulated observed stars with [Fe/H] > −1, pixels 4107–4618, "
                        "FE_H only; decoder and encoder block 2 frozen; initialised from stage 2", fe_win,
                        base_model=str(out / "stage2"))
    stage_cards["stage3"] = stage3_card
    with timer.step(f"stage 3 ([Fe/H] window, {trainer_kind})"):
        if trainer_kind == "accelerate":
            results["stage3"] = run_stage(spec3, stage3_train, stage3_val, out / "stage3", init=out / "stage2",
                                          rehearsal=rehearsal_data, seed=seed, card=stage3_card)
        else:
            from .training.trainer import run_stage_with_trainer

            results["stage3"] = run_stage_with_trainer(spec3, stage3_train, stage3_val, out / "stage3",
                                                       init=out / "stage2", seed=seed, card=stage3_card)
    if stop_after == "stage3":
        return 0
    if s3.get("from_stage1"):
        with timer.step("stage 3 from stage 1 (no stage 2)"):
            results["stage3_from_stage1"] = run_stage(
                spec3, stage3_train, stage3_val, out / "stage3_from_stage1", init=out / "stage1",
                rehearsal=rehearsal_data, seed=seed,
                card=_card("stage3", ["FE_H"], f"{n_stage3} iron-rich stars, Fe window; from stage 1", fe_win,
                           base_model=str(out / "stage1")))

    # ---- baselines ------------------------------------------------------------------------
    base_cfg = config.get("baselines", {}) or {}
    fitted = {}
    if base_cfg.get("scratch_transformer", {}) is not None:
        st_cfg = dict(base_cfg.get("scratch_transformer", {}) or {})
        spec_st = _stage_spec({"scratch_transformer": {**spec3_cfg, **st_cfg, "freeze_decoder": False,
                                                       "freeze_encoder_blocks": [], "rehearsal": 0}},
                              "scratch_transformer", stage3_defaults)
        with timer.step("baseline: same transformer from scratch"):
            results["scratch_transformer"] = run_stage(spec_st, stage3_train, stage3_val, out / "scratch_transformer",
                                                       model_config=model_config, seed=seed)
    if base_cfg.get("mlp", {}) is not None:
        with timer.step("baseline: scratch MLP"):
            mlp_cfg = dict(base_cfg.get("mlp", {}) or {})
            fitted["scratch_mlp"] = bl.fit_scratch_mlp(stage3_train, stage3_val, seed=seed, **mlp_cfg)
    if base_cfg.get("ridge", {}) is not None:
        with timer.step("baseline: ridge"):
            fitted["ridge"] = bl.fit_ridge(stage3_train, stage3_val, **(base_cfg.get("ridge", {}) or {}))
    if base_cfg.get("cannon", {}) is not None:
        with timer.step("baseline: The Cannon"):
            cannon_cfg = dict(base_cfg.get("cannon", {}) or {})
            fitted["cannon"] = bl.fit_cannon(stage3_train, label_names=tuple(cannon_cfg.get("labels", ("TEFF", "LOGG", "FE_H"))))

    # ---- evaluation -----------------------------------------------------------------------
    predictions: dict[str, dict[str, np.ndarray]] = {}
    validation_predictions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    models_meta: dict[str, dict[str, Any]] = {}
    with timer.step("evaluation"):
        from .training.stages import load_model

        batch = int(config.get("eval_batch_size", 64))
        transformer_models = {name: out / name for name in ("stage3", "stage3_from_stage1", "scratch_transformer") if name in results}
        # zero-shot: stage 2 (and stage 1) applied to the Fe window without the 100-star fine-tune
        transformer_models["stage2_zero_shot"] = out / "stage2"
        transformer_models["stage1_zero_shot"] = out / "stage1"
        for name, folder in transformer_models.items():
            model, fe = load_model(folder)
            mean, sigma = predict(model, fe, test_fe, ("FE_H",), batch)["FE_H"]
            predictions[name] = {"true": true_feh, "pred": mean, "sigma": sigma}
            validation_predictions[name] = predict(model, fe, stage3_val, ("FE_H",), batch)["FE_H"]
        for name, model in fitted.items():
            predictions[name] = dict(zip(("pred", "sigma"), model.predict(test_fe)), true=true_feh)
            validation_predictions[name] = model.predict(stage3_val)
        val_true = stage3_val.labels["FE_H"]
        for name, p in predictions.items():
            vm, vs = validation_predictions[name]
            models_meta[name] = {
                "pixels": [fe_win.start, fe_win.stop - 1],
                "labels": {"FE_H": ev.evaluate_label(p["pred"], p["sigma"], true_feh, true_feh, vm, vs, val_true)},
            }
        # stage 2 on its own pixels, all five labels (variance scale fitted on its validation stars)
        model, fe = load_model(out / "stage2")
        test_half = cut(test, half)
        # The 3757-pixel half in one context costs O(P²) per star: chunk it (config stage2_eval_context).
        context = config.get("stage2_eval_context", 512)
        stage2_test = predict(model, fe, test_half, LABELS, batch, context=context)
        val_half = cut(subset(observed_val, np.arange(min(len(observed_val), 500))), half)
        stage2_val = predict(model, fe, val_half, LABELS, batch, context=context)
        models_meta["stage2"] = {"pixels": [half.start, half.stop - 1], "labels": {
            label: ev.evaluate_label(stage2_test[label][0], stage2_test[label][1], test.labels[label], true_feh,
                                     stage2_val[label][0], stage2_val[label][1], val_half.labels[label])
            for label in LABELS}}
        for label in LABELS:
            predictions.setdefault("stage2_all_labels", {})[label] = stage2_test[label][0]
    descriptions = {
        "stage3": "synthetic → observed (first half) → 100 iron-rich stars, Fe window (the paper's protocol)",
        "stage3_from_stage1": "synthetic → 100 iron-rich stars (no stage 2)",
        "stage2_zero_shot": "stage 2 applied to the Fe window, no stage-3 fine-tune",
        "stage1_zero_shot": "stage 1 (synthetic only) applied to observed Fe-window spectra",
        "scratch_transformer": "the same transformer, random init, trained on the 100 stars",
        "scratch_mlp": f"MLP {fitted['scratch_mlp'].model.widths} (NaN → 1, Adam, Gaussian NLL) on the 100 stars"
        if "scratch_mlp" in fitted else "",
        "ridge": "ridge regression on the 100 stars (alpha chosen on iron-rich validation)",
        "cannon": "The Cannon (TheCannon 0.7.3), quadratic in the labels "
                  f"{list(fitted['cannon'].label_names) if 'cannon' in fitted else []}, trained on the 100 stars",
        "stage2": "stage 2 on its own pixels (0–3756), all five labels",
    }
    for name, meta in models_meta.items():
        meta["description"] = descriptions.get(name, name)

    # ---- attention ------------------------------------------------------------------------
    # Two analyses: the stage-3 model in the Fe window (the [Fe/H] query, the paper's claim), and
    # the stage-2 model over its whole first half, the only place with Mg I and OH lines, for the
    # [Mg/Fe] and [O/Fe] queries (config attention.first_half; null to skip).
    attention_result, attention_half = None, None
    att_cfg = config.get("attention", {}) or {}
    if att_cfg is not None and att_cfg.get("enabled", True):
        with timer.step("attention analysis"):
            from .training.attention import analyse_model

            def attention_analysis(model_name, window, window_name, analysis_cfg, default_queries):
                n_att = int(analysis_cfg.get("n_stars", 200))
                result = analyse_model(out / model_name, cut(subset(test, np.arange(min(n_att, len(test)))), window),
                                       analysis_cfg.get("queries", default_queries),
                                       batch_size=int(analysis_cfg.get("batch_size", 16)),
                                       core_half_width_A=float(att_cfg.get("core_half_width_A", 0.4)))
                result["window"] = window_name
                return result

            attention_result = attention_analysis(att_cfg.get("model", "stage3"), fe_win, "fe_window", att_cfg,
                                                  ("FE_H",))
            half_cfg = att_cfg.get("first_half", {})
            if half_cfg is not None:
                attention_half = attention_analysis(half_cfg.get("model", "stage2"), half, "first_half",
                                                    {"n_stars": 48, "batch_size": 4, **half_cfg},
                                                    ("FE_H", "MG_FE", "O_FE"))

    # ---- report ---------------------------------------------------------------------------
    with timer.step("report"):
        metrics = build_metrics(config, seed, trainer_kind, models_meta, test_description, len(test), n_poor,
                                attention_result, results, timer.seconds, attention_half)
        np.savez(out / "predictions.npz", **{f"{m}__{k}": v for m, p in predictions.items() for k, v in p.items()})
        figures = {
            "pred_vs_true": rp.plot_predicted_vs_true({k: v for k, v in predictions.items() if "true" in v}, out / "pred_vs_true_feh.png"),
            "residuals": rp.plot_residuals({k: v for k, v in predictions.items() if "true" in v}, out / "residuals_feh.png"),
            "calibration": rp.plot_calibration(
                {k: v for k, v in predictions.items() if k in ("stage3", "scratch_mlp", "scratch_transformer", "cannon")},
                {k: m["labels"]["FE_H"]["calibration"]["scale"] for k, m in models_meta.items() if "FE_H" in m["labels"] and k != "stage2"},
                out / "calibration_feh.png"),
            "training_curves": rp.plot_training_curves({k: out / k for k in results}, out / "training_curves.png"),
            "attention": rp.plot_attention(attention_result, out / "attention.png") if attention_result else None,
            "attention_first_half": rp.plot_attention(attention_half, out / "attention_first_half.png")
            if attention_half else None,
        }
        metrics["timings_s"] = dict(timer.seconds)
        rp.write_metrics(out / "metrics.json", metrics)
        rp.write_report(out, metrics, figures)
    metrics["timings_s"] = dict(timer.seconds)
    rp.write_metrics(out / "metrics.json", metrics)
    rp.write_report(out, metrics, figures)
    (out / "timings.json").write_text(json.dumps(timer.seconds, indent=2))
    _render_cards_with_metrics(out, stage_cards, metrics)
    print(f"[pipeline] report: {out / 'report.md'}; total {sum(timer.seconds.values()):.0f} s", flush=True)
    return 0


def run_stage_entry_point(stage: str, description: str, argv: list[str] | None = None) -> int:
    """``training/<stage>.py``: the pipeline's arguments, run up to ``stage`` (for ``accelerate launch``)."""
    import argparse

    from .cli import add_command_arguments

    parser = argparse.ArgumentParser(description=description)
    add_command_arguments("pipeline", parser)
    return run_pipeline(parser.parse_args(argv), stop_after=stage)


def _render_cards_with_metrics(out: Path, stage_cards: Mapping[str, Any], metrics: Mapping) -> None:
    """Re-write each stage folder's README.md now that the test metrics exist (model-index included).

    Cards are first written when a stage is saved, before anything is measured; this second
    rendering adds exactly the numbers in ``metrics.json`` and nothing else.
    """
    from dataclasses import replace

    from .hub.cards import render_card, stage_metrics

    for folder, card in stage_cards.items():
        if (out / folder).is_dir():
            measured, eval_info = stage_metrics(metrics, folder)
            render_card(replace(card, metrics=measured or None, eval_info=eval_info)).save(out / folder / "README.md")


def acceptance_checks(models: Mapping, attention: Mapping | None = None) -> dict:
    """Issue 5's acceptance numbers, computed from the test metrics (no thresholds are tuned here)."""
    def bins(name):
        return models[name]["labels"]["FE_H"]["bins"]

    checks = {}
    if "stage3" in models and "scratch_mlp" in models:
        s3, mlp = bins("stage3"), bins("scratch_mlp")
        ratio = s3["feh_lt_-1"]["rmse"] / mlp["feh_lt_-1"]["rmse"]
        checks["iron-poor RMSE stage3 / scratch MLP"] = {"value": ratio, "target": "≤ 0.5", "pass": bool(ratio <= 0.5)}
        bias_ratio = abs(s3["feh_lt_-1"]["bias"]) / abs(mlp["feh_lt_-1"]["bias"])
        checks["iron-poor |bias| stage3 / scratch MLP"] = {"value": bias_ratio, "target": "≤ 0.5", "pass": bool(bias_ratio <= 0.5)}
        baselines = [n for n in ("scratch_mlp", "scratch_transformer", "ridge", "cannon") if n in models]
        best = min(bins(n)["feh_ge_-1"]["rmse"] for n in baselines)
        rich_ratio = s3["feh_ge_-1"]["rmse"] / best
        checks["iron-rich RMSE stage3 / best baseline"] = {"value": rich_ratio, "target": "≤ 1.3", "pass": bool(rich_ratio <= 1.3)}
    if "stage3" in models:
        cal = models["stage3"]["labels"]["FE_H"]["calibration"].get("after", {}).get("all", {})
        coverage = cal.get("coverage_68", float("nan"))
        checks["stage3 68 % coverage after calibration"] = {"value": coverage, "target": "0.60–0.76",
                                                            "pass": bool(0.60 <= coverage <= 0.76)}
    fe_profile = (attention or {}).get("profiles", {}).get("FE_H")
    if fe_profile:
        value, control = fe_profile.get("enrichment", float("nan")), fe_profile.get("enrichment_control", float("nan"))
        checks["FE_H attention enrichment on Fe lines"] = {"value": value, "target": "> 1.5", "pass": bool(value > 1.5)}
        checks["FE_H enrichment above its shuffled control"] = {
            "value": value - control, "target": "> 0 (enrichment − control)", "pass": bool(value > control)}
    return checks


def build_metrics(config, seed, trainer_kind, models, test_description, n_test, n_poor, attention, results, timings,
                  attention_first_half=None) -> dict:
    """Assemble metrics.json (layout in :mod:`spectrafm_hf.training.report`)."""
    from .training.report import card_entry

    eval_info = {"dataset_name": "simulated observed test set", "dataset_type": "spectrafm-sim-observed",
                 "split": "test", "n_spectra": int(n_test)}
    metrics: dict[str, Any] = {"schema_version": 1}
    if "stage3" in models:
        metrics["stage3"] = card_entry(models["stage3"]["labels"], eval_info)
    if "stage2" in models:
        metrics["stage2"] = card_entry(models["stage2"]["labels"], eval_info)
    if "stage1_zero_shot" in models:
        metrics["stage1"] = card_entry(models["stage1_zero_shot"]["labels"],
                                       {**eval_info, "dataset_name": "simulated observed test set, Fe window, zero-shot"})
    metrics["models"] = models
    metrics["test_set"] = {"n": int(n_test), "n_feh_lt_-1": int(n_poor), "description": test_description}
    if attention:
        metrics["attention"] = attention
    if attention_first_half:
        metrics["attention_first_half"] = attention_first_half
    metrics["acceptance"] = acceptance_checks(models, attention)
    metrics["training"] = {name: {"best_step": r.best_step, "best_metric": r.best_metric, "last_step": r.last_step,
                                  "resumed_from": r.resumed_from, "skipped": r.skipped} for name, r in results.items()}
    metrics["run"] = {"config": config.get("_path"), "seed": seed, "stage3_trainer": trainer_kind,
                      "model": config.get("model")}
    metrics["timings_s"] = dict(timings)
    return metrics
