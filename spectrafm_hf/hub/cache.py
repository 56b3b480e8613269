"""Lay a checkpoint folder into a Hugging Face Hub cache, so it loads by repo id with no network.

The layout is the one ``huggingface_hub`` itself writes::

    $HF_HUB_CACHE/models--ORG--NAME/
        refs/<revision>                  the commit hash, as text
        blobs/<sha256 of the file>       the file contents
        snapshots/<commit>/<path>        symlink → ../../blobs/<sha256> (a copy where symlinks fail)

With ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing there, ``AutoModel.from_pretrained("ORG/NAME")``
and ``snapshot_download("ORG/NAME")`` resolve from the cache and never open a connection. Useful on
air-gapped clusters (copy a published checkpoint's folder, lay it in the cache, run offline) and in tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def repo_cache_dir(cache_dir: str | Path, repo_id: str) -> Path:
    """``cache_dir/models--ORG--NAME`` for ``repo_id`` = ``ORG/NAME``."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must look like ORG/NAME, got {repo_id!r}")
    return Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def lay_into_hf_cache(folder: str | Path, repo_id: str, cache_dir: str | Path,
                      revision: str = "main", commit: str | None = None) -> Path:
    """Copy every file of ``folder`` into the Hub cache layout for ``repo_id``; return the snapshot path.

    Args:
        folder: a checkpoint folder (e.g. written by ``save_checkpoint``).
        repo_id: ``ORG/NAME`` under which it will be loaded.
        cache_dir: the Hub cache root (what ``HF_HUB_CACHE`` points to).
        revision: the ref name (branch) that will point at the snapshot.
        commit: 40-hex commit id; default = a hash of the files' paths and contents (deterministic).
    """
    src = Path(folder)
    if not src.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(src)!r} does not exist")
    files = sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    if not files:
        raise ValueError(f"checkpoint folder {src} is empty")
    hashes = {p: _sha256(p) for p in files}
    if commit is None:
        tree = hashlib.sha1()
        for p in files:
            tree.update(f"{p.relative_to(src).as_posix()}\0{hashes[p]}\n".encode())
        commit = tree.hexdigest()
    if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
        raise ValueError(f"commit must be 40 lowercase hex digits, got {commit!r}")

    repo_dir = repo_cache_dir(cache_dir, repo_id)
    blobs, snapshot = repo_dir / "blobs", repo_dir / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    for p in files:
        blob = blobs / hashes[p]
        if not blob.exists():
            shutil.copyfile(p, blob)
        link = snapshot / p.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        try:  # relative link, like huggingface_hub's, so the cache can be moved as a whole
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:  # e.g. Windows without developer mode: a plain copy also works
            shutil.copyfile(blob, link)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    return snapshot
