"""Model cards for SpectraFM checkpoints: one template per stage, rendered with ``huggingface_hub``.

Templates
---------
The canonical templates are package resources, ``spectrafm_hf/hub/templates/{stage}.md`` (Jinja2,
rendered by ``ModelCard.from_template``), so rendering works the same from a git checkout and from an
installed wheel. The top-level ``hub_cards/`` folder only points at them (see ``hub_cards/README.md``).
``templates/descriptions.yaml`` holds the prose the pipeline fills in (training data per stage, model
descriptions of the report); :func:`load_descriptions` reads it.

Stages: ``stage1`` (synthetic pre-training), ``stage2`` (observed fine-tune), ``stage3`` ([Fe/H] window
fine-tune on 100 iron-rich stars), ``converted`` (a checkpoint of the original code, converted).

Metrics input (the pipeline's ``metrics.json``)
-----------------------------------------------
A JSON object keyed by stage; each stage maps a label to ``{metric name: number}``; one optional
reserved key ``"_eval"`` per stage describes the evaluation set::

    {
      "stage3": {
        "_eval": {"dataset_name": "simulated observed test set", "dataset_type": "spectrafm-sim-observed",
                  "split": "test", "n_spectra": 2000},
        "FE_H": {"rmse": 0.094, "rmse_feh_ge_-1": 0.088, "rmse_feh_lt_-1": 0.232,
                 "bias_feh_lt_-1": 0.11, "z_std": 1.43}
      },
      "stage2": {"TEFF": {"rmse": 37.7}, "LOGG": {"rmse": 0.092}}
    }

Metric values are in the label's physical units (K, dex), except dimensionless ones (``z_std``,
``coverage_68``). Any other top-level keys (e.g. baselines) are ignored by the cards. A metric that is
absent, ``null`` or non-finite is simply not shown: a card never contains a number that was not measured.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data.labels import LABEL_DESCRIPTIONS  # each label with its unit, for the outputs section

STAGES = ("stage1", "stage2", "stage3", "converted")

STAGE_TITLES = {
    "stage1": "SpectraFM stage 1: pre-trained on synthetic APOGEE spectra",
    "stage2": "SpectraFM stage 2: fine-tuned on observed APOGEE spectra",
    "stage3": "SpectraFM stage 3: [Fe/H] from the 16106–16220 Å window",
    "converted": "SpectraFM: converted original checkpoint",
}

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


def stage_metrics(metrics: Mapping[str, Any] | str | Path | None, stage: str
                  ) -> tuple[dict[str, dict[str, float]], dict[str, Any] | None]:
    """Pick one stage's measured metrics out of a ``metrics.json`` (path or already-loaded dict).

    Returns ``({label: {metric: value}}, eval_info)``; unmeasured values (null, NaN, inf) are dropped,
    and labels left with no metric are dropped too. A missing file/stage gives ``({}, None)``.
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
    return out, dict(eval_info) if eval_info is not None else None


def _eval_results(info: CardInfo) -> list[EvalResult]:
    """One ``EvalResult`` per measured (label, metric): the card's ``model-index``."""
    if not info.metrics:
        return []
    ev = info.eval_info or {}
    dataset_name = str(ev.get("dataset_name", "held-out test set"))
    dataset_type = str(ev.get("dataset_type", "spectrafm-simulated-apogee" if info.data_kind == "simulated"
                                else "apogee-dr17"))
    results = []
    for label, per_metric in info.metrics.items():
        for name, value in per_metric.items():
            results.append(EvalResult(
                task_type="tabular-regression",
                task_name="Stellar label regression from spectra",
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=ev.get("split"),
                metric_type=name,
                metric_name=f"{METRIC_NAMES.get(name, name)} ({label})",
                metric_value=value,
                metric_config=label,
            ))
    return results


def _metrics_section(info: CardInfo) -> str:
    """Markdown table of the measured metrics, or an honest sentence that there are none."""
    if not info.metrics:
        return ("No metrics were measured for this checkpoint; none are reported. Evaluate it on your own "
                "held-out spectra before use.")
    ev = info.eval_info or {}
    where = str(ev.get("dataset_name", "a held-out test set"))
    if ev.get("n_spectra") is not None:
        where += f", {int(ev['n_spectra'])} spectra"
    lines = [f"Measured by the pipeline on {where} (label units: K for TEFF, dex otherwise).", "",
             "| label | metric | value |", "|---|---|---|"]
    for label, per_metric in info.metrics.items():
        for name, value in per_metric.items():
            lines.append(f"| {label} | {METRIC_NAMES.get(name, name)} (`{name}`) | {value:.4g} |")
    return "\n".join(lines)


def _usage(info: CardInfo) -> str:
    """Working load-and-predict code for this checkpoint (run by the tests on a tiny checkpoint)."""
    where = info.repo_id or "path/to/checkpoint"
    label = "FE_H" if "FE_H" in info.labels else info.labels[0]
    grid = ("wavelength = apogee_wavelength()[4107:4619]  # the 16106–16220 Å window, vacuum Å"
            if info.stage == "stage3" else
            "wavelength = apogee_wavelength()  # 7514 pixels, vacuum Å")
    return f"""With the package installed (`pip install spectrafm-hf`), from Python:

```python
import numpy as np
from spectrafm_hf.data.grid import apogee_wavelength
from spectrafm_hf.predict import load_model, predict_labels

model, feature_extractor = load_model("{where}")
{grid}
flux = 1 - 0.05 * np.random.default_rng(0).random((2, wavelength.size))  # normalised; NaN = bad pixel
result = predict_labels(model, feature_extractor, wavelength, flux, request=["{label}"])
values, errors = result["{label}"]  # physical units, 1σ
print(values, errors)
```

or from the shell: `spectrafm predict --model {where} --input spectra.npz --request {label} --output out.csv`
(`spectra.npz` holds `wavelength` (P,) in vacuum Å, `flux` (N, P) and optionally `flux_err`, `mask`).

Without the package, the model code travels with the checkpoint (read it first: it runs locally):

```python
import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoModel

model = AutoModel.from_pretrained("{where}", trust_remote_code=True).eval()
feature_extractor = AutoFeatureExtractor.from_pretrained("{where}", trust_remote_code=True)
wavelength = np.linspace(16106.0, 16220.0, 500)  # vacuum Å
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


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: str | None) -> bool:
    """True for an ``org/name`` Hub repo id; False for a local folder such as ``runs/x/stage2``."""
    return bool(name) and bool(_HUB_ID.match(name)) and not Path(name).exists()


def _base_model_ref(base_model: str | None) -> str:
    """Markdown for the parent checkpoint: a Hub link for a repo id, the folder name otherwise."""
    if not base_model:
        return ""
    if is_hub_id(base_model):
        return f"[`{base_model}`](https://huggingface.co/{base_model})"
    return f"(local folder `{base_model}`)"


def render_card(info: CardInfo) -> ModelCard:
    """Render the card of one checkpoint: YAML metadata (library, tags, licence, lineage, datasets,
    model-index with the measured metrics) + the stage's prose template."""
    tags = ["spectrafm", "astronomy", "stellar-spectra", "apogee", "foundation-model", info.stage,
            *info.extra_tags]
    data = ModelCardData(
        library_name="transformers",
        license=info.license,
        tags=list(dict.fromkeys(tags)),
        # Hub metadata only takes repo ids; a local parent folder is named in the prose instead.
        base_model=info.base_model if is_hub_id(info.base_model) else None,
        datasets=list(info.datasets) or None,
        model_name=info.repo_id or STAGE_TITLES[info.stage],
        eval_results=_eval_results(info) or None,
    )
    caveats = {"simulated": SIMULATED_CAVEATS, "real": REAL_CAVEATS, "unknown": ""}[info.data_kind]
    return ModelCard.from_template(
        data,
        template_path=str(template_path(info.stage)),
        title=STAGE_TITLES[info.stage],
        base_model_ref=_base_model_ref(info.base_model),
        label_lines=_label_lines(info.labels),
        coverage=_coverage(info),
        training_data=info.training_data.strip(),
        data_caveats=caveats,
        usage=_usage(info),
        metrics_section=_metrics_section(info),
        citation=CITATION,
        source=info.source or "unknown",
    )


def card_info_for_checkpoint(stage: str, model, feature_extractor, *, training_data: str,
                             data_kind: str = "simulated", base_model: str | None = None,
                             repo_id: str | None = None, metrics: Mapping[str, Any] | str | Path | None = None,
                             n_pixels: int | None = None, datasets: list[str] | None = None,
                             labels: list[str] | None = None) -> CardInfo:
    """A ``CardInfo`` for a model about to be saved: labels from ``config.named_tokens`` (or ``labels``,
    e.g. ``["FE_H"]`` for stage 3), wavelength coverage from the feature extractor's
    ``trained_wavelength_range``, metrics of ``stage`` from a ``metrics.json`` path or dict.

    ``metrics`` is optional: a card rendered before evaluation says that nothing was measured. (The
    pipeline builds its stage cards itself and renders each once, after evaluation, with its metrics.)
    """
    measured, eval_info = stage_metrics(metrics, stage)
    trained = getattr(feature_extractor, "trained_wavelength_range", None)
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
    )
