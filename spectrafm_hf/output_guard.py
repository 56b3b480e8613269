"""Output paths that can never destroy the user's files.

Every command that writes a folder or a file asks this module first. The rules, in one place:

* an output path is never empty, ``.``, ``/``, the home directory, the current directory or one of its
  ancestors — ``--out "" --overwrite`` must not mean "delete where I am";
* an output is never one of the command's own inputs, nor inside or around one;
* ``--overwrite`` replaces only a folder this package wrote. Folders it writes carry a small marker
  file, :data:`MARKER`; a checkpoint or dataset written before the marker existed is recognised by its
  own files. An existing *file* where a folder is wanted (or the reverse) is always an error;
* a folder is built in a hidden staging sibling and moved into place only when complete
  (:func:`staged_folder`); a staging folder left behind by a killed process is removed, with a note,
  by the next write into the same parent folder.

Only the standard library is used: every layer may import this module.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

#: Hidden file marking a folder written by spectrafm-hf (never uploaded: publish skips hidden files).
MARKER = ".spectrafm-output"
#: Prefix of staging folders: ``.<name>.partial-<pid>-<random>``.
_STAGING_INFIX = ".partial-"


class UnsafeOutputError(ValueError):
    """An output path that would delete or overwrite something the user did not ask to replace."""


def _resolve(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _check_not_protected(raw: str | os.PathLike, resolved: Path, option: str) -> None:
    """Refuse empty paths, ``/``, home, and the current directory or its ancestors."""
    if str(raw).strip() == "":
        raise UnsafeOutputError(f"{option} is empty; give a new folder or file name, e.g. {option} runs/my_output")
    cwd = Path.cwd().resolve()
    if resolved == Path(resolved.anchor):
        raise UnsafeOutputError(f"{option} {str(raw)!r} is the filesystem root; choose a new folder")
    if resolved == Path.home().resolve():
        raise UnsafeOutputError(f"{option} {str(raw)!r} is your home directory; choose a new folder inside it")
    if resolved == cwd or resolved in cwd.parents:
        raise UnsafeOutputError(
            f"{option} {str(raw)!r} is the current directory or one of its parents; choose a new folder, "
            f"e.g. {option} runs/my_output"
        )


#: Suffixes of the files users write and read tables in: a new FOLDER so named is a mistake
#: (``spectrafm simulate --out stars.csv`` expecting a CSV gets a dataset folder named stars.csv).
_FILE_SUFFIXES = (".csv", ".ecsv", ".parquet", ".fits", ".fit", ".fits.gz", ".npz", ".npy", ".h5", ".hdf5", ".json",
                  ".yaml", ".yml", ".txt", ".safetensors")


def _check_folder_name(raw: str | os.PathLike, resolved: Path, option: str) -> None:
    """Refuse a NEW folder whose name reads as a file (``stars.csv``); an existing folder is left alone."""
    name = resolved.name.lower()
    suffix = next((s for s in _FILE_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)
    if suffix is not None and not resolved.exists():
        stem = str(Path(raw))[: -len(suffix)]  # Path(): "stars.csv/" → "stars.csv", so the cut is the suffix
        raise ValueError(f"{option} {str(raw)!r} names a {suffix} file, but this command writes a folder; "
                         f"give a folder name, e.g. {option} {stem}")


def _check_not_an_input(raw: str | os.PathLike, resolved: Path, inputs: Iterable[str | os.PathLike],
                        option: str) -> None:
    """Refuse an output equal to an input, inside an input folder, or holding an input."""
    for source in inputs:
        if source is None or str(source).strip() == "":
            continue
        source_path = _resolve(source)
        if resolved == source_path:
            raise UnsafeOutputError(f"{option} {str(raw)!r} is this command's own input; choose another path")
        if source_path in resolved.parents:
            raise UnsafeOutputError(
                f"{option} {str(raw)!r} lies inside this command's input {str(source)!r}; write it elsewhere"
            )
        if resolved in source_path.parents:
            raise UnsafeOutputError(
                f"{option} {str(raw)!r} contains this command's input {str(source)!r}; replacing it would "
                "delete the input. Choose another path"
            )


def written_by_spectrafm(folder: str | os.PathLike) -> bool:
    """True if ``folder`` carries the marker, or is a SpectraFM checkpoint or dataset from before it."""
    folder = Path(folder)
    if (folder / MARKER).is_file():
        return True
    config = folder / "config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "spectrafm"
        except (OSError, ValueError, AttributeError):
            return False
    if (folder / "dataset_dict.json").is_file():
        # a DatasetDict folder written by data.schema.write_dataset: its splits' info carries our metadata
        for info in folder.glob("*/dataset_info.json"):
            try:
                return '"spectrafm' in json.loads(info.read_text(encoding="utf-8")).get("description", "")
            except (OSError, ValueError, AttributeError):
                return False
    return False


def check_output_folder(path: str | os.PathLike, *, overwrite: bool = False,
                        inputs: Iterable[str | os.PathLike] = (), option: str = "--out") -> Path:
    """Validate an output FOLDER before any work is done; return it resolved.

    Args:
        path: the folder the user named.
        overwrite: the user asked to replace an existing folder.
        inputs: the command's input paths (files or folders).
        option: the option name used in messages (``--out``, ``OUT_DIR``).

    Raises:
        UnsafeOutputError: a protected path, an input, a file where a folder is wanted, or a non-empty
            folder this package did not write (even with ``overwrite``).
        FileExistsError: a non-empty folder without ``overwrite``.
    """
    resolved = _resolve(path)
    _check_not_protected(path, resolved, option)
    _check_not_an_input(path, resolved, inputs, option)
    if resolved.exists() and not resolved.is_dir():
        raise UnsafeOutputError(f"{option} {str(path)!r} is an existing file, not a folder; choose a new folder name")
    _check_folder_name(path, resolved, option)
    if resolved.is_dir() and any(resolved.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{path} already exists and is not empty; pass --overwrite to replace it "
                                  "or choose another folder")
        if not written_by_spectrafm(resolved):
            raise UnsafeOutputError(
                f"{option} {str(path)!r} is a non-empty folder that spectrafm did not write (no {MARKER} "
                "marker); refusing to delete it even with --overwrite. Choose a new folder"
            )
    return resolved


def open_work_folder(path: str | os.PathLike, *, kind: str, option: str = "--out") -> Path:
    """Create or reopen a folder that a command fills over time and may resume (a pipeline run).

    Unlike :func:`check_output_folder` nothing is ever replaced: the folder is created, or reused when
    this package wrote it (its marker, or an earlier run's checkpoint folders inside), and marked.

    Raises:
        UnsafeOutputError: a protected path, a file, or a non-empty folder this package did not write.
    """
    resolved = _resolve(path)
    _check_not_protected(path, resolved, option)
    if resolved.exists() and not resolved.is_dir():
        raise UnsafeOutputError(f"{option} {str(path)!r} is an existing file, not a folder; choose a new folder name")
    _check_folder_name(path, resolved, option)
    if resolved.is_dir() and any(resolved.iterdir()) and not written_by_spectrafm(resolved):
        if not any(written_by_spectrafm(child) for child in resolved.iterdir() if child.is_dir()):
            raise UnsafeOutputError(
                f"{option} {str(path)!r} is a non-empty folder that spectrafm did not write; choose a new folder "
                "(its files would be mixed with this run's)"
            )
    resolved.mkdir(parents=True, exist_ok=True)
    if not (resolved / MARKER).exists():
        mark_written(resolved, kind)
    return resolved


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False,
                      inputs: Iterable[str | os.PathLike] = (), option: str = "--output") -> Path:
    """Validate an output FILE before any work is done (so no result is computed and then lost).

    The parent folder is created if needed and must be writable; the path must not be a folder or an
    input; an existing file is replaced only with ``overwrite``.
    """
    resolved = _resolve(path)
    _check_not_protected(path, resolved, option)
    _check_not_an_input(path, resolved, inputs, option)
    if resolved.is_dir():
        raise UnsafeOutputError(f"{option} {str(path)!r} is a folder; give a file name, e.g. {path}/predictions.csv")
    if resolved.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it or choose another file name")
    try:
        resolved.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UnsafeOutputError(f"cannot create the folder of {option} {str(path)!r}: {err.strerror}") from None
    if not os.access(resolved.parent, os.W_OK | os.X_OK):
        raise UnsafeOutputError(f"cannot write {option} {str(path)!r}: folder {resolved.parent} is not writable")
    return resolved


def mark_written(folder: str | os.PathLike, kind: str) -> None:
    """Put the marker into a folder this package wrote (``kind``: "dataset", "checkpoint", "run")."""
    (Path(folder) / MARKER).write_text(json.dumps({"written_by": "spectrafm-hf", "kind": kind}) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_staging(parent: str | os.PathLike) -> list[Path]:
    """Remove staging folders in ``parent`` left by killed spectrafm processes; return what was removed.

    Only folders named ``.<name>.partial-<pid>-*`` that hold our staging marker are candidates, and only
    when that process no longer runs on this host: a build in progress is never touched, and one
    written from another host (shared filesystem) is only reported.
    """
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for candidate in parent.glob(f".*{_STAGING_INFIX}*"):
        marker = candidate / MARKER
        if not candidate.is_dir() or not marker.is_file():
            continue
        try:
            owner = json.loads(marker.read_text(encoding="utf-8"))
            pid, host = int(owner["pid"]), owner["host"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if host != socket.gethostname():
            # a build on another node of a shared filesystem: its process cannot be checked from here
            print(f"left {candidate} alone: written by process {pid} on {host}; remove it by hand if that run "
                  "is over", flush=True)
            continue
        if _pid_alive(pid):
            continue
        size = sum(f.stat().st_size for f in candidate.rglob("*") if f.is_file())
        shutil.rmtree(candidate, ignore_errors=True)
        print(f"removed {candidate} ({size / 1e6:.1f} MB), left by an interrupted spectrafm run", flush=True)
        removed.append(candidate)
    return removed


@contextmanager
def staged_folder(out_dir: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``out_dir`` atomically, marked as ours.

    Call :func:`check_output_folder` first: this function replaces an existing ``out_dir`` only if
    this package wrote it, and otherwise raises before touching anything. On any exception the
    staging folder is removed and ``out_dir`` is left as it was.
    """
    # the same protected-path rules as check_output_folder, in case a caller skipped it
    _check_not_protected(out_dir, _resolve(out_dir), "output folder")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{_STAGING_INFIX}{os.getpid()}-", dir=out_dir.parent))
    # mkdtemp makes 0700 folders; the result should get the user's usual permissions (shared clusters)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    (staging / MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
    try:
        final = staging / "final"
        final.mkdir()
        yield final
        mark_written(final, kind)
        os.chmod(final, 0o777 & ~umask)
        if out_dir.exists():
            if out_dir.is_dir() and any(out_dir.iterdir()) and not written_by_spectrafm(out_dir):
                raise UnsafeOutputError(
                    f"{out_dir} is a non-empty folder that spectrafm did not write; not replacing it")
            if out_dir.is_dir():
                shutil.rmtree(out_dir)
            else:
                raise UnsafeOutputError(f"{out_dir} is an existing file, not a folder; not replacing it")
        os.replace(final, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
