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

The wavelength grid (vacuum Å, shape (P,)) and provenance travel with the data in every format the
package writes, as the same JSON payload ``{"spectrafm": {..., "wavelength_vac_A": [...]}}``:

* Arrow (``save_to_disk`` layout): in each split's ``Dataset.info.description`` (it survives
  ``save_to_disk``, ``select``, ``filter``), plus ``wavelength.json`` at the top of the folder;
* Parquet written by :func:`spectrafm_hf.data.hub_layout.write_parquet`: in the file's Arrow schema
  key-value metadata under the key ``spectrafm`` (:data:`PARQUET_METADATA_KEY`);
* a Hub dataset repo (:func:`spectrafm_hf.data.hub_layout.export_hub_dataset`): in every Parquet shard
  and in ``wavelength.json`` beside the card.

``datasets`` itself drops it in two places (datasets 5.2): ``Dataset.to_parquet`` writes only the
features into the Parquet schema, and ``load_dataset`` (Parquet files, a folder, a Hub repo) keeps no
schema metadata and no description. A dataset loaded that way is asked for its grid with
``get_wavelength(dataset, source=...)``, ``source`` being the files it came from; see
:func:`metadata_from_files`.

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
#: Key of the grid + provenance JSON in a Parquet file's Arrow schema key-value metadata.
PARQUET_METADATA_KEY = b"spectrafm"
#: The grid + provenance file beside the data of a dataset folder (Arrow or Hub layout).
WAVELENGTH_FILE = "wavelength.json"


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


def metadata_payload(wavelength: np.ndarray, metadata: Mapping | None) -> dict:
    """Provenance ``metadata`` plus the grid as ``wavelength_vac_A`` (a list of float64, exact in JSON)."""
    payload = dict(metadata or {})
    payload["wavelength_vac_A"] = [float(x) for x in np.asarray(wavelength, dtype=np.float64)]
    return payload


def _encode_metadata(wavelength: np.ndarray, metadata: Mapping | None) -> str:
    return encode_payload(metadata_payload(wavelength, metadata))


def encode_payload(payload: Mapping) -> str:
    """The JSON text stored in ``info.description`` and in ``wavelength.json``: ``{"spectrafm": payload}``."""
    return json.dumps({_METADATA_KEY: dict(payload)})


def get_metadata(dataset, source: str | os.PathLike | None = None) -> dict:
    """The provenance dict (with ``wavelength_vac_A``) stored with a dataset (or any split of a DatasetDict).

    Args:
        dataset: a ``Dataset`` or ``DatasetDict`` built by this package (grid in ``info.description``).
        source: where the dataset was loaded from, for datasets that lost the description on the way
            (``load_dataset`` on Parquet files, a Hub-layout folder): a Parquet file, a list of them, a
            ``wavelength.json`` or a dataset folder (see :func:`metadata_from_files`). Used only when the
            dataset itself carries no grid.
    """
    if hasattr(dataset, "keys") and not hasattr(dataset, "info"):  # DatasetDict
        dataset = next(iter(dataset.values()))
    try:
        return _decode_metadata(dataset.info.description)
    except ValueError:
        if source is not None:
            return metadata_from_files(source)
        raise ValueError(
            "this dataset carries no spectrafm metadata (wavelength grid): datasets.load_dataset and "
            "Dataset.to_parquet drop it. Pass the files it came from, get_wavelength(ds, source=PATH) (a "
            "Parquet file written by spectrafm_hf.data.hub_layout.write_parquet, wavelength.json or the "
            "dataset folder), or load it with spectrafm_hf.data.hub_layout.load_spectra_dataset"
        ) from None


def get_wavelength(dataset, source: str | os.PathLike | None = None) -> np.ndarray:
    """Vacuum wavelengths (Å) of the dataset's pixels, shape (P,), float64 (``source``: see :func:`get_metadata`)."""
    return np.asarray(get_metadata(dataset, source)["wavelength_vac_A"], dtype=np.float64)


def _decode_metadata(text) -> dict:
    """The payload of a ``{"spectrafm": {...}}`` JSON text; ValueError when it is not one."""
    try:
        payload = json.loads(text)[_METADATA_KEY]
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError("no spectrafm metadata") from err
    return _checked_payload(payload)


def _checked_payload(payload) -> dict:
    """``payload`` if it is a grid + provenance dict (has ``wavelength_vac_A``), else ValueError."""
    if not isinstance(payload, dict) or not isinstance(payload.get("wavelength_vac_A"), list):
        raise ValueError("no spectrafm metadata")
    return payload


def parquet_metadata(path: str | os.PathLike) -> dict | None:
    """The grid + provenance in a Parquet file's schema metadata, or None when it has none.

    Reads only the file footer (cheap for any file size). ``spectrafm predict`` uses it for a Parquet
    file without a ``wavelength`` column.
    """
    import pyarrow.parquet as pq

    try:
        stored = (pq.read_schema(path).metadata or {}).get(PARQUET_METADATA_KEY)
    except Exception as err:  # pyarrow raises its own ArrowInvalid / OSError types
        raise ValueError(f"{path}: cannot read as Parquet ({err})") from err
    if stored is None:
        return None
    try:
        return _checked_payload(json.loads(stored))
    except ValueError:
        raise ValueError(f"{path}: its '{PARQUET_METADATA_KEY.decode()}' schema metadata is not a spectrafm "
                         "grid; rewrite the file with spectrafm_hf.data.hub_layout.write_parquet") from None


def metadata_from_files(source) -> dict:
    """The grid + provenance of a dataset from its files, without loading the data.

    ``source`` is one of: a Parquet file (schema metadata); a list of Parquet files (all must carry the
    same grid); a ``wavelength.json``; a dataset folder: its ``wavelength.json``, else the description
    of a ``save_to_disk`` split, else its first Parquet shard (``data/*.parquet``).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: it holds no spectrafm grid (the message says how to write one that does).
    """
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("no files given to read the wavelength grid from")
        found = [metadata_from_files(path) for path in source]
        if any(other["wavelength_vac_A"] != found[0]["wavelength_vac_A"] for other in found[1:]):
            raise ValueError(f"the files {[str(p) for p in source]} carry different wavelength grids; "
                             "load each grid's files separately")
        return found[0]
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (looked for the dataset's wavelength grid there)")
    if path.is_dir():
        return _folder_metadata(path)
    if path.suffix.lower() == ".json":
        try:
            return _decode_metadata(path.read_text(encoding="utf-8"))
        except ValueError:
            raise ValueError(f"{path} is not a spectrafm {WAVELENGTH_FILE} (no 'spectrafm' grid)") from None
    found = parquet_metadata(path)
    if found is None:
        raise ValueError(f"{path} carries no wavelength grid in its Parquet metadata (Dataset.to_parquet drops "
                         "it); write it with spectrafm_hf.data.hub_layout.write_parquet, or add a 'wavelength' "
                         "column")
    return found


def _folder_metadata(folder: Path) -> dict:
    """A dataset folder's grid: wavelength.json, a save_to_disk split's description, or a Parquet shard."""
    if (folder / WAVELENGTH_FILE).is_file():
        return metadata_from_files(folder / WAVELENGTH_FILE)
    for info in sorted(folder.glob("dataset_info.json")) + sorted(folder.glob("*/dataset_info.json")):
        try:
            return _decode_metadata(json.loads(info.read_text(encoding="utf-8")).get("description"))
        except (ValueError, AttributeError):
            continue
    shards = sorted(folder.glob("*.parquet")) + sorted(folder.glob("data/**/*.parquet"))
    if shards:
        return metadata_from_files(shards[0])
    raise ValueError(f"{folder} holds no wavelength grid ({WAVELENGTH_FILE}, a save_to_disk split of this "
                     "package, or Parquet shards with spectrafm metadata); export it with "
                     "spectrafm_hf.data.hub_layout.export_hub_dataset")


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
                 extra_scalars: tuple[str, ...]) -> tuple[int, int]:
    """Write one split in the ``Dataset.save_to_disk`` layout, one batch at a time; return (rows, bytes)."""
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
    return n_rows, n_bytes


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
    ``DatasetDict.save_to_disk`` layout, read back with ``datasets.load_from_disk``, plus
    ``wavelength.json`` (the grid and provenance) and ``README.md``, the dataset card
    (:mod:`spectrafm_hf.data.dataset_card`), whose ``configs`` also let ``datasets.load_dataset(out_dir)``
    read the Arrow shards.

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
        sizes = {name: _write_split(final / name, name, make_batches(), features, description, extra_scalars)
                 for name, make_batches in split_batches.items()}
        (final / "dataset_dict.json").write_text(json.dumps({"splits": list(split_batches)}))
        (final / WAVELENGTH_FILE).write_text(description)
        write_dataset_card(final, _decode_metadata(description), features, sizes, layout="arrow", location=out_dir)
    return load_from_disk(str(out_dir))


def write_dataset_card(folder: Path, payload: Mapping, features, sizes: Mapping[str, tuple[int, int]],
                       layout: str, repo_id: str | None = None, location: str | os.PathLike | None = None) -> Path:
    """Write ``folder/README.md``, the dataset card (see :mod:`spectrafm_hf.data.dataset_card`).

    ``sizes``: split → (rows, bytes); ``layout``: ``"arrow"`` (``<split>/data-*.arrow``, this writer's) or
    ``"parquet"`` (``data/<split>-*.parquet``, the Hub layout); ``repo_id`` / ``location``: the Hub id or
    the local folder the card's usage code names (``folder`` may be a staging folder).
    """
    from .dataset_card import render_dataset_card

    card = render_dataset_card(payload, features, sizes, layout=layout, wavelength_file=WAVELENGTH_FILE,
                               repo_id=repo_id, location=None if location is None else str(location))
    path = Path(folder) / "README.md"
    card.save(path)
    return path


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
