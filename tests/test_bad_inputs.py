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


# ---- item 12 (continued): spectra files and `publish` ---------------------------------------------

FITS_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "apStar-dr17-2M19485057+5005279.fits.gz"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` → sha256 of its bytes (to prove a probe changed nothing)."""
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def probe(capsys, *argv) -> tuple[int, str]:
    """Run the CLI; return (exit code, its one error line). Asserts the error is exactly one line (the
    progress bars of transformers/tqdm aside) and carries no traceback."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("spectrafm ")]
    assert len(lines) == (0 if rc == 0 else 1), err
    return rc, (lines[0] if lines else "")


def _write(path: Path, data) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif isinstance(data, str):
        path.write_text(data)
    else:
        np.savez(path, **data)
    return path


def _toy_arrays(toy, **changes):
    arrays = {"wavelength": toy["wavelength"], "flux": toy["flux"][:3]}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


SPECTRA_PROBES = {
    # name: (file name, content (bytes / text / dict of arrays / callable(toy, tmp_path)), words in the message)
    "text file named .npz": ("spectra.npz", "wavelength,flux\n1,2\n", "not a valid .npz archive"),
    "empty .npz": ("spectra.npz", b"", "not a valid .npz archive"),
    "truncated .npz": ("spectra.npz", lambda toy, tmp: _truncated_npz(toy, tmp), "spectra.npz"),
    "zip of non-.npy members": ("spectra.npz", lambda toy, tmp: _zip_of_text(tmp), "not a .npy array"),
    "object (pickled) flux": ("spectra.npz", lambda toy, tmp: _object_npz(toy, tmp), "never loaded"),
    "complex flux": ("spectra.npz", lambda toy, tmp: _toy_arrays(toy, flux=toy["flux"][:3].astype(np.complex64)),
                     "'flux' has dtype complex64"),
    "boolean flux": ("spectra.npz", lambda toy, tmp: _toy_arrays(toy, flux=toy["flux"][:3] > 0.9),
                     "'flux' has dtype bool"),
    "text flux": ("spectra.npz", lambda toy, tmp: _toy_arrays(toy, flux=np.array(["a", "b"])), "'flux' has dtype"),
    "3-d flux": ("spectra.npz", lambda toy, tmp: _toy_arrays(toy, flux=toy["flux"][None, :3]), "'flux' has shape"),
    "no spectra": ("spectra.npz", lambda toy, tmp: _toy_arrays(toy, flux=toy["flux"][:0]), "'flux' has shape (0,"),
    "wavelength of another length": ("spectra.npz", lambda toy, tmp: _toy_arrays(toy, wavelength=toy["wavelength"][:9]),
                                     "'wavelength' has shape (9,)"),
    "flux_err of another shape": ("spectra.npz", lambda toy, tmp: _toy_arrays(toy, flux_err=toy["flux_err"][:1]),
                                  "'flux_err' has shape (1,"),
    "text mask": ("spectra.npz", lambda toy, tmp: _toy_arrays(toy, mask=np.full(toy["flux"][:3].shape, "x")),
                  "'mask' has dtype"),
    "one id for three spectra": ("spectra.npz", lambda toy, tmp: _toy_arrays(toy, id=np.array(["a"])),
                                 "one id per spectrum"),
    "2-d extra array": ("spectra.npz", lambda toy, tmp: _toy_arrays(toy, H=np.zeros((3, 2))), "'H'"),
    "truncated .fits.gz": ("apStar-dr17-2M19485057+5005279.fits.gz", FITS_FIXTURE.read_bytes()[:90_000],
                           "truncated or corrupt"),
    "byte-flipped .fits.gz": ("apStar-dr17-2M19485057+5005279.fits.gz",
                              lambda toy, tmp: _flipped(FITS_FIXTURE.read_bytes(), 70_000), "truncated or corrupt"),
    "empty .fits": ("table.fits", b"", "not a readable FITS file"),
    "text file named .fits": ("table.fits", "SIMPLE? no\n", "not a FITS file"),
    "text file named .parquet": ("spectra.parquet", "a,b\n1,2\n", "cannot read as Parquet"),
    "empty .parquet": ("spectra.parquet", b"", "cannot read as Parquet"),
    "unsupported extension": ("spectra.txt", "a,b\n", "unsupported input format"),
    "CSV that is not spectra": ("spectra.csv", "a,b\n1,2\n", "neither CSV layout of spectra"),
}


def _truncated_npz(toy, tmp_path):
    np.savez(tmp_path / "whole.npz", **_toy_arrays(toy))
    data = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "whole.npz").unlink()
    return data[: len(data) // 2]


def _zip_of_text(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "z.zip", "w") as archive:
        archive.writestr("wavelength.npy", "not an array")
        archive.writestr("flux.npy", "not an array")
    data = (tmp_path / "z.zip").read_bytes()
    (tmp_path / "z.zip").unlink()
    return data


def _object_npz(toy, tmp_path):
    flux = np.empty(2, dtype=object)
    flux[0], flux[1] = toy["flux"][0], toy["flux"][1][:5]
    np.savez(tmp_path / "o.npz", wavelength=toy["wavelength"], flux=flux)
    data = (tmp_path / "o.npz").read_bytes()
    (tmp_path / "o.npz").unlink()
    return data


def _flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


@pytest.mark.parametrize("name", list(SPECTRA_PROBES))
def test_bad_spectra_files_are_named_one_line_errors(name, checkpoint, toy, tmp_path, capsys):
    """Each bad --input: exit 2, one line naming the file and the problem, no output written, nothing
    changed; never numpy's advice to load a file "unsafely" (allow_pickle)."""
    filename, content, words = SPECTRA_PROBES[name]
    work = tmp_path / "work"
    work.mkdir()
    if callable(content):
        content = content(toy, tmp_path)
    path = _write(work / filename, content)
    before, model_before = snapshot(work), snapshot(checkpoint)
    rc, line = probe(capsys, *predict_args(checkpoint, path, work / "out.csv"))
    assert rc == 2, line
    assert str(path) in line and words in line, line
    assert "allow_pickle" not in line and "unsafe" not in line.lower() and "pickle.load" not in line
    assert "missing HDU" not in line
    assert snapshot(work) == before and snapshot(checkpoint) == model_before


def test_a_folder_that_is_not_a_dataset_is_a_named_error(checkpoint, tmp_path, capsys):
    folder = tmp_path / "spectra"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a dataset")
    rc, line = probe(capsys, *predict_args(checkpoint, folder, tmp_path / "out.csv"))
    assert rc == 2 and str(folder) in line and "not a dataset folder" in line
    assert not (tmp_path / "out.csv").exists()


@pytest.fixture
def publishable(checkpoint):
    (checkpoint / "README.md").write_text("---\nlicense: mit\n---\n# card\n")
    return checkpoint


@pytest.mark.parametrize("repo_id", ["../../etc", "a/b/c", ""])
def test_publish_refuses_repo_ids_that_are_not_owner_slash_name(publishable, repo_id, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = snapshot(publishable)
    rc, line = probe(capsys, "publish", publishable, "--repo-id", repo_id, "--dry-run")
    assert rc == 2 and "owner/name" in line and repr(repo_id) in line
    assert snapshot(publishable) == before


def _damage_weights(folder: Path, damage: str) -> None:
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: int(weights.stat().st_size * 0.6)])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "missing head":
        tensors = load_file(weights)
        save_file({k: v for k, v in tensors.items() if not k.startswith("head.")}, weights, metadata={"format": "pt"})
    elif damage == "config of another size":
        config = json.loads((folder / "config.json").read_text())
        config["encoder_mlp"] = [2 * width for width in config["encoder_mlp"]]
        (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing head", "config of another size"])
def test_publish_dry_run_refuses_weights_that_would_not_load(publishable, damage, capsys, monkeypatch):
    """``publish --dry-run`` loads the folder strictly (spectrafm_hf.checkpoints.load_model) before listing it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _damage_weights(publishable, damage)
    before = snapshot(publishable)
    rc, line = probe(capsys, "publish", publishable, "--repo-id", "org/spectrafm", "--dry-run")
    assert rc == 2 and "would not load" in line and "model.safetensors" in line and str(publishable) in line
    assert snapshot(publishable) == before


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_weights_stored_as_integers_are_refused(checkpoint, spectra, tmp_path, capsys, dtype):
    """transformers casts an integer tensor into float weights silently (zeros and ones): refused."""
    weights = load_file(checkpoint / "model.safetensors")
    name = next(k for k in weights if weights[k].ndim == 2)
    save_file({**weights, name: weights[name].to(dtype)}, checkpoint / "model.safetensors", metadata={"format": "pt"})
    rc, line = probe(capsys, *predict_args(checkpoint, spectra, tmp_path / "out.csv"))
    assert rc == 2 and "not floating point" in line and str(checkpoint) in line
    assert not (tmp_path / "out.csv").exists()
