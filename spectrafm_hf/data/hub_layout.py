"""Datasets as Parquet and as Hub dataset repos, with the wavelength grid kept on the way.

``datasets`` drops the grid of this package's datasets when it writes or reads Parquet (datasets 5.2:
``Dataset.to_parquet`` stores only the features in the Parquet schema; ``load_dataset`` keeps neither
schema metadata nor ``info.description``). This module writes and reads them so that it survives:

* :func:`write_parquet`: one split → one Parquet file whose Arrow schema metadata carries the grid and
  provenance under the key ``spectrafm`` (next to ``datasets``' own ``huggingface`` key, so
  ``load_dataset("parquet", ...)`` rebuilds the exact features);
* :func:`export_hub_dataset`: a ``DatasetDict`` (or its ``save_to_disk`` folder) → the layout of a Hub
  dataset repo::

      README.md                              dataset card: YAML configs + dataset_info, columns, provenance
      wavelength.json                        {"spectrafm": {..., "wavelength_vac_A": [...]}}
      data/<split>-00000-of-0000N.parquet    shards, each with the grid in its schema metadata

  which ``datasets.load_dataset(folder)`` (or the repo id, once uploaded) loads;
* :func:`load_spectra_dataset`: ``load_dataset`` / ``load_from_disk`` plus the grid put back into every
  split's ``info.description``, so ``schema.get_wavelength(split)`` works again.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping

from ..output_guard import check_output_file, check_output_folder, staged_folder
from .schema import (
    PARQUET_METADATA_KEY,
    WAVELENGTH_FILE,
    encode_payload,
    get_metadata,
    metadata_from_files,
    write_dataset_card,
)

#: Rows per Parquet row group: ≈ 17 MB of spectra on the 7514-pixel grid (flux, flux_err, mask).
ROWS_PER_GROUP = 256
#: Largest Parquet shard of an export, in bytes of Arrow data (the Hub's usual 500 MB shards).
MAX_SHARD_BYTES = 500 * 10**6


def dataset_folder_layout(folder: str | os.PathLike) -> str | None:
    """``"arrow"`` for a ``save_to_disk`` folder, ``"parquet"`` for a Hub dataset layout, None otherwise."""
    folder = Path(folder)
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return "arrow"
    if (folder / "data").is_dir() and any((folder / "data").glob("*.parquet")):
        return "parquet"
    return None


def describe_hub_folder(folder: str | os.PathLike):
    """A Hub-layout dataset folder from its files alone (Parquet footers, no data read).

    Returns ``(payload, features, sizes, files)``: the grid + provenance (``wavelength.json``, else the
    shards'), the ``datasets.Features`` of the shards, split → (rows, bytes on disk) and the data files
    relative to ``folder``. Raises ``ValueError`` when a shard carries another grid than the folder's.
    """
    import pyarrow.parquet as pq
    from datasets import Features

    from .schema import parquet_metadata

    folder = Path(folder)
    shards = sorted((folder / "data").glob("*.parquet"))
    if not shards:
        raise ValueError(f"{folder} has no data/*.parquet shards; export a dataset with export_hub_dataset")
    payload = metadata_from_files(folder)
    sizes: dict[str, tuple[int, int]] = {}
    for shard in shards:
        own = parquet_metadata(shard)
        if own is not None and own["wavelength_vac_A"] != payload["wavelength_vac_A"]:
            raise ValueError(f"{shard} carries another wavelength grid than {folder / WAVELENGTH_FILE}; "
                             "re-export the dataset")
        split = shard.name.split("-")[0]
        rows, n_bytes = sizes.get(split, (0, 0))
        sizes[split] = (rows + pq.read_metadata(shard).num_rows, n_bytes + shard.stat().st_size)
    features = Features.from_arrow_schema(pq.read_schema(shards[0]))
    return payload, features, sizes, [shard.relative_to(folder).as_posix() for shard in shards]


def write_parquet(dataset, path: str | os.PathLike, *, metadata: Mapping | None = None, overwrite: bool = False,
                  rows_per_group: int = ROWS_PER_GROUP) -> Path:
    """Write one split to a Parquet file that keeps the wavelength grid (use instead of ``Dataset.to_parquet``).

    Args:
        dataset: a ``datasets.Dataset`` of the schema (a ``select``/``shard`` view is fine).
        path: the ``.parquet`` file to write (atomically: a temporary name, then renamed).
        metadata: grid + provenance payload; default: the dataset's own (``schema.get_metadata``).
        overwrite: replace an existing file.
        rows_per_group: rows per Parquet row group.

    Returns the path. Raises ``ValueError`` when the dataset carries no grid and none is given.
    """
    import pyarrow.parquet as pq

    payload = dict(metadata) if metadata is not None else get_metadata(dataset)
    path = check_output_file(path, overwrite=overwrite, option="Parquet file")
    schema = dataset.features.arrow_schema
    schema = schema.with_metadata({**(schema.metadata or {}), PARQUET_METADATA_KEY: json.dumps(payload)})
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            for table in dataset.with_format("arrow").iter(batch_size=rows_per_group):
                writer.write_table(table.replace_schema_metadata(schema.metadata), row_group_size=rows_per_group)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _as_dataset_dict(source):
    """A ``DatasetDict`` from a DatasetDict, a Dataset (one split, named by its ``split`` or "train") or a
    dataset folder (``save_to_disk`` or Hub layout)."""
    from datasets import Dataset, DatasetDict

    if isinstance(source, DatasetDict):
        return source
    if isinstance(source, Dataset):
        return DatasetDict({str(source.split or "train"): source})
    loaded = load_spectra_dataset(source)
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})


def export_hub_dataset(source, out_dir: str | os.PathLike, *, overwrite: bool = False, repo_id: str | None = None,
                       max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write ``source`` in the layout of a Hub dataset repo (see the module docstring) at ``out_dir``.

    Args:
        source: a ``DatasetDict``/``Dataset`` of the schema, or a dataset folder (``save_to_disk`` or Hub
            layout) written by this package.
        out_dir: the new folder (built in a staging sibling, moved into place when complete).
        overwrite: replace an ``out_dir`` this package wrote.
        repo_id: the Hub dataset id the card's usage code names (None: the local folder).
        max_shard_bytes: split a split into shards of at most about this many bytes of Arrow data.

    Every split must carry the same grid. Empty splits get no shard (and are left out of ``configs``).
    """
    inputs = [source] if isinstance(source, (str, os.PathLike)) else []
    check_output_folder(out_dir, overwrite=overwrite, inputs=inputs)
    dataset = _as_dataset_dict(source)
    payload = get_metadata(dataset)
    for name, split in dataset.items():
        if get_metadata(split)["wavelength_vac_A"] != payload["wavelength_vac_A"]:
            raise ValueError(f"split {name!r} has another wavelength grid than {next(iter(dataset))!r}; a Hub "
                             "dataset has one grid: export its splits separately")
    features = next(iter(dataset.values())).features
    with staged_folder(out_dir, kind="dataset") as final:
        sizes = {name: _write_shards(split, final / "data", name, payload, max_shard_bytes)
                 for name, split in dataset.items()}
        (final / WAVELENGTH_FILE).write_text(encode_payload(payload))
        write_dataset_card(final, payload, features, sizes, layout="parquet", repo_id=repo_id, location=out_dir)
    return Path(out_dir)


def _write_shards(split, data_dir: Path, name: str, payload: Mapping, max_shard_bytes: int) -> tuple[int, int]:
    """``data/<name>-0000i-of-0000N.parquet``: contiguous shards of ≤ ``max_shard_bytes``; (rows, bytes)."""
    n_rows = len(split)
    if n_rows == 0:
        return 0, 0
    bytes_per_row = split.data.nbytes / max(split.data.num_rows, 1)
    n_shards = min(n_rows, max(1, math.ceil(n_rows * bytes_per_row / max_shard_bytes)))
    written = 0
    for index in range(n_shards):
        shard = split.shard(num_shards=n_shards, index=index, contiguous=True)
        path = write_parquet(shard, data_dir / f"{name}-{index:05d}-of-{n_shards:05d}.parquet", metadata=payload)
        written += path.stat().st_size
    return n_rows, written


def _parquet_files(source) -> list[str] | None:
    """The Parquet files ``source`` names (a file, a list of files), or None when it is something else."""
    items = source if isinstance(source, (list, tuple)) else [source]
    if all(str(item).lower().endswith((".parquet", ".pq")) for item in items):
        return [str(item) for item in items]
    return None


def load_spectra_dataset(source, split: str | None = None, **load_kwargs):
    """Load a dataset of the schema from any format the package writes, with its grid restored.

    Args:
        source: a ``save_to_disk`` folder (``load_from_disk``), a Hub-layout folder or a folder of
            Parquet shards (``load_dataset(folder)``), or one or more Parquet files
            (``load_dataset("parquet", data_files=...)``) written by :func:`write_parquet` /
            :func:`export_hub_dataset`.
        split: one split to return (a ``Dataset``); None returns the ``DatasetDict``.
        load_kwargs: passed to ``datasets.load_dataset`` (e.g. ``cache_dir``).

    Every returned split carries the grid in ``info.description`` again, so
    ``schema.get_wavelength(split)`` works without a ``source``.
    """
    from datasets import DatasetDict, load_dataset, load_from_disk

    files = _parquet_files(source)
    if files is not None:
        payload = metadata_from_files(files)
        loaded = load_dataset("parquet", data_files=files, **load_kwargs)
    elif not Path(source).exists():
        raise FileNotFoundError(f"dataset {source} does not exist")
    elif dataset_folder_layout(source) == "arrow":
        return _one_split(load_from_disk(str(source)), split, source)  # the grid is in its description
    else:
        payload = metadata_from_files(source)
        loaded = load_dataset(str(source), **load_kwargs)
    for part in (loaded.values() if isinstance(loaded, DatasetDict) else [loaded]):
        part.info.description = encode_payload(payload)
    return _one_split(loaded, split, source)


def _one_split(loaded, split: str | None, source):
    """``loaded`` itself (split None, or a single Dataset), or its split ``split``."""
    if split is None or not hasattr(loaded, "keys"):
        return loaded
    if split not in loaded:
        raise ValueError(f"{source}: no split {split!r}; it has {list(loaded)}")
    return loaded[split]
