"""`spectrafm pipeline` end to end on the tiny config (training/configs/tiny.yaml): tiny simulated data,
three stages, baselines, evaluation, attention, report. Checks the run folder, not the science."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from spectrafm_hf.pipeline import load_config, run_pipeline, stage3_draw

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    config = yaml.safe_load((REPO / "training" / "configs" / "tiny.yaml").read_text())
    config["data"]["cache_dir"] = str(tmp / "cache")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp / "run"
    assert run_pipeline(SimpleNamespace(config=str(path), out=str(out), seed=None, stage3_trainer=None)) == 0
    return path, out


def test_pipeline_writes_checkpoints_metrics_and_report(tiny_run):
    _, out = tiny_run
    for stage in ("stage1", "stage2", "stage3"):
        assert (out / stage / "model.safetensors").exists() and (out / stage / "README.md").exists()
    assert (out / "scratch_transformer" / "model.safetensors").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    for model in ("stage3", "scratch_mlp", "ridge", "cannon", "scratch_transformer", "stage2_zero_shot"):
        bins = metrics["models"][model]["labels"]["FE_H"]["bins"]
        assert set(bins) == {"all", "feh_ge_-1", "feh_lt_-1", "feh_lt_-1.5"}
        assert bins["feh_lt_-1"]["n"] >= 12  # the iron-poor supplement is in the test set
    assert set(metrics["models"]["stage2"]["labels"]) == {"TEFF", "LOGG", "FE_H", "MG_FE", "O_FE"}
    assert "rmse_feh_lt_-1" in metrics["stage3"]["FE_H"]  # the cards' flat form
    assert metrics["attention"]["profiles"]["FE_H"]["n_lines"] > 0
    # [Mg/Fe] and [O/Fe] attention from stage 2 over the first half, where Mg I and OH lines are
    half = metrics["attention_first_half"]
    assert half["model"] == "stage2" and half["window"] == "first_half"
    assert len(half["profiles"]["MG_FE"]["wavelength"]) == 3757
    assert half["profiles"]["MG_FE"]["n_lines"] > 0 and half["profiles"]["O_FE"]["n_lines"] > 0
    assert abs(sum(half["profiles"]["O_FE"]["weight"]) - 1.0) < 1e-6
    assert "iron-poor RMSE stage3 / scratch MLP" in metrics["acceptance"]
    enrichment = metrics["acceptance"]["FE_H attention enrichment on Fe lines"]
    assert enrichment["value"] == metrics["attention"]["profiles"]["FE_H"]["enrichment"]
    assert enrichment["pass"] == (enrichment["value"] > 1.5)
    report = (out / "report.md").read_text()
    assert "pred_vs_true_feh.png" in report and (out / "pred_vs_true_feh.png").exists()
    assert "attention_first_half.png" in report and (out / "attention_first_half.png").exists()
    # what the report is rebuilt from (spectrafm report): stage 2 with σ, the test stars' truths and S/N
    with __import__("numpy").load(out / "predictions.npz") as saved:
        assert {"stage2__TEFF__sigma", "stage2__LOGG__true", "test__snr", "stage3__pred"} <= set(saved.files)
        assert (saved["test__snr"] > 0).all()
    assert len(metrics["attention_first_half"]["mean_flux"]) == 3757
    from spectrafm_hf.training.report_html import check_html_report

    assert len(check_html_report(out / "report.html")["images"]) == 8  # every figure, embedded
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) >= {"stage 1 (synthetic pre-training)", "evaluation", "report"}
    assert metrics["timings_s"] == timings  # written once, at the end, with the same timings
    assert metrics["run"]["config"] == str(tiny_run[0])


def test_stage_cards_carry_the_measured_metrics(tiny_run):
    """After evaluation every stage's README.md has a model-index with exactly metrics.json's numbers,
    and a local parent folder is named in the prose, never turned into a Hub link or base_model."""
    from huggingface_hub import ModelCard

    _, out = tiny_run
    metrics = json.loads((out / "metrics.json").read_text())
    card = ModelCard.load(out / "stage3" / "README.md")
    results = {(r.metric_config, r.metric_name): r.metric_value for r in card.data.eval_results}
    fe_h = [value for (config, _), value in results.items() if config == "FE_H"]
    assert metrics["stage3"]["FE_H"]["rmse"] in fe_h
    assert metrics["stage3"]["FE_H"]["rmse_feh_lt_-1"] in fe_h
    assert card.data.base_model is None
    assert "huggingface.co/" + str(out) not in card.text and "local folder" in card.text
    stage2 = ModelCard.load(out / "stage2" / "README.md")
    assert {r.metric_config for r in stage2.data.eval_results} == {"TEFF", "LOGG", "FE_H", "MG_FE", "O_FE"}


def test_stop_after_writes_cards_without_metrics_for_new_stages_only(tiny_run, tmp_path):
    """training/stage<k>.py stops early: a stage folder without a card gets one (nothing measured yet);
    a finished stage keeps the card a full run gave it."""
    from huggingface_hub import ModelCard

    path, out = tiny_run
    run = tmp_path / "early"
    for stage in ("stage1", "stage2"):
        shutil.copytree(out / stage, run / stage)
    (run / "stage2" / "README.md").unlink()
    assert run_pipeline(SimpleNamespace(config=str(path), out=str(run), seed=None, stage3_trainer=None),
                        stop_after="stage2") == 0
    stage2 = ModelCard.load(run / "stage2" / "README.md")
    assert not stage2.data.eval_results and "No metrics were measured" in stage2.text
    assert (run / "stage1" / "README.md").read_text() == (out / "stage1" / "README.md").read_text()
    assert not (run / "stage3").exists() and not (run / "metrics.json").exists()


def test_rerun_reuses_finished_stages_and_cached_data(tiny_run):
    path, out = tiny_run
    assert run_pipeline(SimpleNamespace(config=str(path), out=str(out), seed=None, stage3_trainer=None)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(entry["skipped"] for entry in metrics["training"].values())


def test_stage3_trainer_option_and_config_errors(tiny_run, tmp_path):
    path, out = tiny_run
    run = tmp_path / "trainer_run"
    shutil.copytree(out / "stage1", run / "stage1")
    shutil.copytree(out / "stage2", run / "stage2")
    config = yaml.safe_load(path.read_text())
    config["stage3"]["rehearsal"] = 4  # the quickstart's rehearsal runs on the Trainer path too
    path = tmp_path / "tiny_rehearsal.yaml"
    path.write_text(yaml.safe_dump(config))
    assert run_pipeline(SimpleNamespace(config=str(path), out=str(run), seed=None, stage3_trainer="transformers")) == 0
    complete = json.loads((run / "stage3" / "stage_complete.json").read_text())
    assert complete["trainer"] == "transformers" and complete["rehearsal"] == 4
    recorded = json.loads((run / "stage3" / "stage_config.json").read_text())
    assert recorded["data"]["rehearsal"] is not None  # the synthetic stars it drew from, by fingerprint
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="iron-rich"):
        stage3_draw(__import__("numpy").array([-2.0, -1.5, 0.1]), 2, seed=0)


def test_trainer_path_with_a_schedule_it_cannot_run_is_refused_before_any_training(tmp_path):
    config = yaml.safe_load((REPO / "training" / "configs" / "tiny.yaml").read_text())
    config["stage3"].update(schedule="cosine_restarts", restart_period=2)
    path = tmp_path / "tiny_restarts.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="cosine_restarts"):
        run_pipeline(SimpleNamespace(config=str(path), out=str(tmp_path / "run"), seed=None,
                                     stage3_trainer="transformers"))
    assert not (tmp_path / "run" / "stage1").exists()


def test_cached_datasets_from_another_simulator_version_are_rebuilt(tmp_path, monkeypatch):
    from spectrafm_hf.data import simulator as sim
    from spectrafm_hf.data.schema import get_metadata
    from spectrafm_hf.pipeline.data import _cached_dataset

    splits = {"train": 0.5, "validation": 0.25, "test": 0.25}
    first = _cached_dataset(tmp_path, "synthetic", 8, 3, "apogee", splits)
    assert get_metadata(first)["simulator_version"] == sim.SIMULATOR_VERSION
    folder = tmp_path / "synthetic-apogee-n8-seed3"
    stamp = (folder / "dataset_dict.json").stat().st_mtime_ns
    again = _cached_dataset(tmp_path, "synthetic", 8, 3, "apogee", splits)  # same version: reused as is
    assert (folder / "dataset_dict.json").stat().st_mtime_ns == stamp and again["train"]["id"] == first["train"]["id"]
    monkeypatch.setattr(sim, "SIMULATOR_VERSION", "0.0-test")
    rebuilt = _cached_dataset(tmp_path, "synthetic", 8, 3, "apogee", splits)
    assert get_metadata(rebuilt)["simulator_version"] == "0.0-test"
    assert rebuilt["train"]["id"] == first["train"]["id"]  # same stars, rebuilt by the current code


def test_cached_datasets_with_other_split_assignments_are_rebuilt(tmp_path):
    """The cache folder name does not hold the split fractions: a cache whose train/validation/test
    membership differs from what the config asks is rebuilt; listing the same splits in another
    order reuses it."""
    from spectrafm_hf.pipeline.data import _cached_dataset

    folder = tmp_path / "synthetic-apogee-n12-seed3"
    first = _cached_dataset(tmp_path, "synthetic", 12, 3, "apogee", {"train": 0.5, "validation": 0.25, "test": 0.25})
    stamp = (folder / "dataset_dict.json").stat().st_mtime_ns
    reordered = _cached_dataset(tmp_path, "synthetic", 12, 3, "apogee",
                                {"test": 0.25, "train": 0.5, "validation": 0.25})
    assert (folder / "dataset_dict.json").stat().st_mtime_ns == stamp
    assert all(reordered[k]["id"] == first[k]["id"] for k in first)
    other = _cached_dataset(tmp_path, "synthetic", 12, 3, "apogee", {"train": 0.75, "validation": 0.25})
    assert (folder / "dataset_dict.json").stat().st_mtime_ns != stamp
    assert set(other) == {"train", "validation"} and len(other["train"]) == 9


def test_rerun_with_a_different_config_names_the_differing_keys_and_trains_nothing(tiny_run, tmp_path):
    """Issue 13 item 10: a finished stage is reused only if made with the same settings and data."""
    path, out = tiny_run
    config = yaml.safe_load(path.read_text())
    config["stage2"]["max_steps"] = int(config["stage2"]["max_steps"]) + 1
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"stage2.*loop\.max_steps"):
        run_pipeline(SimpleNamespace(config=str(changed), out=str(out), seed=None, stage3_trainer=None))
    with pytest.raises(ValueError, match=r"seed: 0 → 1"):
        run_pipeline(SimpleNamespace(config=str(path), out=str(out), seed=1, stage3_trainer=None))
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing retrained, rewritten or deleted


def test_a_run_folder_of_other_settings_is_refused_before_any_data_is_made(tiny_run, tmp_path, monkeypatch):
    """Pointing --out at a run of another recipe costs seconds: the settings recorded in its stage
    folders are compared before data is simulated or read (the data cache stays untouched)."""
    import spectrafm_hf.pipeline.data as pipeline_data

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the stage folders were checked")

    monkeypatch.setattr(pipeline_data, "load_data", no_data)
    path, out = tiny_run
    config = yaml.safe_load(path.read_text())
    config["data"]["cache_dir"] = str(tmp_path / "cache")
    for stage, key, pattern in (("stage1", "max_steps", r"stage1 .*loop\.max_steps"),
                                ("stage3", "learning_rate", r"stage3 .*learning_rate")):
        changed = yaml.safe_load(yaml.safe_dump(config))
        changed[stage][key] = changed[stage][key] * 2
        changed_path = tmp_path / f"{stage}.yaml"
        changed_path.write_text(yaml.safe_dump(changed))
        with pytest.raises(ValueError, match=pattern):
            run_pipeline(SimpleNamespace(config=str(changed_path), out=str(out), seed=None, stage3_trainer=None))
    with pytest.raises(ValueError, match=r"stage1 .*seed: 0 → 3"):
        run_pipeline(SimpleNamespace(config=str(path), out=str(out), seed=3, stage3_trainer=None))
    assert not (tmp_path / "cache").exists()


def test_pipeline_out_must_be_a_spectrafm_folder(tiny_run, tmp_path, monkeypatch):
    from spectrafm_hf.output_guard import UnsafeOutputError

    path, _ = tiny_run
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(tmp_path)
    for out in ("", ".", "mine"):
        with pytest.raises(UnsafeOutputError):
            run_pipeline(SimpleNamespace(config=str(path), out=out, seed=None, stage3_trainer=None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
