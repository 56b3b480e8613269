"""The pipeline's YAML as typed dataclasses: :class:`PipelineConfig` and one dataclass per section.

Layout of the YAML (``training/configs/quickstart.yaml`` is the commented example)::

    seed, torch_threads, eval_batch_size, stage2_eval_context, stage3_trainer     top-level values
    data:       seed, cache_dir, synthetic {n, prior | path}, observed {n, prior, splits | path, splits},
                test {n_iron_poor}
    model:      SpectraFMConfig keyword arguments (d_model, encoder_heads, ...)
    stage1:     a training.stages.StageSpec: stage keys + LoopConfig keys (inline or under ``loop:``)
    stage2:     the same
    stage3:     the same, plus n_stars, n_validation, from_stage1
    baselines:  scratch_transformer (stage-3 overrides), mlp, ridge, cannon; ``null`` = skip that one
    attention:  enabled, model, n_stars, batch_size, queries, core_half_width_A, first_half {...}

``data.synthetic`` and ``data.observed`` are simulated (``n`` stars from ``prior``) unless they name a
``path``: a dataset folder (``spectrafm build-apogee`` / ``spectrafm simulate`` output, or any
``save_to_disk`` folder of the schema) or a table of spectra (Parquet, FITS table, npz) on the
7514-pixel APOGEE grid, used for every stage, baseline and evaluation that role feeds::

    data:
      synthetic: {n: 12000, prior: wide}
      observed: {path: runs/apogee_dr17}       # its train / validation / test splits
      test: {n_iron_poor: 0}                   # no simulated supplement for real data

A config may start from another: ``base: quickstart.yaml`` (a path relative to this file) reads that
file first, then this file's values on top, section by section (mappings merge key by key, anything else
replaces), e.g. ``training/configs/quickstart_paper_protocol.yaml``.

Every default lives here. A key that is not a field is an error naming the key, its section and the
nearest valid key (typos must not be silently ignored). Two quirks kept for compatibility: a
``baselines: null`` or ``attention: null`` section means "all defaults" (as an absent section does);
skip a baseline with ``<name>: null`` and the attention analysis with ``enabled: false``.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # the training stack imports torch: load it only when a config is built
    from ..training.stages import StageSpec

REQUIRED_SECTIONS = ("data", "model", "stage1", "stage2", "stage3")
TRAINERS = ("accelerate", "transformers")

#: Per-stage defaults under the section's own keys (plus the top-level ``eval_batch_size``).
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "stage1": {"window": "all", "request": "random"},
    "stage2": {"window": "first_half", "request": "random"},
    "stage3": {"window": "fe_window", "request": ["FE_H"], "freeze_decoder": True,
               "freeze_encoder_blocks": [1], "select_on": "val_rmse_FE_H"},
}

#: The scratch transformer is stage 3's recipe (section ``stage3`` + ``baselines.scratch_transformer``)
#: with everything trainable and no rehearsal: these values always win.
SCRATCH_TRANSFORMER_OVERRIDES: dict[str, Any] = {"freeze_decoder": False, "freeze_encoder_blocks": [], "rehearsal": 0}

#: Keys of the ``stage3`` section that are about its data, not the StageSpec.
STAGE3_DATA_KEYS = ("n_stars", "n_validation", "from_stage1")


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def _stars_or_path(n: int | None, path: str | None, section: str) -> tuple[int | None, str | None]:
    """``n`` (stars to simulate) or ``path`` (a dataset to read): exactly one of them."""
    if (n is None) == (path is None):
        raise ValueError(f"section {section!r} needs either n (stars to simulate) or path (a dataset folder or "
                         "table of spectra), not both and not neither")
    if path is not None and not str(path).strip():
        raise ValueError(f"section {section!r}: path is empty; give a dataset folder or table of spectra")
    return (None if n is None else int(n)), (None if path is None else str(path))


#: The splits each role needs from a dataset read from ``path`` (a folder without them is divided).
SYNTHETIC_SPLITS = {"train": 0.9, "validation": 0.1}


@dataclass
class SyntheticData:
    """Stage-1 spectra: ``n`` simulated synthetic stars from ``prior`` (split 90 % train / 10 % validation),
    or the dataset at ``path``: its ``train`` and ``validation`` splits, or (one split, a table) its
    stars divided 90 % / 10 % with ``data.seed``."""

    n: int | None = None
    prior: str = "wide"
    path: str | None = None

    def __post_init__(self):
        self.n, self.path = _stars_or_path(self.n, self.path, "data.synthetic")


@dataclass
class ObservedData:
    """Stage-2/3 and test spectra: ``n`` simulated observed stars from ``prior``, split by ``splits``, or
    the dataset at ``path``: its ``train``, ``validation`` and ``test`` splits, or (one split, a table)
    its stars divided by ``splits`` with ``data.seed``."""

    n: int | None = None
    prior: str = "apogee"
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.6, "validation": 0.2, "test": 0.2})
    path: str | None = None

    def __post_init__(self):
        self.n, self.path = _stars_or_path(self.n, self.path, "data.observed")
        missing = {"train", "validation", "test"} - set(self.splits)
        if missing:
            raise ValueError(f"section 'data.observed': splits needs train, validation and test fractions; "
                             f"{sorted(missing)} missing from {dict(self.splits)}")


@dataclass
class TestSupplement:
    """``n_iron_poor`` extra observed test stars from the same prior restricted to [Fe/H] < −1 (0 = none)."""

    n_iron_poor: int = 0

    def __post_init__(self):
        self.n_iron_poor = int(self.n_iron_poor)


@dataclass
class DataConfig:
    """The simulated datasets. ``seed`` fixes the simulated universes (not the run seed);
    ``cache_dir`` None means ``<out>/data``."""

    synthetic: SyntheticData
    observed: ObservedData
    seed: int = 0
    cache_dir: str | None = None
    test: TestSupplement = field(default_factory=TestSupplement)

    def __post_init__(self):
        self.seed = int(self.seed)
        if self.observed.path is not None and self.test.n_iron_poor:
            raise ValueError("data.test.n_iron_poor adds SIMULATED iron-poor test stars; with data.observed.path "
                             "(a real dataset) set data.test: {n_iron_poor: 0}")


@dataclass
class Stage3Config:
    """Stage 3: its recipe plus its data: ``n_stars`` training stars with [Fe/H] > −1, the first
    ``n_validation`` iron-rich validation stars for selection, and whether to also run it from stage 1."""

    spec: StageSpec
    n_stars: int = 100
    n_validation: int = 300
    from_stage1: bool = False

    def __post_init__(self):
        self.n_stars, self.n_validation = int(self.n_stars), int(self.n_validation)


@dataclass
class MLPBaseline:
    """``training.baselines.fit_scratch_mlp`` options (its defaults: the paper's MLP)."""

    hidden: Sequence[int] = (2048, 1280, 1024)
    learning_rate: float = 1e-4
    max_steps: int = 2000
    batch_size: int = 32
    eval_every: int = 50
    patience: int = 10


@dataclass
class RidgeBaseline:
    """``training.baselines.fit_ridge`` options: the penalties tried (chosen on iron-rich validation)."""

    alphas: Sequence[float] = field(default_factory=lambda: tuple(10.0 ** np.arange(-6, 3)))


@dataclass
class CannonBaseline:
    """``training.baselines.fit_cannon`` options: the labels of its quadratic model (must include FE_H)."""

    labels: Sequence[str] = ("TEFF", "LOGG", "FE_H")


@dataclass
class BaselinesConfig:
    """The models trained from scratch on the stage-3 stars; None = skipped."""

    scratch_transformer: StageSpec | None
    mlp: MLPBaseline | None = field(default_factory=MLPBaseline)
    ridge: RidgeBaseline | None = field(default_factory=RidgeBaseline)
    cannon: CannonBaseline | None = field(default_factory=CannonBaseline)


@dataclass
class FirstHalfAttention:
    """Attention of ``model`` over the first half of the spectrum (where the Mg I and OH lines are)."""

    model: str = "stage2"
    n_stars: int = 48
    batch_size: int = 4
    queries: Sequence[str] = ("FE_H", "MG_FE", "O_FE")


@dataclass
class AttentionConfig:
    """Attention analysis of ``model`` in the Fe window on the first ``n_stars`` test stars, plus
    ``first_half`` (None = skip it). ``core_half_width_A``: half width of a line core, Å (both analyses)."""

    enabled: bool = True
    model: str = "stage3"
    n_stars: int = 200
    batch_size: int = 16
    queries: Sequence[str] = ("FE_H",)
    core_half_width_A: float = 0.4
    first_half: FirstHalfAttention | None = field(default_factory=FirstHalfAttention)


@dataclass
class PipelineConfig:
    """One pipeline run, as read from its YAML (``path``) with the command line's overrides applied.

    Attributes:
        path: the YAML file, as given (recorded in metrics.json's ``run.config``).
        model: ``SpectraFMConfig`` keyword arguments of the fresh models (stage 1, scratch transformer).
        seed: run seed (stage-3 star draw, initialisations, data order); ``data.seed`` fixes the data.
        torch_threads: ``torch.set_num_threads`` (None = torch's default).
        eval_batch_size: stars per forward pass in evaluation (also each stage's default).
        stage2_eval_context: stage 2's test predictions: "all" pixels in one context, or disjoint
            chunks of this many pixels (the 3757-pixel half costs O(P²) in one context).
        stage3_trainer: "accelerate" (the training loop) or "transformers" (``transformers.Trainer``).
    """

    path: str
    data: DataConfig
    model: dict[str, Any]
    stage1: StageSpec
    stage2: StageSpec
    stage3: Stage3Config
    baselines: BaselinesConfig
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    seed: int = 0
    torch_threads: int | None = None
    eval_batch_size: int = 64
    stage2_eval_context: int | str = 512
    stage3_trainer: str = "accelerate"

    def __post_init__(self):
        self.seed, self.eval_batch_size = int(self.seed), int(self.eval_batch_size)
        self.torch_threads = int(self.torch_threads) if self.torch_threads else None
        if self.stage3_trainer not in TRAINERS:
            raise ValueError(f"stage3_trainer must be 'accelerate' or 'transformers', got {self.stage3_trainer!r}")
        if self.stage3_trainer == "transformers":
            # Checked before any training: what the Trainer path cannot run (e.g. cosine_restarts).
            from ..training.trainer import scheduler_arguments, selection_metric

            scheduler_arguments(self.stage3.spec.loop)
            selection_metric(self.stage3.spec)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_config(path: str | Path, seed: int | None = None, stage3_trainer: str | None = None) -> PipelineConfig:
    """Read a pipeline YAML into a :class:`PipelineConfig`; ``seed`` / ``stage3_trainer`` (the command
    line's, None = keep the file's) replace the file's values. Every error names the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pipeline config {path} not found; try training/configs/quickstart.yaml")
    raw = _read_with_base(path, ())
    for section in REQUIRED_SECTIONS:
        if section not in raw:
            raise ValueError(f"{path}: missing section {section!r} (see training/configs/quickstart.yaml)")
    try:
        config = _build(raw, str(path))
        overrides = {k: v for k, v in (("seed", seed), ("stage3_trainer", stage3_trainer)) if v is not None}
        return replace(config, **overrides) if overrides else config
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _read_with_base(path: Path, chain: tuple[Path, ...]) -> dict:
    """The YAML mapping of ``path``, on top of its ``base:`` file's (recursively); ``chain`` holds the
    files that led here, to refuse a cycle."""
    import yaml

    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    raw = dict(raw)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: base must be the path of another config, e.g. base: quickstart.yaml")
    base_path = path.parent / base
    if not base_path.is_file():
        raise FileNotFoundError(f"{path}: base config {base_path} not found (base is relative to {path.parent})")
    if base_path.resolve() in {p.resolve() for p in (*chain, path)}:
        raise ValueError(f"{path}: base {base!r} leads back to a config already being read; remove the cycle")
    return _merged(_read_with_base(base_path, (*chain, path)), raw)


def _merged(base: Mapping, override: Mapping) -> dict:
    """``override`` on top of ``base``: mappings merged key by key, every other value replaced."""
    merged = dict(base)
    for key, value in override.items():
        both_mappings = isinstance(value, Mapping) and isinstance(merged.get(key), Mapping)
        merged[key] = _merged(merged[key], value) if both_mappings else copy.deepcopy(value)
    return merged


def _build(raw: Mapping, path: str) -> PipelineConfig:
    top = {f.name for f in fields(PipelineConfig)} - {"path"}
    _check_keys(raw, top, "the top level")
    eval_batch_size = int(raw.get("eval_batch_size", PipelineConfig.eval_batch_size))
    stage_defaults = {name: {**copy.deepcopy(values), "eval_batch_size": eval_batch_size}
                      for name, values in STAGE_DEFAULTS.items()}
    # every section's keys are checked before any is built: a misspelt key is the first error named
    for section in ("stage1", "stage2"):
        _check_stage_keys(_mapping(raw[section], section), section)
    stage3_values = _mapping(raw["stage3"], "stage3")
    _check_stage_keys(stage3_values, "stage3", extra=STAGE3_DATA_KEYS)
    stage3_spec_values = {k: v for k, v in stage3_values.items() if k not in STAGE3_DATA_KEYS}
    stage3 = Stage3Config(spec=_stage_spec("stage3", stage3_spec_values, stage_defaults["stage3"]),
                          **{k: stage3_values[k] for k in STAGE3_DATA_KEYS if k in stage3_values})
    scalars = {k: raw[k] for k in ("seed", "torch_threads", "eval_batch_size", "stage2_eval_context",
                                   "stage3_trainer") if k in raw}
    return PipelineConfig(
        path=path,
        data=_data(_mapping(raw["data"], "data")),
        model=_model(_mapping(raw["model"], "model")),
        stage1=_stage_section(raw["stage1"], "stage1", stage_defaults["stage1"]),
        stage2=_stage_section(raw["stage2"], "stage2", stage_defaults["stage2"]),
        stage3=stage3,
        baselines=_baselines(_mapping(raw.get("baselines"), "baselines"), stage3_spec_values, stage_defaults["stage3"]),
        attention=_attention(_mapping(raw.get("attention"), "attention")),
        **scalars,
    )


def _data(values: Mapping) -> DataConfig:
    _check_keys(values, {f.name for f in fields(DataConfig)}, "data")
    for required in ("synthetic", "observed"):
        if required not in values:
            raise ValueError(f"section 'data' needs {required!r}, e.g. {required}: {{n: 1000}}")
    return DataConfig(
        synthetic=_section(SyntheticData, values["synthetic"], "data.synthetic"),
        observed=_section(ObservedData, values["observed"], "data.observed"),
        test=_section(TestSupplement, values.get("test"), "data.test"),
        **{k: values[k] for k in ("seed", "cache_dir") if k in values},
    )


def _model(values: Mapping) -> dict[str, Any]:
    """The ``model`` section as given (its order is kept: metrics.json records it), keys checked
    against ``SpectraFMConfig``'s fields (that class would silently store a misspelt one)."""
    from ..configuration_spectrafm import SpectraFMConfig

    _check_keys(values, {f.name for f in fields(SpectraFMConfig)}, "model")
    return dict(values)


def _stage_section(values: Any, section: str, defaults: Mapping) -> StageSpec:
    values = _mapping(values, section)
    _check_stage_keys(values, section)
    return _stage_spec(section, values, defaults)


def _stage_spec(name: str, values: Mapping, defaults: Mapping) -> StageSpec:
    """``StageSpec.from_dict`` of ``defaults`` updated by ``values``; its errors name the section."""
    from ..training.stages import StageSpec

    try:
        return StageSpec.from_dict(name, {**copy.deepcopy(dict(defaults)), **values})
    except (TypeError, ValueError) as err:
        missing = re.search(r"missing \d+ required (?:positional |keyword-only )?arguments?: (.+)$", str(err))
        if missing:  # a dataclass's TypeError names Python arguments; the user wrote YAML keys
            raise ValueError(f"section {name!r} needs the key(s) {missing.group(1)}, e.g. {name}: "
                             "{max_steps: 1000}") from None
        raise ValueError(f"section {name!r}: {err}") from None


def _baselines(values: Mapping, stage3_spec_values: Mapping, stage3_defaults: Mapping) -> BaselinesConfig:
    _check_keys(values, {f.name for f in fields(BaselinesConfig)}, "baselines")
    # absent → defaults; an explicit null → skipped
    scratch = None
    if values.get("scratch_transformer", {}) is not None:
        overrides = _mapping(values.get("scratch_transformer"), "baselines.scratch_transformer")
        _check_stage_keys(overrides, "baselines.scratch_transformer")
        spec_values = {**stage3_spec_values, **overrides, **SCRATCH_TRANSFORMER_OVERRIDES}
        scratch = _stage_spec("scratch_transformer", spec_values, stage3_defaults)
    options = {name: _section(cls, values.get(name), f"baselines.{name}") if values.get(name, {}) is not None else None
               for name, cls in (("mlp", MLPBaseline), ("ridge", RidgeBaseline), ("cannon", CannonBaseline))}
    return BaselinesConfig(scratch_transformer=scratch, **options)


def _attention(values: Mapping) -> AttentionConfig:
    values = dict(values)
    first_half = values.pop("first_half", {})
    attention = _section(AttentionConfig, values, "attention")
    attention.first_half = (_section(FirstHalfAttention, first_half, "attention.first_half")
                            if first_half is not None else None)
    return attention


# ----------------------------------------------------------------------------------------------
# Key checks
# ----------------------------------------------------------------------------------------------


def _mapping(values: Any, section: str) -> dict:
    """A section's mapping; None (an empty or null section) → {}."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ValueError(f"section {section!r} must be a mapping of keys, got {values!r}")
    return dict(values)


def _section(cls, values: Any, section: str):
    """``cls(**values)`` after checking the keys; a missing required key names the section."""
    values = _mapping(values, section)
    _check_keys(values, {f.name for f in fields(cls)}, section)
    missing = [f.name for f in fields(cls) if f.name not in values and _is_required(f)]
    if missing:
        raise ValueError(f"section {section!r} needs {missing}")
    return cls(**values)


def _is_required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _check_stage_keys(values: Mapping, section: str, extra: Sequence[str] = ()) -> None:
    """Stage keys: StageSpec fields, LoopConfig fields (inline) and ``loop`` (a LoopConfig mapping)."""
    from ..training.loop import LoopConfig
    from ..training.stages import StageSpec

    loop_keys = set(LoopConfig.__dataclass_fields__)
    stage_keys = set(StageSpec.__dataclass_fields__) - {"name"}
    _check_keys(values, stage_keys | loop_keys | set(extra), section)
    if "loop" in values:
        _check_keys(_mapping(values["loop"], f"{section}.loop"), loop_keys, f"{section}.loop")


def _check_keys(values: Mapping, valid: set[str], section: str) -> None:
    """Raise on the first key of ``values`` not in ``valid``, naming the section and the nearest valid key."""
    for key in values:
        if key not in valid:
            close = difflib.get_close_matches(str(key), sorted(valid), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = section if section == "the top level" else f"section {section!r}"
            raise ValueError(f"unknown key {key!r} in {where}{hint} (valid keys: {', '.join(sorted(valid))})")
