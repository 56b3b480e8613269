"""Read spectra from files into plain arrays for prediction (``spectrafm predict --input FILE``).

:func:`read_spectra` picks the reader by file type: tables (npz, Parquet, FITS table) are read by
:mod:`.tables`, APOGEE files and saved dataset folders here. Every reader returns a
:class:`~spectrafm_hf.data.spectra_input.SpectraInput`; validation of the values themselves (units, ranks,
masks) is done once, by the feature extractor, where the arrays enter the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .labels import LABEL_COLUMNS
from .spectra_input import SpectraInput
from .tables import read_fits_table, read_npz, read_parquet


def read_dataset_folder(path: str | Path, split: str | None = None) -> SpectraInput:
    """A dataset folder saved by this project (``save_to_disk``) → SpectraInput.

    Args:
        split: which split of a ``DatasetDict``; None = every split, concatenated in stored order.

    Labels, their errors and ``snr`` go to ``reference``; extra scalar columns to ``scalars``.
    Everything is read into memory, which suits prediction inputs, not 100k-spectra training sets.
    """
    from datasets import Dataset, load_from_disk

    from .schema import get_wavelength

    path = Path(path)
    try:
        loaded = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise ValueError(f"{path}: not a dataset folder written by save_to_disk ({err})") from err
    if isinstance(loaded, Dataset):
        parts = [loaded]
    elif split is not None:
        if split not in loaded:
            raise ValueError(f"{path}: no split {split!r}; it has {list(loaded)}")
        parts = [loaded[split]]
    else:
        parts = [loaded[name] for name in loaded]
    parts = [p for p in parts if len(p)]
    if not parts:
        raise ValueError(f"{path}: the dataset holds no spectra")
    wavelength = get_wavelength(parts[0])
    reference_names = LABEL_COLUMNS
    columns: dict[str, list] = {}
    for part in parts:
        if not np.array_equal(get_wavelength(part), wavelength):
            raise ValueError(f"{path}: splits have different wavelength grids")
        table = part.with_format("numpy")[:]
        for name, values in table.items():
            columns.setdefault(name, []).append(np.asarray(values))
    joined = {name: np.concatenate(values) for name, values in columns.items()}
    skip = {"id", "flux", "flux_err", "mask", *reference_names}
    return SpectraInput(
        wavelength=wavelength,
        flux=joined["flux"].astype(np.float32),
        flux_err=joined["flux_err"].astype(np.float32),
        mask=joined["mask"].astype(bool),
        scalars={k: v for k, v in joined.items() if k not in skip},
        ids=joined["id"].astype(str),
        reference={k: joined[k] for k in reference_names if k in joined},
    )


def read_apogee_spectrum(path: str | Path, kind: str | None = None) -> SpectraInput:
    """One aspcapStar or apStar file → SpectraInput on the 7514-pixel grid (N = 1).

    ``kind``: ``aspcap-observed`` / ``aspcap-synthetic`` / ``apstar``; None guesses from the name
    (aspcapStar → observed). apStar spectra are continuum-normalised
    (:mod:`spectrafm_hf.data.continuum`). Labels from the file go to ``reference``.
    """
    from . import grid
    from .apogee import read_apogee_file

    record = read_apogee_file(path, kind)
    reference_names = LABEL_COLUMNS
    return SpectraInput(
        wavelength=grid.apogee_wavelength(),
        flux=record["flux"][None, :],
        flux_err=record["flux_err"][None, :],
        mask=record["mask"][None, :],
        ids=np.array([record["id"]]),
        reference={k: np.array([record[k]], dtype=np.float32) for k in reference_names},
    )


def _looks_like_apogee_image(path: Path) -> str | None:
    """aspcap-observed / apstar for an APOGEE file whose name does not say, None for anything else."""
    from astropy.io import fits
    from astropy.io.fits.verify import VerifyError

    try:
        with fits.open(path) as hdul:
            if len(hdul) < 4 or getattr(hdul[1], "columns", None) is not None:
                return None
            shape = hdul[1].shape
            if not shape or shape[-1] != 8575:
                return None
            # apStar's HDU 3 is an integer bitmask; aspcapStar's HDU 3 is a float synthetic spectrum.
            return "apstar" if hdul[3].header.get("BITPIX", -32) > 0 else "aspcap-observed"
    except (OSError, ValueError, TypeError, IndexError, KeyError, AttributeError, VerifyError, EOFError):
        return None  # unreadable here: the reader it falls through to names the problem


def read_spectra(path: str | Path, split: str | None = None) -> SpectraInput:
    """Read any supported spectra input (``spectrafm predict --input``).

    Supported: ``.npz``; ``.parquet``; a FITS binary table with wavelength/flux columns; an
    aspcapStar or apStar file (``.fits`` or ``.fits.gz``; apStar is continuum-normalised); a
    dataset folder saved by this project (``split`` picks one split; default all).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file {path} does not exist")
    if path.is_dir():
        return read_dataset_folder(path, split)
    name = path.name.lower()
    if path.suffix == ".npz":
        return read_npz(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return read_parquet(path)
    if name.endswith((".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")):
        if path.name.startswith(("aspcapStar", "apStar")):
            return read_apogee_spectrum(path)
        kind = _looks_like_apogee_image(path)
        if kind is not None:
            return read_apogee_spectrum(path, kind)
        return read_fits_table(path)
    raise ValueError(
        f"{path}: unsupported input format {path.suffix!r}; supported: .npz, .parquet, FITS table, "
        "aspcapStar/apStar .fits, or a dataset folder"
    )
