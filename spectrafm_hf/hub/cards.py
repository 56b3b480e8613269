"""Model cards for SpectraFM checkpoints: one template per stage, rendered with ``huggingface_hub``.

Templates
---------
The canonical templates are package resources, ``spectrafm_hf/hub/templates/{stage}.md`` (Jinja2,
rendered by ``ModelCard.from_template``), so rendering works the same from a git checkout and from an
installed wheel. The top-level ``hub_cards/`` folder only points at them (see ``hub_cards/README.md``).
``templates/descriptions.yaml`` holds the prose the pipeline fills in (training data per stage, model
descriptions of the report); :func:`load_descriptions` reads it.

Stages: ``stage1`` (synthetic pre-training), ``stage2`` (observed fine-tune), ``stage3`` ([Fe/H] window
fine-tune on a few iron-rich stars, 100 in the paper), ``scratch`` (the same architecture trained from a
random initialisation on those stars only: the baseline), ``converted`` (a checkpoint of the original code,
converted).

Hub metadata
------------
``library_name: transformers``; ``pipeline_tag: tabular-regression`` (the Hub has no spectroscopy task:
the model regresses continuous stellar labels from a set of numeric (wavelength, flux) features, the
Hub's tabular-regression task; the ``transformers`` pipeline task the package registers is not a Hub
tag); ``tags``; ``license``; ``datasets`` (Hub dataset ids, when the training data are published);
``base_model`` only when the parent checkpoint is a Hub repo id (a local parent is named in the prose);
``model-index`` with every measured number.

Rendered for a place
--------------------
A card names where the checkpoint is in its usage code: the Hub repo id (``CardInfo.repo_id``), else
the local folder (``CardInfo.local_path``), else ``"."``. Every card carries its own ``CardInfo`` as
JSON in an HTML comment at its end (invisible on the Hub), so ``spectrafm publish`` re-renders it for
the repo id it uploads to (:func:`card_info_from_text`, :func:`render_for_repo`): a published card
never names a local folder.

Metrics input (the pipeline's ``metrics.json``)
-----------------------------------------------
A JSON object keyed by stage; each stage maps a label to ``{metric name: number}``; one optional
reserved key ``"_eval"`` per stage describes the evaluation set::

    {
      "stage3": {
        "_eval": {"dataset_name": "simulated observed test set", "dataset_type": "spectrafm-sim-observed",
                  "split": "test", "n_spectra": 2000},
        "FE_H": {"rmse": 0.094, "rmse_feh_ge_-1": 0.088, "rmse_feh_lt_-1": 0.232,
                 "bias_feh_lt_-1": 0.11, "z_std": 1.43, "coverage_68_calibrated": 0.66}
      },
      "stage2": {"TEFF": {"rmse": 37.7}, "LOGG": {"rmse": 0.092}}
    }

A metric key is ``<metric>[_<subset>][_calibrated]``: subsets ``feh_ge_-1``, ``feh_lt_-1``,
``feh_lt_-1.5`` (true [Fe/H] bins; none = all scored stars); ``_calibrated`` = after the variance scale
fitted on validation stars. Metric values are in the label's physical units (K, dex), except
dimensionless ones (``z_std``, ``coverage_68``). A metric that is absent, ``null`` or non-finite is
simply not shown: a card never contains a number that was not measured.

With ``stage_metrics(metrics, stage, model=...)`` the card also states, next to every number, how many
stars it was measured on (``metrics["models"][model]["labels"][label]["bins"][subset]["n"]``) and what
the test set is made of (``metrics["test_set"]["description"]``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data import grid
from ..data.labels import LABEL_DESCRIPTIONS, LABEL_DISPLAY_NAMES

STAGES = ("stage1", "stage2", "stage3", "scratch", "converted", "finetuned")

STAGE_TITLES = {
    "stage1": "SpectraFM stage 1: pre-trained on synthetic APOGEE spectra",
    "stage2": "SpectraFM stage 2: fine-tuned on observed APOGEE spectra",
    "stage3": "SpectraFM stage 3: [Fe/H] from the 16106–16220 Å window",
    "scratch": "SpectraFM architecture trained from scratch on the stage-3 stars ([Fe/H], 16106–16220 Å): a baseline",
    "converted": "SpectraFM: converted original checkpoint",
    "finetuned": "SpectraFM fine-tuned on your own stars (spectrafm finetune)",
}

#: The Hub task of every card (see the module docstring for why).
PIPELINE_TAG = "tabular-regression"

#: Subsets of the test set a metric key can name (``rmse_feh_lt_-1``), in the words of the card.
SUBSETS = {"all": "all scored stars", "feh_ge_-1": "[Fe/H] ≥ −1", "feh_lt_-1": "[Fe/H] < −1",
           "feh_lt_-1.5": "[Fe/H] < −1.5"}
_CALIBRATED = "_calibrated"
#: Marker of the JSON ``CardInfo`` comment at the end of every rendered card.
CARD_INFO_MARKER = "spectrafm-card-info:"

#: Human names of the metric keys the pipeline writes; unknown keys are shown as they are.
METRIC_NAMES = {
    "rmse": "RMSE",
    "bias": "median bias",
    "sigma_mad": "σ_MAD",
    "z_std": "z-score std",
    "coverage_68": "68 % coverage",
    "coverage_95": "95 % coverage",
}

CITATION = """## Citation
```bibtex
@inproceedings{koblischke2024spectrafm,
  title     = {SpectraFM: Tuning into Stellar Foundation Models},
  author    = {Koblischke, Nolan and Bovy, Jo},
  booktitle = {NeurIPS 2024 Workshop on Foundation Models for Science},
  year      = {2024},
  eprint    = {2411.04750},
  archivePrefix = {arXiv}
}
@article{leung2023perceptron,
  title   = {Towards an astronomical foundation model for stars with a Transformer-based model},
  author  = {Leung, Henry W. and Bovy, Jo},
  journal = {Monthly Notices of the Royal Astronomical Society},
  year    = {2024},
  eprint  = {2308.10944},
  archivePrefix = {arXiv}
}
```"""

SIMULATED_CAVEATS = """**These spectra are simulated**, by the package's built-in APOGEE H-band simulator: a one-layer
(Milne–Eddington / Eddington–Barbier) approximation with Saha–Boltzmann populations, molecular
equilibrium (CO, CN, OH), Voigt profiles and a curve of growth, calibrated with five constants against
two real apStar spectra (residual rms 2–4 %). It reproduces how line depths respond to Teff, logg and
abundances, not an abundance analysis: H₂O and FeH are ignored (M dwarfs are poorly modelled) and
Brackett lines use a crude Stark proxy. The "observed" universe is the same recipe with deliberate,
fixed differences (line-data errors, missing and extra lines, NLTE-like factors, continuum residuals,
LSF, tellurics, persistence, noise, bad pixels). Numbers measured on simulated data do not transfer
to real APOGEE spectra."""

REAL_CAVEATS = """These are real spectra; their labels are pipeline (ASPCAP) estimates with their own
systematics, which the model learns to reproduce."""


@dataclass
class CardInfo:
    """Everything a card says about one checkpoint.

    Attributes:
        stage: one of ``STAGES``.
        labels: label names the model predicts (e.g. ``["TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"]``).
        training_data: the exact training data, in prose (what, how many spectra, which pixels,
            which labels). Required: a card must say what the model was trained on.
        data_kind: ``"simulated"``, ``"real"`` or ``"unknown"``; selects the data caveats paragraph.
        wavelength_range_A: (min, max) vacuum Å of the pixels seen in training, or None if unknown.
        n_pixels: pixels per training spectrum, or None.
        base_model: Hub id of the checkpoint this one was fine-tuned from (stage lineage), or None.
        repo_id: Hub id this card will live under (used in the usage code), or None for a local folder.
        datasets: Hub dataset ids of the training data, if published.
        metrics: ``{label: {metric: value}}`` for this stage (see ``stage_metrics``); None = none measured.
        eval_info: the stage's ``"_eval"`` entry of metrics.json (dataset_name, dataset_type, split).
        license: SPDX id of the weights' licence.
        source: for ``converted`` cards, the folder or record the original checkpoint came from.
        extra_tags: more Hub tags.
        pixels: (start, stop) of the pixels of the 7514-pixel APOGEE grid this checkpoint was trained on
            (stop exclusive), for the usage code; None = all pixels in ``wavelength_range_A``.
        context_length: pixels per star per training step (``context_length`` of config.json and
            preprocessor_config.json), or None if not recorded.
        local_path: the checkpoint's local folder, named by the usage code when there is no ``repo_id``.
    """

    stage: str
    labels: list[str]
    training_data: str
    data_kind: str = "simulated"
    wavelength_range_A: tuple[float, float] | None = None
    n_pixels: int | None = None
    base_model: str | None = None
    repo_id: str | None = None
    datasets: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] | None = None
    eval_info: dict[str, Any] | None = None
    license: str = "mit"
    source: str | None = None
    extra_tags: list[str] = field(default_factory=list)
    pixels: tuple[int, int] | None = None
    context_length: int | None = None
    local_path: str | None = None

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown card stage {self.stage!r}; choose one of {', '.join(STAGES)}")
        if self.data_kind not in ("simulated", "real", "unknown"):
            raise ValueError(f"data_kind must be 'simulated', 'real' or 'unknown', got {self.data_kind!r}")
        if not self.training_data or not self.training_data.strip():
            raise ValueError("training_data is empty: a model card must say what the model was trained on")
        if not self.labels:
            raise ValueError("labels is empty: name the labels the model predicts, e.g. ['FE_H']")


def template_path(stage: str) -> Path:
    """Path of the Jinja2 template of ``stage`` (a package resource, so it works when installed)."""
    if stage not in STAGES:
        raise ValueError(f"unknown card stage {stage!r}; choose one of {', '.join(STAGES)}")
    path = Path(str(resources.files("spectrafm_hf.hub") / "templates" / f"{stage}.md"))
    if not path.is_file():
        raise FileNotFoundError(
            f"card template {path} is missing: the package was installed without its data files "
            "(setup.cfg [options.package_data] must include spectrafm_hf.hub: templates/*.md)"
        )
    return path


def load_descriptions() -> dict[str, Any]:
    """The prose the pipeline fills in (``templates/descriptions.yaml``, a package resource):
    ``{"cards": {stage folder: training data}, "models": {model: description}, "test_set": text}``,
    each a ``str.format`` template (fields documented in the file)."""
    import yaml

    path = Path(str(resources.files("spectrafm_hf.hub") / "templates" / "descriptions.yaml"))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the package was installed without its data files "
            "(setup.cfg [options.package_data] must include spectrafm_hf.hub: templates/*.yaml)"
        )
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _finite_number(value: Any, where: str) -> float | None:
    """A metric value as float; None when unmeasured (null / NaN / inf); error for non-numbers."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metrics {where}: expected a number or null, got {value!r}")
    value = float(value)
    return value if math.isfinite(value) else None


def _load_metrics(metrics: Mapping[str, Any] | str | Path | None) -> Mapping[str, Any] | None:
    """A ``metrics.json`` as a mapping keyed by stage; None when there is none (no path, missing file)."""
    if metrics is None:
        return None
    if isinstance(metrics, (str, Path)):
        path = Path(metrics)
        if not path.is_file():
            return None
        metrics = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics.json must hold a JSON object keyed by stage, got {type(metrics).__name__}")
    return metrics


def _measured_values(per_metric: Any, stage: str, label: str) -> dict[str, float]:
    """One label's ``{metric: value}`` with the unmeasured values (null, NaN, inf) dropped."""
    if not isinstance(per_metric, Mapping):
        raise ValueError(f"metrics[{stage!r}][{label!r}] must map metric → value, got {per_metric!r}")
    kept = {}
    for name, value in per_metric.items():
        number = _finite_number(value, f"[{stage!r}][{label!r}][{name!r}]")
        if number is not None:
            kept[str(name)] = number
    return kept


def stage_metrics(metrics: Mapping[str, Any] | str | Path | None, stage: str, model: str | None = None
                  ) -> tuple[dict[str, dict[str, float]], dict[str, Any] | None]:
    """Pick one stage's measured metrics out of a ``metrics.json`` (path or already-loaded dict).

    Returns ``({label: {metric: value}}, eval_info)``; unmeasured values (null, NaN, inf) are dropped,
    and labels left with no metric are dropped too. A missing file/stage gives ``({}, None)``.

    ``model``: the entry of ``metrics["models"]`` these numbers were measured with (e.g.
    ``"stage1_zero_shot"`` for the stage-1 card); when given, ``eval_info`` also gets ``n_stars``
    (``{label: {subset: stars scored}}``) and ``composition`` (``metrics["test_set"]["description"]``),
    which the card states next to every number.
    """
    metrics = _load_metrics(metrics)
    if metrics is None:
        return {}, None
    entry = metrics.get(stage)
    if entry is None:
        return {}, None
    if not isinstance(entry, Mapping):
        raise ValueError(f"metrics[{stage!r}] must map label → {{metric: value}}, got {entry!r}")
    eval_info = entry.get("_eval")
    if eval_info is not None and not isinstance(eval_info, Mapping):
        raise ValueError(f"metrics[{stage!r}]['_eval'] must be an object, got {eval_info!r}")
    out: dict[str, dict[str, float]] = {}
    for label, per_metric in entry.items():
        if label == "_eval":
            continue
        kept = _measured_values(per_metric, stage, label)
        if kept:
            out[str(label)] = kept
    eval_info = dict(eval_info) if eval_info is not None else None
    if model is not None and out:
        eval_info = {**(eval_info or {}), **_test_set_facts(metrics, model)}
    return out, eval_info


def _test_set_facts(metrics: Mapping[str, Any], model: str) -> dict[str, Any]:
    """``n_stars`` per label and subset from ``metrics["models"][model]``, and the test set's description."""
    facts: dict[str, Any] = {}
    labels = ((metrics.get("models") or {}).get(model) or {}).get("labels") or {}
    counts = {label: {subset: int(stats["n"]) for subset, stats in (result.get("bins") or {}).items()
                      if isinstance(stats, Mapping) and stats.get("n") is not None}
              for label, result in labels.items() if isinstance(result, Mapping)}
    if any(counts.values()):
        facts["n_stars"] = counts
    description = (metrics.get("test_set") or {}).get("description")
    if description:
        facts["composition"] = str(description)
    return facts


def split_metric_key(key: str) -> tuple[str, str, bool]:
    """``"rmse_feh_lt_-1"`` → ``("rmse", "feh_lt_-1", False)``; ``"coverage_68_calibrated"`` →
    ``("coverage_68", "all", True)``: (metric, subset, after calibration)."""
    calibrated = key.endswith(_CALIBRATED)
    base = key[: -len(_CALIBRATED)] if calibrated else key
    for subset in sorted(SUBSETS, key=len, reverse=True):
        if subset != "all" and base.endswith("_" + subset):
            return base[: -len(subset) - 1], subset, calibrated
    return base, "all", calibrated


def metric_key(metric: str, subset: str, calibrated: bool) -> str:
    """The inverse of :func:`split_metric_key`: the key of metrics.json."""
    return metric + ("" if subset == "all" else f"_{subset}") + (_CALIBRATED if calibrated else "")


def _stars(info: CardInfo, label: str, subset: str) -> int | None:
    """Stars a number of ``label`` on ``subset`` was measured on (None: not recorded)."""
    return ((info.eval_info or {}).get("n_stars") or {}).get(label, {}).get(subset)


def _subset_words(info: CardInfo, label: str, subset: str) -> str:
    """``"[Fe/H] < −1: 406 stars"``, ``"all 990 scored stars"`` (without the count when not recorded)."""
    n = _stars(info, label, subset)
    if subset == "all":
        return SUBSETS["all"] if n is None else f"all {n} scored stars"
    words = SUBSETS.get(subset, subset)
    return words if n is None else f"{words}: {n} stars"


def _iron_poor_share(info: CardInfo) -> str:
    """A sentence on how iron-poor the scored stars are (from the star counts), or ""."""
    counts = ((info.eval_info or {}).get("n_stars") or {})
    per_subset = counts.get("FE_H") or next(iter(counts.values()), {})
    n_all, n_poor = per_subset.get("all"), per_subset.get("feh_lt_-1")
    if not n_all or n_poor is None:
        return ""
    return (f"{n_poor} of the {n_all} scored stars ({100 * n_poor / n_all:.0f} %) have [Fe/H] < −1, against "
            "about 2.5 % of APOGEE stars, so the rows for all scored stars are not an APOGEE-like figure; the "
            "[Fe/H] ≥ −1 rows are the closest to one.")


def _metric_words(metric: str, calibrated: bool) -> str:
    return METRIC_NAMES.get(metric, metric) + (" after σ calibration" if calibrated else "")


def _eval_results(info: CardInfo) -> list[EvalResult]:
    """One ``EvalResult`` per measured (label, metric key): the card's ``model-index``.

    The subset of the test set is the result's dataset ``config`` (``all``, ``feh_lt_-1`` ...) and is
    named, with its star count, in the dataset name and the metric name (unique per label), so the Hub
    shows the composition beside the value;
    ``metric_type`` is the metric (``rmse``, ``coverage_68_calibrated`` ...). :func:`result_key` maps a
    result back to its metrics.json key.
    """
    if not info.metrics:
        return []
    ev = info.eval_info or {}
    base = str(ev.get("dataset_name", "held-out test set"))
    dataset_type = str(ev.get("dataset_type", "spectrafm-simulated-apogee" if info.data_kind == "simulated"
                                else "apogee-dr17"))
    results = []
    for label, per_metric in info.metrics.items():
        for key, value in per_metric.items():
            metric, subset, calibrated = split_metric_key(key)
            results.append(EvalResult(
                task_type=PIPELINE_TAG,
                task_name="Stellar label regression from spectra",
                dataset_type=dataset_type,
                dataset_name=f"{base} ({_subset_words(info, label, subset)})",
                dataset_config=subset,
                dataset_split=ev.get("split"),
                metric_type=metric + (_CALIBRATED if calibrated else ""),
                metric_name=(f"{_metric_words(metric, calibrated)} ({LABEL_DISPLAY_NAMES.get(label, label)}; "
                             f"{_subset_words(info, label, subset)})"),
                metric_value=value,
                metric_config=label,
            ))
    return results


def result_key(result: EvalResult) -> str:
    """The metrics.json key of one ``model-index`` result of a card (``rmse_feh_lt_-1`` ...)."""
    calibrated = result.metric_type.endswith(_CALIBRATED)
    metric = result.metric_type[: -len(_CALIBRATED)] if calibrated else result.metric_type
    return metric_key(metric, result.dataset_config or "all", calibrated)


def _metrics_section(info: CardInfo) -> str:
    """Markdown: what the test set is, then every measured number with the stars it was measured on."""
    if not info.metrics:
        return ("No metrics were measured for this checkpoint; none are reported. Evaluate it on your own "
                "held-out spectra before use.")
    ev = info.eval_info or {}
    where = str(ev.get("dataset_name", "a held-out test set"))
    if ev.get("n_spectra") is not None:
        where += f", {int(ev['n_spectra'])} spectra"
    lines = [f"Measured by the pipeline on the {where}."]
    test_set = " ".join(part for part in (ev.get("composition"), _iron_poor_share(info)) if part)
    if test_set:
        lines += ["", f"**Test set**: {test_set}"]
    lines += ["", "Units: K for TEFF, dex for the other labels; z-score std and coverage are dimensionless "
              "(coverage = fraction of stars whose true value lies within the predicted ±1σ or ±2σ; 0.68 and "
              "0.95 are ideal). \"After σ calibration\": the predicted σ scaled by one factor fitted on "
              "validation stars.", "", "| label | stars | metric | value |", "|---|---|---|---|"]
    for label, per_metric in info.metrics.items():
        for key, value in per_metric.items():
            metric, subset, calibrated = split_metric_key(key)
            lines.append(f"| {label} | {_subset_words(info, label, subset)} | {_metric_words(metric, calibrated)} "
                         f"(`{key}`) | {value:.4g} |")
    return "\n".join(lines)


def _grid_code(start: int, stop: int, lo: float, hi: float) -> tuple[str, str]:
    """(with the package, without it): code that sets ``wavelength`` to APOGEE pixels [start, stop)."""
    window = f"pixels {start}–{stop - 1} of the APOGEE grid, {lo:.1f}–{hi:.1f} Å (vacuum)"
    packaged = f"wavelength = apogee_wavelength()[{start}:{stop}]  # {window}"
    chips = ", ".join(f"apstar[{s.start}:{s.stop}]" for s in grid.CHIP_SLICES.values())
    plain = (f"apstar = 10 ** ({grid.APSTAR_LOG10_START} + {grid.APSTAR_LOG10_STEP} * np.arange({grid.APSTAR_NPIX}))"
             "  # APOGEE apStar grid, vacuum Å\n"
             f"apogee = np.concatenate([{chips}])  # its {grid.APOGEE_NPIX} chip pixels\n"
             f"wavelength = apogee[{start}:{stop}]  # {window}")
    return packaged, plain


def _window(info: CardInfo) -> tuple[int, int]:
    """The checkpoint's pixels of the APOGEE grid: ``info.pixels``, else those in its wavelength range."""
    if info.pixels is not None:
        return int(info.pixels[0]), int(info.pixels[1])
    if info.wavelength_range_A is None:
        return 0, grid.APOGEE_NPIX
    wavelength = grid.apogee_wavelength()
    # 0.1 Å: less than half a pixel (≈ 0.2 Å in the H band), more than a range rounded to 0.1 Å misses by
    tolerance = 0.1
    lo, hi = info.wavelength_range_A
    inside = (wavelength >= lo - tolerance) & (wavelength <= hi + tolerance)
    if not inside.any():
        return 0, grid.APOGEE_NPIX
    rows = inside.nonzero()[0]
    return int(rows[0]), int(rows[-1]) + 1


def _location(info: CardInfo) -> tuple[str, str]:
    """(Python string literal, comment) naming where the checkpoint is, for the usage code."""
    if info.repo_id:
        return f'"{info.repo_id}"', "Hub repo id (or a local copy of this folder)"
    if info.local_path:
        return json.dumps(str(info.local_path)), "this checkpoint's folder"
    return '"."', "the folder holding this card"


def _usage(info: CardInfo) -> str:
    """Working load-and-predict code for this checkpoint on its own window (run by the tests)."""
    where, comment = _location(info)
    label = "FE_H" if "FE_H" in info.labels else info.labels[0]
    start, stop = _window(info)
    wavelength = grid.apogee_wavelength()
    packaged, plain = _grid_code(start, stop, float(wavelength[start]), float(wavelength[stop - 1]))
    shell_where = info.repo_id or info.local_path or "."
    return f"""With the package installed (`pip install spectrafm-hf`), from Python:

```python
import numpy as np
from spectrafm_hf.data.grid import apogee_wavelength
from spectrafm_hf.predict import load_model, predict_labels

checkpoint = {where}  # {comment}
model, feature_extractor = load_model(checkpoint)
{packaged}
flux = 1 - 0.05 * np.random.default_rng(0).random((2, wavelength.size))  # normalised; NaN = bad pixel
result = predict_labels(model, feature_extractor, wavelength, flux, request=["{label}"])
values, errors = result["{label}"]  # physical units, 1σ
print(values, errors)
```

or from the shell: `spectrafm predict --model {shell_where} --input spectra.npz --request {label} --output out.csv`
(`spectra.npz` holds `wavelength` (P,) in vacuum Å, `flux` (N, P) and optionally `flux_err`, `mask`).

Without the package, the model code travels with the checkpoint (read it first: it runs locally):

```python
import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoModel

checkpoint = {where}  # {comment}
model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
feature_extractor = AutoFeatureExtractor.from_pretrained(checkpoint, trust_remote_code=True)
{plain}
flux = np.ones((2, wavelength.size))
batch = feature_extractor(wavelength, flux, request=["{label}"])
with torch.no_grad():
    out = model(**batch)
values, errors = feature_extractor.to_physical(["{label}"], out.mean, out.log_variance)
```"""


def _label_lines(labels: list[str]) -> str:
    return "\n".join(f"  - `{name}`: {LABEL_DESCRIPTIONS.get(name, 'in the units of the training table')}"
                     for name in labels)


def _coverage(info: CardInfo) -> str:
    if info.wavelength_range_A is None:
        return "not recorded"
    lo, hi = info.wavelength_range_A
    text = f"{lo:.1f}–{hi:.1f} Å (vacuum)"
    if info.n_pixels is not None:
        text += f", {info.n_pixels} pixels"
    return text


def _context(info: CardInfo) -> str:
    """The one context length of the checkpoint, and how prediction uses (or does not use) it."""
    if info.context_length is None:
        return "not recorded"
    return (f"{info.context_length} pixels per star per training step, a random subset of the star's valid "
            f"pixels (`context_length` = {info.context_length} in both `config.json` and "
            "`preprocessor_config.json`). Prediction is not limited by it: by default it reads every valid "
            "pixel of the window in one pass (`context=\"all\"`); an integer `context` splits them into "
            "disjoint chunks whose predictions are combined")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: str | None) -> bool:
    """True for an ``org/name`` Hub repo id; False for a local folder such as ``runs/x/stage2``."""
    return bool(name) and bool(_HUB_ID.match(name)) and not Path(name).exists()


def _base_model_ref(info: CardInfo) -> str:
    """Markdown for the parent checkpoint: a Hub link for a repo id; for a local parent its stage folder,
    with the local path only in a card rendered for that machine (no ``repo_id``)."""
    parent = info.base_model
    if not parent:
        return ""
    if is_hub_id(parent):
        return f"[`{parent}`](https://huggingface.co/{parent})"
    name = Path(parent).name
    if info.repo_id:
        return f"(the `{name}` checkpoint of the same pipeline run, not published on the Hub)"
    return f"(the `{name}` checkpoint of this run, local folder `{parent}`)"


def render_card(info: CardInfo) -> ModelCard:
    """Render the card of one checkpoint: YAML metadata (library, pipeline tag, tags, licence, lineage,
    datasets, model-index with the measured metrics) + the stage's prose template + its ``CardInfo``
    (an HTML comment, for re-rendering at publish time)."""
    tags = ["spectrafm", "astronomy", "stellar-spectra", "apogee", "foundation-model", info.stage,
            *info.extra_tags]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        license=info.license,
        tags=list(dict.fromkeys(tags)),
        # Hub metadata only takes repo ids; a local parent folder is named in the prose instead.
        base_model=info.base_model if is_hub_id(info.base_model) else None,
        datasets=list(info.datasets) or None,
        model_name=info.repo_id or STAGE_TITLES[info.stage],
        eval_results=_eval_results(info) or None,
    )
    caveats = {"simulated": SIMULATED_CAVEATS, "real": REAL_CAVEATS, "unknown": ""}[info.data_kind]
    card = ModelCard.from_template(
        data,
        template_path=str(template_path(info.stage)),
        title=STAGE_TITLES[info.stage],
        base_model_ref=_base_model_ref(info),
        label_lines=_label_lines(info.labels),
        coverage=_coverage(info),
        context=_context(info),
        training_data=info.training_data.strip(),
        data_caveats=caveats,
        usage=_usage(info),
        metrics_section=_metrics_section(info),
        citation=CITATION,
        source=info.source or "unknown",
    )
    card.text = card.text.rstrip("\n") + "\n\n" + _card_info_comment(info) + "\n"
    return card


def _card_info_comment(info: CardInfo) -> str:
    """``info`` as JSON in an HTML comment (``>`` escaped, so the JSON can never close the comment)."""
    return f"<!-- {CARD_INFO_MARKER} {json.dumps(asdict(info), ensure_ascii=False).replace('>', chr(92) + 'u003e')} -->"


def card_info_from_text(text: str) -> CardInfo | None:
    """The ``CardInfo`` a card was rendered from (its trailing comment), or None for another card."""
    start = text.rfind(f"<!-- {CARD_INFO_MARKER}")
    if start < 0:
        return None
    end = text.find("-->", start)
    try:
        values = json.loads(text[start + len(CARD_INFO_MARKER) + 5:end])
        for name in ("wavelength_range_A", "pixels"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return CardInfo(**values)
    except (ValueError, TypeError) as err:
        raise ValueError(f"the card's {CARD_INFO_MARKER} comment cannot be read ({err}); re-render the card "
                         "with spectrafm_hf.hub.cards.render_card") from err


def render_for_repo(info: CardInfo, repo_id: str, base_model: str | None = None,
                    datasets: list[str] | None = None) -> ModelCard:
    """The card of ``info`` as published at ``repo_id``: usage code naming the repo id, ``base_model``
    (a Hub id) when the parent is published, more Hub ``datasets``; no local path."""
    if base_model is not None and not is_hub_id(base_model):
        raise ValueError(f"--base-model {base_model!r} is not a Hub repo id (owner/name); give the id the parent "
                         "checkpoint was published under, or leave it out")
    return render_card(replace(info, repo_id=repo_id, local_path=None,
                               base_model=base_model or info.base_model,
                               datasets=list(dict.fromkeys([*info.datasets, *(datasets or [])]))))


def card_info_for_checkpoint(stage: str, model, feature_extractor, *, training_data: str,
                             data_kind: str = "simulated", base_model: str | None = None,
                             repo_id: str | None = None, metrics: Mapping[str, Any] | str | Path | None = None,
                             n_pixels: int | None = None, datasets: list[str] | None = None,
                             labels: list[str] | None = None) -> CardInfo:
    """A ``CardInfo`` for a model about to be saved: labels from ``config.named_tokens`` (or ``labels``,
    e.g. ``["FE_H"]`` for stage 3), wavelength coverage from the feature extractor's
    ``trained_wavelength_range``, context length from the config, metrics of ``stage`` from a
    ``metrics.json`` path or dict.

    ``metrics`` is optional: a card rendered before evaluation says that nothing was measured. (The
    pipeline builds its stage cards itself and renders each once, after evaluation, with its metrics.)
    """
    measured, eval_info = stage_metrics(metrics, stage)
    trained = getattr(feature_extractor, "trained_wavelength_range", None)
    context = getattr(model.config, "context_length", None)
    return CardInfo(
        stage=stage,
        labels=list(labels or model.config.named_tokens),
        training_data=training_data,
        data_kind=data_kind,
        wavelength_range_A=(float(trained[0]), float(trained[1])) if trained else None,
        n_pixels=n_pixels,
        base_model=base_model,
        repo_id=repo_id,
        datasets=list(datasets or []),
        metrics=measured or None,
        eval_info=eval_info,
        context_length=int(context) if context else None,
    )
