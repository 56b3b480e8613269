"""Hostile but fair inputs (issue 13, items 7–13): a broken model never answers, errors are one line.

Every CLI probe asserts the exit code, that stderr is exactly one line naming the problem (no
traceback), and that nothing outside the named output changed. The data-loss probes (items 1–6) are
in ``test_output_guard.py``.
"""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from spectrafm_hf.checkpoints import load_model, resolve_device, save_checkpoint
from spectrafm_hf.cli import main


@pytest.fixture
def checkpoint(tiny_model, feature_extractor, tmp_path):
    return save_checkpoint(tiny_model, feature_extractor, tmp_path / "model")


@pytest.fixture
def spectra(toy, tmp_path):
    path = tmp_path / "spectra.npz"
    np.savez(path, wavelength=toy["wavelength"], flux=toy["flux"][:3])
    return path


def run_cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("spectrafm ")]
    return rc, (lines[-1] if lines else err)


def predict_args(model, spectra, out):
    return ["predict", "--model", model, "--input", spectra, "--request", "FE_H", "--output", out, "--device", "cpu"]


def assert_one_line(capsys_err: str) -> None:
    assert "Traceback" not in capsys_err and "\n" not in capsys_err.strip()


# ---- item 7: strict loading -------------------------------------------------------------------


def test_missing_head_tensors_are_an_error_not_a_random_head(checkpoint, spectra, tmp_path, capsys):
    weights = load_file(checkpoint / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("head.")}, checkpoint / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing: head\."):
        load_model(checkpoint)
    rc, err = run_cli(capsys, *predict_args(checkpoint, spectra, tmp_path / "out.csv"))
    assert rc == 2 and "missing" in err and not (tmp_path / "out.csv").exists()


def test_unexpected_and_misshapen_tensors_are_errors(checkpoint):
    weights = load_file(checkpoint / "model.safetensors")
    save_file({**weights, "extra.weight": torch.zeros(3)}, checkpoint / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="unexpected: extra.weight"):
        load_model(checkpoint)
    name = next(k for k in weights if k.endswith("weight") and weights[k].ndim == 2)
    save_file({**weights, name: torch.zeros(weights[name].shape[0] + 1, weights[name].shape[1])},
              checkpoint / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="wrong shape|size mismatch|cannot read"):
        load_model(checkpoint)


# ---- item 8: only SpectraFM checkpoints ---------------------------------------------------------


def test_another_model_type_is_refused(checkpoint, spectra, tmp_path, capsys):
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ValueError, match="not a SpectraFM checkpoint"):
        load_model(checkpoint)
    rc, err = run_cli(capsys, *predict_args(checkpoint, spectra, tmp_path / "out.csv"))
    assert rc == 2 and "'bert'" in err


# ---- item 12: broken files and options are one-line errors ---------------------------------------


@pytest.mark.parametrize("damage, words", [
    (lambda c: (c / "config.json").write_text(""), "config.json"),
    (lambda c: (c / "config.json").write_text("{not json"), "config.json"),
    (lambda c: (c / "preprocessor_config.json").write_text("[1, 2"), "preprocessor_config.json"),
    (lambda c: (c / "preprocessor_config.json").unlink(), "no preprocessor_config.json"),
    (lambda c: (c / "model.safetensors").write_bytes(b""), "model.safetensors"),
    (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:200]),
     "model.safetensors"),
    (lambda c: (c / "model.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{}"), "model.safetensors"),
])
def test_broken_checkpoint_files_are_named(checkpoint, spectra, tmp_path, capsys, damage, words):
    damage(checkpoint)
    rc, err = run_cli(capsys, *predict_args(checkpoint, spectra, tmp_path / "out.csv"))
    assert rc == 2, err
    assert words in err
    assert "huggingface.co" not in err and "Hub" not in err  # a local folder gets local advice
    assert not (tmp_path / "out.csv").exists()


def test_pickle_only_folder_is_a_clear_error(checkpoint, tiny_model, spectra, tmp_path, capsys):
    (checkpoint / "model.safetensors").unlink()
    torch.save(tiny_model.state_dict(), checkpoint / "pytorch_model.bin")
    rc, err = run_cli(capsys, *predict_args(checkpoint, spectra, tmp_path / "out.csv"))
    assert rc == 2 and "pickled weights are never loaded" in err


@pytest.mark.parametrize("device, words", [("foo", "unknown device"), ("cuda:99", "cuda")])
def test_bad_devices_are_one_line_errors(checkpoint, spectra, tmp_path, capsys, device, words):
    rc, err = run_cli(capsys, "predict", "--model", checkpoint, "--input", spectra, "--request", "FE_H",
                      "--output", tmp_path / "out.csv", "--device", device)
    assert rc == 2 and words in err.lower()
    with pytest.raises(ValueError):
        resolve_device(device)


# ---- item 13: shared filesystems ------------------------------------------------------------------


def test_checkpoint_files_get_the_users_usual_permissions(checkpoint):
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(checkpoint).iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
