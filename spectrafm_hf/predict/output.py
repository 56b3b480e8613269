"""Prediction tables on disk: the format from the file extension, units in the column metadata, and
files that appear under their final name only when complete.

=========  ==================================================================================
``.parquet``  recommended: typed columns, units and descriptions in each field's metadata, written
              shard by shard (memory does not grow with the number of stars)
``.csv``      plain text, written row block by row block; no units (see the README's column list)
``.ecsv``     astropy's text table, units and descriptions in its YAML header
``.fits``     a binary table (astropy.io.fits), ``TUNITn`` = ``K`` / ``dex``, descriptions as the
              ``TTYPEn`` comments (``dex`` is not a FITS-standard unit: astropy reads it back with a
              UnitsWarning as an unrecognised unit ``dex``)
=========  ==================================================================================

ECSV and FITS are written through astropy, which needs the whole table in memory: about 100 bytes
per star for five labels (≈ 75 MB for 733,000 stars), against ~1 MB per star of spectra.

Columns: ``id``, then ``<LABEL>``, ``<LABEL>_err`` per requested label, ``flags``, then the columns
carried through with ``--keep``. Every writer goes to a hidden temporary sibling
(``.<name>.partial-<pid>``) and ``os.replace``-s it into place on success; on failure it is removed.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from ..data.labels import LABEL_DESCRIPTIONS, LABEL_UNITS

#: Output file extension → format name (``spectrafm predict --output``).
OUTPUT_FORMATS: dict[str, str] = {".parquet": "parquet", ".csv": "csv", ".ecsv": "ecsv", ".fits": "fits"}


def output_format(path: str | os.PathLike) -> str:
    """The format of an output file from its extension; ``ValueError`` listing the supported ones."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"--output {str(path)!r}: unsupported extension {suffix or '(none)'!r}; supported: "
                         ".parquet (recommended), .csv, .ecsv, .fits")
    return OUTPUT_FORMATS[suffix]


def _label_of(column: str) -> str | None:
    label = column[:-4] if column.endswith("_err") else column
    return label if label in LABEL_UNITS else None


def column_unit(column: str) -> str | None:
    """Unit of an output column: ``K`` for TEFF and its ``_err``, ``dex`` for the others, None for
    columns that are not predicted labels (``id``, ``flags``, kept columns)."""
    label = _label_of(column)
    if label is None:
        return None
    return "dex" if LABEL_UNITS[label].startswith("dex") else LABEL_UNITS[label]


def column_description(column: str) -> str | None:
    """Human description of an output column (metadata of Parquet, ECSV and FITS)."""
    label = _label_of(column)
    if label is not None:
        what = LABEL_DESCRIPTIONS[label]
        return f"1-sigma error of {what}" if column.endswith("_err") else f"predicted {what}"
    return {"id": "star identifier from the input", "flags": "';'-joined quality flags; empty = fine"}.get(column)


def astropy_table(columns: Mapping[str, np.ndarray]):
    """Columns → ``astropy.table.Table`` with units (``astropy.units``) and descriptions."""
    import astropy.units as u
    from astropy.table import Table

    table = Table()
    for name, values in columns.items():
        unit = column_unit(name)
        table[name] = np.asarray(values)
        table[name].unit = None if unit is None else u.Unit(unit)
        table[name].description = column_description(name)
    return table


def arrow_table(columns: Mapping[str, np.ndarray]):
    """Columns → ``pyarrow.Table``; each field's metadata carries ``unit`` and ``description``."""
    import pyarrow as pa

    fields, arrays = [], []
    for name, values in columns.items():
        array = pa.array(np.asarray(values))
        metadata = {key: value for key, value in (("unit", column_unit(name)),
                                                   ("description", column_description(name))) if value}
        fields.append(pa.field(name, array.type, metadata=metadata or None))
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


class TableWriter:
    """Write a table block by block (``write(pyarrow.Table)``), atomically.

    Use as a context manager: leaving the block normally publishes the file under its final name;
    an exception removes the temporary file and leaves any earlier file untouched. Blocks of no rows
    are ignored; at least one row must be written before publishing.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.format = output_format(self.path)
        self.temporary = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        self.n_rows = 0
        self._parquet = None
        self._csv_handle = None
        self._blocks = []

    def __enter__(self) -> "TableWriter":
        return self

    def write(self, columns: Mapping[str, np.ndarray]) -> None:
        """Append rows given as columns (name → (n,) array; every block with the same names)."""
        n = len(next(iter(columns.values()))) if columns else 0
        if n == 0:
            return
        if self.format == "parquet":
            self._write_parquet(columns)
        elif self.format == "csv":
            self._write_csv(columns)
        else:
            self._blocks.append({name: np.asarray(values) for name, values in columns.items()})
        self.n_rows += n

    def _write_parquet(self, columns) -> None:
        import pyarrow.parquet as pq

        table = arrow_table(columns)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.temporary, table.schema)
        self._parquet.write_table(table)

    def _write_csv(self, columns) -> None:
        if self._csv_handle is None:
            self._csv_handle = open(self.temporary, "w", newline="")
            self._csv = csv.writer(self._csv_handle)
            self._csv.writerow(list(columns))
        for row in zip(*(np.asarray(values).tolist() for values in columns.values())):
            # repr keeps every digit of a float (and writes nan for refused stars)
            self._csv.writerow([repr(v) if isinstance(v, float) else v for v in row])

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self._close(publish=kind is None)
        finally:
            if self.temporary.exists():
                self.temporary.unlink()

    def _close(self, publish: bool) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._csv_handle is not None:
            self._csv_handle.close()
        if not publish:
            return
        if self.n_rows == 0:
            raise ValueError(f"no rows to write to {self.path}")
        if self.format in ("ecsv", "fits"):
            self._write_astropy()
        os.replace(self.temporary, self.path)

    def _write_astropy(self) -> None:
        columns = {name: np.concatenate([block[name] for block in self._blocks]) for name in self._blocks[0]}
        if self.format == "ecsv":
            astropy_table(columns).write(self.temporary, format="ascii.ecsv")
        else:
            _write_fits(self.temporary, columns)


def _write_fits(path: Path, columns: Mapping[str, np.ndarray]) -> None:
    """A FITS binary table with ``TUNITn`` strings (``dex`` is written as such; see the module docstring)."""
    from astropy.io import fits

    fits_columns = []
    for name, values in columns.items():
        values = np.asarray(values)
        if values.dtype.kind in "OUS":
            values = values.astype(str)
            fmt = f"{max(1, max((len(v.encode()) for v in values), default=1))}A"
        else:
            fmt = {"f": "D", "i": "K", "u": "K", "b": "L"}[values.dtype.kind]
        fits_columns.append(fits.Column(name=name, format=fmt, unit=column_unit(name), array=values))
    hdu = fits.BinTableHDU.from_columns(fits_columns, name="PREDICTIONS")
    for index, name in enumerate(columns, start=1):
        description = column_description(name)
        if description:
            # a header card is 80 ASCII characters: "TTYPEn  = 'name    '" takes ~33 before the comment
            text = description.replace("⁻²", "^-2").encode("ascii", "replace").decode()
            hdu.header.comments[f"TTYPE{index}"] = text[: max(0, 45 - max(0, len(name) - 8))]
    hdu.writeto(path)
