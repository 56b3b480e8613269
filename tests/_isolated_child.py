"""A fresh Python process that CANNOT import ``spectrafm_hf`` (not a test module): what a user without the
package gets when loading a checkpoint with ``trust_remote_code=True``. Shared by the remote-code tests.

:data:`PREAMBLE` starts every child script: it blocks every import of ``spectrafm_hf`` (even an
installed/editable one), drops the repository from ``sys.path``, reads the job (``sys.argv[1]``, JSON)
into ``job`` and checks the block holds. :func:`run_isolated` writes and runs such a script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PREAMBLE = textwrap.dedent(f'''
    import importlib.abc, json, os, sys
    REPO = {str(REPO)!r}

    class BlockSpectraFM(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "spectrafm_hf" or name.startswith("spectrafm_hf."):
                raise ModuleNotFoundError("spectrafm_hf is blocked in this process: " + name)
            return None

    sys.meta_path.insert(0, BlockSpectraFM())
    # the repository root is where spectrafm_hf lives (the venv inside it stays: torch etc. are there)
    sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != os.path.realpath(REPO)]

    import numpy as np, torch
    torch.set_num_threads(1)
    job = json.load(open(sys.argv[1]))
    try:
        import spectrafm_hf  # noqa: F401
        raise SystemExit("spectrafm_hf was importable: the test would prove nothing")
    except ModuleNotFoundError:
        pass
''')


def run_isolated(tmp_path: Path, body: str, job: dict, env_extra: dict | None = None,
                 check: bool = True) -> subprocess.CompletedProcess:
    """Run :data:`PREAMBLE` + ``body`` (dedented) in a fresh, isolated interpreter (``-I``: no
    PYTHONPATH, no user site, no cwd on sys.path) started in ``tmp_path``, offline, with its own HF module
    cache and an empty Hub cache; ``job`` is handed to it as JSON. With ``check``, a failing child fails the
    test with its stderr; the finished process is returned either way."""
    script = tmp_path / "child.py"
    script.write_text(PREAMBLE + textwrap.dedent(body))
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON"))}
    env.update({"HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": "1", "HF_HUB_CACHE": str(tmp_path / "empty_cache")})
    env.update(env_extra or {})
    result = subprocess.run([sys.executable, "-I", str(script), str(job_file)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 or not check, result.stderr[-3000:]
    return result
