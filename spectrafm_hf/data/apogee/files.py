"""One aspcapStar or apStar file → arrays on the 7514-pixel grid, or a ``ValueError`` naming the file.

Both file kinds store spectra on the APOGEE DR17 log-linear grid: header keywords ``CTYPE1 =
'LOG-LINEAR'``, ``CRVAL1 = 4.179``, ``CDELT1 = 6e-6``, ``CRPIX1 = 1`` and 8575 pixels per row
(:mod:`spectrafm_hf.data.grid`); only the three chip slices (7514 pixels) are kept.

* aspcapStar: HDU 1 the ASPCAP continuum-normalised observed spectrum (zeros outside the chips),
  HDU 2 its error, HDU 3 ASPCAP's best-fit synthetic spectrum, HDU 4 a one-row table (the star's
  allStar row).
* apStar: HDU 1 flux (1e-17 erg/s/cm²/Å), shape (nrow, 8575), row 0 the combined spectrum; HDU 2
  its error; HDU 3 the APOGEE_PIXMASK bitmask; primary header SNR and OBJID. apStar is not
  continuum-normalised, so :func:`read_apstar` normalises it (:mod:`spectrafm_hf.data.continuum`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import grid
from ..continuum import DEFAULT_CONTINUUM, ContinuumConfig, normalise
from ..fits_io import native_byte_order, open_fits
from .catalogue import float_or_nan, id_from_name, row_labels

#: APOGEE_PIXMASK bits treated as bad by default: 0 BADPIX, 1 CRPIX, 2 SATPIX, 3 UNFIXABLE,
#: 4 BADDARK, 5 BADFLAT, 6 BADERR, 7 NOSKY, 12 SIG_SKYLINE. (9–11 PERSIST_*, 13 SIG_TELLURIC and
#: 14 NOT_ENOUGH_PSF are common and usually harmless; add them for a stricter mask.)
DEFAULT_BAD_PIXMASK_BITS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 12)
#: The paper keeps normalised flux in this range; pixels outside become NaN and masked.
PAPER_FLUX_RANGE: tuple[float, float] = (0.05, 1.2)
KINDS = ("aspcap-observed", "aspcap-synthetic", "apstar")


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
# aspcapStar
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
    flux_hdu, label = (1, "observed flux") if which == "observed" else (3, "best-fit synthetic flux")
    flux, err, row, header_snr = _read_aspcapstar_hdus(path, which, flux_hdu, label)
    flux, err = grid.apstar_to_apogee(flux), grid.apstar_to_apogee(err)
    # ASPCAP writes zeros where it has no data; zero error also means "no measurement".
    mask = (flux == 0) | ~np.isfinite(flux)
    if which == "observed":
        mask |= ~np.isfinite(err) | (err <= 0)
    if mask.all():
        raise ValueError(f"{path}: the {label} (HDU {flux_hdu}) is all zero or non-finite on the chip pixels")
    flux, mask = _apply_flux_range(flux, mask, flux_range)
    out = {
        "id": str(row.get("APOGEE_ID", "")).strip() or id_from_name(path) or path.stem,
        "flux": flux.astype(np.float32),
        "flux_err": err.astype(np.float32),
        "mask": mask,
    }
    out.update(row_labels(row))
    if not np.isfinite(out["snr"]):
        out["snr"] = float_or_nan(header_snr)
    return out


def _read_aspcapstar_hdus(path: Path, which: str, flux_hdu: int, label: str):
    """``(flux, err, allStar row, header SNR)`` of an aspcapStar file; flux and err (8575,) float64."""
    with open_fits(path) as hdul:
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
            row = {name: native_byte_order(np.asarray(data[name]))[0] for name in data.columns.names}
        header_snr = hdul[0].header.get("SNR")
    return flux, err, row, header_snr


# --------------------------------------------------------------------------------------------------
# apStar
# --------------------------------------------------------------------------------------------------


def read_apstar(
    path: str | Path,
    bad_bits: tuple[int, ...] = DEFAULT_BAD_PIXMASK_BITS,
    continuum: ContinuumConfig | None = DEFAULT_CONTINUUM,
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
    flux, err, bits, apogee_id, snr = _read_apstar_hdus(path, row)
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
    out.update(row_labels({}))
    out["snr"] = snr
    return out


def _read_apstar_hdus(path: Path, row: int):
    """``(flux, err, bits, id, snr)`` of row ``row`` of an apStar file, arrays on the 7514-pixel grid.

    flux and err float64, bits int64 (APOGEE_PIXMASK); id from the header's OBJID (else the file
    name); snr from the header (NaN if absent).
    """
    with open_fits(path) as hdul:
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
        apogee_id = str(header.get("OBJID", "")).strip() or id_from_name(path) or path.stem
        snr = float_or_nan(header.get("SNR"))
    flux, err, bits = (grid.apstar_to_apogee(a) for a in arrays)
    return flux.astype(np.float64), err.astype(np.float64), bits.astype(np.int64), apogee_id, snr


# --------------------------------------------------------------------------------------------------
# Checks shared by both kinds
# --------------------------------------------------------------------------------------------------


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
        if key not in header:
            continue
        try:
            found = float(header[key])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {where} {key}={header[key]!r} is not a number; the header is corrupt") from None
        if not np.isclose(found, value, rtol=0, atol=1e-9 * max(1.0, value)):
            raise ValueError(
                f"{path}: {where} {key}={header[key]} but the APOGEE DR17 grid has {key}={value} "
                f"(λ = 10**(4.179 + 6e-6·i), 8575 pixels); this spectrum is on another grid — resample it "
                "onto spectrafm_hf.data.grid.apstar_wavelength() or provide it as a table with a wavelength column"
            )


def _hdu_data(hdul, index: int, path: Path, what: str) -> np.ndarray:
    """Data of image HDU ``index`` as a native-endian array, or a ValueError naming what is missing."""
    if index >= len(hdul):
        raise ValueError(f"{path}: missing HDU {index} ({what}); the file has only {len(hdul)} HDUs")
    from astropy.io.fits.verify import VerifyError

    try:
        data = hdul[index].data
    except (OSError, ValueError, TypeError, KeyError, VerifyError) as err:
        raise ValueError(f"{path}: HDU {index} ({what}) cannot be read ({err}); is the file truncated?") from err
    if data is None:
        raise ValueError(f"{path}: HDU {index} ({what}) holds no data")
    return native_byte_order(np.asarray(data))


def _check_npix(array: np.ndarray, path: Path, what: str) -> None:
    """Refuse rows that are not 8575 pixels long (the apStar/aspcapStar layout)."""
    if array.shape[-1] != grid.APSTAR_NPIX:
        raise ValueError(
            f"{path}: {what} has {array.shape[-1]} pixels per row, expected {grid.APSTAR_NPIX} "
            "(the apStar/aspcapStar layout); not an APOGEE DR17 file on the standard grid"
        )


def _apply_flux_range(flux: np.ndarray, mask: np.ndarray, flux_range: tuple[float, float] | None):
    """NaN + mask outside ``flux_range`` (the paper's 0.05–1.2 cut) and at non-finite pixels."""
    mask = mask | ~np.isfinite(flux)
    if flux_range is not None:
        low, high = flux_range
        with np.errstate(invalid="ignore"):
            mask |= (flux < low) | (flux > high)
    flux = np.where(mask, np.nan, flux)
    return flux, mask
