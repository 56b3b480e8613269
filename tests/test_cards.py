"""Model cards: YAML metadata, lineage, measured metrics only, round-trip through ModelCard.load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from spectrafm_hf.hub.cards import STAGES, CardInfo, render_card, result_key, stage_metrics, template_path

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
    for stage in (*STAGES, "dataset"):
        canonical = template_path(stage) if stage != "dataset" else template_path("stage1").with_name("dataset.md")
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
    assert meta["pipeline_tag"] == "tabular-regression"
    results = meta["model-index"][0]["results"]
    got = {(m["type"], r["dataset"]["config"], m["config"]): m["value"] for r in results for m in r["metrics"]}
    assert got == {("rmse", "all", "FE_H"): 0.0937, ("rmse", "feh_lt_-1", "FE_H"): 0.2318}
    assert results[0]["dataset"]["split"] == "test"
    text = card.text
    assert "| FE_H | all scored stars | RMSE (`rmse`) | 0.0937 |" in text and "1234 spectra" in text
    assert "| FE_H | [Fe/H] < −1 | RMSE (`rmse_feh_lt_-1`) | 0.2318 |" in text
    assert "z-score std (`z_std`)" not in text  # unmeasured (NaN) → absent, never invented
    assert "simulated" in text and "16106–16220 Å" in text and "org/spectrafm-stage3" in text
    assert "2411.04750" in text

    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)
    assert loaded.data.base_model == "org/spectrafm-stage2"
    assert [(result_key(e), e.metric_config, e.metric_value) for e in loaded.data.eval_results] == [
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


# ---- issue 14: cards that are true on the Hub -------------------------------------------------------

def _run_metrics() -> dict:
    """A metrics.json as the pipeline writes it: flat card entries, per-model bins with star counts, and
    the test set's composition (the numbers are arbitrary but distinct, so a mix-up would show)."""
    bins = {"all": {"n": 990, "rmse": 0.168, "bias": 0.0317, "sigma_mad": 0.156},
            "feh_ge_-1": {"n": 584, "rmse": 0.128, "bias": -0.0059, "sigma_mad": 0.116},
            "feh_lt_-1": {"n": 406, "rmse": 0.2125, "bias": 0.1115, "sigma_mad": 0.164}}
    scratch_bins = {k: {**v, "rmse": v["rmse"] * 3} for k, v in bins.items()}
    calibration = {"before": {"all": {"n": 990, "z_std": 0.798, "coverage_68": 0.781, "coverage_95": 0.985}},
                   "after": {"all": {"n": 990, "z_std": 1.03, "coverage_68": 0.66, "coverage_95": 0.946}}}
    flat = {"_eval": {"dataset_name": "simulated observed test set", "dataset_type": "spectrafm-sim-observed",
                      "split": "test", "n_spectra": 1000},
            "FE_H": {"rmse": 0.168, "bias": 0.0317, "sigma_mad": 0.156, "rmse_feh_ge_-1": 0.128,
                     "bias_feh_ge_-1": -0.0059, "rmse_feh_lt_-1": 0.2125, "bias_feh_lt_-1": 0.1115,
                     "z_std": 0.798, "z_std_calibrated": 1.03, "coverage_68": 0.781, "coverage_68_calibrated": 0.66}}
    return {
        "stage3": flat,
        "models": {"stage3": {"labels": {"FE_H": {"bins": bins, "calibration": calibration}}},
                   "scratch_transformer": {"labels": {"FE_H": {"bins": scratch_bins, "calibration": calibration}}}},
        "test_set": {"n": 1000, "n_feh_lt_-1": 406,
                     "description": "1000 simulated observed stars: the observed test split (600 stars, "
                                    "APOGEE-like prior) plus 400 stars of the same prior restricted to [Fe/H] < −1."},
    }


def _table_rows(text: str) -> list[list[str]]:
    section = text.split("## Evaluation")[1].split("## Limitations")[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| FE_H")]


def test_every_card_number_traces_to_metrics_json_with_its_star_count(tmp_path):
    """The model-index (parsed by huggingface_hub's own parser) and the Markdown table hold exactly the
    numbers of metrics.json, each beside the number of stars it was measured on and the test set's
    composition (400 of the 1000 stars drawn with [Fe/H] < −1)."""
    from huggingface_hub.repocard_data import model_index_to_eval_results

    metrics = _run_metrics()
    measured, eval_info = stage_metrics(metrics, "stage3", model="stage3")
    card = render_card(_info("stage3", metrics=measured, eval_info=eval_info, pixels=(4107, 4619)))
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    _, results = model_index_to_eval_results(loaded.data.to_dict()["model-index"])
    flat, bins = metrics["stage3"]["FE_H"], metrics["models"]["stage3"]["labels"]["FE_H"]["bins"]
    assert sorted(result_key(r) for r in results) == sorted(flat)
    for result in results:
        assert result.metric_value == flat[result_key(result)]
        n = bins[result.dataset_config]["n"]
        assert f"{n} " in result.dataset_name and result.dataset_split == "test"
    rows = _table_rows(loaded.text)
    assert len(rows) == len(flat)
    for _, stars, metric, value in rows:
        key = metric.split("`")[1]
        assert value == f"{flat[key]:.4g}"
        assert f"{bins[split_subset(key)]['n']} " in stars
    assert "400 stars of the same prior restricted to [Fe/H] < −1" in loaded.text
    assert "406 of the 990 scored stars (41 %) have [Fe/H] < −1" in loaded.text


def split_subset(key: str) -> str:
    from spectrafm_hf.hub.cards import split_metric_key

    return split_metric_key(key)[1]


def test_metric_keys_split_and_join():
    from spectrafm_hf.hub.cards import metric_key, split_metric_key

    for key, parts in {"rmse": ("rmse", "all", False), "rmse_feh_lt_-1.5": ("rmse", "feh_lt_-1.5", False),
                       "sigma_mad_feh_ge_-1": ("sigma_mad", "feh_ge_-1", False),
                       "coverage_68_calibrated": ("coverage_68", "all", True)}.items():
        assert split_metric_key(key) == parts and metric_key(*parts) == key


@pytest.mark.parametrize("stage, pixels, window", [
    ("stage1", (0, 7514), "[0:7514]"), ("stage2", (0, 3757), "[0:3757]"), ("stage3", (4107, 4619), "[4107:4619]"),
    ("scratch", (4107, 4619), "[4107:4619]")])
def test_usage_code_reads_the_stage_own_window(stage, pixels, window):
    """Each card's two snippets read the pixels that stage was trained on; the snippet without the
    package computes exactly the package's APOGEE grid."""
    import re

    import numpy as np

    from spectrafm_hf.data.grid import apogee_wavelength

    card = render_card(_info(stage, pixels=pixels, labels=["FE_H"]))
    snippets = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    assert f"apogee_wavelength(){window}" in snippets[0] and f"apogee{window}" in snippets[1]
    grid_lines = "\n".join(line for line in snippets[1].splitlines()
                           if line.startswith(("apstar", "apogee", "wavelength")))
    namespace = {"np": np}
    exec(grid_lines, namespace)  # noqa: S102 - our own rendered card
    np.testing.assert_array_equal(namespace["wavelength"], apogee_wavelength()[slice(*pixels)])


def test_a_card_without_pixels_uses_its_wavelength_range():
    card = render_card(_info("stage3", wavelength_range_A=(16105.9, 16220.0)))
    assert "apogee_wavelength()[4107:4619]" in card.text


def test_published_card_names_the_repo_never_a_local_folder(tmp_path):
    """The card in a run folder names that folder; re-rendered for a repo id (as publish does) it names
    the repo, no local path, and lists a published parent as base_model."""
    from spectrafm_hf.hub.cards import card_info_from_text, render_for_repo

    local = render_card(_info("stage3", labels=["FE_H"], base_model="runs/quickstart/stage2",
                              local_path="runs/quickstart/stage3", pixels=(4107, 4619), context_length=128))
    assert 'checkpoint = "runs/quickstart/stage3"' in local.text
    assert "local folder `runs/quickstart/stage2`" in local.text
    assert "base_model" not in _front_matter(str(local))
    local.save(tmp_path / "README.md")
    info = card_info_from_text((tmp_path / "README.md").read_text())
    assert info == _info("stage3", labels=["FE_H"], base_model="runs/quickstart/stage2",
                         local_path="runs/quickstart/stage3", pixels=(4107, 4619), context_length=128)
    published = render_for_repo(info, "org/spectrafm-stage3")
    body = published.text.split("<!--")[0]
    assert "runs/quickstart" not in body and "path/to/checkpoint" not in body and "local folder" not in body
    assert 'checkpoint = "org/spectrafm-stage3"' in body and "--model org/spectrafm-stage3" in body
    assert "the `stage2` checkpoint of the same pipeline run, not published on the Hub" in body
    assert "base_model" not in _front_matter(str(published))
    linked = render_for_repo(info, "org/spectrafm-stage3", base_model="org/spectrafm-stage2", datasets=["org/sim"])
    meta = _front_matter(str(linked))
    assert meta["base_model"] == "org/spectrafm-stage2" and meta["datasets"] == ["org/sim"]
    with pytest.raises(ValueError, match="not a Hub repo id"):
        render_for_repo(info, "org/x", base_model="runs/quickstart/stage2")


def test_context_length_is_one_value_in_card_config_and_preprocessor(tmp_path, tiny_model, feature_extractor):
    """A stage records its training context in both saved configs (they used to say 128 and 512), and
    the card states that one value and how prediction uses it."""
    from spectrafm_hf.checkpoints import save_checkpoint
    from spectrafm_hf.training.stages import StageSpec, record_training_context

    spec = StageSpec.from_dict("stage3", {"window": "fe_window", "request": ["FE_H"], "batch_size": 4,
                                          "context_length": 96, "max_steps": 1})
    assert feature_extractor.context_length != 96
    record_training_context(tiny_model, feature_extractor, spec)
    folder = save_checkpoint(tiny_model, feature_extractor, tmp_path / "ckpt",
                             card=render_card(_info("stage3", context_length=96)))
    config = json.loads((folder / "config.json").read_text())
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert config["context_length"] == preprocessor["context_length"] == 96
    text = (folder / "README.md").read_text()
    assert "96 pixels per star per training step" in text and "`context_length` = 96 in both" in text


def test_every_checkpoint_folder_of_the_pipeline_gets_a_card(tmp_path):
    """stage_cards covers every folder the pipeline trains, the scratch transformer included, with its
    window and context; write_cards gives the scratch transformer numbers from metrics.json's models."""
    from types import SimpleNamespace

    from spectrafm_hf.pipeline.config import load_config
    from spectrafm_hf.pipeline.report import stage_cards, write_cards

    config = load_config(Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.yaml")
    data = SimpleNamespace(synthetic_train=[0] * 30, observed_train=[0] * 20)
    folders = ["stage1", "stage2", "stage3", "stage3_from_stage1", "scratch_transformer"]
    cards = stage_cards(config, data, tmp_path, folders)
    assert list(cards) == folders
    assert cards["scratch_transformer"].stage == "scratch" and cards["scratch_transformer"].pixels == (4107, 4619)
    assert cards["stage2"].pixels == (0, 3757) and cards["stage1"].context_length == 32
    for folder in folders:
        (tmp_path / folder).mkdir()
    write_cards(tmp_path, cards, _run_metrics())
    for folder in folders:
        loaded = ModelCard.load(tmp_path / folder / "README.md")
        assert loaded.data.pipeline_tag == "tabular-regression" and loaded.data.library_name == "transformers"
        assert "path/to/checkpoint" not in loaded.text
    scratch = ModelCard.load(tmp_path / "scratch_transformer" / "README.md")
    values = {result_key(r): r.metric_value for r in scratch.data.eval_results}
    assert values["rmse_feh_lt_-1"] == _run_metrics()["models"]["scratch_transformer"]["labels"]["FE_H"]["bins"][
        "feh_lt_-1"]["rmse"]
    assert "A baseline, not a foundation model" in scratch.text
    assert ModelCard.load(tmp_path / "stage2" / "README.md").data.eval_results is None  # none measured
    assert "observed-like" not in cards["stage1"].training_data
    config.stage1.augment = {"snr": [100, 300]}  # a stage 1 on perturbed spectra says so on its card
    augmented = stage_cards(config, data, tmp_path, ["stage1", "stage2"])
    assert "Gaussian noise at SNR 100–300 per pixel" in augmented["stage1"].training_data
    assert "observed-like" not in augmented["stage2"].training_data


def test_metric_names_are_unique_per_label_and_say_the_subset():
    metrics = _run_metrics()
    measured, eval_info = stage_metrics(metrics, "stage3", model="stage3")
    results = render_card(_info("stage3", metrics=measured, eval_info=eval_info)).data.eval_results
    names = [(r.metric_config, r.metric_name) for r in results]
    assert len(set(names)) == len(names) == len(metrics["stage3"]["FE_H"])
    assert ("FE_H", "RMSE ([Fe/H]; [Fe/H] < −1: 406 stars)") in names
