"""``SpectraInput``: spectra read from a file, as plain arrays (what every reader returns).

Its own module so that the format readers (:mod:`.tables`) and the dispatcher (:mod:`.readers`)
both import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SpectraInput:
    """Spectra as arrays.

    Attributes:
        wavelength: vacuum Å, shape (P,) shared by all spectra or (N, P).
        flux: shape (N, P).
        flux_err: shape (N, P) or None.
        mask: bool, shape (N, P), True = bad pixel, or None.
        scalars: named non-spectral inputs, name → shape (N,).
        ids: star identifiers, shape (N,), or None (row numbers are used).
        reference: known values carried along but never fed to the model, name → shape (N,):
            catalogue labels, their ``_ERR`` and ``snr`` read from APOGEE files or saved datasets
            (so predictions can be compared with them). Files written by the user (npz, Parquet,
            FITS tables) put every per-row column in ``scalars`` instead: there, a column is an input.
        skipped: ``"<file>: <reason>"`` for each input file of the requested rows that could not be read
            (a folder of APOGEE files is read file by file; an unreadable one is left out, not fatal).
    """

    wavelength: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray | None = None
    mask: np.ndarray | None = None
    scalars: dict[str, np.ndarray] = field(default_factory=dict)
    ids: np.ndarray | None = None
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        """Number of spectra (rows of ``flux``; one for a single (P,) spectrum)."""
        return 1 if np.ndim(self.flux) == 1 else int(np.shape(self.flux)[0])
