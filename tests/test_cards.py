"""Model cards: YAML metadata, lineage, measured metrics only, round-trip through ModelCard.load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from spectrafm_hf.hub.cards import STAGES, CardInfo, render_card, stage_metrics, template_path

LABELS = ["TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"]
METRICS = {
    "stage3": {
        "_eval": {"dataset_name": "simulated observed test set", "dataset_type": "spectrafm-sim-observed",
                  "split": "test", "n_spectra": 1234},
        "FE_H": {"rmse": 0.0937, "rmse_feh_lt_-1": 0.2318, "bias_feh_lt_-1": None,
                 "z_std": float("nan")},
    },
    "stage2": {"TEFF": {"rmse": 37.7}, "LOGG": {"rmse": 0.092, "sigma_mad": None}},
    "baselines": {"mlp": {"FE_H": {"rmse": 0.158}}},
}


def _info(stage, **kw):
    base = dict(stage=stage, labels=LABELS if stage != "stage3" else ["FE_H"],
                training_data="8000 simulated synthetic spectra, all 7514 pixels, five labels.",
                wavelength_range_A=(15152.0, 16955.0), n_pixels=7514)
    base.update(kw)
    return CardInfo(**base)


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_every_stage_template_exists_and_hub_cards_points_at_it():
    repo_cards = Path(__file__).resolve().parents[1] / "hub_cards"
    for stage in STAGES:
        canonical = template_path(stage)
        assert canonical.is_file() and "{{ card_data }}" in canonical.read_text()
        # hub_cards/ is a pointer (symlink) to the one canonical copy, never a diverging duplicate
        assert (repo_cards / f"{stage}.md").resolve() == canonical.resolve()


def test_pipeline_descriptions_are_a_packaged_template_file():
    from spectrafm_hf.hub.cards import load_descriptions
    from spectrafm_hf.pipeline.report import STAGE_CARDS

    repo_cards = Path(__file__).resolve().parents[1] / "hub_cards"
    text = load_descriptions()
    assert set(text["cards"]) == set(STAGE_CARDS)  # every stage card the pipeline writes has its prose
    assert text["cards"]["stage3"].format(n_train=100).startswith("100 simulated observed stars with [Fe/H] > −1")
    assert "{widths}" in text["models"]["scratch_mlp"] and "{n_test}" in text["test_set"]
    packaged = Path(str(template_path("stage1"))).with_name("descriptions.yaml")
    assert (repo_cards / "descriptions.yaml").resolve() == packaged.resolve()


def test_stage3_card_metadata_metrics_and_round_trip(tmp_path):
    metrics, eval_info = stage_metrics(METRICS, "stage3")
    assert metrics == {"FE_H": {"rmse": 0.0937, "rmse_feh_lt_-1": 0.2318}}  # null and NaN dropped
    card = render_card(_info("stage3", base_model="org/spectrafm-stage2", repo_id="org/spectrafm-stage3",
                             metrics=metrics, eval_info=eval_info, data_kind="simulated",
                             datasets=["org/sim-observed"]))
    meta = _front_matter(str(card))
    assert meta["library_name"] == "transformers"
    assert meta["license"] == "mit"
    assert meta["base_model"] == "org/spectrafm-stage2"
    assert meta["datasets"] == ["org/sim-observed"]
    assert {"spectrafm", "stage3", "astronomy"} <= set(meta["tags"])
    results = meta["model-index"][0]["results"]
    got = {(m["type"], m["config"]): m["value"] for r in results for m in r["metrics"]}
    assert got == {("rmse", "FE_H"): 0.0937, ("rmse_feh_lt_-1", "FE_H"): 0.2318}
    assert results[0]["dataset"]["split"] == "test"
    text = card.text
    assert "| FE_H | RMSE (`rmse`) | 0.0937 |" in text and "1234 spectra" in text
    assert "z-score std (`z_std`)" not in text  # unmeasured (NaN) → absent, never invented
    assert "simulated" in text and "16106–16220 Å" in text and "org/spectrafm-stage3" in text
    assert "2411.04750" in text

    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)
    assert loaded.data.base_model == "org/spectrafm-stage2"
    assert [(e.metric_type, e.metric_config, e.metric_value) for e in loaded.data.eval_results] == [
        ("rmse", "FE_H", 0.0937), ("rmse_feh_lt_-1", "FE_H", 0.2318)]
    assert loaded.text == card.text


def test_card_without_metrics_says_so_and_has_no_model_index():
    card = render_card(_info("stage1", metrics=None))
    meta = _front_matter(str(card))
    assert "model-index" not in meta and "base_model" not in meta
    assert "No metrics were measured" in card.text
    assert not any(ch.isdigit() for ch in card.text.split("## Evaluation")[1].split("## Limitations")[0])


def test_stage_lineage_and_caveats_per_data_kind():
    real = render_card(_info("stage2", base_model="org/s1", data_kind="real"))
    assert _front_matter(str(real))["base_model"] == "org/s1"
    assert "[`org/s1`](https://huggingface.co/org/s1)" in real.text
    assert "built-in APOGEE H-band simulator" not in real.text
    sim = render_card(_info("stage2", base_model="org/s1", data_kind="simulated"))
    assert "built-in APOGEE H-band simulator" in sim.text
    converted = render_card(_info("converted", source="zenodo:14041360/stage1", data_kind="unknown"))
    assert "zenodo:14041360/stage1" in converted.text and "15000–17000 Å" in converted.text


def test_label_units_are_stated():
    card = render_card(_info("stage1"))
    assert "`TEFF`: effective temperature, K" in card.text and "`FE_H`: [Fe/H], dex" in card.text
    assert "15152.0–16955.0 Å (vacuum), 7514 pixels" in card.text


def test_metrics_json_from_file_and_bad_values(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(METRICS))
    assert stage_metrics(path, "stage2")[0] == {"TEFF": {"rmse": 37.7}, "LOGG": {"rmse": 0.092}}
    assert stage_metrics(path, "stage1") == ({}, None)
    assert stage_metrics(tmp_path / "absent.json", "stage1") == ({}, None)
    with pytest.raises(ValueError, match=r"\['stage3'\]\['FE_H'\]\['rmse'\]: expected a number"):
        stage_metrics({"stage3": {"FE_H": {"rmse": "0.1"}}}, "stage3")
    with pytest.raises(ValueError, match="must map metric"):
        stage_metrics({"stage3": {"FE_H": 0.1}}, "stage3")


def test_bad_card_info_is_refused():
    with pytest.raises(ValueError, match="unknown card stage 'stage4'"):
        _info("stage4")
    with pytest.raises(ValueError, match="training_data is empty"):
        _info("stage1", training_data=" ")
    with pytest.raises(ValueError, match="data_kind"):
        _info("stage1", data_kind="fake")


def test_usage_code_in_the_card_runs(tmp_path, monkeypatch):
    """Both Python snippets of a rendered card run against a real (tiny) checkpoint."""
    import re

    from test_remote_code import make_tiny_checkpoint

    folder = make_tiny_checkpoint(tmp_path / "tiny")
    card = render_card(_info("stage3", labels=["FE_H"], repo_id=str(folder)))
    snippets = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    assert len(snippets) == 2
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    for code in snippets:
        namespace: dict = {}
        exec(compile(code, "card-snippet", "exec"), namespace)  # noqa: S102 - our own rendered card
        values, errors = namespace["values"], namespace["errors"]
        assert values.shape[0] == 2 and (errors > 0).all()


def test_card_info_for_checkpoint_reads_model_and_metrics(tmp_path):
    from spectrafm_hf import SpectraFMConfig, SpectraFMFeatureExtractor
    from spectrafm_hf.hub.cards import card_info_for_checkpoint
    from spectrafm_hf.modeling_spectrafm import SpectraFMForLabelPrediction

    model = SpectraFMForLabelPrediction(SpectraFMConfig.tiny())
    fe = SpectraFMFeatureExtractor(flux_median=1.0, flux_std=0.01, trained_wavelength_range=[16105.9, 16220.0])
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    info = card_info_for_checkpoint("stage3", model, fe, training_data="100 stars.", labels=["FE_H"],
                                    base_model="org/s2", metrics=tmp_path / "metrics.json")
    assert info.wavelength_range_A == (16105.9, 16220.0) and info.labels == ["FE_H"]
    assert info.metrics == {"FE_H": {"rmse": 0.0937, "rmse_feh_lt_-1": 0.2318}}
    assert info.eval_info["n_spectra"] == 1234
    stage1 = card_info_for_checkpoint("stage1", model, fe, training_data="x", metrics=None)
    assert stage1.labels == list(model.config.named_tokens) and stage1.metrics is None
