"""Generic tables of spectra (npz, Parquet, CSV, FITS table) → :class:`SpectraInput` or the dataset schema.

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
* ``.parquet``: list columns for vectors (pyarrow, installed with ``datasets``). Without a
  ``wavelength`` column, the grid is the one in the file's schema metadata (a file written by
  :func:`spectrafm_hf.data.hub_layout.write_parquet`, or a shard of a Hub-layout dataset folder, see
  :func:`parquet_grid`). Such a file was written by this package from a dataset: its columns are read
  as a dataset folder's are (labels, ``<LABEL>_ERR``, ``snr`` and ``TRUE_*`` are ``reference``).
* CSV (a row per pixel or a column per pixel) is read by :mod:`.csv_spectra` on top of this module.
* FITS table: the first binary-table HDU, vector columns (``TFORM`` like ``7514E``); column names
  are matched case-insensitively (``FLUX`` = ``flux``); big-endian columns are made native.
  A ``wavelength`` that is not a column may be given as a 1-row table or image in another HDU named
  ``WAVELENGTH``.

:func:`read_table` returns a :class:`SpectraInput` (for ``spectrafm predict``); :func:`load_table`
returns a ``DatasetDict`` in the project schema (one split, ``train`` by default).
"""

from __future__ import annotations

import struct
import zipfile
import zlib
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
#: Prefix of a simulation's truth columns (``TRUE_TEFF`` ...): known answers, never model inputs.
TRUTH_PREFIX = "TRUE_"


def is_reference_column(name: str) -> bool:
    """True for a column of a dataset written by this package that holds a known answer (a label, its
    ``_ERR``, ``snr``, a ``TRUE_*`` truth): carried in ``SpectraInput.reference``, never a model input."""
    return name in SCHEMA_SCALARS or name.startswith(TRUTH_PREFIX)


def split_reference(scalars: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(scalars, reference)``: a dataset's per-row columns split by :func:`is_reference_column`."""
    return ({name: values for name, values in scalars.items() if not is_reference_column(name)},
            {name: values for name, values in scalars.items() if is_reference_column(name)})


def read_npz(path: str | Path) -> SpectraInput:
    """An ``.npz`` with ``wavelength`` ((P,) or (N, P)), ``flux`` (N, P), optional ``flux_err``,
    ``mask`` (True = bad), ``id``, and any other array of shape (N,) as a named scalar input.

    Loaded with ``allow_pickle=False``: object arrays are refused, and so is anything that is not a
    zip of ``.npy`` arrays (a text file named ``.npz``, a truncated download), with a ``ValueError``
    naming the file.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a valid .npz archive (not a zip file of .npy arrays); "
                         "write it with numpy.savez or numpy.savez_compressed")
    try:
        _check_zip_complete(path)
        archive = np.load(path, allow_pickle=False)
    except _ARCHIVE_ERRORS as err:
        raise ValueError(f"{path}: not a valid .npz archive ({_reason(err)})") from err
    with archive:
        names = set(archive.files)
        missing = {"wavelength", "flux"} - names
        if missing:
            raise ValueError(f"{path}: missing array(s) {sorted(missing)}; an input .npz needs 'wavelength' and 'flux'")
        arrays = {name: _npz_member(archive, name, path) for name in archive.files}
    flux = _real(arrays["flux"], path, "flux")
    wavelength = _real(arrays["wavelength"], path, "wavelength")
    flux_err = _real(arrays["flux_err"], path, "flux_err") if "flux_err" in arrays else None
    mask = _mask(arrays["mask"], path) if "mask" in arrays else None
    _check_layout(path, wavelength, flux, flux_err, mask)
    n = flux.shape[0] if flux.ndim == 2 else 1
    ids_key = "id" if "id" in arrays else ("ids" if "ids" in arrays else None)
    ids = arrays[ids_key] if ids_key else None
    if ids is not None and (ids.ndim != 1 or len(ids) != n):
        raise ValueError(f"{path}: array {ids_key!r} has shape {ids.shape} but the file holds {n} spectra; "
                         "it needs one id per spectrum")
    scalars = {}
    for name, values in arrays.items():
        if name in _NPZ_ARRAYS:
            continue
        allowed = {(n,), ()} if flux.ndim == 1 else {(n,)}  # one spectrum given as (P,) may have 0-d scalars
        if values.shape not in allowed or values.dtype.kind not in "biuf":
            raise ValueError(f"{path}: array {name!r} (shape {values.shape}, dtype {values.dtype}) is neither a "
                             f"spectrum array nor a numeric scalar per spectrum (shape ({n},)); remove or rename it")
        scalars[name] = values
    return SpectraInput(wavelength=wavelength, flux=flux, flux_err=flux_err, mask=mask, scalars=scalars, ids=ids)


def _check_layout(path: Path, wavelength: np.ndarray, flux: np.ndarray, flux_err, mask) -> None:
    """Refuse arrays of a file that do not fit together, naming the file (values are checked later)."""
    if flux.ndim not in (1, 2) or flux.size == 0:
        raise ValueError(f"{path}: 'flux' has shape {flux.shape}; expected (n_spectra, n_pixels) or (n_pixels,) "
                         "with at least one pixel")
    if wavelength.shape not in ((flux.shape[-1],), flux.shape):
        raise ValueError(f"{path}: 'wavelength' has shape {wavelength.shape} but 'flux' has shape {flux.shape}; "
                         f"expected ({flux.shape[-1]},) shared by every spectrum, or {flux.shape}")
    for name, values in (("flux_err", flux_err), ("mask", mask)):
        if values is not None and values.shape != flux.shape:
            raise ValueError(f"{path}: {name!r} has shape {values.shape}; expected the shape of 'flux' {flux.shape}")


#: What numpy / zipfile raise on a damaged archive or member (a flipped byte, a cut-short download).
_ARCHIVE_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, SyntaxError,
                   NotImplementedError)


def _check_zip_complete(path: Path) -> None:
    """Refuse a zip whose table of contents does not account for every member stored in it.

    A damaged central directory can list fewer members than the file holds: numpy would then read a
    spectra file silently without, say, its ``mask``. Members written by ``numpy.savez`` lie back to
    back from byte 0 to the central directory, so their local headers and sizes must tile that span
    exactly. (Members with a trailing data descriptor, written by streaming zip tools, are not tiled.)
    """
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        members = sorted(archive.infolist(), key=lambda info: info.header_offset)
        if any(info.flag_bits & 0x08 for info in members):
            return
        position = 0
        for info in members:
            handle.seek(info.header_offset)
            header = handle.read(30)
            if info.header_offset != position or len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise ValueError(f"the zip's table of contents does not match its members (at {info.filename!r})")
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            position += 30 + name_length + extra_length + info.compress_size
        if position != archive.start_dir:
            raise ValueError("the zip holds data its table of contents does not list (a damaged central "
                             "directory)")


def _npz_member(archive, name: str, path: Path) -> np.ndarray:
    """One array of an open .npz, or a ValueError naming the file and the array."""
    try:
        values = archive[name]
    except _ARCHIVE_ERRORS as err:
        if "allow_pickle" in str(err):
            # numpy's own message advises loading the file unsafely; pickles are never loaded here.
            raise ValueError(f"{path}: array {name!r} holds Python objects (a pickle), which are never "
                             "loaded; save it as a numeric array") from err
        raise ValueError(f"{path}: array {name!r} cannot be read ({_reason(err)}); the .npz is corrupt "
                         "or truncated") from err
    if not isinstance(values, np.ndarray):  # numpy hands back raw bytes for a member that is not .npy
        raise ValueError(f"{path}: member {name!r} is not a .npy array; the .npz is corrupt or was not "
                         "written by numpy.savez")
    return values


def _reason(err: BaseException) -> str:
    """First line of an error's message, never numpy's advice to allow pickles."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return "it holds pickled data, which is never loaded" if "pickle" in text else text


def _real(values, path: Path, name: str) -> np.ndarray:
    """``values`` as an array of real numbers (float or int), or a ValueError naming the file and column.

    Complex, boolean, string or object values are refused rather than cast: a cast would silently drop
    imaginary parts or turn True into a flux of 1.0.
    """
    values = np.asarray(values)
    if values.dtype.kind not in "iuf":
        raise ValueError(f"{path}: {name!r} has dtype {values.dtype}; expected real numbers (float or int)")
    return values


def _mask(values, path: Path) -> np.ndarray:
    """A bad-pixel mask (bool, or integers/floats where nonzero = bad) as bool."""
    values = np.asarray(values)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{path}: 'mask' has dtype {values.dtype}; expected bool (True = bad pixel) or "
                         "integers (nonzero = bad)")
    return values.astype(bool)


def _stack_rows(values, path: Path, name: str) -> np.ndarray:
    """A column of per-row vectors → (N, P); refuses ragged rows with a clear message."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values
    if any(v is None or np.ndim(v) != 1 for v in values):
        raise ValueError(f"{path}: column {name!r} has empty (null) or non-vector rows; every row needs one "
                         "spectrum vector")
    lengths = {len(v) for v in values}
    if len(lengths) > 1:
        raise ValueError(f"{path}: column {name!r} has rows of different lengths {sorted(lengths)[:5]}; "
                         "every spectrum of a table must have the same number of pixels")
    if len(values) == 0:
        raise ValueError(f"{path}: column {name!r} has no rows; the table holds no spectra")
    return np.stack([np.asarray(v) for v in values])


def spectra_from_columns(columns: dict[str, np.ndarray], path: Path) -> SpectraInput:
    """Column dict (names already lower-cased for the vector/id columns) → SpectraInput.

    Every column besides the vectors and the id must be a numeric scalar per row (``scalars``).
    """
    missing = [name for name in ("wavelength", "flux") if name not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; a spectra table needs 'wavelength' and 'flux' "
                         f"(found {sorted(columns)})")
    flux = _real(_stack_rows(columns["flux"], path, "flux"), path, "flux").astype(np.float64)
    if flux.ndim != 2:
        raise ValueError(f"{path}: 'flux' must be one vector per row, got shape {flux.shape}")
    n = flux.shape[0]
    wavelength = _real(_stack_rows(columns["wavelength"], path, "wavelength"), path, "wavelength").astype(np.float64)
    if wavelength.ndim == 2 and (wavelength.shape[0] == 1 or np.all(wavelength == wavelength[:1])):
        wavelength = wavelength[0]  # one grid for every row: keep it once
    flux_err = (_real(_stack_rows(columns["flux_err"], path, "flux_err"), path, "flux_err").astype(np.float64)
                if "flux_err" in columns else None)
    mask = _mask(_stack_rows(columns["mask"], path, "mask"), path) if "mask" in columns else None
    _check_layout(path, wavelength, flux, flux_err, mask)
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


def canonical_column(name: str) -> str:
    """Vector/id column names are case-insensitive; label names are upper-case (schema)."""
    lower = name.lower()
    if lower in _VECTOR_COLUMNS or lower in _ID_COLUMNS or lower == "snr":
        return lower
    if name.upper() in SCHEMA_SCALARS:
        return name.upper()
    return name


def parquet_grid(path: Path, arrow_schema, wavelength: np.ndarray | None = None) -> tuple[np.ndarray | None, bool]:
    """Where a Parquet table's wavelength grid is: ``(grid, written_by_spectrafm)``.

    ``grid`` is None when the table has a ``wavelength`` column (read per row); else the grid (P,) of
    the file's ``spectrafm`` schema metadata (:func:`~spectrafm_hf.data.schema.parquet_metadata`),
    else ``wavelength`` (the grid of the Hub-layout folder the file is a shard of). The flag says the
    file is a dataset of this package (metadata, or a shard of such a folder): its columns follow the
    dataset schema.

    Raises:
        ValueError: no column, no metadata and no ``wavelength`` given; the message names the fix.
    """
    from .schema import parquet_metadata

    names = {canonical_column(name) for name in arrow_schema.names}
    payload = parquet_metadata(path)
    if payload is None and wavelength is None and "wavelength" not in names:
        keys = arrow_schema.metadata or {}
        origin = " (it was written by datasets' Dataset.to_parquet, which drops the grid)" \
            if b"huggingface" in keys else ""
        raise ValueError(f"{path}: no wavelength grid: no 'wavelength' column and no spectrafm schema metadata"
                         f"{origin}; write it with spectrafm_hf.data.hub_layout.write_parquet (or "
                         "export_hub_dataset), or add a 'wavelength' column")
    if "wavelength" in names:
        return None, payload is not None
    grid = payload["wavelength_vac_A"] if payload is not None else wavelength
    return np.asarray(grid, dtype=np.float64), True


def read_parquet(path: str | Path, wavelength: np.ndarray | None = None) -> SpectraInput:
    """A Parquet table (list columns for the vectors) → SpectraInput.

    Args:
        wavelength: grid (P,) to use when the file has neither a ``wavelength`` column nor spectrafm
            schema metadata (a shard of a Hub-layout folder whose ``wavelength.json`` holds it).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises its own ArrowInvalid / OSError types
        raise ValueError(f"{path}: cannot read as Parquet ({err})") from err
    grid, from_dataset = parquet_grid(path, table.schema, wavelength)
    columns = {canonical_column(name): arrow_column_values(table.column(name), path, canonical_column(name))
               for name in table.column_names}
    if grid is not None:
        columns["wavelength"] = grid
    spectra = spectra_from_columns(columns, path)
    if from_dataset:  # a dataset of this package: labels and truths are answers, as in a dataset folder
        spectra.scalars, spectra.reference = split_reference(spectra.scalars)
    return spectra


def arrow_column_values(column, path: Path, name: str) -> np.ndarray:
    """An Arrow column → numpy: list columns (one vector per row) → (N, P) without a Python list per
    row (a 7514-pixel spectrum as Python floats costs ~30x its array size); scalars → (N,).

    Raises ``ValueError`` naming the file and column for null or ragged vector rows.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type) \
            and not pa.types.is_fixed_size_list(column.type):
        return column.to_numpy(zero_copy_only=False)
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    if n == 0:
        raise ValueError(f"{path}: column {name!r} has no rows; the table holds no spectra")
    if array.null_count:
        raise ValueError(f"{path}: column {name!r} has empty (null) or non-vector rows; every row needs one "
                         "spectrum vector")
    lengths = np.asarray(pc.list_value_length(array)) if not pa.types.is_fixed_size_list(array.type) \
        else np.full(n, array.type.list_size)
    if np.any(lengths != lengths[0]):
        raise ValueError(f"{path}: column {name!r} has rows of different lengths {sorted(set(lengths.tolist()))[:5]}; "
                         "every spectrum of a table must have the same number of pixels")
    if lengths[0] == 0:
        raise ValueError(f"{path}: column {name!r} has empty (null) or non-vector rows; every row needs one "
                         "spectrum vector")
    return array.flatten().to_numpy(zero_copy_only=False).reshape(n, int(lengths[0]))


def read_fits_table(path: str | Path) -> SpectraInput:
    """The first binary table of a FITS file → SpectraInput (see the module docstring)."""
    from .fits_io import open_fits as _open_fits

    path = Path(path)
    with _open_fits(path) as hdul:
        try:
            columns = _fits_table_columns(hdul)
        except _fits_errors() as err:
            # a damaged header card (TFORM, TTYPE ...) surfaces only when the table is decoded
            raise ValueError(f"{path}: the FITS table cannot be decoded ({_reason(err)}); the file is corrupt "
                             "or not a spectra table") from err
    if columns is None:
        raise ValueError(f"{path}: no binary table HDU; a FITS spectra table has 'wavelength' and 'flux' columns")
    return spectra_from_columns(columns, path)


def _fits_errors() -> tuple[type[BaseException], ...]:
    """What astropy raises while decoding a damaged table (imported late: astropy is slow to import)."""
    from astropy.io.fits.verify import VerifyError

    return (VerifyError, OSError, ValueError, TypeError, KeyError, IndexError, AttributeError)


def _fits_table_columns(hdul) -> dict[str, np.ndarray] | None:
    """Columns of the first binary table (names canonical, arrays native-endian), None if there is none."""
    from .fits_io import native_byte_order as _native

    tables = [h for h in hdul if getattr(h, "columns", None) is not None and h.data is not None]
    if not tables:
        return None
    data = tables[0].data
    columns = {}
    for name in data.columns.names:
        values = np.asarray(data[name])
        values = np.char.strip(values.astype(str)) if values.dtype.kind in "SU" else _native(values).copy()
        columns[canonical_column(str(name))] = values
    if "wavelength" not in columns:
        for hdu in hdul:
            if hdu.name.upper() == "WAVELENGTH" and hdu.data is not None:
                if getattr(hdu, "columns", None) is not None:
                    values = np.asarray(hdu.data[hdu.data.columns.names[0]])
                else:
                    values = np.asarray(hdu.data)
                columns["wavelength"] = _native(values).reshape(-1).copy()
                break
    return columns


def read_table(path: str | Path) -> SpectraInput:
    """npz / Parquet / FITS table → SpectraInput, chosen by suffix (CSV spectra: :mod:`.csv_spectra`, which
    builds on this module; :func:`~spectrafm_hf.data.readers.read_spectra` reads every format)."""
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
