"""Open a FITS file with errors that name it, and make its big-endian arrays native.

Shared by the APOGEE readers (:mod:`spectrafm_hf.data.apogee`) and the generic FITS-table reader
(:mod:`spectrafm_hf.data.tables`).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def open_fits(path: Path, memmap: bool = False):
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
    # astropy only warns about a truncated file; a half-downloaded spectrum must not pass silently.
    for warning in caught:
        if "truncated" in str(warning.message):
            raise ValueError(f"{path}: the FITS file is truncated ({warning.message}); download it again")


def native_byte_order(array: np.ndarray) -> np.ndarray:
    """``array`` in native byte order (FITS is big-endian; numpy math and Arrow want native)."""
    if not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    return array
