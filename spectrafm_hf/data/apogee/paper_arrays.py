"""The paper's array release (Zenodo record 14041360) → the project's dataset schema.

The release holds the paper's DR17 sample as plain arrays, already on the 7514-pixel grid.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import grid
from ..labels import PAPER_LABEL_ORDER
from ..schema import write_dataset

_FLUX_PREFIX = {"synthetic": "synspec", "observed": "aspcap_spectra"}


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
    :data:`~spectrafm_hf.data.labels.PAPER_LABEL_ORDER` (TEFF, LOGG, O_FE, MG_FE, FE_H); and
    ``apogee_wavelength_sol.csv`` (7514 vacuum Å), checked against ``grid.apogee_wavelength()``.

    Arrays are opened with ``np.load(mmap_mode="r")`` and streamed in batches of ``batch_size`` rows
    through :func:`~spectrafm_hf.data.schema.write_dataset`, so memory does not grow with N.
    Non-finite or zero flux → mask; ``flux_err`` is NaN (the release has no per-pixel errors); ``snr``
    NaN; ids ``paper-<split>-<row>``.
    """
    folder = Path(folder)
    prefix = _FLUX_PREFIX.get(kind)
    if prefix is None:
        raise ValueError(f"kind must be 'synthetic' or 'observed', got {kind!r}")
    wavelength = _check_wavelength_file(folder / "apogee_wavelength_sol.csv")
    split_arrays = {split: _open_split(folder, prefix, split) for split in ("train", "test")}
    metadata = {"source": "paper-arrays", "kind": kind, "folder": str(folder),
                "label_order_in_files": list(PAPER_LABEL_ORDER)}
    return write_dataset(
        out_dir,
        {split: (lambda split=split: _batches(split_arrays[split], split, batch_size)) for split in split_arrays},
        wavelength=wavelength, metadata=metadata, overwrite=overwrite,
    )


def _check_wavelength_file(path: Path) -> np.ndarray:
    """``grid.apogee_wavelength()`` (7514,) after checking that ``path`` lists the same wavelengths."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; it ships with the paper's array release")
    wavelength = _read_wavelength_csv(path)
    expected = grid.apogee_wavelength()
    if wavelength.shape != expected.shape or not np.allclose(wavelength, expected, rtol=0, atol=1e-3):
        worst = np.max(np.abs(wavelength - expected)) if wavelength.shape == expected.shape else None
        raise ValueError(
            f"{path}: {wavelength.size} wavelengths"
            + (f", max |Δλ| = {worst:.3g} Å" if worst is not None else "")
            + f"; expected the {grid.APOGEE_NPIX}-pixel APOGEE vacuum grid (grid.apogee_wavelength())"
        )
    return expected


def _read_wavelength_csv(path: Path) -> np.ndarray:
    """The last number of every line of ``path`` (one wavelength a line; a header line is skipped)."""
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


def _open_split(folder: Path, prefix: str, split: str) -> dict[str, np.ndarray]:
    """Memory-mapped ``flux`` (N, 7514), ``labels`` and ``errors`` (N, 5) of one split, shapes checked."""
    paths = {
        "flux": folder / f"{prefix}_{split}.npy",
        "labels": folder / f"labels_{split}.npy",
        "errors": folder / f"label_errs_{split}.npy",
    }
    for path in paths.values():
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
    return arrays


def _batches(arrays: dict[str, np.ndarray], split: str, batch_size: int) -> Iterator[dict]:
    """Batches of ``batch_size`` rows of one split in the dataset schema (what write_dataset takes)."""
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
