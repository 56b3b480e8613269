"""The one dataset schema shared by every data source, and its streaming writer.

Every loader (simulator, aspcapStar, apStar, the paper's array release, generic tables) produces a
``datasets.DatasetDict`` whose splits have exactly these columns:

=============  ==========================  =====================================================
column         type                        meaning
=============  ==========================  =====================================================
``id``         string                      star identifier (APOGEE_ID, or ``sim-<seed>-<n>``)
``flux``       float32 × P                 continuum-normalised flux; NaN allowed at bad pixels
``flux_err``   float32 × P                 1σ error of ``flux`` (same units); NaN/inf = unknown
``mask``       bool × P                    True = bad pixel (never attended by the model)
``TEFF`` ...   float32                     the five labels (K, dex); NaN = unknown
``TEFF_ERR``   float32                     their reported 1σ errors; NaN = unknown
``snr``        float32                     signal-to-noise per pixel (NaN if unknown)
=============  ==========================  =====================================================

plus, optionally, extra float32 scalar columns (nuisance labels such as ``VMICRO``, photometry).
P is fixed per dataset (7514 for the APOGEE grid). Consumers treat a pixel as bad when ``mask`` is
True OR ``flux`` is not finite.

The wavelength grid (vacuum Å, shape (P,)) and provenance travel with every split inside
``Dataset.info.description`` as JSON (it survives ``save_to_disk``, ``select``, ``filter``);
read it with :func:`get_wavelength` / :func:`get_metadata`.

Datasets are built by streaming batches through ``Dataset.from_generator`` (Arrow, written in
pieces), so peak memory does not grow with the number of spectra, and are written atomically: a
temporary folder is renamed into place only when every split is complete, so an interrupted build
never leaves a half-written dataset that looks valid.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

LABELS: tuple[str, ...] = ("TEFF", "LOGG", "FE_H", "MG_FE", "O_FE")
LABEL_UNITS: dict[str, str] = {"TEFF": "K", "LOGG": "dex (cgs)", "FE_H": "dex", "MG_FE": "dex", "O_FE": "dex"}
#: The paper's label order in its array release (``labels_*.npy``).
PAPER_LABEL_ORDER: tuple[str, ...] = ("TEFF", "LOGG", "O_FE", "MG_FE", "FE_H")

_METADATA_KEY = "spectrafm"


def spectra_features(n_pixels: int, extra_scalars: Iterable[str] = ()):
    """``datasets.Features`` of the schema for spectra of ``n_pixels`` pixels."""
    from datasets import Features, List, Value

    columns = {
        "id": Value("string"),
        "flux": List(Value("float32"), length=n_pixels),
        "flux_err": List(Value("float32"), length=n_pixels),
        "mask": List(Value("bool"), length=n_pixels),
    }
    for label in LABELS:
        columns[label] = Value("float32")
        columns[f"{label}_ERR"] = Value("float32")
    columns["snr"] = Value("float32")
    for name in extra_scalars:
        if name in columns:
            raise ValueError(f"extra scalar column {name!r} clashes with a schema column; rename it")
        columns[name] = Value("float32")
    return Features(columns)


def _encode_metadata(wavelength: np.ndarray, metadata: Mapping | None) -> str:
    payload = dict(metadata or {})
    payload["wavelength_vac_A"] = [float(x) for x in np.asarray(wavelength, dtype=np.float64)]
    return json.dumps({_METADATA_KEY: payload})


def get_metadata(dataset) -> dict:
    """The provenance dict stored with a dataset (or any split of a DatasetDict)."""
    if hasattr(dataset, "keys") and not hasattr(dataset, "info"):  # DatasetDict
        dataset = next(iter(dataset.values()))
    try:
        return json.loads(dataset.info.description)[_METADATA_KEY]
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(
            "this dataset carries no spectrafm metadata (wavelength grid); build it with "
            "spectrafm_hf.data loaders or spectrafm_hf.data.schema.write_dataset"
        ) from err


def get_wavelength(dataset) -> np.ndarray:
    """Vacuum wavelengths (Å) of the dataset's pixels, shape (P,), float64."""
    return np.asarray(get_metadata(dataset)["wavelength_vac_A"], dtype=np.float64)


BatchDict = Mapping[str, np.ndarray]


# Batch sources handed to ``Dataset.from_generator`` by key: datasets fingerprints ``gen_kwargs`` by
# pickling them, which fails for generators and is slow for closures holding large arrays.
_PENDING_SOURCES: dict[str, Callable[[], Iterable[BatchDict]]] = {}


# Rows yielded per pending source: an empty split makes ``from_generator`` raise, and the writer
# needs to know that the generator ran and was empty (not broken) to write a 0-row split instead.
_ROWS_YIELDED: dict[str, int] = {}


def _rows_from_batches(source_key: str, n_pixels: int, extra_scalars: tuple[str, ...]) -> Iterator[dict]:
    """Turn dict-of-arrays batches (leading axis = star) into schema rows, checking shapes."""
    _ROWS_YIELDED[source_key] = 0
    for batch in _PENDING_SOURCES[source_key]():
        flux = np.asarray(batch["flux"], dtype=np.float32)
        if flux.ndim != 2 or flux.shape[1] != n_pixels:
            raise ValueError(f"batch flux must have shape (B, {n_pixels}), got {flux.shape}")
        n = flux.shape[0]
        flux_err = np.asarray(batch.get("flux_err", np.full_like(flux, np.nan)), dtype=np.float32)
        mask = np.asarray(batch.get("mask", ~np.isfinite(flux)), dtype=bool) | ~np.isfinite(flux)
        ids = batch["id"]
        scalars = {}
        for name in (*LABELS, *(f"{l}_ERR" for l in LABELS), "snr", *extra_scalars):
            value = batch.get(name)
            scalars[name] = np.full(n, np.nan, np.float32) if value is None else np.asarray(value, np.float32)
        for i in range(n):
            row = {"id": str(ids[i]), "flux": flux[i], "flux_err": flux_err[i], "mask": mask[i]}
            for name, column in scalars.items():
                row[name] = column[i]
            _ROWS_YIELDED[source_key] += 1
            yield row


def write_dataset(
    out_dir: str | os.PathLike,
    split_batches: Mapping[str, Callable[[], Iterable[BatchDict]]],
    wavelength: np.ndarray,
    metadata: Mapping | None = None,
    extra_scalars: Iterable[str] = (),
    overwrite: bool = False,
):
    """Stream batches into a ``DatasetDict`` saved at ``out_dir`` and return it (memory-mapped).

    Args:
        out_dir: destination folder (``DatasetDict.save_to_disk`` layout).
        split_batches: split name → zero-argument callable returning an iterable of batches. A batch
            is a dict of arrays with leading axis B: ``id`` (B,), ``flux`` (B, P) and optionally
            ``flux_err``, ``mask``, label, ``<LABEL>_ERR``, ``snr`` and extra scalar columns.
            Callables (not iterators) so each split is generated lazily, once.
        wavelength: vacuum Å, shape (P,).
        metadata: JSON-able provenance (source, seed, universe, ...) stored with the grid.
        extra_scalars: names of extra float32 columns present in the batches.
        overwrite: replace an existing ``out_dir``; otherwise an existing folder is an error.
    """
    from datasets import Dataset, DatasetDict, DatasetInfo, load_from_disk
    from datasets.exceptions import DatasetGenerationError

    out_dir = Path(out_dir)
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if wavelength.ndim != 1:
        raise ValueError(f"wavelength must be 1-D (P,), got shape {wavelength.shape}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True or choose another --out")
    extra_scalars = tuple(extra_scalars)
    features = spectra_features(len(wavelength), extra_scalars)
    description = _encode_metadata(wavelength, metadata)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        splits = {}
        for name, make_batches in split_batches.items():
            key = f"{staging.name}/{name}"
            _PENDING_SOURCES[key] = make_batches
            try:
                splits[name] = Dataset.from_generator(
                    _rows_from_batches,
                    gen_kwargs={"source_key": key, "n_pixels": len(wavelength), "extra_scalars": extra_scalars},
                    features=features,
                    info=DatasetInfo(description=description),
                    cache_dir=str(staging / "cache" / name),  # one cache per split: no cross-split reuse
                    writer_batch_size=256,
                    split=name,
                )
            except DatasetGenerationError as err:
                # datasets wraps whatever the batch source raised; re-raise the original so callers
                # see the source's own ValueError (naming the file / the bad shape), not a wrapper.
                raise (err.__cause__ or err)
            except ValueError:
                if _ROWS_YIELDED.get(key) != 0:
                    raise
                # The source ran and yielded nothing (e.g. every file of a small split was bad):
                # keep the split, with 0 rows, so every dataset has the same split names.
                splits[name] = Dataset.from_dict(
                    {column: [] for column in features}, features=features,
                    info=DatasetInfo(description=description, features=features), split=name,
                )
            finally:
                _PENDING_SOURCES.pop(key, None)
                _ROWS_YIELDED.pop(key, None)
        # An empty split would otherwise be saved with 0 shards, which load_from_disk cannot read back.
        empty_shards = {name: 1 for name, split in splits.items() if len(split) == 0}
        DatasetDict(splits).save_to_disk(
            str(staging / "final"), num_shards=empty_shards or None
        )
        del splits
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging / "final", out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_from_disk(str(out_dir))


def dataset_in_memory(
    split_batches: Mapping[str, Callable[[], Iterable[BatchDict]]],
    wavelength: np.ndarray,
    metadata: Mapping | None = None,
    extra_scalars: Iterable[str] = (),
):
    """Like :func:`write_dataset` but kept in memory (no folder): for small inputs such as one table.

    Rows go through the same checks and the same features as :func:`write_dataset`; memory grows
    with the number of spectra, so large sources should use :func:`write_dataset`.
    """
    from datasets import Dataset, DatasetDict, DatasetInfo

    wavelength = np.asarray(wavelength, dtype=np.float64)
    if wavelength.ndim != 1:
        raise ValueError(f"wavelength must be 1-D (P,), got shape {wavelength.shape}")
    extra_scalars = tuple(extra_scalars)
    features = spectra_features(len(wavelength), extra_scalars)
    info = DatasetInfo(description=_encode_metadata(wavelength, metadata), features=features)
    splits = {}
    for name, make_batches in split_batches.items():
        key = f"in-memory-{id(make_batches)}/{name}"
        _PENDING_SOURCES[key] = make_batches
        try:
            rows = list(_rows_from_batches(key, len(wavelength), extra_scalars))
        finally:
            _PENDING_SOURCES.pop(key, None)
            _ROWS_YIELDED.pop(key, None)
        columns = {column: [row[column] for row in rows] for column in features}
        splits[name] = Dataset.from_dict(columns, features=features, info=info, split=name)
    return DatasetDict(splits)


def split_indices(n: int, fractions: Mapping[str, float], seed: int) -> dict[str, np.ndarray]:
    """Reproducible random split of ``range(n)`` into named parts with the given fractions.

    The last split takes the rounding remainder. Indices inside each split are sorted.
    """
    total = sum(fractions.values())
    if not np.isclose(total, 1.0):
        raise ValueError(f"split fractions must sum to 1, got {dict(fractions)} (sum {total})")
    order = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    names = list(fractions)
    for i, name in enumerate(names):
        stop = n if i == len(names) - 1 else start + int(round(fractions[name] * n))
        out[name] = np.sort(order[start:stop])
        start = stop
    return out
