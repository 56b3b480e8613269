"""Generic tables of spectra (npz, Parquet, FITS table) → :class:`SpectraInput` or the dataset schema.

A table holds one spectrum per row:

==============  =============================  =================================================
column          shape                          meaning
==============  =============================  =================================================
``wavelength``  (P,) shared, or one per row    vacuum Å (rows must share one grid for a dataset)
``flux``        one (P,) vector per row        continuum-normalised flux
``flux_err``    optional, (P,) per row         1σ error of ``flux``
``mask``        optional, (P,) per row         True / nonzero = bad pixel
``id``          optional scalar per row        star identifier (default ``<file stem>-<row>``)
any other       numeric scalar per row         labels (``TEFF`` ... ``O_FE``, ``<LABEL>_ERR``,
                                               ``snr``) or named scalar inputs (photometry ...)
==============  =============================  =================================================

* ``.npz``: arrays as above (:func:`read_npz`).
* ``.parquet``: list columns for vectors (pyarrow, installed with ``datasets``).
* FITS table: the first binary-table HDU, vector columns (``TFORM`` like ``7514E``); column names
  are matched case-insensitively (``FLUX`` = ``flux``); big-endian columns are made native.
  A ``wavelength`` that is not a column may be given as a 1-row table or image in another HDU named
  ``WAVELENGTH``.

:func:`read_table` returns a :class:`SpectraInput` (for ``spectrafm predict``); :func:`load_table`
returns a ``DatasetDict`` in the project schema (one split, ``train`` by default).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .labels import LABEL_COLUMNS
from .schema import dataset_in_memory, write_dataset
from .spectra_input import SpectraInput

_VECTOR_COLUMNS = ("wavelength", "flux", "flux_err", "mask")
_ID_COLUMNS = ("id", "ids", "apogee_id")
#: Columns of the schema that a table may carry per row (labels, their errors, snr).
SCHEMA_SCALARS: tuple[str, ...] = LABEL_COLUMNS
_NPZ_ARRAYS = {"wavelength", "flux", "flux_err", "mask", "id", "ids"}


def read_npz(path: str | Path) -> SpectraInput:
    """An ``.npz`` with ``wavelength`` ((P,) or (N, P)), ``flux`` (N, P), optional ``flux_err``,
    ``mask`` (True = bad), ``id``, and any other array of shape (N,) as a named scalar input.

    Loaded with ``allow_pickle=False``: object arrays are refused.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read as .npz ({err}); expected numpy.savez output") from err
    with archive:
        missing = {"wavelength", "flux"} - set(archive.files)
        if missing:
            raise ValueError(f"{path}: missing array(s) {sorted(missing)}; an input .npz needs 'wavelength' and 'flux'")
        flux = np.asarray(archive["flux"])
        scalars = {k: np.asarray(archive[k]) for k in archive.files if k not in _NPZ_ARRAYS}
        ids_key = "id" if "id" in archive.files else ("ids" if "ids" in archive.files else None)
        return SpectraInput(
            wavelength=np.asarray(archive["wavelength"]),
            flux=flux,
            flux_err=np.asarray(archive["flux_err"]) if "flux_err" in archive.files else None,
            mask=np.asarray(archive["mask"]).astype(bool) if "mask" in archive.files else None,
            scalars=scalars,
            ids=np.asarray(archive[ids_key]) if ids_key else None,
        )


def _stack_rows(values, path: Path, name: str) -> np.ndarray:
    """A column of per-row vectors → (N, P); refuses ragged rows with a clear message."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values
    lengths = {len(v) for v in values}
    if len(lengths) > 1:
        raise ValueError(f"{path}: column {name!r} has rows of different lengths {sorted(lengths)[:5]}; "
                         "every spectrum of a table must have the same number of pixels")
    return np.stack([np.asarray(v) for v in values])


def _from_columns(columns: dict[str, np.ndarray], path: Path) -> SpectraInput:
    """Column dict (names already lower-cased for the vector/id columns) → SpectraInput."""
    missing = [name for name in ("wavelength", "flux") if name not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; a spectra table needs 'wavelength' and 'flux' "
                         f"(found {sorted(columns)})")
    flux = _stack_rows(columns["flux"], path, "flux").astype(np.float64)
    if flux.ndim != 2:
        raise ValueError(f"{path}: 'flux' must be one vector per row, got shape {flux.shape}")
    n = flux.shape[0]
    wavelength = _stack_rows(columns["wavelength"], path, "wavelength").astype(np.float64)
    if wavelength.ndim == 2 and (wavelength.shape[0] == 1 or np.all(wavelength == wavelength[:1])):
        wavelength = wavelength[0]  # one grid for every row: keep it once
    flux_err = _stack_rows(columns["flux_err"], path, "flux_err").astype(np.float64) if "flux_err" in columns else None
    mask = _stack_rows(columns["mask"], path, "mask").astype(bool) if "mask" in columns else None
    ids = None
    for name in _ID_COLUMNS:
        if name in columns:
            ids = np.asarray([str(v).strip() for v in columns[name]])
            break
    scalars = {}
    for name, values in columns.items():
        if name in _VECTOR_COLUMNS or name in _ID_COLUMNS:
            continue
        values = np.asarray(values)
        if values.shape != (n,) or values.dtype.kind not in "biuf":
            raise ValueError(f"{path}: column {name!r} (shape {values.shape}, dtype {values.dtype}) is neither a "
                             "spectrum vector nor a numeric scalar per row; remove or rename it")
        scalars[name] = values.astype(np.float64)
    return SpectraInput(wavelength=wavelength, flux=flux, flux_err=flux_err, mask=mask, scalars=scalars, ids=ids)


def _canonical(name: str) -> str:
    """Vector/id column names are case-insensitive; label names are upper-case (schema)."""
    lower = name.lower()
    if lower in _VECTOR_COLUMNS or lower in _ID_COLUMNS or lower == "snr":
        return lower
    if name.upper() in SCHEMA_SCALARS:
        return name.upper()
    return name


def read_parquet(path: str | Path) -> SpectraInput:
    """A Parquet table (list columns for the vectors) → SpectraInput."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises its own ArrowInvalid / OSError types
        raise ValueError(f"{path}: cannot read as Parquet ({err})") from err
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        values = column.to_pylist() if str(column.type).startswith(("list", "large_list", "fixed_size_list")) \
            else column.to_numpy(zero_copy_only=False)
        columns[_canonical(name)] = values
    return _from_columns(columns, path)


def read_fits_table(path: str | Path) -> SpectraInput:
    """The first binary table of a FITS file → SpectraInput (see the module docstring)."""
    from .fits_io import native_byte_order as _native
    from .fits_io import open_fits as _open_fits

    path = Path(path)
    with _open_fits(path) as hdul:
        tables = [h for h in hdul if getattr(h, "columns", None) is not None and h.data is not None]
        if not tables:
            raise ValueError(f"{path}: no binary table HDU; a FITS spectra table has 'wavelength' and 'flux' columns")
        data = tables[0].data
        columns = {}
        for name in data.columns.names:
            values = np.asarray(data[name])
            values = np.char.strip(values.astype(str)) if values.dtype.kind in "SU" else _native(values).copy()
            columns[_canonical(name)] = values
        if "wavelength" not in columns:
            for hdu in hdul:
                if hdu.name.upper() == "WAVELENGTH" and hdu.data is not None:
                    if getattr(hdu, "columns", None) is not None:
                        values = np.asarray(hdu.data[hdu.data.columns.names[0]])
                    else:
                        values = np.asarray(hdu.data)
                    columns["wavelength"] = _native(values).reshape(-1).copy()
                    break
    return _from_columns(columns, path)


def read_table(path: str | Path) -> SpectraInput:
    """npz / Parquet / FITS table → SpectraInput, chosen by suffix."""
    path = Path(path)
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() == ".npz":
        return read_npz(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return read_parquet(path)
    if path.suffix.lower() in (".fits", ".fit", ".fts") or suffixes.endswith((".fits.gz", ".fit.gz")):
        return read_fits_table(path)
    raise ValueError(f"{path}: unsupported table format {path.suffix!r}; use .npz, .parquet or a FITS table")


def spectra_input_to_batches(spectra: SpectraInput, path: Path, batch_size: int = 256):
    """Split a SpectraInput into schema batches: labels/_ERR/snr go to their columns, other scalars
    become extra float32 columns. Returns ``(make_batches, wavelength, extra_scalar_names)``."""
    wavelength = np.asarray(spectra.wavelength, dtype=np.float64)
    if wavelength.ndim != 1:
        raise ValueError(f"{path}: rows have different wavelength grids; a dataset needs one shared grid — "
                         "resample the spectra onto a common grid first")
    flux = np.asarray(spectra.flux)
    if flux.ndim != 2 or flux.shape[1] != wavelength.size:
        raise ValueError(f"{path}: flux shape {flux.shape} does not match {wavelength.size} wavelengths")
    n = flux.shape[0]
    ids = spectra.ids if spectra.ids is not None else np.array([f"{path.stem}-{i}" for i in range(n)])
    if len(ids) != n:
        raise ValueError(f"{path}: {len(ids)} ids for {n} spectra")
    scalars = {**spectra.scalars, **getattr(spectra, "reference", {})}
    for name, values in scalars.items():
        if np.shape(values) != (n,):
            raise ValueError(f"{path}: scalar {name!r} has shape {np.shape(values)}, expected ({n},)")
    extra = tuple(name for name in scalars if name not in SCHEMA_SCALARS)

    def make_batches():
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            batch = {"id": np.asarray(ids[start:stop]), "flux": flux[start:stop]}
            if spectra.flux_err is not None:
                batch["flux_err"] = np.asarray(spectra.flux_err)[start:stop]
            if spectra.mask is not None:
                batch["mask"] = np.asarray(spectra.mask)[start:stop]
            for name, values in scalars.items():
                batch[name] = np.asarray(values)[start:stop]
            yield batch

    return make_batches, wavelength, extra


def load_table(path: str | Path, out_dir: str | Path | None = None, split: str = "train", overwrite: bool = False):
    """A table of spectra → ``DatasetDict`` with one split named ``split``.

    Written (streaming, atomic) to ``out_dir`` when given, else kept in memory (small tables).
    Label columns (``TEFF`` ... and ``<LABEL>_ERR``, ``snr``) fill the schema's columns (NaN when
    absent); any other numeric per-row column becomes an extra float32 column.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"table {path} does not exist")
    spectra = read_table(path)
    make_batches, wavelength, extra = spectra_input_to_batches(spectra, path)
    metadata = {"source": "table", "path": str(path)}
    if out_dir is None:
        return dataset_in_memory({split: make_batches}, wavelength, metadata, extra_scalars=extra)
    return write_dataset(out_dir, {split: make_batches}, wavelength, metadata, extra_scalars=extra, overwrite=overwrite)
