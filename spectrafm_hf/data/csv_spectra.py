"""Spectra in CSV text → :class:`SpectraInput` (what ``spectrafm predict`` and ``spectrafm finetune`` read).

CSV has no vector columns, so a spectrum is spread over rows or over columns. Two layouts are read:

**Long** (one row per pixel; what most tools export for a spectrum)::

    id,wavelength,flux,flux_err,mask,FE_H
    star-a,15100.02,0.981,0.010,0,-0.12
    star-a,15100.23,0.975,0.010,0,-0.12
    ...

``wavelength`` (vacuum Å) and ``flux`` are required; ``flux_err`` and ``mask`` (nonzero = bad pixel)
are optional. The star id column (``id`` or ``APOGEE_ID``) groups the rows into spectra, in the order
in which each star first appears; without one, the whole file is one spectrum. A star's rows are put
in wavelength order. Every star needs the same number of pixels. Any other numeric column is a
per-star value (a label such as ``FE_H``, its ``FE_H_ERR``, or a named input such as photometry) and
must repeat the same value on every row of a star.

**Wide** (one row per star): the flux columns are named by their wavelength in Å (``15100.02``,
``15100.23`` ...), which makes the header the grid; other columns are the id and per-star values.
There is no room for ``flux_err`` or ``mask`` in this layout: use long CSV, Parquet or npz for them.

Lines that start with ``#`` are comments. ``.csv.gz`` is read too. The file is read whole: CSV is for
a few thousand spectra; for a survey write Parquet (:func:`~spectrafm_hf.data.hub_layout.write_parquet`).
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np

from .spectra_input import SpectraInput
from .tables import canonical_column, spectra_from_columns

#: File-name endings read as CSV spectra.
CSV_SUFFIXES = (".csv", ".csv.gz")
_PIXEL_COLUMNS = ("wavelength", "flux", "flux_err", "mask")
_ID_COLUMNS = ("id", "apogee_id")


def is_csv(path: str | Path) -> bool:
    """Whether ``path`` is named like a CSV spectra file."""
    return Path(path).name.lower().endswith(CSV_SUFFIXES)


def read_csv_spectra(path: str | Path) -> SpectraInput:
    """A CSV of spectra, long or wide layout (module docstring) → :class:`SpectraInput`.

    Raises:
        ValueError: the file cannot be parsed, has neither layout, or its rows do not make spectra of
            one length; the message names the file, the column or star, and the fix.
    """
    path = Path(path)
    columns = _read_columns(path)
    if "flux" in columns:
        if "wavelength" not in columns:
            raise ValueError(f"{path}: a 'flux' column but no 'wavelength' column; a long-layout CSV has one row "
                             "per pixel with 'wavelength' (vacuum Å) and 'flux'")
        return spectra_from_columns(_long_to_rows(columns, path), path)
    return spectra_from_columns(_wide_to_rows(columns, path), path)


def _read_columns(path: Path) -> dict[str, np.ndarray]:
    """The CSV's columns by canonical name (vector/id names lower-case, labels upper-case)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            lines = [line for line in handle if not line.lstrip().startswith(b"#")]
        table = pa_csv.read_csv(io.BytesIO(b"".join(lines)))
    except (OSError, EOFError, pa.ArrowInvalid) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: cannot read as CSV ({reason})") from err
    if table.num_rows == 0:
        raise ValueError(f"{path}: the CSV has a header but no rows; it holds no spectra")
    columns: dict[str, np.ndarray] = {}
    for name in table.column_names:
        key = canonical_column(name.strip())
        if key in columns:
            raise ValueError(f"{path}: column {name!r} appears twice (names are case-insensitive for "
                             f"{', '.join(_PIXEL_COLUMNS + _ID_COLUMNS)}); rename one")
        values = table.column(name).to_numpy(zero_copy_only=False)
        if values.dtype == object and key not in _ID_COLUMNS:
            values = _numbers_or_text(values)
        columns[key] = values
    return columns


def _numbers_or_text(values: np.ndarray) -> np.ndarray:
    """An object column (pyarrow's all-null or mixed text) as float when every entry is empty or numeric
    (an all-empty column is NaN), else unchanged — the caller then names it as not numeric."""
    if all(value is None for value in values):
        return np.full(len(values), np.nan)
    return values


def _star_ids(columns: dict[str, np.ndarray], path: Path, n_rows: int) -> tuple[str | None, np.ndarray]:
    """``(id column name or None, (n_rows,) id strings)``; without an id column every row is star
    ``<file stem>``."""
    for name in _ID_COLUMNS:
        if name in columns:
            ids = np.asarray([("" if value is None else str(value)).strip() for value in columns[name]])
            if np.any(ids == ""):
                row = int(np.flatnonzero(ids == "")[0])
                raise ValueError(f"{path}: data row {row + 1} has an empty {name!r}; every row needs its star's id")
            return name, ids
    stem = path.name[: -len(".gz")] if path.name.lower().endswith(".gz") else path.name
    return None, np.full(n_rows, Path(stem).stem)


def _long_to_rows(columns: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """Long layout (a row per pixel) → a column dict with a row per star (vectors (N, P), scalars (N,))."""
    wavelength = np.asarray(columns["wavelength"])
    if wavelength.dtype.kind not in "iuf":
        raise ValueError(f"{path}: 'wavelength' is not numeric (dtype {wavelength.dtype}); it must be vacuum Å")
    id_name, ids = _star_ids(columns, path, len(wavelength))
    first_seen, star_of_row = np.unique(ids, return_index=True, return_inverse=True)[1:]
    order_of_star = np.argsort(np.argsort(first_seen))       # star code → position by first appearance
    star = order_of_star[star_of_row]
    pixels = np.bincount(star)
    if np.any(pixels != pixels[0]):
        odd = int(np.flatnonzero(pixels != pixels[0])[0])
        names = ids[np.sort(first_seen)]                     # star position → its id
        raise ValueError(f"{path}: stars have different numbers of pixel rows ({str(names[0])!r}: {pixels[0]}, "
                         f"{str(names[odd])!r}: {pixels[odd]}); every spectrum of a file needs the same pixels")
    n_stars, n_pixels = len(pixels), int(pixels[0])
    rows = np.lexsort((wavelength, star))                    # by star, then by wavelength within a star
    out = {name: np.asarray(columns[name])[rows].reshape(n_stars, n_pixels)
           for name in _PIXEL_COLUMNS if name in columns}
    repeated = np.diff(out["wavelength"], axis=1) == 0
    if np.any(repeated):
        star_index, pixel = (int(i[0]) for i in np.nonzero(repeated))
        who = f"star {str(ids[rows.reshape(n_stars, n_pixels)[star_index, 0]])!r}" if id_name else "the spectrum"
        raise ValueError(f"{path}: {who} has wavelength {out['wavelength'][star_index, pixel]} on two rows; "
                         "each pixel of a spectrum needs one row (is the id column missing?)")
    first_row = rows.reshape(n_stars, n_pixels)[:, 0]
    if id_name is not None:
        out["id"] = ids[first_row]
    for name, values in columns.items():
        if name in _PIXEL_COLUMNS or name in _ID_COLUMNS:
            continue
        out[name] = _per_star(np.asarray(values)[rows].reshape(n_stars, n_pixels), name, out.get("id"), path)
    return out


def _per_star(values: np.ndarray, name: str, ids: np.ndarray | None, path: Path) -> np.ndarray:
    """(N, P) repeats of a per-star column → (N,); refuses a column that changes within a star."""
    if values.dtype.kind not in "biuf":
        return values[:, 0]  # spectra_from_columns names the column as neither a vector nor numeric
    same = (values == values[:, :1]) | (np.isnan(values) & np.isnan(values[:, :1])) \
        if values.dtype.kind == "f" else values == values[:, :1]
    if not np.all(same):
        star = int(np.flatnonzero(~np.all(same, axis=1))[0])
        who = f"star {str(ids[star])!r}" if ids is not None else "the spectrum"
        raise ValueError(f"{path}: column {name!r} changes between the pixel rows of {who}; a column other than "
                         f"{', '.join(_PIXEL_COLUMNS)} is a per-star value and must repeat one value on every row")
    return values[:, 0]


def _wide_to_rows(columns: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """Wide layout (flux columns named by wavelength) → a column dict with a row per star."""
    grid = {name: _as_wavelength(name) for name in columns}
    flux_names = sorted((name for name, value in grid.items() if value is not None), key=grid.get)
    if len(flux_names) < 2:
        raise ValueError(f"{path}: neither CSV layout of spectra: a long layout needs 'wavelength' and 'flux' "
                         "columns (one row per pixel); a wide layout needs flux columns named by their wavelength "
                         f"in Å (one row per star); found columns {sorted(columns)[:8]}")
    out = {name: values for name, values in columns.items() if grid[name] is None}
    flux = np.column_stack([np.asarray(columns[name]) for name in flux_names])
    out["flux"] = flux
    out["wavelength"] = np.asarray([grid[name] for name in flux_names], dtype=np.float64)
    return out


def _as_wavelength(name: str) -> float | None:
    """A column name that is a wavelength in Å (a positive finite number), else None."""
    try:
        value = float(name)
    except ValueError:
        return None
    return value if np.isfinite(value) and value > 0 else None
