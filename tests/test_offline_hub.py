"""Loading by repo id from a Hugging Face Hub cache with ``HF_HUB_OFFLINE=1``: the checkpoint is laid
into ``$HF_HUB_CACHE/models--org--name/{refs,blobs,snapshots}`` and loaded in fresh processes, with the
installed package and with remote code (package import blocked). No network is touched: with
``HF_HUB_OFFLINE=1`` any HTTP call raises.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_remote_code import make_inputs, make_tiny_checkpoint, predict_here, run_child

from spectrafm_hf.hub.cache import lay_into_hf_cache, repo_cache_dir

REPO_ID = "org/spectrafm-tiny"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline")
    folder = make_tiny_checkpoint(root / "tiny")
    snapshot = lay_into_hf_cache(folder, REPO_ID, root / "hub")
    return folder, root / "hub", snapshot


def test_cache_layout(hub_cache):
    folder, cache, snapshot = hub_cache
    repo_dir = repo_cache_dir(cache, REPO_ID)
    assert repo_dir.name == "models--org--spectrafm-tiny"
    commit = (repo_dir / "refs" / "main").read_text()
    assert snapshot == repo_dir / "snapshots" / commit and len(commit) == 40
    for path in folder.iterdir():
        link = snapshot / path.name
        assert link.is_symlink() and link.resolve().parent == (repo_dir / "blobs").resolve()
        assert link.read_bytes() == path.read_bytes()
    # laying the same folder again is idempotent (same commit, no duplicate blobs)
    n_blobs = len(list((repo_dir / "blobs").iterdir()))
    assert lay_into_hf_cache(folder, REPO_ID, cache) == snapshot
    assert len(list((repo_dir / "blobs").iterdir())) == n_blobs


def test_offline_load_by_repo_id_installed_and_remote_code(hub_cache, tmp_path):
    folder, cache, _ = hub_cache
    inputs = make_inputs(tmp_path / "spectra.npz")
    value, sigma = predict_here(folder, inputs)
    env = {"HF_HUB_CACHE": str(cache)}
    installed = run_child(tmp_path, [REPO_ID], inputs, remote=False, env_extra=env, import_package=True)
    assert all(m.startswith("spectrafm_hf") for m in installed["module_0"]), installed["module_0"]
    remote = run_child(tmp_path, [REPO_ID], inputs, remote=True, env_extra=env)
    assert all(m.startswith("transformers_modules") for m in remote["module_0"]), remote["module_0"]
    for result in (installed, remote):
        np.testing.assert_array_equal(result["value_0"], value)
        np.testing.assert_array_equal(result["sigma_0"], sigma)


def test_offline_unknown_repo_fails_fast_without_network(hub_cache, tmp_path):
    """Control: offline, a repo id that is not in the cache fails (no silent download)."""
    _, cache, _ = hub_cache
    code = ("import spectrafm_hf\nfrom transformers import AutoModel\n"
            "AutoModel.from_pretrained('org/not-in-cache')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert "offline" in result.stderr.lower() or "cached" in result.stderr.lower()
