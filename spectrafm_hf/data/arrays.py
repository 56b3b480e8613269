"""``WindowData``: a dataset split as dense arrays cut to one pixel window, and the helpers that
build it (:func:`window_data`), cut it (:func:`cut_window`, :func:`subset`), join it
(:func:`concatenate`) and turn it back into schema rows (:func:`rows_of`).

Every trainer and baseline consumes this container: the stages, the ``Trainer`` path, the scratch MLP,
ridge and The Cannon all see exactly the same arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .labels import LABELS, error_column


@dataclass
class WindowData:
    """Spectra of one pixel window plus their labels, as dense arrays.

    Attributes:
        flux: (N, P) float32 continuum-normalised flux; NaN at bad pixels.
        mask: (N, P) bool, True = bad pixel.
        flux_err: (N, P) float32 1σ flux error (NaN = unknown).
        labels: label name → (N,) float64 physical values (NaN = unknown).
        label_errors: label name → (N,) float64 reported 1σ (NaN = unknown).
        wavelength: (P,) vacuum Å.
    """

    flux: np.ndarray
    mask: np.ndarray
    flux_err: np.ndarray
    labels: dict[str, np.ndarray]
    label_errors: dict[str, np.ndarray] = field(default_factory=dict)
    wavelength: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.flux.shape[0])

    def fingerprint(self) -> str:
        """A short hash of every array (values, shapes, dtypes, label names): equal data, equal hash.

        Used to tell whether a finished training stage was made from the same stars (a few hundred MB
        hash in about a second).
        """
        import hashlib

        digest = hashlib.blake2b(digest_size=12)
        arrays = [("flux", self.flux), ("mask", self.mask), ("flux_err", self.flux_err),
                  ("wavelength", self.wavelength)]
        arrays += [(f"label:{k}", v) for k, v in sorted(self.labels.items())]
        arrays += [(f"error:{k}", v) for k, v in sorted(self.label_errors.items())]
        for name, values in arrays:
            digest.update(name.encode())
            if values is not None:
                values = np.ascontiguousarray(values)
                digest.update(f"{values.dtype.str}{values.shape}".encode())
                digest.update(values.data)
        return digest.hexdigest()

    def clean_flux(self, fill: float = 1.0) -> np.ndarray:
        """Flux with bad pixels (mask or non-finite) replaced by ``fill`` (the paper's NaN → 1)."""
        bad = self.mask | ~np.isfinite(self.flux)
        return np.where(bad, fill, self.flux).astype(np.float32)


def window_data(split, pixels: slice | None = None, rows=None) -> WindowData:
    """Dense arrays of a dataset split (schema of :mod:`spectrafm_hf.data.schema`) cut to ``pixels``.

    Args:
        split: a ``datasets.Dataset``.
        pixels: slice of the pixel grid (default all).
        rows: optional row indices to keep (applied before loading, so only they are read).
    """
    from .schema import get_wavelength

    wavelength = get_wavelength(split)
    pixels = pixels or slice(0, len(wavelength))
    if rows is not None:
        split = split.select(np.asarray(rows, dtype=np.int64))
    # One Arrow table (honours a select()'s index mapping); spectra are fixed-size lists, so each
    # column is one contiguous buffer reshaped to (N, P) — no per-row Python objects.
    table = split.with_format("arrow")[:] if len(split) else None
    columns = set(split.column_names)
    n_pix = len(wavelength)

    def spectra(name: str, dtype) -> np.ndarray:
        if table is None:
            return np.zeros((0, len(wavelength[pixels])), dtype)
        values = table.column(name).combine_chunks()
        values = values.flatten().to_numpy(zero_copy_only=False)  # (N·P,)
        return values.reshape(len(split), n_pix)[:, pixels].astype(dtype, copy=False)

    def scalars(name: str) -> np.ndarray:
        return np.asarray(table.column(name).to_numpy(zero_copy_only=False), np.float64) if table is not None \
            else np.zeros(0)

    flux = spectra("flux", np.float32)
    mask = spectra("mask", bool)
    flux_err = spectra("flux_err", np.float32)
    labels = {name: scalars(name) for name in LABELS if name in columns}
    errors = {name: scalars(error_column(name)) for name in LABELS if error_column(name) in columns}
    return WindowData(flux=flux, mask=mask | ~np.isfinite(flux), flux_err=flux_err, labels=labels,
                      label_errors=errors, wavelength=wavelength[pixels])


def cut_window(data: WindowData, window: slice) -> WindowData:
    """The pixels ``window`` (a slice of ``data``'s own pixels) of every star; labels unchanged.

    The arrays are views of ``data``'s (basic slicing), not copies.
    """
    return WindowData(data.flux[:, window], data.mask[:, window], data.flux_err[:, window],
                      data.labels, data.label_errors, data.wavelength[window])


def subset(data: WindowData, index: np.ndarray) -> WindowData:
    """Rows ``index`` of ``data``."""
    index = np.asarray(index)
    return WindowData(
        flux=data.flux[index], mask=data.mask[index], flux_err=data.flux_err[index],
        labels={k: v[index] for k, v in data.labels.items()},
        label_errors={k: v[index] for k, v in data.label_errors.items()},
        wavelength=data.wavelength,
    )


def concatenate(a: WindowData, b: WindowData) -> WindowData:
    """Stars of ``a`` then ``b`` (same pixels); labels missing in one side become NaN."""
    names = sorted(set(a.labels) | set(b.labels))
    err_names = sorted(set(a.label_errors) | set(b.label_errors))

    def column(d: Mapping, name: str, n: int):
        return d.get(name, np.full(n, np.nan))

    return WindowData(
        flux=np.concatenate([a.flux, b.flux]), mask=np.concatenate([a.mask, b.mask]),
        flux_err=np.concatenate([a.flux_err, b.flux_err]),
        labels={k: np.concatenate([column(a.labels, k, len(a)), column(b.labels, k, len(b))]) for k in names},
        label_errors={k: np.concatenate([column(a.label_errors, k, len(a)), column(b.label_errors, k, len(b))])
                      for k in err_names},
        wavelength=a.wavelength,
    )


def rows_of(data: WindowData, index: np.ndarray) -> list[dict]:
    """Schema rows (dicts of numpy values) for the collator, for stars ``index``."""
    rows = []
    for i in np.asarray(index):
        row = {"flux": data.flux[i], "flux_err": data.flux_err[i], "mask": data.mask[i]}
        for name in LABELS:
            row[name] = np.float32(data.labels[name][i]) if name in data.labels else np.float32(np.nan)
            row[error_column(name)] = (
                np.float32(data.label_errors[name][i]) if name in data.label_errors else np.float32(np.nan)
            )
        rows.append(row)
    return rows
