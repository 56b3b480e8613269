"""The allStar catalogue: reading it, the paper's sample cuts, and star ids / file paths.

allStar (``allStar-dr17-synspec_rev1.fits``) holds one row per star and telescope/field in HDU 1:
identifiers (APOGEE_ID, TELESCOPE, FIELD, TARGET_ID), quality columns (SNR, STARFLAG, 64-bit
ASPCAPFLAG, VSCATTER in km/s) and the ASPCAP labels with their ``*_ERR`` columns. Its numeric
columns are big-endian on disk and use -9999(.99) for "no value".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np

from ..fits_io import native_byte_order, open_fits
from ..labels import ERROR_COLUMNS, LABELS

#: ASPCAPFLAG bit of STAR_BAD.
STAR_BAD_BIT = 23
#: allStar columns read by default (those missing from a file are skipped).
ALLSTAR_COLUMNS: tuple[str, ...] = (
    "APOGEE_ID", "TELESCOPE", "FIELD", "TARGET_ID", "SNR", "STARFLAG", "ASPCAPFLAG", "VSCATTER",
    *LABELS, *ERROR_COLUMNS,
)
#: File names of the SAS layout: ``aspcapStar-dr17-<APOGEE_ID>.fits[.gz]`` / ``apStar-...``.
FILE_NAME = re.compile(r"^(aspcapStar|apStar)-([A-Za-z0-9]+)-(.+?)\.fits(\.gz)?$")
# allStar uses -9999(.99) as "no value" in some columns; treat anything this negative as missing.
_MISSING_BELOW = -9000.0


def read_allstar(path: str | Path, columns: tuple[str, ...] | None = ALLSTAR_COLUMNS):
    """The allStar catalogue (HDU 1) as an ``astropy.table.Table`` with native-endian columns.

    Args:
        path: ``allStar-dr17-synspec_rev1.fits`` (or any FITS table with the same columns).
        columns: columns to read (absent ones are skipped; None = all). Reading a subset keeps the
            733,901-row DR17 file's memory use small: only these columns are copied out of the
            memory-mapped file.

    String columns are stripped; numeric columns are converted from FITS big-endian to native order
    (numpy math and Arrow on big-endian arrays are slow or refuse them).
    """
    from astropy.table import Table

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"allStar catalogue {path} does not exist")
    with open_fits(path, memmap=True) as hdul:
        if len(hdul) < 2 or getattr(hdul[1], "columns", None) is None:
            raise ValueError(f"{path}: HDU 1 is not a table; an allStar file has its catalogue in HDU 1")
        data = hdul[1].data
        names = list(data.columns.names)
        wanted = names if columns is None else [c for c in columns if c in names]
        if "APOGEE_ID" not in wanted:
            raise ValueError(f"{path}: no APOGEE_ID column; is this an allStar catalogue? columns: {names[:12]}...")
        table = Table()
        for name in wanted:
            column = np.asarray(data[name])
            if column.dtype.kind in ("S", "U"):
                column = np.char.strip(column.astype(str))
            else:
                column = native_byte_order(column).copy()
            table[name] = column
    return table


def paper_sample_cuts(table, snr_min: float = 200.0, vscatter_max: float = 1.0):
    """The paper's sample selection on an allStar table.

    Cuts, applied in this order (the all-zero-spectrum cut happens when spectra are read):

    1. drop STAR_BAD: ``(ASPCAPFLAG >> 23) & 1`` on int64;
    2. keep ``STARFLAG == 0``;
    3. keep ``SNR > snr_min`` (200);
    4. keep ``VSCATTER < vscatter_max`` (1.0 km/s);
    5. de-duplicate ``APOGEE_ID`` among the survivors, keeping the row with the highest SNR
       (stars observed from two telescopes / fields appear twice).

    In DR17 this takes 733,901 rows to 128,485 (the paper's numbers).

    Returns:
        ``(keep, summary, first_failed)``: ``keep`` bool (N,) rows that pass; ``summary`` an ordered
        dict cut name → rows remaining after it (``"input"`` first); ``first_failed`` str array (N,),
        the name of the first cut each row fails ('' for kept rows) — so the report can say why a
        star was excluded.
    """
    n = len(table)
    required = ("APOGEE_ID", "ASPCAPFLAG", "STARFLAG", "SNR", "VSCATTER")
    missing = [c for c in required if c not in table.colnames]
    if missing:
        raise ValueError(f"paper_sample_cuts needs allStar columns {missing}; read them with read_allstar(columns=...)")
    flag = np.asarray(table["ASPCAPFLAG"]).astype(np.int64)
    snr = np.asarray(table["SNR"], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        cuts = [
            ("not STAR_BAD", ((flag >> STAR_BAD_BIT) & 1) == 0),
            ("STARFLAG == 0", np.asarray(table["STARFLAG"]).astype(np.int64) == 0),
            (f"SNR > {snr_min:g}", snr > snr_min),  # NaN SNR fails
            (f"VSCATTER < {vscatter_max:g}", np.asarray(table["VSCATTER"], dtype=np.float64) < vscatter_max),
        ]
    keep = np.ones(n, dtype=bool)
    first_failed = np.full(n, "", dtype=object)
    summary = {"input": n}
    for name, passed in cuts:
        newly_failed = keep & ~passed
        first_failed[newly_failed] = name
        keep &= passed
        summary[name] = int(keep.sum())
    duplicates = _lower_snr_duplicates(np.asarray(table["APOGEE_ID"]).astype(str), snr, keep)
    keep[duplicates] = False
    first_failed[duplicates] = "duplicate APOGEE_ID (lower SNR)"
    summary["unique APOGEE_ID"] = int(keep.sum())
    return keep, summary, first_failed.astype(str)


def _lower_snr_duplicates(ids: np.ndarray, snr: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Row numbers of kept rows whose APOGEE_ID has another kept row with higher SNR."""
    # Sort the kept rows by (APOGEE_ID, -SNR): each ID's first row is its best one.
    kept_rows = np.flatnonzero(keep)
    order = kept_rows[np.lexsort((-np.nan_to_num(snr[kept_rows], nan=-np.inf), ids[kept_rows]))]
    first = np.ones(order.size, dtype=bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    return order[~first]


def float_or_nan(value) -> float:
    """``float(value)``, or NaN when it is missing, not a number, non-finite or an allStar -9999."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return float("nan") if (not np.isfinite(value) or value < _MISSING_BELOW) else value


def row_labels(row: Mapping) -> dict[str, float]:
    """Labels, their errors and SNR from an allStar-like row (missing or -9999 → NaN)."""
    out = {}
    for name in (*LABELS, *ERROR_COLUMNS):
        out[name] = float_or_nan(row.get(name)) if name in row else float("nan")
    out["snr"] = float_or_nan(row.get("SNR")) if "SNR" in row else float("nan")
    return out


def id_from_name(path: Path) -> str | None:
    """The APOGEE_ID in an ``aspcapStar-``/``apStar-<release>-<APOGEE_ID>.fits[.gz]`` name, else None."""
    match = FILE_NAME.match(path.name)
    return match.group(3) if match else None


def spectrum_relpath(telescope: str, field: str, apogee_id: str, kind: str = "aspcapStar",
                     release: str = "dr17") -> str:
    """Relative path of a star's file under the SAS folder layout.

    ``aspcapStar``: ``<TELESCOPE>/<FIELD>/aspcapStar-dr17-<APOGEE_ID>.fits`` (under
    ``aspcap/dr17/synspec/``); ``apStar``: ``<TELESCOPE>/<FIELD>/apStar-dr17-<APOGEE_ID>.fits``
    (under ``redux/dr17/stars/``).
    """
    if kind not in ("aspcapStar", "apStar"):
        raise ValueError(f"kind must be 'aspcapStar' or 'apStar', got {kind!r}")
    return f"{telescope.strip()}/{field.strip()}/{kind}-{release}-{apogee_id.strip()}.fits"


def relpath_from_target_id(target_id: str, kind: str = "aspcapStar", release: str = "dr17") -> str:
    """Path from allStar ``TARGET_ID`` (``<telescope>.<field>.<APOGEE_ID>``), e.g.
    ``lco25m.000-08.2M18194111-3224298`` → ``lco25m/000-08/aspcapStar-dr17-2M18194111-3224298.fits``.
    """
    parts = target_id.strip().split(".")
    if len(parts) < 3:
        raise ValueError(f"TARGET_ID {target_id!r} is not '<telescope>.<field>.<APOGEE_ID>'")
    telescope, apogee_id, field = parts[0], parts[-1], ".".join(parts[1:-1])
    return spectrum_relpath(telescope, field, apogee_id, kind, release)
