"""Labelled stars from any spectra input → a :class:`~spectrafm_hf.data.arrays.WindowData` of one window.

What ``spectrafm finetune`` trains and evaluates on. Inputs are whatever
:func:`~spectrafm_hf.data.sources.open_source` reads: a dataset folder (``save_to_disk`` layout, one
split), a Parquet / FITS / npz / CSV table of spectra with a wavelength grid, or a folder (or glob) of
aspcapStar / apStar files. Labels come from columns the user names (``{"FE_H": "feh_apogee"}``), of the
input itself or of a separate label table joined on the star id (:func:`read_label_table`: CSV,
FITS or Parquet). A label's reported 1σ is the column ``<column>_ERR`` when there is one. NaN = unknown.

The input is read a block of stars at a time and cut to the window at once, so a large rehearsal
set costs the memory of its window only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from .arrays import WindowData

#: Stars read per block.
BLOCK = 512
#: Column names that hold the star id in a label table (compared case-insensitively).
ID_COLUMNS = ("id", "apogee_id", "star_id")


@dataclass
class LabelTable:
    """Labels of stars by id, read from a table of scalars.

    Attributes:
        path: the file.
        ids: (M,) star ids (str, stripped).
        columns: column name → (M,) float64 values.
    """

    path: Path
    ids: np.ndarray
    columns: dict[str, np.ndarray]

    def lookup(self, ids: np.ndarray, column: str) -> np.ndarray:
        """``column`` for the stars ``ids`` (N,), NaN for a star the table does not list."""
        position = {star: i for i, star in enumerate(self.ids)}
        rows = np.array([position.get(str(star).strip(), -1) for star in ids], dtype=np.int64)
        values = np.full(len(ids), np.nan)
        values[rows >= 0] = self.columns[column][rows[rows >= 0]]
        return values


def read_label_table(path: str | Path) -> LabelTable:
    """A CSV, FITS or Parquet table with a star-id column (``id``, ``APOGEE_ID`` or ``star_id``) and
    numeric label columns → :class:`LabelTable` (non-numeric columns other than the id are ignored)."""
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label table {path} does not exist")
    suffix = "".join(path.suffixes[-2:]).lower()
    fmt = "ascii.csv" if suffix.endswith(".csv") else ("parquet" if suffix.endswith((".parquet", ".pq")) else None)
    try:
        table = Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as err:  # astropy raises many reader-specific types
        raise ValueError(f"{path}: cannot read as a label table (CSV, FITS or Parquet): {err}") from None
    by_lower = {name.lower(): name for name in table.colnames}
    id_name = next((by_lower[c] for c in ID_COLUMNS if c in by_lower), None)
    if id_name is None:
        raise ValueError(f"{path}: no star-id column ({', '.join(ID_COLUMNS)}); add one whose values are the "
                         "spectra's ids")
    columns = {name: np.asarray(table[name], dtype=np.float64) for name in table.colnames
               if name != id_name and np.asarray(table[name]).dtype.kind in "biuf"
               and np.asarray(table[name]).ndim == 1}
    ids = np.char.strip(np.asarray(table[id_name]).astype(str))
    return LabelTable(path, ids, columns)


def window_pixels(wavelength: np.ndarray, window: tuple[float, float], where: str) -> slice:
    """The pixels of a sorted grid (P,) inside ``window`` = (min, max) Å, inclusive, as a slice."""
    inside = np.flatnonzero((wavelength >= window[0]) & (wavelength <= window[1]))
    if inside.size == 0:
        raise ValueError(f"{where}: no pixel of its grid ({wavelength[0]:.1f}–{wavelength[-1]:.1f} Å, "
                         f"{wavelength.size} pixels) lies in the window {window[0]:g}–{window[1]:g} Å; choose a "
                         "window inside the grid")
    return slice(int(inside[0]), int(inside[-1]) + 1)


def _one_grid(wavelength, where: str) -> np.ndarray:
    """One (P,) grid for every star; per-star grids must all be equal."""
    wavelength = np.asarray(wavelength, np.float64)
    if wavelength.ndim == 2:
        if not np.all(wavelength == wavelength[:1]):
            raise ValueError(f"{where}: the spectra have different wavelength grids; resample them onto one grid")
        wavelength = wavelength[0]
    return wavelength


def _check_columns(labels: Mapping[str, str], available, label_table: LabelTable | None, where: str) -> None:
    known = set(available) | (set(label_table.columns) if label_table is not None else set())
    for label, column in labels.items():
        if column not in known:
            hint = f"--labels {label}=COLUMN names another column" if column == label else \
                f"check the name in --labels {label}={column}"
            shown = ", ".join(sorted(known)) or "none"
            raise ValueError(f"{where}: no label column {column!r} (its columns: {shown}); {hint}")


def read_labelled_stars(path: str | Path, labels: Mapping[str, str], window: tuple[float, float] | None = None,
                        split: str | None = None, label_table: LabelTable | None = None,
                        where: str | None = None) -> WindowData:
    """Stars of ``path`` with the labels ``labels`` (model label → column), cut to ``window``.

    Args:
        path: any input of :func:`~spectrafm_hf.data.sources.open_source`.
        labels: e.g. ``{"FE_H": "FE_H"}``; each column must exist in the input or in ``label_table``
            (the table wins). ``<column>_ERR`` gives the label's 1σ when present.
        window: (min, max) vacuum Å, inclusive; None = every pixel.
        split: the split of a dataset folder.
        label_table: labels joined on the star id.
        where: how messages name the input (default: the path).
    Returns:
        ``WindowData`` with ``labels`` / ``label_errors`` keyed by model label (float64, NaN = unknown).
    Raises:
        ValueError: a label column that is absent, spectra on different grids, no pixel in the window.
    """
    from .sources import open_source

    where = where or str(path)
    source = open_source(path, split)
    _check_columns(labels, source.columns, label_table, where)
    from_input = [c for c in labels.values() if label_table is None or c not in label_table.columns]
    wanted = [*from_input, *(f"{c}_ERR" for c in from_input if f"{c}_ERR" in source.columns)]
    wanted = list(dict.fromkeys(wanted))
    blocks, grid, pixels, skipped = [], None, None, 0
    for start in range(0, len(source), BLOCK):
        spectra = source.read(start, min(start + BLOCK, len(source)), wanted)
        skipped += len(spectra.skipped)
        if len(spectra.flux) == 0:
            continue
        wavelength = _one_grid(spectra.wavelength, where)
        if grid is None:
            grid = wavelength
            pixels = window_pixels(grid, window, where) if window is not None else slice(0, grid.size)
        elif not np.array_equal(wavelength, grid):
            raise ValueError(f"{where}: the spectra have different wavelength grids; resample them onto one grid")
        blocks.append(_cut_block(spectra, pixels, labels, label_table))
    if not blocks:
        raise ValueError(f"{where}: no spectrum could be read ({skipped} file(s) skipped)")
    if skipped:
        print(f"[finetune] {where}: {skipped} unreadable file(s) skipped", flush=True)
    return _join(blocks, grid[pixels])


def _cut_block(spectra, pixels: slice, labels: Mapping[str, str], label_table: LabelTable | None) -> dict:
    """One block of spectra cut to ``pixels``, with its labels by model label name."""
    flux = np.asarray(spectra.flux, np.float32)[:, pixels]
    mask = np.zeros(flux.shape, bool) if spectra.mask is None else np.asarray(spectra.mask, bool)[:, pixels]
    flux_err = (np.full(flux.shape, np.nan, np.float32) if spectra.flux_err is None
                else np.asarray(spectra.flux_err, np.float32)[:, pixels])
    values, errors = {}, {}
    for label, column in labels.items():
        if label_table is not None and column in label_table.columns:
            values[label] = label_table.lookup(spectra.ids, column)
            if f"{column}_ERR" in label_table.columns:
                errors[label] = label_table.lookup(spectra.ids, f"{column}_ERR")
        else:
            values[label] = np.asarray(spectra.scalars[column], np.float64)
            if f"{column}_ERR" in spectra.scalars:
                errors[label] = np.asarray(spectra.scalars[f"{column}_ERR"], np.float64)
    return {"flux": flux, "mask": mask | ~np.isfinite(flux), "flux_err": flux_err, "labels": values, "errors": errors}


def _join(blocks: list[dict], wavelength: np.ndarray) -> WindowData:
    n = [len(b["flux"]) for b in blocks]

    def column(key: str, name: str, size: int, block: dict) -> np.ndarray:
        return block[key].get(name, np.full(size, np.nan))

    names = list(blocks[0]["labels"])
    error_names = sorted({name for b in blocks for name in b["errors"]})
    return WindowData(
        flux=np.concatenate([b["flux"] for b in blocks]), mask=np.concatenate([b["mask"] for b in blocks]),
        flux_err=np.concatenate([b["flux_err"] for b in blocks]),
        labels={k: np.concatenate([column("labels", k, size, b) for size, b in zip(n, blocks)]) for k in names},
        label_errors={k: np.concatenate([column("errors", k, size, b) for size, b in zip(n, blocks)])
                      for k in error_names},
        wavelength=np.asarray(wavelength, np.float64),
    )
