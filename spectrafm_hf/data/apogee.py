"""Real APOGEE DR17 files → the project's dataset schema (``spectrafm build-apogee``).

Readers (one file → a dict of arrays on the 7514-pixel grid, or a clear ``ValueError`` naming the
file and the problem):

* :func:`read_allstar` — the allStar catalogue (HDU 1), big-endian FITS columns made native;
  :func:`paper_sample_cuts` — the paper's sample selection with a per-cut count summary.
* :func:`read_aspcapstar` — HDU 1 ASPCAP-normalised observed spectrum, HDU 2 its error, HDU 3 the
  best-fit synthetic spectrum, HDU 4 the star's allStar row (labels).
* :func:`read_apstar` — HDU 1 row 0 (combined spectrum), HDU 2 error, HDU 3 APOGEE_PIXMASK → mask,
  then continuum normalisation (:mod:`spectrafm_hf.data.continuum`) so it looks ASPCAP-normalised.
* :func:`load_paper_arrays` — the paper's Zenodo array release (``synspec_*.npy`` ...), streamed.

Builders: :func:`build_apogee_dataset` turns a folder of aspcapStar/apStar files (+ an allStar
catalogue) into one ``DatasetDict`` with reproducible train/validation/test splits, skipping bad
files and listing them in ``bad_files.json`` inside the dataset folder.

File-format facts: ``../shared/docs/apogee-format.md`` (SDSS DR17 data model).
"""

from __future__ import annotations

import json
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from . import grid
from .continuum import ContinuumConfig, normalise
from .schema import LABELS, PAPER_LABEL_ORDER, split_indices, write_dataset

#: APOGEE_PIXMASK bits treated as bad by default: 0 BADPIX, 1 CRPIX, 2 SATPIX, 3 UNFIXABLE,
#: 4 BADDARK, 5 BADFLAT, 6 BADERR, 7 NOSKY, 12 SIG_SKYLINE. (9–11 PERSIST_*, 13 SIG_TELLURIC and
#: 14 NOT_ENOUGH_PSF are common and usually harmless; add them for a stricter mask.)
DEFAULT_BAD_PIXMASK_BITS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 12)
#: ASPCAPFLAG bit of STAR_BAD.
STAR_BAD_BIT = 23
#: The paper keeps normalised flux in this range; pixels outside become NaN and masked.
PAPER_FLUX_RANGE: tuple[float, float] = (0.05, 1.2)
#: allStar columns read by default (those missing from a file are skipped).
ALLSTAR_COLUMNS: tuple[str, ...] = (
    "APOGEE_ID", "TELESCOPE", "FIELD", "TARGET_ID", "SNR", "STARFLAG", "ASPCAPFLAG", "VSCATTER",
    *LABELS, *(f"{label}_ERR" for label in LABELS),
)
KINDS = ("aspcap-observed", "aspcap-synthetic", "apstar")
DEFAULT_SPLITS: dict[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}

_FILE_NAME = re.compile(r"^(aspcapStar|apStar)-([A-Za-z0-9]+)-(.+?)\.fits(\.gz)?$")
# allStar uses -9999(.99) as "no value" in some columns; treat anything this negative as missing.
_MISSING_BELOW = -9000.0


# --------------------------------------------------------------------------------------------------
# FITS helpers
# --------------------------------------------------------------------------------------------------


@contextmanager
def _open_fits(path: Path, memmap: bool = False):
    """``fits.open`` that turns unreadable / truncated files into ``ValueError(path: problem)``."""
    from astropy.io import fits

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, memmap=memmap)
            len(hdul)  # forces every header to be read: broken headers fail here, not later
        except (OSError, ValueError, TypeError, IndexError) as err:
            raise ValueError(f"{path}: not a readable FITS file ({err}); is it corrupt or truncated?") from err
        try:
            yield hdul
        finally:
            hdul.close()
    for warning in caught:
        if "truncated" in str(warning.message):
            raise ValueError(f"{path}: the FITS file is truncated ({warning.message}); download it again")


def _hdu_data(hdul, index: int, path: Path, what: str) -> np.ndarray:
    """Data of image HDU ``index`` as a native-endian array, or a ValueError naming what is missing."""
    if index >= len(hdul):
        raise ValueError(f"{path}: missing HDU {index} ({what}); the file has only {len(hdul)} HDUs")
    try:
        data = hdul[index].data
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: HDU {index} ({what}) cannot be read ({err}); is the file truncated?") from err
    if data is None:
        raise ValueError(f"{path}: HDU {index} ({what}) holds no data")
    return _native(np.asarray(data))


def _native(array: np.ndarray) -> np.ndarray:
    """Native byte order (FITS is big-endian; numpy math and Arrow want native)."""
    if not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    return array


def check_apogee_grid(header, path: Path, where: str) -> None:
    """Refuse a header whose wavelength keywords are not the APOGEE DR17 log-linear grid.

    Checks ``CTYPE1``, ``CRVAL1`` (4.179), ``CDELT1`` (6e-6), ``CRPIX1`` (1) and ``NAXIS1`` (8575)
    where the header has them.
    """
    expected = {
        "CRVAL1": grid.APSTAR_LOG10_START,
        "CDELT1": grid.APSTAR_LOG10_STEP,
        "CRPIX1": 1.0,
    }
    ctype = header.get("CTYPE1")
    if ctype is not None and str(ctype).strip().upper() not in ("LOG-LINEAR", "LOG10", "LINEAR-LOG"):
        raise ValueError(f"{path}: {where} CTYPE1={ctype!r}; expected 'LOG-LINEAR' (the APOGEE grid)")
    for key, value in expected.items():
        if key in header and not np.isclose(float(header[key]), value, rtol=0, atol=1e-9 * max(1.0, value)):
            raise ValueError(
                f"{path}: {where} {key}={header[key]} but the APOGEE DR17 grid has {key}={value} "
                f"(λ = 10**(4.179 + 6e-6·i), 8575 pixels); this spectrum is on another grid — resample it "
                "onto spectrafm_hf.data.grid.apstar_wavelength() or provide it as a table with a wavelength column"
            )


def _check_npix(array: np.ndarray, path: Path, what: str) -> None:
    if array.shape[-1] != grid.APSTAR_NPIX:
        raise ValueError(
            f"{path}: {what} has {array.shape[-1]} pixels per row, expected {grid.APSTAR_NPIX} "
            "(the apStar/aspcapStar layout); not an APOGEE DR17 file on the standard grid"
        )


def _id_from_name(path: Path) -> str | None:
    match = _FILE_NAME.match(path.name)
    return match.group(3) if match else None


def _float_or_nan(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return float("nan") if (not np.isfinite(value) or value < _MISSING_BELOW) else value


def _row_labels(row: Mapping) -> dict[str, float]:
    """Labels, their errors and SNR from an allStar-like row (missing or -9999 → NaN)."""
    out = {}
    for name in (*LABELS, *(f"{label}_ERR" for label in LABELS)):
        out[name] = _float_or_nan(row.get(name)) if name in row else float("nan")
    out["snr"] = _float_or_nan(row.get("SNR")) if "SNR" in row else float("nan")
    return out


def _apply_flux_range(flux: np.ndarray, mask: np.ndarray, flux_range: tuple[float, float] | None):
    """NaN + mask outside ``flux_range`` (the paper's 0.05–1.2 cut) and at non-finite pixels."""
    mask = mask | ~np.isfinite(flux)
    if flux_range is not None:
        low, high = flux_range
        with np.errstate(invalid="ignore"):
            mask |= (flux < low) | (flux > high)
    flux = np.where(mask, np.nan, flux)
    return flux, mask


# --------------------------------------------------------------------------------------------------
# allStar
# --------------------------------------------------------------------------------------------------


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
    with _open_fits(path, memmap=True) as hdul:
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
                column = _native(column).copy()
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
    # De-duplicate: among kept rows, sort by (APOGEE_ID, -SNR) and keep each ID's first row.
    ids = np.asarray(table["APOGEE_ID"]).astype(str)
    kept_rows = np.flatnonzero(keep)
    order = kept_rows[np.lexsort((-np.nan_to_num(snr[kept_rows], nan=-np.inf), ids[kept_rows]))]
    first = np.ones(order.size, dtype=bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    duplicates = order[~first]
    keep[duplicates] = False
    first_failed[duplicates] = "duplicate APOGEE_ID (lower SNR)"
    summary["unique APOGEE_ID"] = int(keep.sum())
    return keep, summary, first_failed.astype(str)


def spectrum_relpath(telescope: str, field: str, apogee_id: str, kind: str = "aspcapStar", release: str = "dr17") -> str:
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


# --------------------------------------------------------------------------------------------------
# aspcapStar / apStar
# --------------------------------------------------------------------------------------------------


def read_aspcapstar(
    path: str | Path,
    which: str = "observed",
    flux_range: tuple[float, float] | None = PAPER_FLUX_RANGE,
) -> dict:
    """One aspcapStar file → arrays on the 7514-pixel grid.

    Args:
        path: ``aspcapStar-dr17-<APOGEE_ID>.fits``.
        which: ``"observed"`` (HDU 1, ASPCAP-normalised observed flux, error from HDU 2) or
            ``"synthetic"`` (HDU 3, ASPCAP's best-fit synthetic spectrum; error NaN = none).
        flux_range: normalised flux outside this range becomes NaN and masked (the paper's 0.05–1.2);
            None keeps all finite values.

    Returns:
        dict with ``id`` (str), ``flux``, ``flux_err`` (float32 (7514,)), ``mask`` (bool (7514,),
        True = bad: zero/non-finite flux, zero error, or outside ``flux_range``), the labels and
        ``<LABEL>_ERR`` (from the HDU 4 allStar row; NaN if absent) and ``snr``.

    Raises:
        ValueError naming the file: unreadable/truncated FITS, a missing HDU, a grid that is not the
        APOGEE one, or a spectrum with no usable pixel.
    """
    path = Path(path)
    if which not in ("observed", "synthetic"):
        raise ValueError(f"which must be 'observed' or 'synthetic', got {which!r}")
    with _open_fits(path) as hdul:
        flux_hdu, label = (1, "observed flux") if which == "observed" else (3, "best-fit synthetic flux")
        flux = _hdu_data(hdul, flux_hdu, path, label)
        check_apogee_grid(hdul[flux_hdu].header, path, f"HDU {flux_hdu}")
        _check_npix(flux, path, f"HDU {flux_hdu}")
        flux = flux.reshape(-1, grid.APSTAR_NPIX)[0].astype(np.float64)
        if which == "observed":
            err = _hdu_data(hdul, 2, path, "flux error").reshape(-1, grid.APSTAR_NPIX)[0].astype(np.float64)
        else:
            err = np.full_like(flux, np.nan)
        row: dict = {}
        if len(hdul) > 4 and getattr(hdul[4], "columns", None) is not None and len(hdul[4].data):
            data = hdul[4].data
            row = {name: _native(np.asarray(data[name]))[0] for name in data.columns.names}
        header_snr = hdul[0].header.get("SNR")
    flux, err = grid.apstar_to_apogee(flux), grid.apstar_to_apogee(err)
    # ASPCAP writes zeros where it has no data; zero error also means "no measurement".
    mask = (flux == 0) | ~np.isfinite(flux)
    if which == "observed":
        mask |= ~np.isfinite(err) | (err <= 0)
    if mask.all():
        raise ValueError(f"{path}: the {label} (HDU {flux_hdu}) is all zero or non-finite on the chip pixels")
    flux, mask = _apply_flux_range(flux, mask, flux_range)
    out = {
        "id": str(row.get("APOGEE_ID", "")).strip() or _id_from_name(path) or path.stem,
        "flux": flux.astype(np.float32),
        "flux_err": err.astype(np.float32),
        "mask": mask,
    }
    out.update(_row_labels(row))
    if not np.isfinite(out["snr"]):
        out["snr"] = _float_or_nan(header_snr)
    return out


def read_apstar(
    path: str | Path,
    bad_bits: tuple[int, ...] = DEFAULT_BAD_PIXMASK_BITS,
    continuum: ContinuumConfig | None = ContinuumConfig(),
    flux_range: tuple[float, float] | None = PAPER_FLUX_RANGE,
    row: int = 0,
) -> dict:
    """One apStar file → continuum-normalised arrays on the 7514-pixel grid.

    Steps: HDU 1 row ``row`` (0 = the combined spectrum), HDU 2 its error, HDU 3 APOGEE_PIXMASK; the
    header's CRVAL1/CDELT1/CTYPE1 must be the APOGEE grid; chip pixels are cut out; pixels with any
    of ``bad_bits`` set, non-positive flux or error, or non-finite values are masked; the spectrum is
    divided by the continuum of :func:`spectrafm_hf.data.continuum.normalise` (errors by the same
    continuum); normalised flux outside ``flux_range`` becomes NaN + masked (as for aspcapStar).

    Args:
        bad_bits: APOGEE_PIXMASK bits that make a pixel bad (default 0–7 and 12).
        continuum: normalisation settings; None returns the flux-calibrated spectrum unnormalised
            (1e-17 erg/s/cm²/Å) and ignores ``flux_range``.
        row: which row of HDU 1–3 (0 combined; with NVISITS > 1, 2.. are the visits).

    Returns:
        dict like :func:`read_aspcapstar`: ``id`` (header OBJID or file name), ``flux``, ``flux_err``,
        ``mask`` (7514,), labels and ``_ERR`` all NaN (apStar has no ASPCAP labels; the header's
        RV_TEFF/RV_LOGG/RV_FEH are radial-velocity template values, deliberately not used), ``snr``
        from the header, plus ``continuum`` (float64 (7514,), flux units; absent when not normalised).
    """
    path = Path(path)
    bad_bits = tuple(int(b) for b in bad_bits)
    if any(not 0 <= b < 63 for b in bad_bits):
        raise ValueError(f"bad_bits must be APOGEE_PIXMASK bit numbers 0..62, got {bad_bits}")
    with _open_fits(path) as hdul:
        header = hdul[0].header
        check_apogee_grid(header, path, "primary header")
        arrays = []
        for index, what in ((1, "flux"), (2, "flux error"), (3, "APOGEE_PIXMASK bitmask")):
            data = _hdu_data(hdul, index, path, what)
            check_apogee_grid(hdul[index].header, path, f"HDU {index}")
            _check_npix(data, path, f"HDU {index} ({what})")
            data = data.reshape(-1, grid.APSTAR_NPIX)
            if row >= data.shape[0]:
                raise ValueError(f"{path}: HDU {index} has {data.shape[0]} rows, no row {row}")
            arrays.append(data[row])
        apogee_id = str(header.get("OBJID", "")).strip() or _id_from_name(path) or path.stem
        snr = _float_or_nan(header.get("SNR"))
    flux, err, bits = (grid.apstar_to_apogee(a) for a in arrays)
    flux = flux.astype(np.float64)
    err = err.astype(np.float64)
    bits = bits.astype(np.int64)
    bad_set = np.int64(sum(1 << b for b in bad_bits))
    mask = ((bits & bad_set) != 0) | ~np.isfinite(flux) | ~np.isfinite(err) | (flux <= 0) | (err <= 0)
    if mask.all():
        raise ValueError(
            f"{path}: no usable pixel in row {row} (all zero, non-finite or flagged with bits {bad_bits})"
        )
    out = {"id": apogee_id}
    if continuum is not None:
        try:
            flux, err, cont = normalise(flux, err, mask, config=continuum)
        except ValueError as problem:
            raise ValueError(f"{path}: continuum normalisation failed: {problem}") from problem
        out["continuum"] = cont
        flux, mask = _apply_flux_range(flux, mask, flux_range)
    else:
        flux = np.where(mask, np.nan, flux)
    out.update(flux=flux.astype(np.float32), flux_err=err.astype(np.float32), mask=mask)
    out.update(_row_labels({}))
    out["snr"] = snr
    return out


def read_apogee_file(path: str | Path, kind: str | None = None, **kwargs) -> dict:
    """Read an aspcapStar or apStar file; ``kind`` (one of :data:`KINDS`) or guessed from the name."""
    path = Path(path)
    if kind is None:
        if path.name.startswith("aspcapStar"):
            kind = "aspcap-observed"
        elif path.name.startswith("apStar"):
            kind = "apstar"
        else:
            raise ValueError(f"{path}: cannot tell aspcapStar from apStar by its name; pass kind= one of {KINDS}")
    if kind == "apstar":
        return read_apstar(path, **kwargs)
    if kind in ("aspcap-observed", "aspcap-synthetic"):
        return read_aspcapstar(path, which=kind.split("-")[1], **kwargs)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


# --------------------------------------------------------------------------------------------------
# The paper's array release
# --------------------------------------------------------------------------------------------------


def _read_wavelength_csv(path: Path) -> np.ndarray:
    values = []
    with open(path) as handle:
        for line_number, line in enumerate(handle, 1):
            fields = [f for f in re.split(r"[,\s]+", line.strip()) if f]
            if not fields:
                continue
            try:
                values.append(float(fields[-1]))
            except ValueError:
                if values:  # a header is fine, text after numbers is not
                    raise ValueError(f"{path}:{line_number}: not a number: {line.strip()!r}") from None
    return np.asarray(values)


def load_paper_arrays(
    folder: str | Path,
    out_dir: str | Path,
    kind: str = "synthetic",
    batch_size: int = 512,
    overwrite: bool = False,
):
    """The paper's Zenodo array release (record 14041360) → a ``DatasetDict`` (train, test) at ``out_dir``.

    Files read from ``folder``: ``synspec_{train,test}.npy`` (kind ``"synthetic"``) or
    ``aspcap_spectra_{train,test}.npy`` (``"observed"``), each (N, 7514) with NaN at bad pixels;
    ``labels_{split}.npy`` and ``label_errs_{split}.npy`` (N, 5) in the order
    :data:`~spectrafm_hf.data.schema.PAPER_LABEL_ORDER` (TEFF, LOGG, O_FE, MG_FE, FE_H); and
    ``apogee_wavelength_sol.csv`` (7514 vacuum Å), checked against ``grid.apogee_wavelength()``.

    Arrays are opened with ``np.load(mmap_mode="r")`` and streamed in batches of ``batch_size`` rows
    through :func:`~spectrafm_hf.data.schema.write_dataset`, so memory does not grow with N.
    Non-finite or zero flux → mask; ``flux_err`` is NaN (the release has no per-pixel errors); ``snr``
    NaN; ids ``paper-<split>-<row>``.
    """
    folder = Path(folder)
    prefix = {"synthetic": "synspec", "observed": "aspcap_spectra"}.get(kind)
    if prefix is None:
        raise ValueError(f"kind must be 'synthetic' or 'observed', got {kind!r}")
    wavelength_file = folder / "apogee_wavelength_sol.csv"
    if not wavelength_file.exists():
        raise FileNotFoundError(f"{wavelength_file} is missing; it ships with the paper's array release")
    wavelength = _read_wavelength_csv(wavelength_file)
    expected = grid.apogee_wavelength()
    if wavelength.shape != expected.shape or not np.allclose(wavelength, expected, rtol=0, atol=1e-3):
        worst = np.max(np.abs(wavelength - expected)) if wavelength.shape == expected.shape else None
        raise ValueError(
            f"{wavelength_file}: {wavelength.size} wavelengths"
            + (f", max |Δλ| = {worst:.3g} Å" if worst is not None else "")
            + f"; expected the {grid.APOGEE_NPIX}-pixel APOGEE vacuum grid (grid.apogee_wavelength())"
        )
    split_arrays = {}
    for split in ("train", "test"):
        paths = {
            "flux": folder / f"{prefix}_{split}.npy",
            "labels": folder / f"labels_{split}.npy",
            "errors": folder / f"label_errs_{split}.npy",
        }
        for name, path in paths.items():
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing from the paper's array release folder")
        try:
            arrays = {name: np.load(path, mmap_mode="r", allow_pickle=False) for name, path in paths.items()}
        except (OSError, ValueError) as err:
            raise ValueError(f"{folder}: cannot memory-map the {split} arrays ({err})") from err
        n = arrays["flux"].shape[0]
        if arrays["flux"].ndim != 2 or arrays["flux"].shape[1] != grid.APOGEE_NPIX:
            raise ValueError(f"{paths['flux']}: shape {arrays['flux'].shape}, expected (N, {grid.APOGEE_NPIX})")
        for name in ("labels", "errors"):
            if arrays[name].shape != (n, len(PAPER_LABEL_ORDER)):
                raise ValueError(
                    f"{paths[name]}: shape {arrays[name].shape}, expected ({n}, {len(PAPER_LABEL_ORDER)}) "
                    f"in the order {PAPER_LABEL_ORDER}"
                )
        split_arrays[split] = arrays

    def batches(split):
        arrays = split_arrays[split]
        n = arrays["flux"].shape[0]
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            flux = np.asarray(arrays["flux"][start:stop], dtype=np.float32)
            mask = ~np.isfinite(flux) | (flux == 0)
            batch = {
                "id": np.array([f"paper-{split}-{i}" for i in range(start, stop)]),
                "flux": np.where(mask, np.nan, flux),
                "flux_err": np.full_like(flux, np.nan),
                "mask": mask,
            }
            labels = np.asarray(arrays["labels"][start:stop], dtype=np.float32)
            errors = np.asarray(arrays["errors"][start:stop], dtype=np.float32)
            for column, name in enumerate(PAPER_LABEL_ORDER):
                batch[name] = labels[:, column]
                batch[f"{name}_ERR"] = errors[:, column]
            yield batch

    metadata = {"source": "paper-arrays", "kind": kind, "folder": str(folder),
                "label_order_in_files": list(PAPER_LABEL_ORDER)}
    return write_dataset(
        out_dir, {split: (lambda split=split: batches(split)) for split in split_arrays},
        wavelength=expected, metadata=metadata, overwrite=overwrite,
    )


# --------------------------------------------------------------------------------------------------
# A folder of files → one dataset
# --------------------------------------------------------------------------------------------------


def _find_files(spectra_dir: Path, kind: str) -> list[Path]:
    prefix = "apStar" if kind == "apstar" else "aspcapStar"
    return sorted(
        p for p in spectra_dir.rglob(f"{prefix}-*") if p.is_file() and _FILE_NAME.match(p.name)
    )


def build_apogee_dataset(
    spectra_dir: str | Path,
    out_dir: str | Path,
    allstar: str | Path | None = None,
    kind: str = "aspcap-observed",
    paper_cuts: bool = False,
    seed: int = 0,
    splits: Mapping[str, float] = DEFAULT_SPLITS,
    progress: bool = True,
    overwrite: bool = False,
    batch_size: int = 64,
    bad_bits: tuple[int, ...] = DEFAULT_BAD_PIXMASK_BITS,
    continuum: ContinuumConfig = ContinuumConfig(),
):
    """A folder of aspcapStar or apStar files (+ optional allStar catalogue) → one ``DatasetDict``.

    Steps:

    1. Find ``aspcapStar-*.fits[.gz]`` (kinds ``aspcap-observed`` / ``aspcap-synthetic``) or
       ``apStar-*.fits[.gz]`` (kind ``apstar``) anywhere under ``spectra_dir``; the APOGEE_ID comes
       from the file name.
    2. With ``allstar``: labels, their errors and SNR come from the catalogue row (they override the
       file's HDU 4 / header); with ``paper_cuts`` only rows passing :func:`paper_sample_cuts` are
       used (a star with no catalogue row cannot be checked and is excluded). Without ``allstar``
       labels come from the file (aspcapStar HDU 4) or are NaN (apStar).
    3. One file per APOGEE_ID: when a star has several files (two fields or telescopes), the one
       whose ``<TELESCOPE>/<FIELD>`` folders match the chosen catalogue row wins, else the first in
       path order; the others are listed as duplicates.
    4. Stars are split reproducibly (``split_indices(n, splits, seed)`` over the sorted IDs), then each
       split streams its files through :func:`~spectrafm_hf.data.schema.write_dataset`. A file that
       fails to read (corrupt, truncated, missing HDU, wrong grid, all-zero) is skipped.

    Every file that is not in the dataset is listed with its reason in ``<out_dir>/bad_files.json``
    (``bad``: unreadable files; ``excluded``: cut, duplicate, or no catalogue row), with counts and
    the per-cut summary. If no file at all is usable, the report is written to
    ``<out_dir>.bad_files.json`` and a ValueError is raised.

    Returns the saved ``DatasetDict`` (memory-mapped).
    """
    from tqdm.auto import tqdm

    spectra_dir, out_dir = Path(spectra_dir), Path(out_dir)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not spectra_dir.is_dir():
        raise FileNotFoundError(f"spectra folder {spectra_dir} does not exist")
    if paper_cuts and allstar is None:
        raise ValueError("paper_cuts needs the allStar catalogue (--allstar): the cuts use its flags and SNR")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True (--overwrite) or choose another --out")
    files = _find_files(spectra_dir, kind)
    if not files:
        pattern = "apStar-*.fits" if kind == "apstar" else "aspcapStar-*.fits"
        raise ValueError(f"no {pattern} files under {spectra_dir} (kind={kind!r})")

    excluded: list[dict] = []
    bad: list[dict] = []
    cut_summary = None
    catalogue_rows: dict[str, list[dict]] = {}
    catalogue_reason: dict[str, str] = {}
    if allstar is not None:
        table = read_allstar(allstar)
        ids = np.asarray(table["APOGEE_ID"]).astype(str)
        keep = np.ones(len(table), dtype=bool)
        if paper_cuts:
            keep, cut_summary, first_failed = paper_sample_cuts(table)
            for i in np.flatnonzero(~keep):
                catalogue_reason.setdefault(ids[i], f"paper cut: {first_failed[i]}")
        for i in np.flatnonzero(keep):
            row = {name: table[name][i] for name in table.colnames}
            catalogue_rows.setdefault(ids[i], []).append(row)
        for rows in catalogue_rows.values():  # highest SNR first (cuts already de-duplicated)
            rows.sort(key=lambda r: -np.nan_to_num(_float_or_nan(r.get("SNR")), nan=-np.inf))

    # Group files by star; pick one file and one catalogue row per star.
    by_id: dict[str, list[Path]] = {}
    for path in files:
        by_id.setdefault(_id_from_name(path), []).append(path)
    candidates: list[tuple[str, Path, dict | None]] = []
    n_without_row = 0
    for apogee_id in sorted(by_id):
        paths = by_id[apogee_id]
        row = None
        if allstar is not None:
            rows = catalogue_rows.get(apogee_id)
            if not rows:
                reason = catalogue_reason.get(apogee_id, "no allStar row for this APOGEE_ID")
                if paper_cuts:
                    excluded.extend({"path": str(p), "id": apogee_id, "reason": reason} for p in paths)
                    continue
                n_without_row += 1
            else:
                row = rows[0]
                tel, field = str(row.get("TELESCOPE", "")).strip(), str(row.get("FIELD", "")).strip()
                matching = [p for p in paths if p.parent.name == field and p.parent.parent.name == tel]
                paths = matching + [p for p in paths if p not in matching]
        chosen = paths[0]
        excluded.extend(
            {"path": str(p), "id": apogee_id, "reason": f"duplicate APOGEE_ID (using {chosen})"} for p in paths[1:]
        )
        candidates.append((apogee_id, chosen, row))
    if not candidates:
        report_path = out_dir.parent / f"{out_dir.name}.bad_files.json"
        _write_report(report_path, files, 0, bad, excluded, cut_summary, kind, n_without_row)
        raise ValueError(f"none of the {len(files)} files under {spectra_dir} is usable; see {report_path}")

    assignment = split_indices(len(candidates), splits, seed)
    bar = tqdm(total=len(candidates), desc=f"reading {kind} files", unit="file", disable=not progress)
    read_kwargs = {"bad_bits": bad_bits, "continuum": continuum} if kind == "apstar" else {}
    n_used = {"count": 0}

    def split_batches(indices: np.ndarray) -> Iterator[dict]:
        pending: list[dict] = []
        for index in indices:
            apogee_id, path, row = candidates[index]
            bar.update(1)
            try:
                record = read_apogee_file(path, kind, **read_kwargs)
            except ValueError as problem:
                bad.append({"path": str(path), "id": apogee_id, "reason": str(problem)})
                continue
            record["id"] = apogee_id
            if row is not None:
                record.update(_row_labels(row))
            pending.append(record)
            n_used["count"] += 1
            if len(pending) == batch_size:
                yield _stack(pending)
                pending = []
        if pending:
            yield _stack(pending)

    metadata = {
        "source": "apogee-dr17", "kind": kind, "spectra_dir": str(spectra_dir),
        "allstar": None if allstar is None else str(allstar), "paper_cuts": paper_cuts,
        "cut_summary": cut_summary, "seed": seed, "splits": dict(splits),
        "flux_range": list(PAPER_FLUX_RANGE),
        "continuum": None if kind != "apstar" else vars(continuum) | {"method": "per-chip Chebyshev, asymmetric sigma clip"},
        "bad_pixmask_bits": list(bad_bits) if kind == "apstar" else None,
    }
    try:
        dataset = write_dataset(
            out_dir,
            {name: (lambda idx=idx: split_batches(idx)) for name, idx in assignment.items()},
            wavelength=grid.apogee_wavelength(), metadata=metadata, overwrite=overwrite,
        )
    finally:
        bar.close()
    if n_used["count"] == 0:
        report_path = out_dir.parent / f"{out_dir.name}.bad_files.json"
        _write_report(report_path, files, 0, bad, excluded, cut_summary, kind, n_without_row)
        import shutil

        shutil.rmtree(out_dir, ignore_errors=True)
        raise ValueError(f"none of the {len(files)} files under {spectra_dir} could be read; see {report_path}")
    _write_report(out_dir / "bad_files.json", files, n_used["count"], bad, excluded, cut_summary, kind, n_without_row)
    return dataset


def _stack(records: list[dict]) -> dict:
    batch = {"id": np.array([r["id"] for r in records])}
    for name in ("flux", "flux_err", "mask"):
        batch[name] = np.stack([r[name] for r in records])
    for name in (*LABELS, *(f"{label}_ERR" for label in LABELS), "snr"):
        batch[name] = np.array([r[name] for r in records], dtype=np.float32)
    return batch


def _write_report(path: Path, files, n_used, bad, excluded, cut_summary, kind, n_without_row) -> None:
    report = {
        "kind": kind,
        "n_files_found": len(files),
        "n_spectra_in_dataset": n_used,
        "n_bad": len(bad),
        "n_excluded": len(excluded),
        "n_kept_without_allstar_row": n_without_row,
        "paper_cut_summary": cut_summary,
        "bad": bad,
        "excluded": excluded,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))


def _parse_bits(text: str) -> tuple[int, ...]:
    """'0-7,12' → (0, 1, ..., 7, 12); a clear error for anything else."""
    bits = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                bits.extend(range(lo, hi + 1))
            else:
                bits.append(int(part))
        except ValueError:
            raise ValueError(f"--bad-bits: cannot parse {part!r} in {text!r}; use e.g. '0-7,12'") from None
    if any(not 0 <= b < 32 for b in bits):
        raise ValueError(f"--bad-bits: APOGEE_PIXMASK bits are 0..31, got {text!r}")
    return tuple(sorted(set(bits)))


def run_build_apogee(args) -> int:
    """``spectrafm build-apogee``: args ``spectra_dir, allstar, kind, out, paper_cuts, seed, overwrite``."""
    dataset = build_apogee_dataset(
        args.spectra_dir, args.out, allstar=args.allstar, kind=args.kind, paper_cuts=args.paper_cuts,
        seed=args.seed, overwrite=args.overwrite, progress=not getattr(args, "no_progress", False),
        **({"bad_bits": _parse_bits(args.bad_bits)} if getattr(args, "bad_bits", None) else {}),
    )
    report = json.loads((Path(args.out) / "bad_files.json").read_text())
    sizes = ", ".join(f"{name}: {len(split)}" for name, split in dataset.items())
    print(f"wrote {args.out} ({sizes}); {report['n_bad']} bad and {report['n_excluded']} excluded files "
          f"listed in {Path(args.out) / 'bad_files.json'}")
    return 0
