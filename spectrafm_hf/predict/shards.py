"""The work folder of a catalogue run: finished shards on disk, so an interrupted run resumes.

A run over N stars is cut into shards of ``shard_size`` consecutive rows (the last one shorter).
Each finished shard is written, atomically, to ``<output>.parts/shard-<k>.parquet`` with the
prediction columns and the ``"<file>: <reason>"`` list of input files it skipped. The folder also
holds ``fingerprint.json``: a hash of the model's weights and configuration, the feature extractor,
the input's identity (paths, sizes, modification times) and every option that changes a number.
A run finds the folder, compares fingerprints, and

* reuses the shards when they match (the same command again: it resumes);
* discards them when they differ (another model, input or option), saying so in one line.

Shards do not depend on how many processes ran them, so a run may resume with another number of
processes. The folder is created through :func:`spectrafm_hf.output_guard.open_work_folder` (only a
folder this package wrote is ever reused) and removed once the final output is in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

from ..output_guard import open_work_folder

_SHARD_PATTERN = "shard-*.parquet"
_SKIPPED_KEY = b"spectrafm.skipped"


def shard_ranges(n_rows: int, shard_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n_rows)`` in shards of ``shard_size`` rows."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [(start, min(start + shard_size, n_rows)) for start in range(0, n_rows, shard_size)]


def model_fingerprint(model, feature_extractor) -> str:
    """sha256 of the model's configuration, every parameter and buffer, and the feature extractor."""
    digest = hashlib.sha256()
    digest.update(model.config.to_json_string(use_diff=False).encode())
    digest.update(feature_extractor.to_json_string().encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    return digest.hexdigest()


def _byte_dtype():
    import torch

    return torch.uint8


def run_fingerprint(model_hash: str, source_identity: Mapping, options: Mapping) -> str:
    """sha256 of everything that fixes the rows of every shard."""
    text = json.dumps({"model": model_hash, "input": source_identity, "options": options}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class WorkFolder:
    """``<output>.parts/``: the fingerprint and the finished shards of one run."""

    def __init__(self, output: str | os.PathLike):
        output = Path(output)
        self.path = output.with_name(output.name + ".parts")

    def open(self, fingerprint: str) -> tuple[int, str | None]:
        """Create or reopen the folder for ``fingerprint`` (main process, before any shard is run).

        Returns ``(finished shards kept, a note for the user or None)``; shards of another
        fingerprint and temporary files of a killed process are removed.
        """
        open_work_folder(self.path, kind="predict-shards", option="--output")
        stamp = self.path / "fingerprint.json"
        note = None
        previous = json.loads(stamp.read_text()).get("fingerprint") if stamp.is_file() else None
        shards = sorted(self.path.glob(_SHARD_PATTERN))
        if previous != fingerprint and shards:
            note = (f"discarded {len(shards)} finished shards in {self.path}: they were computed with another "
                    "model, input or options")
            for shard in shards:
                shard.unlink()
            shards = []
        for leftover in self.path.glob(".*.partial-*"):
            leftover.unlink()  # a shard being written when its process was killed
        _write_atomic(stamp, json.dumps({"fingerprint": fingerprint}) + "\n")
        if shards and note is None:
            note = f"resuming: {len(shards)} finished shards found in {self.path}"
        return len(shards), note

    def shard_path(self, index: int) -> Path:
        return self.path / f"shard-{index:06d}.parquet"

    def is_done(self, index: int) -> bool:
        return self.shard_path(index).is_file()

    def n_done(self) -> int:
        return len(list(self.path.glob(_SHARD_PATTERN))) if self.path.is_dir() else 0

    def write_shard(self, index: int, columns: Mapping[str, np.ndarray], skipped: list[str]) -> None:
        """Write one finished shard atomically (a killed process never leaves a half shard)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({name: pa.array(np.asarray(values)) for name, values in columns.items()})
        table = table.replace_schema_metadata({_SKIPPED_KEY: json.dumps(skipped).encode()})
        path = self.shard_path(index)
        temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
        pq.write_table(table, temporary)
        os.replace(temporary, path)

    def read_shard(self, index: int) -> tuple[dict[str, np.ndarray], list[str]]:
        """(columns, skipped files) of a finished shard."""
        import pyarrow.parquet as pq

        table = pq.read_table(self.shard_path(index))
        skipped = json.loads((table.schema.metadata or {}).get(_SKIPPED_KEY, b"[]"))
        return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}, skipped

    def remove(self) -> None:
        """Delete the folder (after the final output is in place, or when it holds nothing useful)."""
        shutil.rmtree(self.path, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)
