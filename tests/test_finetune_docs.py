"""docs/finetune.md runs as written: its Python blocks in order, in one namespace, with the settings block's
sizes made tiny (and a tiny stage-2 checkpoint), then its ``spectrafm finetune`` command."""

import re
import shlex
from pathlib import Path

import pytest
import torch
from _training_toys import TINY_MODEL

from spectrafm_hf.cli import main
from spectrafm_hf.data.arrays import WindowData
from spectrafm_hf.data.grid import apogee_wavelength
from spectrafm_hf.data.labels import LABELS
from spectrafm_hf.training.loop import LoopConfig
from spectrafm_hf.training.stages import StageSpec, run_stage

DOC = Path(__file__).resolve().parents[1] / "docs" / "finetune.md"

#: The settings block's names and their tiny values (the rest of the page runs unchanged).
TINY = {"N_OWN": 12, "N_VALIDATION": 8, "N_TEST": 12, "MAX_STEPS": 4, "EVAL_EVERY": 2, "PATIENCE": 2,
        "MLP_HIDDEN": (16,), "MLP_STEPS": 20}


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def _simulated(n: int, seed: int) -> WindowData:
    from spectrafm_hf.data.simulated import simulate_arrays

    stars = simulate_arrays(n, "observed", seed=seed)
    return WindowData(flux=stars["flux"], mask=stars["mask"], flux_err=stars["flux_err"],
                      labels={k: stars[k].astype(float) for k in LABELS},
                      label_errors={k: stars[f"{k}_ERR"].astype(float) for k in LABELS}, wavelength=apogee_wavelength())


@pytest.fixture
def tiny_stage2(tmp_path):
    """A tiny SpectraFM checkpoint on the APOGEE grid, standardised on simulated observed stars (so the
    page's stars are not refused as unlike its training flux), standing in for the quickstart's stage 2."""
    spec = StageSpec("stage2", "all", "random", 8, 32, LoopConfig(max_steps=2, eval_every=2, progress=False))
    run_stage(spec, _simulated(24, 1), _simulated(8, 2), tmp_path / "stage2", model_config=TINY_MODEL)
    return tmp_path / "stage2"


def test_the_finetune_page_runs_verbatim_at_tiny_scale(tiny_stage2, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings, *cells = _blocks("python")
        namespace: dict = {}
        exec(compile(settings, f"{DOC}:settings", "exec"), namespace)
        assert set(TINY) | {"BASE_MODEL", "WINDOW_A", "OUT"} <= set(namespace)  # the page still has them
        namespace.update(TINY, BASE_MODEL=str(tiny_stage2))
        for number, cell in enumerate(cells, start=1):
            exec(compile(cell, f"{DOC}:block{number}", "exec"), namespace)  # asserts inside the page run too
        # what the page claims: compute_metrics == the pipeline's evaluation (asserted in the page), and
        # the scratch MLP was scored on the same stars
        assert namespace["finetuned"]["test_FE_H_n"] == namespace["pipeline"]["n"] == namespace["scratch"]["n"]
        assert (tmp_path / namespace["OUT"] / "model" / "modeling_spectrafm.py").is_file()

        command = next(block for block in _blocks("bash") if block.startswith("spectrafm finetune"))
        argv = shlex.split(command)[1:] + ["--model", str(tiny_stage2), "--max-steps", "2", "--eval-every", "2",
                                           "--no-progress"]
        assert main(argv) == 0
        assert (tmp_path / namespace["OUT"] / "cli" / "README.md").is_file()
    finally:
        torch.set_num_threads(threads)
