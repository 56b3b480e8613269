"""No command deletes or overwrites what the user did not ask to replace (issue 13, items 1–6).

Each CLI test is a reproduction from the issue: it asserts the exit code, a one-line message, and that
nothing outside the named output changed (a hash of the surrounding folder before and after).
"""

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spectrafm_hf.cli import main
from spectrafm_hf.output_guard import (
    MARKER,
    UnsafeOutputError,
    check_output_file,
    check_output_folder,
    remove_stale_staging,
    staged_folder,
    written_by_spectrafm,
)

REPO = Path(__file__).resolve().parents[1]


def tree_hash(root: Path, skip: Path | None = None) -> str:
    """Hash of every path and file content under ``root`` (``skip``: a subtree left out)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A folder holding the user's own files, as the current directory."""
    (tmp_path / "a.txt").write_text("keep me\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "b.txt").write_text("mine too\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


# ---- the guard itself -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["", "  ", ".", "./", ".."])
def test_protected_paths_are_refused_even_with_overwrite(user_folder, path):
    with pytest.raises(UnsafeOutputError):
        check_output_folder(path, overwrite=True)
    with pytest.raises(UnsafeOutputError):
        check_output_file(path, overwrite=True)


def test_root_home_and_ancestors_are_refused(user_folder):
    for path in ("/", str(Path.home()), str(user_folder.parent)):
        with pytest.raises(UnsafeOutputError):
            check_output_folder(path, overwrite=True)


def test_a_folder_we_did_not_write_is_never_replaced(user_folder):
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_output_folder("notes")
    with pytest.raises(UnsafeOutputError, match="did not write"):
        check_output_folder("notes", overwrite=True)
    with pytest.raises(UnsafeOutputError, match="existing file"):
        check_output_folder("a.txt", overwrite=True)
    (user_folder / "empty").mkdir()
    assert check_output_folder("empty") == user_folder / "empty"  # an empty folder holds nothing to lose


def test_marked_folders_and_old_checkpoints_count_as_ours(user_folder):
    ours = user_folder / "ours"
    ours.mkdir()
    (ours / "x").write_text("1")
    assert not written_by_spectrafm(ours)
    (ours / MARKER).write_text("{}")
    assert written_by_spectrafm(ours) and check_output_folder(ours, overwrite=True) == ours
    old_checkpoint = user_folder / "ckpt"
    old_checkpoint.mkdir()
    (old_checkpoint / "config.json").write_text(json.dumps({"model_type": "spectrafm"}))
    assert written_by_spectrafm(old_checkpoint)
    (old_checkpoint / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert not written_by_spectrafm(old_checkpoint)


def test_inputs_are_never_outputs(user_folder):
    with pytest.raises(UnsafeOutputError, match="own input"):
        check_output_file("a.txt", overwrite=True, inputs=["a.txt"])
    with pytest.raises(UnsafeOutputError, match="inside"):
        check_output_file("notes/out.csv", overwrite=True, inputs=["notes"])
    with pytest.raises(UnsafeOutputError, match="contains"):
        check_output_folder(user_folder / "notes", overwrite=True, inputs=["notes/b.txt"])


def test_output_file_parent_must_be_creatable(user_folder):
    with pytest.raises(UnsafeOutputError, match="cannot create"):
        check_output_file("a.txt/out.csv")
    with pytest.raises(UnsafeOutputError, match="is a folder"):
        check_output_file("notes")
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_output_file("notes/b.txt")


def test_staged_folder_leaves_nothing_on_failure_and_replaces_on_success(user_folder):
    before = tree_hash(user_folder)
    with pytest.raises(RuntimeError):
        with staged_folder(user_folder / "result", kind="dataset") as staging:
            (staging / "half.bin").write_bytes(b"x" * 10)
            raise RuntimeError("simulated crash")
    assert tree_hash(user_folder) == before  # no result, no staging folder
    with staged_folder(user_folder / "result", kind="dataset") as staging:
        (staging / "full.bin").write_bytes(b"y")
    result = user_folder / "result"
    assert (result / "full.bin").read_bytes() == b"y" and written_by_spectrafm(result)
    umask = os.umask(0)
    os.umask(umask)
    assert (result.stat().st_mode & 0o777) == (0o777 & ~umask)  # not mkdtemp's 0700
    assert sorted(p.name for p in user_folder.iterdir()) == ["a.txt", "notes", "result"]


def test_stale_staging_of_a_dead_process_is_removed_and_a_live_one_kept(user_folder, capsys):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = user_folder / f".sim.partial-{dead.pid}-abc"
    live = user_folder / f".other.partial-{os.getpid()}-def"
    for folder, pid in ((stale, dead.pid), (live, os.getpid())):
        (folder / "final").mkdir(parents=True)
        (folder / MARKER).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    not_ours = user_folder / ".x.partial-1-zzz"  # no marker: not ours, never touched
    not_ours.mkdir()
    assert remove_stale_staging(user_folder) == [stale]
    assert live.exists() and not_ours.exists() and not stale.exists()
    assert "interrupted" in capsys.readouterr().out


# ---- the reproductions through the CLI ------------------------------------------------


@pytest.mark.parametrize("out", ["", "."])
def test_item1_simulate_empty_or_dot_out_deletes_nothing(user_folder, capsys, out):
    before = tree_hash(user_folder)
    rc = main(["simulate", "--universe", "synthetic", "--n", "5", "--out", out, "--overwrite", "--no-progress"])
    assert rc == 2
    assert "--out" in one_line_error(capsys)
    assert tree_hash(user_folder) == before


def test_item2_simulate_refuses_unrelated_folder_and_file(user_folder, capsys):
    before = tree_hash(user_folder)
    rc = main(["simulate", "--universe", "synthetic", "--n", "5", "--out", "notes", "--overwrite", "--no-progress"])
    assert rc == 2 and "did not write" in one_line_error(capsys)
    rc = main(["simulate", "--universe", "synthetic", "--n", "5", "--out", "a.txt", "--overwrite", "--no-progress"])
    assert rc == 2 and "existing file" in one_line_error(capsys)
    assert tree_hash(user_folder) == before


def test_a_new_folder_named_like_a_file_is_refused_with_the_folder_name_to_use(user_folder, capsys):
    """``simulate --out stars.csv`` expecting a CSV would get a dataset FOLDER named stars.csv: refused."""
    before = tree_hash(user_folder)
    rc = main(["simulate", "--universe", "synthetic", "--n", "5", "--out", "sims/stars.csv", "--no-progress"])
    assert rc == 2
    assert "'sims/stars.csv' names a .csv file, but this command writes a folder" in (err := one_line_error(capsys))
    assert err.endswith("e.g. --out sims/stars")
    with pytest.raises(ValueError, match=r"names a .fits.gz file.*e\.g\. --out x/spectra$"):
        check_output_folder("x/spectra.FITS.gz")
    with pytest.raises(ValueError, match=r"e\.g\. --out x/stars$"):  # a trailing slash does not shift the cut
        check_output_folder("x/stars.csv/")
    assert tree_hash(user_folder) == before
    (user_folder / "old.json").mkdir()  # an existing folder so named is the user's choice: not refused here
    assert check_output_folder("old.json") == user_folder / "old.json"
    assert check_output_folder("runs/v1.5") == user_folder / "runs" / "v1.5"  # dots alone are fine


def test_item2_simulate_overwrite_replaces_its_own_dataset_only(user_folder, capsys):
    before = tree_hash(user_folder)
    args = ["simulate", "--universe", "synthetic", "--n", "4", "--out", "sim", "--no-progress"]
    assert main(args) == 0
    assert main(args) == 2 and "--overwrite" in one_line_error(capsys)
    assert main([*args, "--seed", "3", "--overwrite"]) == 0
    assert tree_hash(user_folder, skip=user_folder / "sim") == before
    assert sorted(p.name for p in user_folder.iterdir()) == ["a.txt", "notes", "sim"]


def _original_checkpoint(root: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_convert_original import build_original_folder

    return build_original_folder(root / "orig", seed=3)


def test_item1_and_3_convert_original_never_deletes_cwd_or_its_source(user_folder, capsys):
    src = _original_checkpoint(user_folder)
    before = tree_hash(user_folder)
    for out in ("", ".", str(src), str(src / "sub"), "orig"):
        rc = main(["convert-original", str(src), out, "--overwrite"])
        assert rc == 2, out
        one_line_error(capsys)
    assert tree_hash(user_folder) == before


def _checkpoint_and_spectra(root: Path, model, feature_extractor, toy):
    folder = root / "model"
    model.save_pretrained(folder)
    feature_extractor.save_pretrained(folder)
    spectra = root / "spectra.npz"
    np.savez(spectra, wavelength=toy["wavelength"], flux=toy["flux"][:4])
    return folder, spectra


def test_item4_and_6_predict_checks_output_before_any_work(user_folder, capsys, tiny_model, feature_extractor, toy):
    model, spectra = _checkpoint_and_spectra(user_folder, tiny_model, feature_extractor, toy)
    capsys.readouterr()  # save_pretrained's progress bar
    before = tree_hash(user_folder)
    common = ["predict", "--model", str(model), "--input", str(spectra), "--request", "FE_H", "--device", "cpu"]
    for output, words in ((str(spectra), "own input"), ("notes", "is a folder"), ("a.txt/p.csv", "cannot create"),
                          ("notes/b.txt", "--overwrite"), ("", "empty")):
        rc = main([*common, "--output", output, "--overwrite" if output == str(spectra) else "--batch-size=2"])
        assert rc == 2, output
        assert words in one_line_error(capsys)
    assert tree_hash(user_folder) == before  # the spectra file, the folder and the user's files untouched
    assert main([*common, "--output", "pred.csv"]) == 0
    assert (user_folder / "pred.csv").read_text().startswith("id,FE_H,FE_H_err")  # `index` until issue 11
    assert not list(user_folder.glob(".*partial*"))


def test_item5_killed_simulate_leaves_staging_that_the_next_run_removes(user_folder, capsys):
    """A SIGKILLed ``spectrafm simulate`` leaves its staging folder; the next write beside it removes it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "spectrafm_hf.cli", "simulate", "--universe", "synthetic", "--n", "4000",
         "--batch-size", "16", "--out", str(user_folder / "big"), "--no-progress"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    staging = []
    while time.time() < deadline and not any(staging):
        staging = [p for p in user_folder.glob(".big.partial-*") if list(p.glob("final/train/*.arrow"))]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert staging, "the simulate process never started writing"
    assert staging[0].exists() and not (user_folder / "big").exists()
    assert main(["simulate", "--universe", "synthetic", "--n", "3", "--out", "small", "--no-progress"]) == 0
    assert not staging[0].exists()
    assert "interrupted spectrafm run" in capsys.readouterr().out
    assert sorted(p.name for p in user_folder.iterdir()) == ["a.txt", "notes", "small"]


def test_unexpected_errors_are_one_line_with_debug_hint(user_folder, capsys, monkeypatch):
    import spectrafm_hf.data.simulated as simulated

    def broken(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(simulated, "run_simulate", broken)
    rc = main(["simulate", "--universe", "synthetic", "--n", "5", "--out", "x"])
    assert rc == 1
    err = one_line_error(capsys)
    assert "RuntimeError: something broke" in err and "--debug" in err
    with pytest.raises(RuntimeError):
        main(["simulate", "--universe", "synthetic", "--n", "5", "--out", "x", "--debug"])
    with pytest.raises(RuntimeError):
        main(["--debug", "simulate", "--universe", "synthetic", "--n", "5", "--out", "x"])


def test_convert_cli_namespace_still_accepts_library_calls(user_folder):
    """run_convert_original keeps working from Python (tests and scripts call it with a Namespace)."""
    from spectrafm_hf.convert_original import run_convert_original

    src = _original_checkpoint(user_folder)
    out = user_folder / "converted"
    assert run_convert_original(argparse.Namespace(src_dir=str(src), out_dir=str(out), overwrite=False)) == 0
    assert written_by_spectrafm(out) and (out / MARKER).exists()
    assert run_convert_original(argparse.Namespace(src_dir=str(src), out_dir=str(out), overwrite=True)) == 0


def test_staging_written_from_another_host_is_reported_not_removed(user_folder, capsys):
    """On a shared filesystem another node's build cannot be checked from here: it is left alone."""
    other = user_folder / ".sim.partial-1-abc"
    (other / "final").mkdir(parents=True)
    (other / MARKER).write_text(json.dumps({"pid": 1, "host": "some-other-node"}))
    assert remove_stale_staging(user_folder) == []
    assert other.exists() and "some-other-node" in capsys.readouterr().out


@pytest.mark.parametrize("path", ["", ".", ".."])
def test_staged_folder_itself_refuses_protected_paths(user_folder, path):
    before = tree_hash(user_folder)
    with pytest.raises(UnsafeOutputError):
        with staged_folder(path, kind="dataset"):
            pass
    assert tree_hash(user_folder) == before
