"""The arithmetic behind issue 15's statements: the log-compute fit of the scaling study and the
per-seed table of the quickstart and the naming of runs (benchmarks/scaling_study.py,
benchmarks/quickstart_seeds.py, benchmarks/stage3_variants.py)."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quickstart_seeds  # noqa: E402
import scaling_study  # noqa: E402
import stage3_variants  # noqa: E402


def point(minutes, rich, poor=0.2, seed=0, best_rich=0.1, mlp_poor=0.8, d=64, prior="wide"):
    """A result JSON as ``scaling_study.summarise`` writes it, with only the fields the tables read."""
    return {"d": d, "prior": prior, "minutes": minutes, "seed": seed, "steps": int(minutes * 175),
            "precision": "no", "context": 128, "augment": False, "n_metal_poor_synthetic": 2630,
            "stage3": {"iron_rich_rmse": rich, "iron_poor_rmse": poor, "validation_iron_rich_rmse": rich,
                       "coverage_68": 0.68},
            "baselines": {"scratch_mlp": {"iron_rich_rmse": best_rich, "iron_poor_rmse": mlp_poor},
                          "ridge": {"iron_rich_rmse": best_rich + 0.04, "iron_poor_rmse": mlp_poor - 0.1}},
            "ratios": {"iron_rich_vs_best_baseline": rich / best_rich, "iron_poor_vs_mlp": poor / mlp_poor},
            "stage2_rmse": {label: 0.1 for label in scaling_study.LABELS}}


def test_fit_recovers_the_budget_of_an_exact_log_line():
    # RMSE = 0.15 − 0.01 log2(minutes); goal 0.9 × 0.1 = 0.09 → log2 m = 6 → 64 minutes
    results = [point(m, 0.15 - 0.01 * math.log2(m)) for m in (4, 8, 16, 32)]
    results.append(point(10, 0.2, d=128))  # another width is not part of the fit
    fit = scaling_study.rich_fit(results)
    assert fit["slope"] == pytest.approx(-0.01, abs=1e-12)
    assert fit["goal"] == pytest.approx(0.09)
    assert scaling_study.minutes_to_goal(fit, fit["slope"]) == pytest.approx(64.0, rel=1e-9)
    assert "≈ 1.1 h of one core" in scaling_study.budget_to_goal(results)


def test_fit_says_when_compute_does_not_help_and_when_it_cannot_fit():
    flat = [point(m, 0.13 + 0.001 * k) for k, m in enumerate((5, 10, 20))]
    assert "not approached" in scaling_study.budget_to_goal(flat)
    assert scaling_study.rich_fit(flat[:2]) is None
    assert "too few budgets" in scaling_study.budget_to_goal(flat[:2])


def seed_result(seed, rich, poor, coverage, enrichment, control, passes=True):
    result = point(10, rich, poor, seed=seed)
    result["stage3"]["coverage_68"] = coverage
    result["unseen"] = seed not in quickstart_seeds.TUNING_SEEDS
    result["acceptance"] = {
        "FE_H attention enrichment on Fe lines": {"value": enrichment, "target": "> 1.5", "pass": passes},
        "FE_H enrichment above its shuffled control": {"value": control, "target": "> 0", "pass": True},
    }
    return result


def test_seed_table_mean_worst_and_goal_count():
    results = [seed_result(0, 0.12, 0.16, 0.70, 1.6, 0.3), seed_result(11, 0.08, 0.24, 0.60, 1.4, 0.1, passes=False)]
    text = quickstart_seeds.table(results)
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[1:-1]]
            for line in text.splitlines() if line.startswith("| ")}
    assert rows["0"][1] == "no" and rows["11"][1] == "yes"
    assert rows["11"][-1] == "FE_H attention enrichment on Fe lines (1.4, target > 1.5)"  # the failed check
    assert rows["0"][-1] == "none"
    assert rows["mean"][2] == "0.100" and rows["mean"][5] == "0.200"
    assert rows["worst"][2] == "0.120" and rows["worst"][5] == "0.240"
    assert rows["worst"][8] == "0.600"  # the coverage farthest from 0.68
    assert rows["worst"][9] == "1.40 (+0.10)"
    # seed 11: 0.08 / 0.1 = 0.8 ≤ 0.9 but 0.24 / 0.8 = 0.3 > 0.25 → goal missed; seed 0 misses both
    assert "met in 0 of 2 seeds" in text
    # a seed with 0.08 / 0.1 = 0.8 and 0.16 / 0.8 = 0.2 meets it
    assert "met in 1 of 3 seeds" in quickstart_seeds.table(results + [seed_result(12, 0.08, 0.16, 0.68, 1.6, 0.3)])


def _finished_stage(folder: Path, text: str) -> None:
    folder.mkdir(parents=True)
    (folder / "stage_complete.json").write_text("{}")
    (folder / "model.safetensors").write_text(text)


def test_stages_from_copies_finished_stages_and_never_overwrites(tmp_path):
    source, out = tmp_path / "source", tmp_path / "out"
    for stage in ("stage1", "stage2"):
        _finished_stage(source / stage, f"source {stage}")
    _finished_stage(out / "stage2", "this run's own stage 2")
    quickstart_seeds._copy_stages(source, out)
    assert (out / "stage1" / "model.safetensors").read_text() == "source stage1"
    assert (out / "stage2" / "model.safetensors").read_text() == "this run's own stage 2"  # kept
    (out / "stage1" / "model.safetensors").write_text("changed in the copy")
    assert (source / "stage1" / "model.safetensors").read_text() == "source stage1"  # a copy, not a link


def test_stages_from_refuses_an_unfinished_source(tmp_path):
    (tmp_path / "source" / "stage1").mkdir(parents=True)
    with pytest.raises(SystemExit, match="not a finished stage"):
        quickstart_seeds._copy_stages(tmp_path / "source", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_stages_from_pattern():
    assert quickstart_seeds._stages_source("runs/q/seed{seed}", 11) == Path("runs/q/seed11")
    with pytest.raises(SystemExit, match="only {seed}"):
        quickstart_seeds._stages_source("runs/q/seed{sed}", 11)


def test_context_knob_names_calibrates_and_configures_all_three_stages():
    assert scaling_study.point_name(64, 20, "wide", 0) == "d64-20min-wide-seed0"  # old points keep their names
    assert scaling_study.point_name(64, 20, "wide", 0, context=512) == "d64-20min-wide-seed0-ctx512"
    calibration = {"seconds_per_step": {"64": 0.3, "64-ctx512": 1.2}}
    assert scaling_study.stage1_steps(64, 20, calibration) == 4000
    assert scaling_study.stage1_steps(64, 20, calibration, context=512) == 1000  # 1,200 s / 1.2 s per step
    with pytest.raises(SystemExit, match="'64-ctx256'.*--contexts 256"):
        scaling_study.stage1_steps(64, 20, calibration, context=256)
    config = scaling_study.point_config(64, 1000, "wide", 0, context=512)
    assert [config[s]["context_length"] for s in ("stage1", "stage2", "stage3")] == [512, 512, 512]
    assert config["model"]["context_length"] == 512
    default = scaling_study.point_config(64, 1000, "wide", 0)
    assert [default[s]["context_length"] for s in ("stage1", "stage2", "stage3")] == [128, 128, 128]


def test_augment_knob_names_calibrates_and_configures_stage1_only():
    assert scaling_study.point_name(64, 20, "wide", 0, augment=True) == "d64-20min-wide-seed0-aug"
    calibration = {"seconds_per_step": {"64": 0.3, "64-aug": 0.4}}
    assert scaling_study.stage1_steps(64, 20, calibration, augment=True) == 3000  # 1,200 s / 0.4 s per step
    with pytest.raises(SystemExit, match="'64-ctx512-aug'.*--contexts 512 --augment"):
        scaling_study.stage1_steps(64, 20, calibration, context=512, augment=True)
    config = scaling_study.point_config(64, 1000, "wide", 0, augment=True)
    assert config["stage1"]["augment"] is True and "augment" not in config["stage2"]
    assert "augment" not in scaling_study.point_config(64, 1000, "wide", 0)["stage1"]
    # augmented points: their own rows and curve, outside the clean context-128 fit
    results = [point(m, 0.15 - 0.01 * math.log2(m)) for m in (4, 8, 16, 32)]
    augmented = [{**point(m, 0.05), "augment": True} for m in (4, 8, 16)]
    assert scaling_study.rich_fit(results + augmented)["slope"] == pytest.approx(-0.01, abs=1e-12)
    rows = scaling_study.table(results + augmented).splitlines()
    assert sum("| 64, augmented stage 1 |" in row for row in rows) == 3


def test_context_points_stay_out_of_the_context_128_fit():
    results = [point(m, 0.15 - 0.01 * math.log2(m)) for m in (4, 8, 16, 32)]
    wide_context = [{**point(m, 0.05), "context": 512} for m in (4, 8, 16)]
    assert scaling_study.rich_fit(results + wide_context)["slope"] == pytest.approx(-0.01, abs=1e-12)
    wide_context[0]["stage3"] = {**wide_context[0]["stage3"], "fe_enrichment": 1.62, "fe_enrichment_control": 1.2}
    rows = scaling_study.table(results + wide_context).splitlines()
    assert sum("| 64, context 512 |" in row for row in rows) == 3
    assert sum("| 1.62 (1.20) |" in row for row in rows) == 1 and sum("| — |" in row for row in rows) == 6
    config = scaling_study.point_config(64, 1000, "wide", 0)
    assert config["attention"]["enabled"] and config["attention"]["queries"] == ["FE_H"]


def test_stage3_variant_runs_are_named_and_a_taken_name_is_refused(tmp_path, monkeypatch):
    folder, seed, name = stage3_variants._parse_run("runs/quickstart_s6:0")
    assert (seed, name) == (0, "seed0") and folder.is_absolute()
    assert stage3_variants._parse_run("runs/scaling/d64-80min-wide-seed0:0:d64-80min")[2] == "d64-80min"
    for bad in ("runs/q", "runs/q:x", "runs/q:0:", ":0"):
        with pytest.raises(SystemExit, match="folder:seed"):
            stage3_variants._parse_run(bad)
    result = tmp_path / "seed0-context512.json"
    result.write_text('{"run": "runs/quickstart_s6"}')
    monkeypatch.setattr(stage3_variants, "REPO", tmp_path)
    assert stage3_variants._earlier_result(result, tmp_path / "runs" / "quickstart_s6") == {"run": "runs/quickstart_s6"}
    with pytest.raises(SystemExit, match="holds run 'runs/quickstart_s6', not 'runs/other'"):
        stage3_variants._earlier_result(result, tmp_path / "runs" / "other")
    assert stage3_variants._earlier_result(tmp_path / "none.json", tmp_path / "runs" / "other") == {}
    own = tmp_path / "runs" / "quickstart_s6"
    assert stage3_variants._earlier_result(result, own, own) == {"run": "runs/quickstart_s6"}  # its own stars
    with pytest.raises(SystemExit, match="on the stars of 'runs/quickstart_s6', not of 'runs/s7'"):
        stage3_variants._earlier_result(result, own, tmp_path / "runs" / "s7")  # a --draw under a used name


def _models_with_baselines(**rmse) -> dict:
    """metrics.json's ``models`` with [Fe/H] bins for the named baselines: name=(rich, poor)."""
    return {name: {"labels": {"FE_H": {"bins": {"feh_ge_-1": {"rmse": rich},
                                                "feh_lt_-1": {"rmse": poor, "bias": poor / 2}}}}}
            for name, (rich, poor) in rmse.items()}


def test_goal_ratios_use_the_better_baseline_rich_and_the_mlp_poor():
    models = _models_with_baselines(scratch_mlp=(0.11, 0.80), ridge=(0.10, 0.70), stage3=(0.09, 0.2))
    baselines = scaling_study.baseline_bins(models)
    assert set(baselines) == {"scratch_mlp", "ridge"}  # stage 3 is not a baseline
    ratios = scaling_study.goal_ratios(0.09, 0.20, baselines)
    assert ratios["iron_rich_vs_best_baseline"] == pytest.approx(0.9)  # ridge is better rich
    assert ratios["iron_poor_vs_mlp"] == pytest.approx(0.25)  # the MLP, not the better ridge
    with pytest.raises(SystemExit, match="no scratch_mlp"):
        scaling_study.goal_ratios(0.09, 0.2, scaling_study.baseline_bins(_models_with_baselines(ridge=(0.1, 0.7))))


def test_budget_rows_pair_each_context512_stage3_with_its_context128_run(tmp_path, monkeypatch):
    scaling_results, variants = tmp_path / "scaling", tmp_path / "variants"
    seeds = tmp_path / "docs" / "results" / "quickstart_seeds"
    for folder in (scaling_results, variants, seeds / "quickstart", seeds / "stage3_context512"):
        folder.mkdir(parents=True)
    (scaling_results / "calibration.json").write_text(json.dumps({"seconds_per_step": {"64": 0.36}}))
    (scaling_results / "d64-40min-wide-seed11.json").write_text(json.dumps(point(40, 0.12, seed=11)))
    wide = {"run": "runs/scaling/d64-40min-wide-seed11", "ratios": {"iron_rich_vs_best_baseline": 0.8,
                                                                    "iron_poor_vs_mlp": 0.3},
            "test_attention": {"enrichment": 2.0, "control": 1.2}}
    (variants / "d64-40min-seed11-context512.json").write_text(json.dumps(wide))
    (variants / "seed0-context512.json").write_text(json.dumps({**wide, "run": "runs/quickstart_s6"}))  # not a budget
    crossed = {**wide, "draw_run": "runs/scaling/d64-40min-wide-seed12", "ratios": {"iron_rich_vs_best_baseline": 9}}
    (variants / "d64-40min-seed11-draw12-context512.json").write_text(json.dumps(crossed))  # another run's stars
    quick = seed_result(2, 0.1, 0.2, 0.7, 1.9, 0.6)
    (seeds / "quickstart" / "seed2.json").write_text(json.dumps(quick))
    (seeds / "stage3_context512" / "seed2.json").write_text(json.dumps(quick))
    monkeypatch.setattr(scaling_study, "RESULTS", scaling_results)
    monkeypatch.setattr(stage3_variants, "RESULTS", variants)
    monkeypatch.setattr(stage3_variants, "REPO", tmp_path)
    rows = stage3_variants.budget_rows()
    assert [(r["minutes"], r["seed"]) for r in rows] == [(pytest.approx(15.0), 2), (40, 11)]  # 2500 × 0.36 s
    assert rows[1]["context128"]["iron_rich_vs_best_baseline"] == pytest.approx(1.2)  # the study's own stage 3
    assert rows[1]["context512"]["iron_poor_vs_mlp"] == 0.3
    assert rows[0]["enrichment512"] == 1.9 and rows[0]["control512"] == pytest.approx(1.3)  # 1.9 − 0.6


def test_gap_bins_split_rmse_and_bias_by_iron_bin():
    truth = np.array([0.0, 0.2, -1.2, -1.4, -2.0])
    prediction = truth + np.array([0.1, -0.1, 0.2, 0.2, 0.5])
    bins = scaling_study.gap_bins(prediction, truth)
    assert bins["feh_ge_-1"] == {"rmse": pytest.approx(0.1), "bias": pytest.approx(0.0)}
    assert bins["feh_-1.5_-1"] == {"rmse": pytest.approx(0.2), "bias": pytest.approx(0.2)}
    assert bins["feh_lt_-1.5"] == {"rmse": pytest.approx(0.5), "bias": pytest.approx(0.5)}


def test_write_between_replaces_only_the_marked_table(tmp_path, monkeypatch):
    doc = tmp_path / "scaling.md"
    doc.write_text("intro\n<!-- t begin -->\nold\n<!-- t end -->\noutro\n")
    monkeypatch.setattr(scaling_study, "DOC", doc)
    assert scaling_study.write_between("<!-- t begin -->", "<!-- t end -->", "new\n")
    assert doc.read_text() == "intro\n<!-- t begin -->\nnew\n<!-- t end -->\noutro\n"
    assert not scaling_study.write_between("<!-- u begin -->", "<!-- u end -->", "x\n")  # no markers: untouched
    assert doc.read_text() == "intro\n<!-- t begin -->\nnew\n<!-- t end -->\noutro\n"
