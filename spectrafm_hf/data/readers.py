"""Read spectra from files into plain arrays for prediction (``spectrafm predict --input FILE``).

Every reader returns a :class:`SpectraInput`; validation of the values themselves (units, ranks,
masks) is done once, by the feature extractor, where the arrays enter the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
    """

    wavelength: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray | None = None
    mask: np.ndarray | None = None
    scalars: dict[str, np.ndarray] = field(default_factory=dict)
    ids: np.ndarray | None = None


_NPZ_ARRAYS = {"wavelength", "flux", "flux_err", "mask", "id", "ids"}


def read_npz(path: str | Path) -> SpectraInput:
    """An ``.npz`` with ``wavelength`` ((P,) or (N, P)), ``flux`` (N, P), optional ``flux_err``,
    ``mask`` (True = bad), ``id``, and any other array of shape (N,) as a named scalar input.

    Loaded with ``allow_pickle=False``: object arrays are refused.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read as .npz ({err}); expected numpy.savez output") from err
    with archive:
        missing = {"wavelength", "flux"} - set(archive.files)
        if missing:
            raise ValueError(f"{path}: missing array(s) {sorted(missing)}; an input .npz needs 'wavelength' and 'flux'")
        flux = np.asarray(archive["flux"])
        scalars = {k: np.asarray(archive[k]) for k in archive.files if k not in _NPZ_ARRAYS}
        ids_key = "id" if "id" in archive.files else ("ids" if "ids" in archive.files else None)
        return SpectraInput(
            wavelength=np.asarray(archive["wavelength"]),
            flux=flux,
            flux_err=np.asarray(archive["flux_err"]) if "flux_err" in archive.files else None,
            mask=np.asarray(archive["mask"]).astype(bool) if "mask" in archive.files else None,
            scalars=scalars,
            ids=np.asarray(archive[ids_key]) if ids_key else None,
        )


def read_spectra(path: str | Path) -> SpectraInput:
    """Read any supported spectra file, chosen by suffix.

    Supported now: ``.npz``. (The data issue adds aspcapStar/apStar FITS, Parquet, FITS tables and
    dataset folders.)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file {path} does not exist")
    if path.suffix == ".npz":
        return read_npz(path)
    raise ValueError(f"{path}: unsupported input format {path.suffix!r}; supported: .npz")
