"""scripts/paper_smoke.py: paper.yaml at paper width on the CPU, every stage for a few steps.

The fast tests check the script's two pieces of arithmetic (the analytic FLOPs against torch's own
FLOP counter, and that the smoke config differs from paper.yaml in sizes only). The slow one runs the
whole pipeline at paper width (about 4-5 minutes on one thread)::

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -m slow tests/test_paper_smoke.py
"""

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "training" / "configs" / "paper.yaml"

#: The config leaves the smoke may change: sizes, step counts and intervals, the data cache.
SHRUNK_LEAVES = {"n", "n_iron_poor", "cache_dir", "max_steps", "eval_every", "checkpoint_every", "warmup_steps",
                 "restart_period", "n_stars"}


def _script():
    """scripts/paper_smoke.py as a module (registered first: its dataclasses look their module up)."""
    if "paper_smoke" not in sys.modules:
        spec = importlib.util.spec_from_file_location("paper_smoke", REPO / "scripts" / "paper_smoke.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["paper_smoke"] = module
        spec.loader.exec_module(module)
    return sys.modules["paper_smoke"]


def _smoke_args(**changes):
    values = dict(steps=4, mlp_steps=20, synthetic=256, observed=600, iron_poor=60, attention_stars=16,
                  first_half_stars=8, cache_dir=None)
    return SimpleNamespace(**{**values, **changes})


def test_analytic_flops_equal_torchs_count_at_paper_width():
    """Forward and training FLOPs (all trainable; stage 3's freezing) of the paper-width model equal
    torch's FlopCounterMode (eager attention, so that the attention products are counted too)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from spectrafm_hf import SpectraFMConfig, SpectraFMModel
    from spectrafm_hf.pipeline import load_config

    smoke, paper = _script(), load_config(PAPER)
    config = SpectraFMConfig(**paper.model)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = SpectraFMModel(config)
    pixels, queries = 96, 2
    batch = dict(input_ids=torch.ones(1, pixels, dtype=torch.long), input_values=torch.randn(1, pixels),
                 input_wavelength=torch.linspace(15200.0, 15300.0, pixels)[None], query_ids=torch.tensor([[4, 5]]),
                 labels=torch.zeros(1, queries), query_mask=torch.ones(1, queries, dtype=torch.long))
    parts = smoke.forward_flops(paper.model, pixels + 1, queries)  # + the add_bias_kv slot

    def counted(run):
        with FlopCounterMode(display=False) as counter:
            run()
        return counter.get_total_flops()

    with torch.no_grad():
        forward = counted(lambda: model.eval()(**batch))
    assert forward == pytest.approx(sum(p["linear"] + p["core"] for p in parts.values()), rel=1e-5)
    model.train()
    assert counted(lambda: model(**batch).loss.backward()) == pytest.approx(
        smoke.training_flops_per_star(parts, set()), rel=1e-5)
    model.zero_grad(set_to_none=True)
    model.freeze_decoder()
    model.freeze_encoder_blocks(paper.stage3.spec.freeze_encoder_blocks)
    frozen = smoke.frozen_parts(paper.stage3.spec, paper.model)
    assert frozen == {"encoder.1", "decoder.", "head"}
    assert counted(lambda: model(**batch).loss.backward()) == pytest.approx(
        smoke.training_flops_per_star(parts, frozen), rel=1e-5)


def test_smoke_config_differs_from_paper_yaml_in_sizes_only(tmp_path):
    smoke = _script()
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(smoke.smoke_settings(yaml.safe_load(PAPER.read_text()), _smoke_args())))
    differences = smoke.typed_differences(PAPER, path)
    changed = {line.split(":")[0] for line in differences}
    assert {key.rsplit(".", 1)[-1] for key in changed} <= SHRUNK_LEAVES, differences
    assert {"data.synthetic.n", "stage1.loop.max_steps", "stage1.loop.restart_period", "stage3.spec.loop.max_steps",
            "baselines.scratch_transformer.loop.max_steps", "baselines.mlp.max_steps",
            "attention.first_half.n_stars"} <= changed
    assert "stage1.loop.max_steps: 130000 → 4" in differences
    from spectrafm_hf.pipeline import load_config

    kept = smoke.kept_settings(load_config(path))
    assert kept == smoke.kept_settings(load_config(PAPER))
    assert kept["model"]["d_model"] == 256 and kept["from_stage1"] is True
    assert kept["stages"]["stage1"]["mixed_precision"] == "bf16"
    assert kept["stages"]["stage1"]["schedule"] == "cosine_restarts"
    assert list(kept["stages"]) == list(smoke.TRANSFORMER_FOLDERS)


def test_json_output_is_never_replaced_without_overwrite(tmp_path):
    smoke = _script()
    path = tmp_path / "figures.json"
    smoke.write_json(path, {"a": 1}, overwrite=False)
    with pytest.raises(FileExistsError, match="already exists"):
        smoke.write_json(path, {"a": 2}, overwrite=False)
    smoke.write_json(path, {"a": 3}, overwrite=True)
    assert json.loads(path.read_text()) == {"a": 3}


@pytest.mark.slow
def test_paper_yaml_runs_every_stage_at_paper_width_on_cpu(tmp_path):
    import torch

    from spectrafm_hf.checkpoints import load_model

    smoke, threads = _script(), torch.get_num_threads()
    out = tmp_path / "run"
    try:
        result = smoke.main(["--out", str(out), "--steps", "2", "--synthetic", "128", "--observed", "300",
                             "--iron-poor", "30", "--attention-stars", "8", "--first-half-stars", "4",
                             "--mlp-steps", "4"])
    finally:
        torch.set_num_threads(threads)
    assert json.loads((out / "paper_smoke.json").read_text())["stages"].keys() == result["stages"].keys()
    for folder in smoke.TRANSFORMER_FOLDERS:
        stage = out / folder
        assert all((stage / name).is_file() for name in ("stage_complete.json", "model.safetensors", "README.md"))
        config = json.loads((stage / "config.json").read_text())
        assert (config["d_model"], config["context_length"], config["encoder_heads"]) == (256, 512, [16, 8])
        model, feature_extractor = load_model(stage, device="cpu")
        measured = result["stages"][folder]
        assert sum(p.numel() for p in model.parameters()) == measured["params"] > 8_000_000
        assert measured["steps"] == 2 and measured["median_step_s"] > 0 and measured["model_ops_per_step"] > 100
        assert measured["peak_rss_mb"] > 100
    assert result["stages"]["stage3"]["trainable_params"] < result["stages"]["stage3"]["params"]  # frozen parts
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"stage3", "stage3_from_stage1", "scratch_transformer", "stage1_zero_shot", "stage2_zero_shot",
            "scratch_mlp", "ridge", "cannon", "stage2"} <= set(metrics["models"])
    for name, entry in metrics["models"].items():
        assert math.isfinite(entry["labels"]["FE_H"]["bins"]["all"]["rmse"]), name
    estimate = result["gpu_estimate"]
    assert estimate["paper_work"]["stage1"]["steps"] == 130000
    for scenario in estimate["training"].values():
        assert 0 < scenario["compute_only_hours"] < scenario["total_hours"] < 1000
