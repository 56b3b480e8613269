"""Open a FITS file with errors that name it, and make its big-endian arrays native.

A file that is cut short or corrupt (including a ``.fits.gz`` whose gzip stream ends early, which
astropy would read silently as fewer HDUs) is a ``ValueError`` naming the file, never a misleading
"missing HDU".

Shared by the APOGEE readers (:mod:`spectrafm_hf.data.apogee`) and the generic FITS-table reader
(:mod:`spectrafm_hf.data.tables`).
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def open_fits(path: Path, memmap: bool = False):
    """``fits.open`` that turns unreadable / truncated files into ``ValueError(path: problem)``."""
    from astropy.io import fits
    from astropy.io.fits.verify import VerifyError

    check_gzip_complete(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, memmap=memmap)
            len(hdul)  # forces every header to be read: broken headers fail here, not later
        except (OSError, ValueError, TypeError, IndexError, KeyError, VerifyError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: not a readable FITS file ({_first_line(err)}); is it corrupt or "
                             "truncated?") from err
        try:
            _refuse_truncation(path, caught)  # before the caller reads HDUs that are not all there
            yield hdul
        finally:
            hdul.close()
    _refuse_truncation(path, caught)  # data read lazily by the caller can reveal it too


def _refuse_truncation(path: Path, caught: list) -> None:
    """astropy only warns about a truncated file; a half-downloaded spectrum must not pass silently."""
    for warning in caught:
        if "truncated" in str(warning.message):
            raise ValueError(f"{path}: the FITS file is truncated ({warning.message}); download it again")


def check_gzip_complete(path: Path) -> None:
    """Refuse a gzip-compressed file whose stream is cut short or fails its CRC.

    astropy reads a truncated ``.fits.gz`` without a word and simply finds fewer HDUs, so a
    half-downloaded spectrum would surface as a misleading "missing HDU 2". Decompressing the stream
    once (a few MB for an apStar file) is the only way to know it is whole. Plain files pass untouched.
    """
    with open(path, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b":
            return
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: the gzip-compressed file is truncated or corrupt ({_first_line(err)}); "
                         "download it again") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    # astropy's advice (ignore_missing_simple=True) is not something a user of the command line can act on
    return "no SIMPLE card at the start: not a FITS file" if "No SIMPLE card" in text else text


def native_byte_order(array: np.ndarray) -> np.ndarray:
    """``array`` in native byte order (FITS is big-endian; numpy math and Arrow want native)."""
    if not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    return array
