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
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from ..output_guard import check_output_folder, staged_folder

# The label vocabulary is owned by .labels; the schema's label columns are built from it (and the
# names stay importable from here, where most data code looks for them).
from .labels import LABEL_COLUMNS, LABEL_UNITS, LABELS, PAPER_LABEL_ORDER, error_column  # noqa: F401

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
        columns[error_column(label)] = Value("float32")
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


def _normalise_batch(batch: BatchDict, n_pixels: int, extra_scalars: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Check one dict-of-arrays batch (leading axis = star) and return every schema column as numpy.

    Missing optional columns become NaN (labels, errors, snr) or are derived (``mask`` from
    non-finite flux). A pixel whose flux is not finite is always masked.
    """
    if "flux" not in batch or "id" not in batch:
        raise ValueError(f"a batch needs at least 'id' and 'flux'; got keys {sorted(batch)}")
    flux = np.asarray(batch["flux"], dtype=np.float32)
    if flux.ndim != 2 or flux.shape[1] != n_pixels:
        raise ValueError(f"batch flux must have shape (B, {n_pixels}), got {flux.shape}")
    n = flux.shape[0]
    flux_err = batch.get("flux_err")
    flux_err = np.full_like(flux, np.nan) if flux_err is None else np.asarray(flux_err, dtype=np.float32)
    mask = batch.get("mask")
    mask = np.zeros(flux.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    if flux_err.shape != flux.shape or mask.shape != flux.shape:
        raise ValueError(
            f"flux_err {flux_err.shape} and mask {mask.shape} must have the shape of flux {flux.shape}"
        )
    ids = np.asarray(batch["id"]).astype(str)
    if ids.shape != (n,):
        raise ValueError(f"batch 'id' must have shape ({n},), got {ids.shape}")
    columns = {"id": ids, "flux": flux, "flux_err": flux_err, "mask": mask | ~np.isfinite(flux)}
    for name in (*LABEL_COLUMNS, *extra_scalars):
        value = batch.get(name)
        value = np.full(n, np.nan, np.float32) if value is None else np.asarray(value, np.float32)
        if value.shape != (n,):
            raise ValueError(f"batch column {name!r} must have shape ({n},), got {value.shape}")
        columns[name] = value
    return columns


def _arrow_table(columns: dict[str, np.ndarray], n_pixels: int):
    """Schema columns (numpy) → a pyarrow Table, without a Python loop over rows or pixels."""
    import pyarrow as pa

    arrays = {}
    for name, value in columns.items():
        if name == "id":
            arrays[name] = pa.array(value.tolist(), type=pa.string())
        elif value.ndim == 2:  # (B, P) → fixed-size lists over one flat buffer
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(value.reshape(-1)), n_pixels)
        else:
            arrays[name] = pa.array(value)
    return pa.table(arrays)


def _write_split(split_dir: Path, name: str, batches: Iterable[BatchDict], features, description: str,
                 extra_scalars: tuple[str, ...]) -> int:
    """Write one split in the ``Dataset.save_to_disk`` layout, one batch at a time; return its rows."""
    import uuid

    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.arrow_writer import ArrowWriter

    split_dir.mkdir(parents=True)
    shard = "data-00000-of-00001.arrow"
    n_pixels = features["flux"].length
    writer = ArrowWriter(features=features, path=str(split_dir / shard))
    try:
        for batch in batches:
            writer.write_table(_arrow_table(_normalise_batch(batch, n_pixels, extra_scalars), n_pixels))
    finally:
        n_rows, n_bytes = writer.finalize()
    info = DatasetInfo(description=description, features=features,
                       splits=SplitDict())
    info.splits.add(SplitInfo(name=name, num_bytes=n_bytes, num_examples=n_rows))
    info.write_to_directory(str(split_dir))
    state = {
        "_data_files": [{"filename": shard}],
        "_fingerprint": uuid.uuid4().hex[:16],
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": name,
    }
    (split_dir / "state.json").write_text(json.dumps(state, indent=2))
    return n_rows


def write_dataset(
    out_dir: str | os.PathLike,
    split_batches: Mapping[str, Callable[[], Iterable[BatchDict]]],
    wavelength: np.ndarray,
    metadata: Mapping | None = None,
    extra_scalars: Iterable[str] = (),
    overwrite: bool = False,
):
    """Stream batches into a ``DatasetDict`` saved at ``out_dir`` and return it (memory-mapped).

    Each batch is converted column-wise to Arrow and appended to the split's shard, so peak memory is
    one batch whatever the number of spectra, and nothing is written twice. The result is the
    ``DatasetDict.save_to_disk`` layout, read back with ``datasets.load_from_disk``.

    Args:
        out_dir: destination folder.
        split_batches: split name → zero-argument callable returning an iterable of batches. A batch
            is a dict of arrays with leading axis B: ``id`` (B,), ``flux`` (B, P) and optionally
            ``flux_err``, ``mask``, label, ``<LABEL>_ERR``, ``snr`` and extra scalar columns.
            Callables (not iterators) so each split is generated lazily, once. An exception raised
            by a source propagates unchanged and leaves no ``out_dir`` behind.
        wavelength: vacuum Å, shape (P,).
        metadata: JSON-able provenance (source, seed, universe, ...) stored with the grid.
        extra_scalars: names of extra float32 columns present in the batches.
        overwrite: replace an existing ``out_dir`` that this package wrote (a non-empty folder it did not
            write is never replaced, see :mod:`spectrafm_hf.output_guard`); without it a non-empty
            folder is an error.
    """
    from datasets import load_from_disk

    out_dir = Path(out_dir)
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if wavelength.ndim != 1:
        raise ValueError(f"wavelength must be 1-D (P,), got shape {wavelength.shape}")
    check_output_folder(out_dir, overwrite=overwrite)
    extra_scalars = tuple(extra_scalars)
    features = spectra_features(len(wavelength), extra_scalars)
    description = _encode_metadata(wavelength, metadata)

    # Built in a hidden staging sibling and moved into place only when complete: an interrupted or
    # failed build never leaves a folder that looks like a valid dataset (and a killed one's staging
    # folder is removed by the next build).
    with staged_folder(out_dir, kind="dataset") as final:
        for name, make_batches in split_batches.items():
            _write_split(final / name, name, make_batches(), features, description, extra_scalars)
        (final / "dataset_dict.json").write_text(json.dumps({"splits": list(split_batches)}))
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
        tables = [_arrow_table(_normalise_batch(b, len(wavelength), extra_scalars), len(wavelength))
                  for b in make_batches()]
        if tables:
            import pyarrow as pa
            from datasets.table import table_cast

            table = table_cast(pa.concat_tables(tables), features.arrow_schema)
            splits[name] = Dataset(table, info=info.copy(), split=name)
        else:
            splits[name] = Dataset.from_dict({c: [] for c in features}, features=features, info=info.copy(), split=name)
    return DatasetDict(splits)


def split_indices(n: int, fractions: Mapping[str, float], seed: int) -> dict[str, np.ndarray]:
    """Reproducible random split of ``range(n)`` into named parts with the given fractions.

    The parts are cut from one seeded permutation in sorted-name order, so the assignment depends
    on the names, fractions and seed only, never on the order of the mapping (a YAML file listing
    ``test`` before ``train`` gives the same split). The last name in sorted order takes the rounding
    remainder. Indices inside each split are sorted; the result follows the caller's order.
    """
    total = sum(fractions.values())
    if not np.isclose(total, 1.0):
        raise ValueError(f"split fractions must sum to 1, got {dict(fractions)} (sum {total})")
    order = np.random.default_rng(seed).permutation(n)
    cut, start = {}, 0
    names = sorted(fractions)
    for i, name in enumerate(names):
        stop = n if i == len(names) - 1 else start + int(round(fractions[name] * n))
        cut[name] = np.sort(order[start:stop])
        start = stop
    return {name: cut[name] for name in fractions}
