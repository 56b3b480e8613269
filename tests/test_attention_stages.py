"""benchmarks/attention_stages.py: which runs pass the Fe-attention check, read back from their files, and
the refusals that keep one run's result from being filed under another's name."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import attention_stages  # noqa: E402


def _result(name, stage3, test=None):
    validation = {"stage1": {"enrichment": 1.2, "control": 1.1}, "stage2": {"enrichment": 1.3, "control": 1.1},
                  "stage3": {"enrichment": stage3[0], "control": stage3[1]}}
    return {"name": name, "run": f"runs/{name}", "validation": validation, "test_stage3_check": test}


def test_table_passes_a_run_only_above_the_bar_and_its_control_preferring_the_test_stars_check():
    rows = attention_stages.table([
        _result("ok", (1.8, 1.2)),
        _result("below-bar", (1.4, 1.0)),
        _result("below-control", (1.6, 1.7)),
        # validation would pass, but the run's own check on test stars (what the pipeline reports) fails
        _result("test-fails", (1.6, 1.2), test={"enrichment": 1.45, "control": 1.2}),
    ]).splitlines()[2:]
    verdicts = {row.split(" | ")[0].strip("| "): row.rsplit("|", 2)[1].strip() for row in rows}
    assert verdicts == {"ok": "yes", "below-bar": "NO", "below-control": "NO", "test-fails": "NO"}
    assert "1.45 (1.20)" in rows[3]


def test_the_runs_own_check_is_read_back_with_its_control(tmp_path):
    assert attention_stages._test_check(tmp_path) is None  # no metrics.json: nothing to read
    acceptance = {"FE_H attention enrichment on Fe lines": {"value": 1.36, "pass": False},
                  "FE_H enrichment above its shuffled control": {"value": 0.04, "pass": True}}
    (tmp_path / "metrics.json").write_text(json.dumps({"acceptance": acceptance}))
    check = attention_stages._test_check(tmp_path)
    assert check["enrichment"] == 1.36 and check["control"] == pytest.approx(1.32)
    del acceptance["FE_H enrichment above its shuffled control"]  # an older run without the control check
    (tmp_path / "metrics.json").write_text(json.dumps({"acceptance": acceptance}))
    assert attention_stages._test_check(tmp_path) is None


def test_an_unfinished_stage_is_named_before_any_model_is_loaded(tmp_path):
    for stage in ("stage1", "stage2"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "stage_complete.json").write_text("{}")
    with pytest.raises(SystemExit, match="no finished stage3"):
        attention_stages.measure(tmp_path, "x", data=None, options=None)


def test_a_name_holding_another_runs_result_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(attention_stages, "RESULTS", tmp_path)
    (tmp_path / "seed1.json").write_text(json.dumps({"run": "runs/elsewhere/seed1"}))
    with pytest.raises(SystemExit, match="another run's result"):
        attention_stages.run(SimpleNamespace(runs=[f"{tmp_path / 'mine'}:seed1"]))
    assert json.loads((tmp_path / "seed1.json").read_text())["run"] == "runs/elsewhere/seed1"  # untouched


def test_run_names_default_to_the_folders_last_two_parts():
    folder, name = attention_stages.parse_run("runs/quickstart_seeds/rerun/seed11")
    assert name == "rerun-seed11" and folder.is_absolute()
    assert attention_stages.parse_run("runs/x/seed1:mine")[1] == "mine"
    with pytest.raises(SystemExit, match="folder or folder:name"):
        attention_stages.parse_run(":name")


def test_the_figure_is_written(tmp_path):
    path = tmp_path / "figure.png"
    attention_stages.figure([_result("a", (1.8, 1.2)), _result("b", (1.1, 1.3))], path)
    assert path.stat().st_size > 10_000
