"""The three SpectraFM stages (and the scratch transformer baseline) as data + one function, ``run_stage``.

The stages are those of the paper (Koblischke & Bovy 2024, "SpectraFM: Tuning into Stellar Foundation
Models", arXiv:2411.04750):

=========  ==========================  =====================  ==========  ===============================
stage      data                        pixels                 labels      trainable / selection
=========  ==========================  =====================  ==========  ===============================
stage1     synthetic spectra           all 7514               all five    everything / synthetic val NLL
stage2     observed spectra            0–3756 (FIRST_HALF)    all five    everything / observed val NLL
stage3     100 observed, [Fe/H] > −1   4107–4618 (FE_WINDOW)  FE_H        embedding + encoder block 1
                                                                          (decoder + encoder block 2
                                                                          frozen) / iron-rich val RMSE
scratch    the same 100 stars          4107–4618              FE_H        everything, random init / same
=========  ==========================  =====================  ==========  ===============================

Every training star gets its own random context (a random subset of its valid pixels of size
``context_length``) and, with ``request="random"``, one random label among those it has (with
``request="all"``: all of them), at every step
(:class:`~spectrafm_hf.data.collator.SpectraFMCollator` draws both, seeded by ``seed, step, rank`` so
resumed and multi-process runs draw the same batches as an uninterrupted single run would).

Model selection never looks at the iron-poor regime: stage 3 and the baselines are selected on the
RMSE of iron-rich validation stars. Optional *rehearsal* (not in the paper, whose stage 3 sees only
the 100 stars; ``rehearsal: 0`` is its protocol): each stage-3 batch also carries ``rehearsal`` synthetic
stars (all metallicities, same window, FE_H) so the fine-tune cannot drift away from what pre-training learnt.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..checkpoints import load_model, save_checkpoint
from ..data import grid
from ..data.arrays import WindowData, subset
from ..data.augmentation import ObservedLikeAugmentation
from ..data.collator import AUGMENT_STREAM, SpectraFMCollator
from ..data.labels import LABELS
from .loop import LoopConfig, LoopResult, train

#: pixel windows by name (Python slices of the 7514-pixel grid)
WINDOWS: dict[str, slice] = {
    "all": slice(0, grid.APOGEE_NPIX),
    "first_half": grid.FIRST_HALF,
    "fe_window": grid.FE_WINDOW,
}

COMPLETE_MARKER = "stage_complete.json"
#: What a stage was trained from (settings, seed, starting weights, data hashes), written before training.
STAGE_CONFIG = "stage_config.json"


@dataclass
class StageSpec:
    """One stage's recipe.

    Attributes:
        name: "stage1", "stage2", "stage3", "stage3_from_stage1", "scratch_transformer", ...
        window: key of :data:`WINDOWS` (the pixels the stage sees).
        request: "random" (one random available label per star and step, the paper's), "all" (every
            label at every step; a star's missing labels are masked out of the loss) or a list of labels.
        batch_size: stars per optimiser step per process.
        context_length: pixels per star per step (random subset of its valid pixels).
        loop: optimiser / schedule / checkpointing (:class:`LoopConfig`).
        freeze_decoder: freeze decoder blocks and the output head (paper stage 3).
        freeze_encoder_blocks: 0-based encoder blocks to freeze (paper stage 3: ``[1]``, the second).
        select_on: "val_loss" (NLL on validation batches) or "val_rmse_<LABEL>" (RMSE with all
            window pixels, on the validation stars given; for stage 3 only iron-rich ones).
        rehearsal: synthetic stars added to every batch (0 = off).
        eval_batch_size: stars per forward pass in evaluation.
        narrow_window_fraction: fraction of the stars of each batch whose context is drawn from one
            random contiguous run of ``narrow_window_pixels`` pixels instead of the whole window
            (0 = off, the paper's sampling). A model that only ever saw contexts spread over the
            whole spectrum has never read a 110 Å window alone, which is what stage 3 and its
            zero-shot evaluation ask of it; the runs are random, not the Fe window, so nothing about
            the evaluation window leaks into pre-training.
        narrow_window_pixels: width of those runs, in pixels.
        augment: settings of :class:`~spectrafm_hf.data.augmentation.ObservedLikeAugmentation` (a
            mapping; ``true`` = its defaults; None = off): training stars get fresh observed-like
            imperfections at every step, and validation stars one fixed draw of them (so the best
            step is chosen on spectra like those the stage will read, not on clean ones).
    """

    name: str
    window: str
    request: str | list[str]
    batch_size: int
    context_length: int
    loop: LoopConfig
    freeze_decoder: bool = False
    freeze_encoder_blocks: list[int] = field(default_factory=list)
    select_on: str = "val_loss"
    rehearsal: int = 0
    eval_batch_size: int = 64
    narrow_window_fraction: float = 0.0
    narrow_window_pixels: int = 512
    augment: dict | None = None

    def __post_init__(self):
        augmentation = ObservedLikeAugmentation.from_dict(self.augment)
        self.augment = None if augmentation is None else augmentation.to_dict()  # one spelling in provenance
        if self.window not in WINDOWS:
            raise ValueError(f"unknown window {self.window!r}; choose one of {sorted(WINDOWS)}")
        if isinstance(self.request, str) and self.request not in ("random", "all"):
            raise ValueError(f"request must be 'random', 'all' or a list of labels, got {self.request!r}")
        if not isinstance(self.request, str):
            unknown = [r for r in self.request if r not in LABELS]
            if unknown:
                raise ValueError(f"unknown label(s) {unknown} in request; labels are {LABELS}")
        if not (self.select_on == "val_loss" or self.select_on.startswith("val_rmse_")):
            raise ValueError(f"select_on must be 'val_loss' or 'val_rmse_<LABEL>', got {self.select_on!r}")
        if not 0.0 <= self.narrow_window_fraction <= 1.0:
            raise ValueError(f"narrow_window_fraction must be in [0, 1], got {self.narrow_window_fraction}")
        if self.narrow_window_pixels < 1:
            raise ValueError(f"narrow_window_pixels must be ≥ 1, got {self.narrow_window_pixels}")
        if self.batch_size < 1 or self.context_length < 1:
            raise ValueError(f"batch_size and context_length must be ≥ 1, got {self.batch_size}, {self.context_length}")

    @classmethod
    def from_dict(cls, name: str, values: Mapping) -> "StageSpec":
        """Build from a YAML mapping: stage keys plus a ``loop`` sub-mapping (or loop keys inline)."""
        values = dict(values)
        own = {k: values.pop(k) for k in list(values) if k in cls.__dataclass_fields__ and k != "loop"}
        loop_values = dict(values.pop("loop", {}))
        loop_values.update(values)  # remaining keys are loop options (unknown ones raise there)
        return cls(name=name, loop=LoopConfig.from_dict(loop_values), **own)

    @property
    def pixels(self) -> slice:
        return WINDOWS[self.window]

    @property
    def augmentation(self) -> ObservedLikeAugmentation | None:
        return ObservedLikeAugmentation.from_dict(self.augment)


@dataclass
class StageResult:
    """Where a stage's checkpoint is and how training went."""

    name: str
    model_dir: Path
    best_step: int | None
    best_metric: float | None
    last_step: int
    resumed_from: int
    seconds: float
    skipped: bool = False


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def stage_collator(spec: StageSpec, feature_extractor, wavelength: np.ndarray, seed: int = 0,
                   training: bool = False) -> SpectraFMCollator:
    """The batcher of ``spec``: its request (the five labels in :data:`LABELS` order for "random" /
    "all"), context length and narrow windows, on the pixel grid ``wavelength`` (P,) of the stage's data.
    ``seed`` only matters for batches of dataset rows drawn without a batch seed (the Trainer path).
    ``training``: the batcher of the training stars, which carry the stage's augmentation (if any);
    validation batches do not (their stars are perturbed once, by :func:`augmented_validation`)."""
    return SpectraFMCollator(
        feature_extractor, wavelength, request=spec.request, context_length=spec.context_length, seed=seed,
        label_names=LABELS, narrow_window_fraction=spec.narrow_window_fraction,
        narrow_window_pixels=spec.narrow_window_pixels, augmentation=spec.augmentation if training else None,
    )


def step_seed(seed: int, step: int, rank: int) -> int:
    """The batch seed of process ``rank`` at step ``step`` (contexts, random labels, narrow windows)."""
    return int(seed) * 1_000_003 + step * 1009 + rank


def batch_sampler(data: WindowData, spec: StageSpec, feature_extractor, seed: int, rehearsal: WindowData | None = None):
    """``make_batch(step, rank, world)`` for :func:`~spectrafm_hf.training.loop.train`.

    Stars of step ``step`` are drawn from ``default_rng([seed, step])`` for all ranks at once and
    split between them, so the union over processes is the same whatever the process count, and
    any step can be regenerated on resume. The :func:`stage_collator` tokenizes them (with
    ``spec.rehearsal`` stars of ``rehearsal`` appended), seeded by :func:`step_seed` (seed, step, rank).
    With ``spec.augment``, the collator gives the drawn stars (not the rehearsal ones) observed-like
    imperfections drawn from the same batch seed, so a resumed run replays them too; ``data`` stays clean.
    """
    n = len(data)
    if n == 0:
        raise ValueError(f"{spec.name}: the training set is empty")
    collator = stage_collator(spec, feature_extractor, data.wavelength, training=True)

    def make_batch(step: int, rank: int, world: int):
        rng = np.random.default_rng([seed, step])
        total = spec.batch_size * world
        index = rng.choice(n, size=total, replace=total > n)[rank * spec.batch_size:(rank + 1) * spec.batch_size]
        extra = None
        if rehearsal is not None and spec.rehearsal > 0:
            k = spec.rehearsal * world
            extra_index = rng.choice(len(rehearsal), size=k, replace=k > len(rehearsal))
            extra = (rehearsal, extra_index[rank * spec.rehearsal:(rank + 1) * spec.rehearsal])
        return collator.select(data, index, seed=step_seed(seed, step, rank), rehearsal=extra)

    return make_batch


def augmented_validation(validation: WindowData, spec: StageSpec, seed: int) -> WindowData:
    """``validation`` with one fixed draw of the stage's augmentation (itself when the stage has none)."""
    augmentation = spec.augmentation
    if augmentation is None or len(validation) == 0:
        return validation
    stars = subset(validation, np.arange(len(validation)))
    stars.flux = augmentation.apply(stars.flux, stars.mask, validation.wavelength,
                                    np.random.default_rng([int(seed), AUGMENT_STREAM, 1]))
    return stars


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def new_model(model_config: Mapping, train: WindowData, feature_extractor=None):
    """A randomly initialised SpectraFM model + a feature extractor fitted on ``train``.

    ``model_config`` are :class:`~spectrafm_hf.SpectraFMConfig` keyword arguments. The label
    statistics (median / MAD-std) come from the feature extractor's fit on the training labels.
    """
    from .. import SpectraFMConfig, SpectraFMFeatureExtractor, SpectraFMModel

    if feature_extractor is None:
        feature_extractor = fit_feature_extractor(SpectraFMFeatureExtractor(), train)
    config = SpectraFMConfig(**dict(model_config))
    sync_label_statistics(config, feature_extractor)
    return SpectraFMModel(config), feature_extractor


def fit_feature_extractor(feature_extractor, data: WindowData):
    """Fit flux and label standardisation on ``data`` (flux: one global median and 0.01 %-trimmed std
    of the valid pixels; labels: median / MAD-std each — see ``SpectraFMFeatureExtractor.fit``)."""
    feature_extractor.fit(
        wavelength=data.wavelength, flux=data.flux, mask=data.mask,
        labels={k: v for k, v in data.labels.items()},
    )
    return feature_extractor


def sync_label_statistics(config, feature_extractor) -> None:
    """Copy the feature extractor's label statistics into the config (the model card reads them)."""
    stats = getattr(feature_extractor, "named_token_statistics", None)
    if stats:
        config.named_token_statistics = {k: [float(v[0]), float(v[1])] for k, v in stats.items()
                                         if k in config.named_tokens}


def record_training_context(model, feature_extractor, spec: StageSpec) -> None:
    """Record the stage's context length (pixels per star per step) in both saved configs.

    The batches use ``spec.context_length`` directly (:func:`stage_collator`); without this the
    checkpoint's ``config.json`` kept the model section's value and ``preprocessor_config.json`` the
    feature extractor's default (512), so a quickstart checkpoint said 128 in one file and 512 in the
    other. Metadata only: neither value changes a forward pass or a batch.
    """
    model.config.context_length = int(spec.context_length)
    feature_extractor.context_length = int(spec.context_length)


def record_training_window(feature_extractor, data: WindowData) -> None:
    """Set ``feature_extractor.training_window_A`` to [min, max] Å of ``data``'s wavelengths: the window
    this stage trains on, which inference reads by default (a fine-tuned model reads every pixel it is
    given). Metadata only: nothing in training or evaluation reads it."""
    if data.wavelength is not None:
        wavelength = np.asarray(data.wavelength, np.float64)
        feature_extractor.training_window_A = [float(wavelength.min()), float(wavelength.max())]


def save_stage_checkpoint(model, feature_extractor, out_dir: str | Path, card=None) -> Path:
    """:func:`~spectrafm_hf.checkpoints.save_checkpoint`, with a ``hub.cards.CardInfo`` card rendered first.

    The stages receive cards as ``CardInfo`` (the pipeline fills them in); the checkpoint writer sits
    below the Hub layer and takes only rendered cards, so the rendering happens here.
    """
    from ..hub.cards import CardInfo, render_card

    if isinstance(card, CardInfo):
        card = render_card(card)
    return save_checkpoint(model, feature_extractor, out_dir, card=card)


def predict(model, feature_extractor, data: WindowData, labels: Sequence[str] = ("FE_H",), batch_size: int = 64,
            context: str | int = "all", progress: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Physical-unit (mean, 1σ), each (N,), per label for every star of ``data``.

    ``context="all"``: every valid pixel of the window in one context (exact; cost grows as the
    square of the pixel count); an int: disjoint chunks of that many pixels combined by precision
    weighting (:func:`spectrafm_hf.predict.predict_labels`).
    """
    from ..predict import predict_labels

    # pixels="all": ``data`` is already cut to the window wanted (the zero-shot rows read a window the
    # model was not last trained on)
    result = predict_labels(model, feature_extractor, data.wavelength, data.flux, mask=data.mask,
                            request=list(labels), batch_size=batch_size, context=context, progress=progress,
                            pixels="all")
    return {label: (np.asarray(result[label][0], np.float64), np.asarray(result[label][1], np.float64))
            for label in labels}


# ----------------------------------------------------------------------------------------------
# One stage
# ----------------------------------------------------------------------------------------------


def _evaluator(spec: StageSpec, validation: WindowData, feature_extractor, seed: int):
    """``model → {"val_loss": ..., "val_rmse_<L>": ...}`` on fixed validation batches / stars (perturbed
    once by the stage's augmentation, if it has one)."""
    validation = augmented_validation(validation, spec, seed)
    if spec.select_on.startswith("val_rmse_"):
        label = spec.select_on[len("val_rmse_"):]
        truth = validation.labels[label]

        def evaluate(model):
            mean, _ = predict(model, feature_extractor, validation, (label,), spec.eval_batch_size)[label]
            return {spec.select_on: float(np.sqrt(np.nanmean((mean - truth) ** 2)))}

        return evaluate

    # NLL on fixed validation batches: the same stars, contexts and requested labels at every evaluation.
    collator = stage_collator(spec, feature_extractor, validation.wavelength)
    index = np.arange(len(validation))
    batches = [
        collator.select(validation, index[start:start + spec.eval_batch_size], seed=seed + 7919 * (k + 1))
        for k, start in enumerate(range(0, len(index), spec.eval_batch_size))
    ]

    def evaluate(model):
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for batch in batches:
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            n = int(inputs["input_ids"].shape[0])
            total += float(model(**inputs).loss) * n
            count += n
        return {"val_loss": total / max(count, 1)}

    return evaluate


def apply_freezing(model, spec: StageSpec) -> None:
    """Freeze what the spec says (everything else trainable)."""
    model.unfreeze()
    if spec.freeze_decoder:
        model.freeze_decoder()
    if spec.freeze_encoder_blocks:
        model.freeze_encoder_blocks(spec.freeze_encoder_blocks)


def stage_provenance(spec: StageSpec, train_data: WindowData, validation: WindowData, seed: int,
                     init: str | Path | None = None, model_config: Mapping | None = None,
                     rehearsal: WindowData | None = None, trainer: str = "accelerate") -> dict:
    """Everything a stage's result depends on, as JSON-able values (recorded in ``stage_config.json``).

    The recipe, the seed, the fresh model's config or the exact weights it starts from, and hashes of
    its training, validation and rehearsal stars. Two calls with equal provenance train the same model.
    """
    return {
        **stage_settings(spec, seed, model_config if init is None else None, trainer),
        "init_weights": _weights_digest(Path(init)) if init is not None else None,
        "data": {"train": train_data.fingerprint(), "validation": validation.fingerprint(),
                 "rehearsal": rehearsal.fingerprint() if rehearsal is not None else None},
    }


def stage_settings(spec: StageSpec, seed: int, model_config: Mapping | None = None,
                   trainer: str = "accelerate") -> dict:
    """The part of :func:`stage_provenance` known before any data is read: trainer, recipe, seed and
    (for a fresh model) its config. :func:`check_stage_reuse` with ``partial=True`` compares just these."""
    return json.loads(json.dumps({
        "trainer": trainer,
        "spec": asdict(spec),
        "seed": int(seed),
        "model_config": dict(model_config) if model_config is not None else None,
    }, default=str))


def _weights_digest(folder: Path) -> str:
    import hashlib

    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no model.safetensors to start this stage from; train that stage first")
    digest = hashlib.blake2b(digest_size=12)
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _differences(old, new, prefix: str = "") -> list[str]:
    """``key: old → new`` for every leaf that differs between two JSON-like values."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} → {new!r}"]


def check_stage_reuse(out_dir: Path, provenance: Mapping | None, partial: bool = False) -> None:
    """Refuse to reuse or resume a stage folder made with anything other than ``provenance``.

    A finished stage (``stage_complete.json``) is reused and an interrupted one (``state/``) resumed
    only if its recorded ``stage_config.json`` equals ``provenance``; otherwise the error names every
    differing setting. A folder from before this record existed cannot be checked and is refused.
    ``partial``: compare only the keys ``provenance`` has (:func:`stage_settings`, before data is read).
    """
    if provenance is None:
        return
    out_dir = Path(out_dir)
    recorded = out_dir / STAGE_CONFIG
    has_work = any((out_dir / name).exists() for name in (COMPLETE_MARKER, "state", "trainer"))
    if recorded.exists():
        old = json.loads(recorded.read_text(encoding="utf-8"))
        if partial:
            old = {key: old.get(key) for key in provenance}
        differences = _differences(old, dict(provenance))
        if differences:
            shown = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
            raise ValueError(f"{out_dir} was trained with other settings or data than this run ({shown}); "
                             "use a new --out folder (nothing was changed)")
    elif has_work:
        raise ValueError(f"{out_dir} holds a stage trained without a record of its settings ({STAGE_CONFIG}); "
                         "it cannot be reused safely: use a new --out folder")


def record_stage_provenance(out_dir: Path, provenance: Mapping | None) -> None:
    """Write ``stage_config.json`` before training starts (main process)."""
    if provenance is None or not _is_main_process():
        return
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / STAGE_CONFIG).exists():
        (out_dir / STAGE_CONFIG).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def finished_stage(spec: StageSpec, out_dir: Path, provenance: Mapping | None = None) -> StageResult | None:
    """The result of a stage already completed in ``out_dir`` (it has ``stage_complete.json``), else None.

    With ``provenance`` (:func:`stage_provenance`), a folder made with other settings or data is an
    error (:func:`check_stage_reuse`), never silently reused.
    """
    check_stage_reuse(Path(out_dir), provenance)
    marker = Path(out_dir) / COMPLETE_MARKER
    if not marker.exists():
        return None
    info = json.loads(marker.read_text())
    return StageResult(spec.name, Path(out_dir), info.get("best_step"), info.get("best_metric"),
                       info.get("last_step", 0), info.get("last_step", 0), 0.0, skipped=True)


def run_stage(
    spec: StageSpec,
    train_data: WindowData,
    validation: WindowData,
    out_dir: str | Path,
    init: str | Path | None = None,
    model_config: Mapping | None = None,
    rehearsal: WindowData | None = None,
    card=None,
    seed: int = 0,
    accelerator=None,
) -> StageResult:
    """Train one stage and write its checkpoint (model + feature extractor + card) to ``out_dir``.

    Args:
        spec: the stage recipe.
        train_data, validation: arrays already cut to ``spec.window`` (and, for stage 3, to the
            100 iron-rich stars / iron-rich validation stars).
        out_dir: stage folder; ``AutoModel.from_pretrained(out_dir)`` loads the best checkpoint.
            A folder with ``stage_complete.json`` is reused as is (the run is skipped), and one with
            ``state/`` resumed, only if its ``stage_config.json`` records the same settings and data.
        init: previous stage folder to start from, or None for a random initialisation with
            ``model_config`` (the scratch transformer, stage 1).
        rehearsal: synthetic stars (same window) for ``spec.rehearsal``.
        card: a ``spectrafm_hf.hub.cards.CardInfo`` (rendered here), a rendered card or None, saved
            as the folder's README.md.
        seed: data-order / context / initialisation seed.
    """
    out_dir = Path(out_dir)
    provenance = stage_provenance(spec, train_data, validation, seed, init, model_config, rehearsal)
    finished = finished_stage(spec, out_dir, provenance)
    if finished is not None:
        return finished
    record_stage_provenance(out_dir, provenance)
    start = time.time()
    torch.manual_seed(seed)  # the random initialisation of fresh models
    if init is None:
        if model_config is None:
            raise ValueError(f"{spec.name}: give init (a previous stage folder) or model_config for a fresh model")
        model, feature_extractor = new_model(model_config, train_data)
    else:
        model, feature_extractor = load_model(init, device="cpu")  # the Accelerator places it
    record_training_window(feature_extractor, train_data)
    record_training_context(model, feature_extractor, spec)
    apply_freezing(model, spec)

    def save_best(unwrapped, folder: Path):
        save_stage_checkpoint(unwrapped, feature_extractor, folder, card=card)

    result: LoopResult = train(
        model,
        batch_sampler(train_data, spec, feature_extractor, seed, rehearsal),
        out_dir,
        spec.loop,
        evaluate=_evaluator(spec, validation, feature_extractor, seed),
        select_metric=spec.select_on,
        save_best=save_best,
        run_config={"stage": spec.name, "window": spec.window, "n_train": len(train_data),
                    "batch_size": spec.batch_size, "context_length": spec.context_length,
                    "init": str(init) if init else "random", "seed": seed},
        accelerator=accelerator,
    )
    summary = {
        "stage": spec.name, "best_step": result.best_step, "best_metric": result.best_metric,
        "select_on": spec.select_on, "last_step": result.last_step, "stopped_early": result.stopped_early,
        "n_train": len(train_data), "n_validation": len(validation), "window": spec.window,
        "init": str(init) if init else None, "seconds_this_run": result.seconds,
        "spec": {k: v for k, v in asdict(spec).items() if k != "loop"}, "loop": asdict(spec.loop),
    }
    if _is_main_process():
        (out_dir / COMPLETE_MARKER).write_text(json.dumps(summary, indent=2, default=str))
    return StageResult(spec.name, out_dir, result.best_step, result.best_metric, result.last_step,
                       result.resumed_from, time.time() - start)


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process
