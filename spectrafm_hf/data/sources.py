"""Spectra inputs read a block of rows at a time, so a survey never has to fit in memory.

:func:`open_source` opens ``spectrafm predict --input`` as a :class:`SpectraSource`: it knows how
many rows the input has and which per-row scalar columns, and :meth:`SpectraSource.read` returns the
rows ``[start, stop)`` as a :class:`~spectrafm_hf.data.spectra_input.SpectraInput`. Memory per read
is that block's, whatever the input's size:

=========================  ==================================================================
input                      how a block is read
=========================  ==================================================================
dataset folder (``save_   memory-mapped Arrow through ``datasets``; the map is reopened per
to_disk``), ``--split``    block and dropped after it, so pages already read leave the
                           process's resident memory
Parquet                    batch by batch (``iter_batches``, buffered column reads), one pass
                           over the file for blocks read in order, whatever its row groups;
                           the grid is a ``wavelength`` column or the file's schema metadata
                           (``hub_layout.write_parquet``)
Hub-layout dataset folder  its ``data/<split>-*.parquet`` shards in order, each as Parquet above
(``export_hub_dataset``),  (one split, or every split in the card's order); the grid from
``--split``                ``wavelength.json`` or the shards
folder or glob of          one file per star, read when its row is; an unreadable file is
aspcapStar / apStar        skipped (``SpectraInput.skipped``), never fatal
npz, CSV, FITS table, one  loaded whole at open (small inputs; for a survey use a dataset folder
APOGEE file                or Parquet)
=========================  ==================================================================

Star ids: the input's ``id`` (``APOGEE_ID`` in APOGEE files and FITS tables); without one,
``<file stem>-<row>``. Scalars are returned only for the ``columns`` asked for: which of them the
model reads is decided by the caller (:mod:`spectrafm_hf.predict.inputs`).
"""

from __future__ import annotations

import gc
import glob
import itertools
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .hub_layout import dataset_folder_layout
from .labels import LABEL_COLUMNS
from .readers import (
    FITS_SUFFIXES,
    apogee_kind,
    hub_folder_grid,
    hub_folder_shards,
    join_spectra,
    read_apogee_spectrum,
    read_spectra,
)
from .spectra_input import SpectraInput
from .tables import arrow_column_values, canonical_column, parquet_grid, spectra_from_columns

_SPECTRUM_COLUMNS = ("id", "flux", "flux_err", "mask", "wavelength")


class SpectraSource:
    """Rows of spectra read on demand.

    Attributes:
        path: the input as given (file, folder or glob pattern).
        columns: per-row scalar column → numpy dtype kind (``"f"``, ``"i"``, ``"U"`` ...), besides
            the spectrum arrays and the id: catalogue labels, photometry, coordinates.
    """

    path: Path
    columns: dict[str, str]

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, start: int, stop: int, columns: Sequence[str] = ()) -> SpectraInput:
        """Rows ``[start, stop)``: wavelength (P,) or (n, P), flux/flux_err/mask (n, P), ids (n,),
        ``scalars`` = the requested ``columns``; n < stop - start only when files were skipped."""
        raise NotImplementedError

    def identity(self) -> dict:
        """What identifies this input's content for a resumed run: paths, sizes, modification times
        (content is not hashed: a survey is too large to read twice)."""
        raise NotImplementedError


def _file_identity(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _default_ids(path: Path, start: int, stop: int) -> np.ndarray:
    stem = path.name.split(".")[0] or "row"
    return np.array([f"{stem}-{i}" for i in range(start, stop)])


class ArraySource(SpectraSource):
    """An input loaded whole (npz, CSV, FITS table, one APOGEE file), served in blocks."""

    def __init__(self, path: Path, spectra: SpectraInput):
        self.path = path
        flux = np.asarray(spectra.flux)
        one = flux.ndim == 1  # a single spectrum given as (P,)
        self._flux = flux[None] if one else flux
        self._err = None if spectra.flux_err is None else np.asarray(spectra.flux_err).reshape(self._flux.shape)
        self._mask = None if spectra.mask is None else np.asarray(spectra.mask).reshape(self._flux.shape)
        self._wavelength = np.asarray(spectra.wavelength)
        n = len(self._flux)
        self._ids = (np.asarray(spectra.ids).astype(str) if spectra.ids is not None
                     else _default_ids(path, 0, n))
        self._scalars = {name: np.broadcast_to(np.asarray(values), (n,))
                         for name, values in {**spectra.reference, **spectra.scalars}.items()}
        self.columns = {name: values.dtype.kind for name, values in self._scalars.items()}

    def __len__(self) -> int:
        return len(self._flux)

    def read(self, start, stop, columns=()):
        rows = slice(start, stop)
        wavelength = self._wavelength if self._wavelength.ndim == 1 else self._wavelength[rows]
        return SpectraInput(
            wavelength=wavelength, flux=self._flux[rows],
            flux_err=None if self._err is None else self._err[rows],
            mask=None if self._mask is None else self._mask[rows],
            scalars={name: self._scalars[name][rows] for name in columns}, ids=self._ids[rows],
        )

    def identity(self):
        """A hash of the arrays themselves (they are in memory, and may come from no file)."""
        import hashlib

        digest = hashlib.sha256()
        for values in (self._wavelength, self._flux, self._err, self._mask, self._ids, *self._scalars.values()):
            if values is not None:
                digest.update(np.ascontiguousarray(values).tobytes())
        return {"kind": "arrays", "sha256": digest.hexdigest(), "columns": sorted(self._scalars)}


class DatasetSource(SpectraSource):
    """A dataset folder written by this project (``save_to_disk``), one split or all splits in
    stored order."""

    def __init__(self, path: Path, split: str | None = None):
        from datasets import Dataset, load_from_disk

        from .schema import get_wavelength

        self.path = path
        try:
            loaded = load_from_disk(str(path))
        except (FileNotFoundError, ValueError, OSError) as err:
            raise ValueError(f"{path}: not a dataset folder written by save_to_disk ({err})") from err
        if isinstance(loaded, Dataset):
            if split is not None:
                raise ValueError(f"{path}: --split {split!r} given, but this dataset folder holds one dataset "
                                 "without splits; leave --split out")
            parts = [(path, loaded)]
        elif split is not None:
            if split not in loaded:
                raise ValueError(f"{path}: no split {split!r}; it has {list(loaded)}")
            parts = [(path / split, loaded[split])]
        else:
            parts = [(path / name, loaded[name]) for name in loaded]
        parts = [(folder, part) for folder, part in parts if len(part)]
        if not parts:
            raise ValueError(f"{path}: the dataset holds no spectra")
        self._wavelength = get_wavelength(parts[0][1])
        for _, part in parts:
            if not np.array_equal(get_wavelength(part), self._wavelength):
                raise ValueError(f"{path}: splits have different wavelength grids; choose one with --split")
        self._folders = [folder for folder, _ in parts]
        self._offsets = np.cumsum([0, *(len(part) for _, part in parts)])
        features = parts[0][1].features
        self.columns = {name: _feature_kind(feature) for name, feature in features.items()
                        if name not in _SPECTRUM_COLUMNS and _feature_kind(feature) is not None}
        del loaded, parts
        gc.collect()  # release the memory maps: each read() maps only what it needs

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def read(self, start, stop, columns=()):
        blocks = []
        for index, folder in enumerate(self._folders):
            low, high = max(start, self._offsets[index]), min(stop, self._offsets[index + 1])
            if low < high:
                blocks.append(self._read_part(folder, int(low - self._offsets[index]),
                                              int(high - self._offsets[index]), columns))
        joined = {name: np.concatenate([block[name] for block in blocks]) for name in blocks[0]}
        ids = joined.pop("id", None)
        return SpectraInput(
            wavelength=self._wavelength, flux=joined.pop("flux"), flux_err=joined.pop("flux_err", None),
            mask=joined.pop("mask", None), scalars=joined,
            ids=_default_ids(self.path, start, stop) if ids is None else ids.astype(str),
        )

    @staticmethod
    def _read_part(folder: Path, start: int, stop: int, columns) -> dict[str, np.ndarray]:
        """Rows of one split through a fresh memory map, dropped on return (see the module docstring)."""
        from datasets import Dataset

        dataset = Dataset.load_from_disk(str(folder))
        wanted = [name for name in ("id", "flux", "flux_err", "mask") if name in dataset.column_names]
        table = dataset.select_columns([*wanted, *columns]).with_format("numpy")[start:stop]
        block = {name: np.array(values) for name, values in table.items()}  # copies out of the map
        del dataset, table
        return block

    def identity(self):
        files = sorted(p for folder in self._folders for p in folder.rglob("*") if p.is_file())
        return {"kind": "dataset", "files": [_file_identity(p) for p in files]}


def _feature_kind(feature) -> str | None:
    """numpy dtype kind of a scalar ``datasets`` feature; None for vectors and nested features."""
    dtype = getattr(feature, "dtype", None)
    if not isinstance(dtype, str) or hasattr(feature, "feature"):
        return None
    if dtype.startswith(("float", "double", "half")):
        return "f"
    if dtype.startswith(("int", "uint")):
        return "i"
    if dtype == "bool":
        return "b"
    return "U" if dtype in ("string", "large_string") else None


class ParquetSource(SpectraSource):
    """A Parquet table of spectra (module :mod:`.tables` for the columns), read row group by row group.

    The grid is the ``wavelength`` column, else the file's spectrafm schema metadata (a file written
    by ``hub_layout.write_parquet``), else ``wavelength`` (the grid of the Hub-layout folder the file
    is a shard of). A file of this package's datasets is read as a dataset folder is: the star id is
    its ``id`` column only (a user's table may name it ``ids`` or ``APOGEE_ID``).
    """

    def __init__(self, path: Path, wavelength: np.ndarray | None = None):
        self.path = path
        parquet = self._open()
        schema = parquet.schema_arrow
        self._grid, from_dataset = parquet_grid(path, schema, wavelength)
        self._names = {canonical_column(name): name for name in schema.names}
        if "flux" not in self._names:
            raise ValueError(f"{path}: missing column 'flux'; a spectra table needs 'flux' (one vector per row) "
                             f"(found {sorted(self._names)})")
        metadata = parquet.metadata
        self._group_offsets = np.cumsum([0, *(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))])
        if self._group_offsets[-1] == 0:
            raise ValueError(f"{path}: the table holds no spectra")
        id_columns = ("id",) if from_dataset else ("id", "ids", "apogee_id")
        self._id_column = next((name for name in id_columns if name in self._names), None)
        self._cursor = None  # the open batch stream of the last read (see _batches)
        self.columns = {}
        for canonical, name in self._names.items():
            if canonical in _SPECTRUM_COLUMNS or canonical == self._id_column:
                continue
            kind = np.dtype(schema.field(name).type.to_pandas_dtype()).kind if _is_scalar(schema.field(name).type) \
                else None
            if kind is not None:
                self.columns[canonical] = kind

    def _open(self):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path, buffer_size=1 << 20, pre_buffer=False)
        except Exception as err:  # pyarrow raises its own ArrowInvalid / OSError types
            raise ValueError(f"{self.path}: cannot read as Parquet ({err})") from err

    def __len__(self) -> int:
        return int(self._group_offsets[-1])

    def read(self, start, stop, columns=()):
        import pyarrow as pa

        canonical = [name for name in ("wavelength", "flux", "flux_err", "mask") if name in self._names]
        canonical += [self._id_column] if self._id_column else []
        canonical += [name for name in columns if name not in canonical]
        pieces, wanted = [], stop - start
        for batch in self._batches(start, canonical):
            take = min(wanted, batch.num_rows)
            pieces.append(batch.slice(0, take))
            wanted -= take
            if wanted == 0:
                self._cursor.update(position=stop, leftover=batch.slice(take) if take < batch.num_rows else None)
                break
        table = pa.Table.from_batches(pieces)
        values = {name: arrow_column_values(table.column(self._names[name]), self.path, name) for name in canonical}
        if self._grid is not None:
            values["wavelength"] = self._grid
        spectra = spectra_from_columns({k: v for k, v in values.items() if k in _SPECTRUM_COLUMNS
                                        or k == self._id_column}, self.path)
        spectra.ids = spectra.ids if spectra.ids is not None else _default_ids(self.path, start, stop)
        spectra.scalars = {name: values[name] for name in columns}
        return spectra

    def _batches(self, start: int, canonical: list[str]):
        """Record batches from row ``start`` on. The stream of the previous read is continued when it
        ended at or before ``start`` (blocks are read in order), so a file of one huge row group is
        decoded once, not once per block; otherwise it restarts at the row group holding ``start``."""
        cursor = self._cursor
        if cursor is None or cursor["columns"] != canonical or cursor["position"] > start:
            first = int(np.searchsorted(self._group_offsets, start, side="right") - 1)
            stream = self._open().iter_batches(batch_size=256, row_groups=range(first, len(self._group_offsets) - 1),
                                               columns=[self._names[name] for name in canonical])
            cursor = self._cursor = {"columns": canonical, "position": int(self._group_offsets[first]),
                                     "stream": stream, "leftover": None}
        position, leftover = cursor["position"], cursor["leftover"]
        cursor["leftover"] = None
        for batch in itertools.chain([leftover] if leftover is not None else [], cursor["stream"]):
            if position + batch.num_rows > start:
                yield batch.slice(max(start - position, 0))
            position += batch.num_rows

    def identity(self):
        return {"kind": "parquet", "file": _file_identity(self.path)}


class HubFolderSource(SpectraSource):
    """A dataset folder in the Hub repo layout (``hub_layout.export_hub_dataset``): its Parquet shards
    read one after the other, each as a :class:`ParquetSource`, in :func:`~.readers.hub_folder_shards`
    order. Only shard footers are read at open."""

    def __init__(self, path: Path, split: str | None = None):
        self.path = path
        self._grid = hub_folder_grid(path)
        self._shards = [ParquetSource(shard, wavelength=self._grid) for shard in hub_folder_shards(path, split)]
        for shard in self._shards:
            if self._grid is not None and shard._grid is not None and not np.array_equal(shard._grid, self._grid):
                raise ValueError(f"{shard.path} carries another wavelength grid than {path}; re-export the dataset")
        self._offsets = np.cumsum([0, *(len(shard) for shard in self._shards)])
        first, rest = self._shards[0].columns, self._shards[1:]
        self.columns = {name: kind for name, kind in first.items() if all(name in other.columns for other in rest)}

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def read(self, start, stop, columns=()):
        parts = []
        for index, shard in enumerate(self._shards):
            low, high = max(start, self._offsets[index]), min(stop, self._offsets[index + 1])
            if low < high:
                parts.append(shard.read(int(low - self._offsets[index]), int(high - self._offsets[index]), columns))
        return join_spectra(parts, self.path)

    def identity(self):
        files = [shard.path for shard in self._shards]
        grid_file = self.path / "wavelength.json"
        return {"kind": "hub-folder", "files": [_file_identity(p) for p in
                                                [*files, *([grid_file] if grid_file.is_file() else [])]]}


def _is_scalar(arrow_type) -> bool:
    import pyarrow as pa

    return (pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type)
            or pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type))


class ApogeeFilesSource(SpectraSource):
    """aspcapStar / apStar files, one star each, in file-name order; an unreadable file is skipped."""

    def __init__(self, path: Path, files: Sequence[Path]):
        self.path = path
        self.files = list(files)
        self.columns = {name: "f" for name in LABEL_COLUMNS}

    def __len__(self) -> int:
        return len(self.files)

    def read(self, start, stop, columns=()):
        from . import grid

        stars, skipped = [], []
        for file in self.files[start:stop]:
            try:
                kind = apogee_kind(file)
                if kind is None:
                    raise ValueError(f"{file}: not an aspcapStar or apStar file")
                stars.append(read_apogee_spectrum(file, kind))
            except (ValueError, OSError) as err:
                skipped.append(" ".join(str(err).split()))
        wavelength = grid.apogee_wavelength()
        if not stars:
            empty = np.empty((0, wavelength.size), np.float32)
            return SpectraInput(wavelength=wavelength, flux=empty, flux_err=empty, mask=empty.astype(bool),
                                scalars={name: np.empty(0) for name in columns}, ids=np.empty(0, str),
                                skipped=skipped)
        return SpectraInput(
            wavelength=wavelength, flux=np.concatenate([s.flux for s in stars]),
            flux_err=np.concatenate([s.flux_err for s in stars]), mask=np.concatenate([s.mask for s in stars]),
            ids=np.concatenate([s.ids for s in stars]).astype(str),
            scalars={name: np.concatenate([s.reference[name] for s in stars]) for name in columns}, skipped=skipped,
        )

    def identity(self):
        return {"kind": "files", "files": [_file_identity(p) for p in self.files]}


def _fits_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(FITS_SUFFIXES))


def open_source(path: str | os.PathLike, split: str | None = None) -> SpectraSource:
    """``spectrafm predict --input`` → a :class:`SpectraSource` (formats in the module docstring).

    ``path`` may be a file, a dataset folder (``save_to_disk`` or Hub layout), a folder of
    aspcapStar/apStar files, or a glob pattern (quote it in the shell) of such files. ``split`` is
    for dataset folders only.

    Raises:
        FileNotFoundError: nothing at ``path`` (or no file matches the pattern).
        ValueError: a file or folder that cannot be read as spectra, naming it; a missing split.
    """
    raw = str(path)
    path = Path(path)
    if not path.exists() and glob.has_magic(raw):
        files = sorted(Path(p) for p in glob.glob(raw) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"input pattern {raw!r} matches no file")
        _refuse_split(path, split)
        return ApogeeFilesSource(path, files)
    if not path.exists():
        raise FileNotFoundError(f"input file {path} does not exist")
    if path.is_dir():
        is_dataset = any((path / name).exists() for name in ("dataset_dict.json", "dataset_info.json", "state.json"))
        if not is_dataset and dataset_folder_layout(path) == "parquet":
            return HubFolderSource(path, split)
        files = [] if is_dataset else _fits_files(path)
        if not files:
            return DatasetSource(path, split)
        _refuse_split(path, split)
        return ApogeeFilesSource(path, files)
    _refuse_split(path, split)
    if path.suffix.lower() in (".parquet", ".pq"):
        return ParquetSource(path)
    return ArraySource(path, read_spectra(path))


def _refuse_split(path: Path, split: str | None) -> None:
    if split is not None:
        raise ValueError(f"--split {split!r} applies to dataset folders only; {path} is not one (leave --split out)")
