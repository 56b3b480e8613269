"""The pipeline's typed config: every shipped YAML loads, typos are refused with a suggestion, and the
defaults are the documented ones."""

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from spectrafm_hf.pipeline import PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"


def _write(tmp_path, config: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _tiny() -> dict:
    return yaml.safe_load((CONFIGS / "tiny.yaml").read_text())


@pytest.mark.parametrize("name", ["quickstart", "tiny", "paper"])
def test_every_shipped_config_loads(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert isinstance(config, PipelineConfig)
    assert config.path == str(CONFIGS / f"{name}.yaml")  # metrics.json's run.config
    assert (config.stage1.window, config.stage2.window, config.stage3.spec.window) == ("all", "first_half", "fe_window")
    assert config.baselines.scratch_transformer.name == "scratch_transformer"
    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())  # the file's values, not defaults
    assert config.model == raw["model"] and config.data.observed.n == raw["data"]["observed"]["n"]
    assert config.stage1.loop.max_steps == raw["stage1"]["max_steps"]
    assert config.stage3.n_stars == raw["stage3"]["n_stars"]
    assert config.stage3.spec.batch_size == raw["stage3"]["batch_size"]
    assert list(config.baselines.mlp.hidden) == raw["baselines"]["mlp"]["hidden"]
    assert list(config.baselines.cannon.labels) == raw["baselines"]["cannon"]["labels"]
    assert config.baselines.scratch_transformer.loop.max_steps == raw["baselines"]["scratch_transformer"]["max_steps"]
    assert config.attention.n_stars == raw["attention"]["n_stars"]
    assert config.attention.first_half.n_stars == raw["attention"]["first_half"]["n_stars"]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_file_loads_with_the_papers_windows(path):
    config = load_config(path)
    assert (config.stage1.window, config.stage2.window, config.stage3.spec.window) == ("all", "first_half", "fe_window")


def test_the_long_augmented_recipe_changes_only_what_its_header_says():
    long = load_config(CONFIGS / "augmented_40min_context512.yaml")
    quickstart = load_config(CONFIGS / "quickstart.yaml")
    assert long.stage1.augmentation is not None and quickstart.stage1.augmentation is None
    assert (long.stage1.loop.max_steps, long.stage2.loop.max_steps) == (5750, 1150)  # the scaling study's 40-min point
    assert long.stage3.spec.context_length == 512 and quickstart.stage3.spec.context_length == 128
    assert long.model == quickstart.model and long.data == quickstart.data and long.seed == quickstart.seed


def test_a_misspelt_stage_key_names_key_section_and_suggestion(tmp_path):
    config = _tiny()
    config["stage1"]["max_step"] = config["stage1"].pop("max_steps")
    with pytest.raises(ValueError, match=r"unknown key 'max_step' in section 'stage1'; did you mean 'max_steps'\?"):
        load_config(_write(tmp_path, config))


@pytest.mark.parametrize("where, key, suggestion", [
    ((), "atention", "attention"),                            # an unknown section
    (("data", "observed"), "split", "splits"),
    (("baselines", "mlp"), "hiden", "hidden"),
    (("baselines", "scratch_transformer"), "learning_rat", "learning_rate"),
    (("attention", "first_half"), "n_star", "n_stars"),
    (("stage3",), "n_validaton", "n_validation"),
    (("model",), "d_modl", "d_model"),                        # SpectraFMConfig would silently keep it
])
def test_unknown_keys_are_refused_everywhere(tmp_path, where, key, suggestion):
    config = _tiny()
    section = config
    for name in where:
        section = section[name]
    section[key] = 1
    with pytest.raises(ValueError, match=rf"unknown key '{key}' .*did you mean '{suggestion}'\?"):
        load_config(_write(tmp_path, config))


def test_loop_sub_mapping_is_checked_too(tmp_path):
    config = _tiny()
    config["stage2"]["loop"] = {"warmup_step": 3}
    with pytest.raises(ValueError, match=r"'warmup_step' in section 'stage2.loop'; did you mean 'warmup_steps'"):
        load_config(_write(tmp_path, config))


def test_missing_section_and_file(tmp_path):
    config = _tiny()
    del config["stage2"]
    with pytest.raises(ValueError, match="missing section 'stage2'"):
        load_config(_write(tmp_path, config))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_defaults_are_the_pipelines(tmp_path):
    """A config with only the required values: every default is the documented one."""
    minimal = {
        "data": {"synthetic": {"n": 40}, "observed": {"n": 120}},
        "model": {"d_model": 16},
        "stage1": {"batch_size": 8, "context_length": 32, "max_steps": 3},
        "stage2": {"batch_size": 8, "context_length": 32, "max_steps": 3},
        "stage3": {"batch_size": 5, "context_length": 32, "max_steps": 4},
    }
    config = load_config(_write(tmp_path, minimal))
    assert (config.seed, config.torch_threads, config.eval_batch_size) == (0, None, 64)
    assert (config.stage2_eval_context, config.stage3_trainer) == (512, "accelerate")
    assert config.data.cache_dir is None and config.data.seed == 0 and config.data.test.n_iron_poor == 0
    assert (config.data.synthetic.prior, config.data.observed.prior) == ("wide", "apogee")
    assert config.data.observed.splits == {"train": 0.6, "validation": 0.2, "test": 0.2}
    assert (config.stage1.window, config.stage1.request, config.stage1.eval_batch_size) == ("all", "random", 64)
    assert (config.stage2.window, config.stage2.request) == ("first_half", "random")
    stage3 = config.stage3.spec
    assert (stage3.window, stage3.request, stage3.select_on) == ("fe_window", ["FE_H"], "val_rmse_FE_H")
    assert stage3.freeze_decoder is True and stage3.freeze_encoder_blocks == [1] and stage3.rehearsal == 0
    assert (config.stage3.n_stars, config.stage3.n_validation, config.stage3.from_stage1) == (100, 300, False)
    scratch = config.baselines.scratch_transformer
    assert scratch.freeze_decoder is False and scratch.freeze_encoder_blocks == [] and scratch.rehearsal == 0
    assert scratch.loop == stage3.loop and scratch.select_on == "val_rmse_FE_H"
    assert tuple(config.baselines.mlp.hidden) == (2048, 1280, 1024) and config.baselines.mlp.patience == 10
    assert len(config.baselines.ridge.alphas) == 9 and tuple(config.baselines.cannon.labels) == ("TEFF", "LOGG", "FE_H")
    attention = config.attention
    assert attention.enabled and (attention.model, attention.n_stars, attention.batch_size) == ("stage3", 200, 16)
    assert tuple(attention.queries) == ("FE_H",) and attention.core_half_width_A == 0.4
    half = attention.first_half
    assert (half.model, half.n_stars, half.batch_size) == ("stage2", 48, 4)
    assert tuple(half.queries) == ("FE_H", "MG_FE", "O_FE")


def test_null_skips_a_baseline_and_the_first_half_attention(tmp_path):
    config = _tiny()
    config["baselines"]["cannon"] = None
    config["baselines"]["scratch_transformer"] = None
    config["attention"]["first_half"] = None
    loaded = load_config(_write(tmp_path, config))
    assert loaded.baselines.cannon is None and loaded.baselines.scratch_transformer is None
    assert loaded.baselines.mlp is not None and loaded.attention.first_half is None


def test_command_line_overrides_and_trainer_checks(tmp_path):
    path = _write(tmp_path, _tiny())
    config = load_config(path, seed=7, stage3_trainer="transformers")
    assert (config.seed, config.stage3_trainer) == (7, "transformers")
    with pytest.raises(ValueError, match="stage3_trainer must be"):
        load_config(path, stage3_trainer="deepspeed")
    rehearsal = _tiny()
    rehearsal["stage3"]["rehearsal"] = 4  # the Trainer path rehearses too
    loaded = load_config(_write(tmp_path, rehearsal, "rehearsal.yaml"), stage3_trainer="transformers")
    assert loaded.stage3.spec.rehearsal == 4
    restarts = _tiny()
    restarts["stage3"].update(schedule="cosine_restarts", restart_period=2)
    with pytest.raises(ValueError, match="cosine_restarts"):
        load_config(_write(tmp_path, restarts, "restarts.yaml"), stage3_trainer="transformers")


def test_a_misspelt_key_is_named_before_a_missing_one_and_missing_keys_read_as_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {synthetic: {n: 10}, observed: {n: 10}}\nmodel: {}\n"
                    "stage1: {max_step: 5}\nstage2: {}\nstage3: {}\n")
    with pytest.raises(ValueError, match="'max_step' in section 'stage1'; did you mean 'max_steps'"):
        load_config(path)
    path.write_text(path.read_text().replace("max_step:", "max_steps:"))
    with pytest.raises(ValueError, match=r"section 'stage[23]' needs the key\(s\) 'max_steps'"):
        load_config(path)


def test_a_step_that_fails_is_reported_as_stopped_not_done(capsys):
    from spectrafm_hf.pipeline.timing import Timer

    timer = Timer()
    with timer.step("stage 1"):
        pass
    with pytest.raises(ValueError):
        with timer.step("stage 2"):
            raise ValueError("settings differ")
    out = capsys.readouterr().out
    assert "stage 1 done in" in out and "stage 2 stopped after" in out and "stage 2 done" not in out
    assert set(timer.seconds) == {"stage 1", "stage 2"}


def test_the_paper_protocol_config_is_the_quickstart_but_for_its_protocol():
    quickstart = load_config(CONFIGS / "quickstart.yaml")
    protocol = load_config(CONFIGS / "quickstart_paper_protocol.yaml")
    assert protocol.path == str(CONFIGS / "quickstart_paper_protocol.yaml")
    expected = replace(
        quickstart, path=protocol.path,
        stage1=replace(quickstart.stage1, request="random", narrow_window_fraction=0.0),
        stage2=replace(quickstart.stage2, request="random", narrow_window_fraction=0.0),
        stage3=replace(quickstart.stage3, from_stage1=True, spec=replace(quickstart.stage3.spec, rehearsal=0)))
    assert protocol == expected
    assert quickstart.stage3.spec.rehearsal == 32 and quickstart.stage1.request == "all"  # the test can fail


def test_base_merges_mappings_key_by_key_and_replaces_the_rest(tmp_path):
    base = _tiny()
    _write(tmp_path, base, "base.yaml")
    (tmp_path / "sub").mkdir()
    child = _write(tmp_path / "sub", {"base": "../base.yaml", "seed": 5, "data": {"synthetic": {"n": 77}},
                                      "stage1": {"max_steps": 3}, "model": {"encoder_heads": [1]}})
    config = load_config(child)
    assert config.seed == 5 and config.data.synthetic.n == 77
    assert config.data.synthetic.prior == base["data"]["synthetic"].get("prior", "apogee")  # kept from the base
    assert config.data.observed.n == base["data"]["observed"]["n"]
    assert config.stage1.loop.max_steps == 3
    assert config.stage1.loop.learning_rate == base["stage1"]["learning_rate"]
    assert config.model["encoder_heads"] == [1] and config.model["d_model"] == base["model"]["d_model"]


def test_base_errors_name_the_file_and_the_fix(tmp_path):
    missing = _write(tmp_path, {"base": "nowhere.yaml"}, "missing.yaml")
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml: base config .*nowhere\.yaml not found"):
        load_config(missing)
    _write(tmp_path, {"base": "b.yaml"}, "a.yaml")
    _write(tmp_path, {"base": "a.yaml"}, "b.yaml")
    with pytest.raises(ValueError, match="leads back to a config already being read"):
        load_config(tmp_path / "a.yaml")
    wrong = _write(tmp_path, {"base": 3}, "wrong.yaml")
    with pytest.raises(ValueError, match=r"wrong\.yaml: base must be the path of another config"):
        load_config(wrong)
