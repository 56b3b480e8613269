"""Read spectra from files into plain arrays for prediction (``spectrafm predict --input FILE``).

:func:`read_spectra` picks the reader by file type: tables (npz, Parquet, FITS table) are read by
:mod:`.tables`, APOGEE files and dataset folders here (``save_to_disk`` folders, and Hub-layout folders:
``README.md`` + ``wavelength.json`` + ``data/<split>-*.parquet``, see :func:`hub_folder_shards`). Every reader returns a
:class:`~spectrafm_hf.data.spectra_input.SpectraInput`; validation of the values themselves (units, ranks,
masks) is done once, by the feature extractor, where the arrays enter the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .csv_spectra import is_csv, read_csv_spectra
from .labels import LABEL_COLUMNS
from .spectra_input import SpectraInput
from .tables import read_fits_table, read_npz, read_parquet, split_reference


def read_dataset_folder(path: str | Path, split: str | None = None) -> SpectraInput:
    """A dataset folder saved by this project (``save_to_disk``) → SpectraInput.

    Args:
        split: which split of a ``DatasetDict``; None = every split, concatenated in stored order.

    Labels, their errors, ``snr`` and ``TRUE_*`` truths go to ``reference``; other scalar columns to
    ``scalars``.
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
    columns: dict[str, list] = {}
    for part in parts:
        if not np.array_equal(get_wavelength(part), wavelength):
            raise ValueError(f"{path}: splits have different wavelength grids")
        table = part.with_format("numpy")[:]
        for name, values in table.items():
            columns.setdefault(name, []).append(np.asarray(values))
    joined = {name: np.concatenate(values) for name, values in columns.items()}
    scalars, reference = split_reference({k: v for k, v in joined.items()
                                          if k not in ("id", "flux", "flux_err", "mask")})
    return SpectraInput(
        wavelength=wavelength,
        flux=joined["flux"].astype(np.float32),
        flux_err=joined["flux_err"].astype(np.float32),
        mask=joined["mask"].astype(bool),
        scalars=scalars,
        ids=joined["id"].astype(str),
        reference=reference,
    )


def _shard_split(shard: Path) -> str:
    """The split a Hub-layout shard belongs to: ``train`` for ``train-00000-of-00002.parquet``."""
    return shard.name.split("-")[0].split(".")[0]


def _card_split_order(folder: Path) -> list[str]:
    """Split names in the order the dataset card's ``configs`` lists them (what ``load_dataset`` uses);
    empty when the folder has no readable card."""
    import yaml

    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
        header = yaml.safe_load(text.split("---")[1]) if text.startswith("---") else None
        files = header["configs"][0]["data_files"]
        return [str(entry["split"]) for entry in files if isinstance(entry, dict) and "split" in entry]
    except (OSError, IndexError, KeyError, TypeError, yaml.YAMLError):
        return []


def hub_folder_shards(folder: str | Path, split: str | None = None) -> list[Path]:
    """The Parquet shards of a Hub-layout dataset folder (``data/<split>-*.parquet``) in reading order.

    Args:
        split: one split; None = every split, in the dataset card's order (``configs``; else
            train, validation, test, then the others by name). A split's shards are read by name
            (``-00000-of-0000N``, ``-00001-of-0000N`` ...), the order ``export_hub_dataset`` wrote the rows in.
    Raises:
        ValueError: no shard, or no shard of ``split`` (naming the splits there are).
    """
    folder = Path(folder)
    by_split: dict[str, list[Path]] = {}
    for shard in sorted((folder / "data").glob("*.parquet")):
        by_split.setdefault(_shard_split(shard), []).append(shard)
    if not by_split:
        raise ValueError(f"{folder}: no data/*.parquet shards; export a dataset with "
                         "spectrafm_hf.data.hub_layout.export_hub_dataset")
    if split is not None:
        if split not in by_split:
            raise ValueError(f"{folder}: no split {split!r}; it has {sorted(by_split)}")
        return by_split[split]
    first = [name for name in (*_card_split_order(folder), "train", "validation", "test") if name in by_split]
    order = list(dict.fromkeys([*first, *sorted(by_split)]))
    return [shard for name in order for shard in by_split[name]]


def hub_folder_grid(folder: str | Path) -> np.ndarray | None:
    """The grid (P,) of a Hub-layout folder (``wavelength.json``, else its first shard's schema
    metadata), or None when it has none (each shard must then carry a ``wavelength`` column)."""
    from .schema import metadata_from_files

    try:
        return np.asarray(metadata_from_files(folder)["wavelength_vac_A"], dtype=np.float64)
    except ValueError:
        return None


def join_spectra(parts: list[SpectraInput], where: Path) -> SpectraInput:
    """Several :class:`SpectraInput` (blocks of one input, in order) → one. A missing ``flux_err`` /
    ``mask`` of one part becomes NaN (unknown) / False; scalars and reference values are those every
    part has. Grids: one (P,) when every part shares it, else (N, P)."""
    if len(parts) == 1:
        return parts[0]
    grids = [np.asarray(part.wavelength) for part in parts]
    if all(grid.ndim == 1 and np.array_equal(grid, grids[0]) for grid in grids):
        wavelength = grids[0]
    else:
        if len({grid.shape[-1] for grid in grids}) > 1:
            raise ValueError(f"{where}: its files hold spectra of different lengths; read one split or file at a time")
        wavelength = np.concatenate([np.broadcast_to(grid, np.shape(part.flux)) for grid, part in zip(grids, parts)])

    def joined(name: str, fill) -> np.ndarray | None:
        values = [getattr(part, name) for part in parts]
        if all(v is None for v in values):
            return None
        return np.concatenate([np.full(np.shape(part.flux), fill) if v is None else np.asarray(v)
                               for v, part in zip(values, parts)])

    def common(name: str) -> dict[str, np.ndarray]:
        keys = [key for key in getattr(parts[0], name) if all(key in getattr(part, name) for part in parts)]
        return {key: np.concatenate([getattr(part, name)[key] for part in parts]) for key in keys}

    return SpectraInput(wavelength=wavelength, flux=np.concatenate([part.flux for part in parts]),
                        flux_err=joined("flux_err", np.nan), mask=joined("mask", False), scalars=common("scalars"),
                        ids=np.concatenate([np.asarray(part.ids).astype(str) for part in parts]),
                        reference=common("reference"), skipped=[line for part in parts for line in part.skipped])


def read_hub_folder(path: str | Path, split: str | None = None) -> SpectraInput:
    """A Hub-layout dataset folder (``export_hub_dataset``) → SpectraInput: the shards of ``split``
    (None = every split, :func:`hub_folder_shards`), read whole and joined; the grid from
    ``wavelength.json`` or the shards' schema metadata. Labels, ``_ERR``, ``snr`` and ``TRUE_*`` go to
    ``reference`` (as for a ``save_to_disk`` folder)."""
    path = Path(path)
    grid = hub_folder_grid(path)
    parts = []
    for shard in hub_folder_shards(path, split):
        part = read_parquet(shard, wavelength=grid)
        if part.ids is None:
            stem = shard.name.split(".")[0]
            part.ids = np.array([f"{stem}-{i}" for i in range(len(part))])
        parts.append(part)
    return join_spectra(parts, path)


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


#: File names read as FITS (a table, or an aspcapStar / apStar file).
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")


def apogee_kind(path: Path) -> str | None:
    """``aspcap-observed`` / ``apstar`` for an APOGEE spectrum file (by its name, else by its HDU
    layout), None for any other file (a FITS table, or a file that cannot be read here)."""
    if path.name.startswith("aspcapStar"):
        return "aspcap-observed"
    if path.name.startswith("apStar"):
        return "apstar"
    return _looks_like_apogee_image(path)


def read_spectra(path: str | Path, split: str | None = None) -> SpectraInput:
    """Read any supported spectra input (``spectrafm predict --input``).

    Supported: ``.npz``; ``.parquet``; ``.csv`` / ``.csv.gz`` (:mod:`.csv_spectra`); a FITS binary
    table with wavelength/flux columns; an aspcapStar or apStar file (``.fits`` or ``.fits.gz``; apStar
    is continuum-normalised); a dataset folder saved by this project, ``save_to_disk`` or Hub layout
    (``split`` picks one split; default all).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file {path} does not exist")
    if path.is_dir():
        from .hub_layout import dataset_folder_layout

        if dataset_folder_layout(path) == "parquet":
            return read_hub_folder(path, split)
        return read_dataset_folder(path, split)
    name = path.name.lower()
    if path.suffix == ".npz":
        return read_npz(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return read_parquet(path)
    if is_csv(path):
        return read_csv_spectra(path)
    if name.endswith(FITS_SUFFIXES):
        kind = apogee_kind(path)
        return read_fits_table(path) if kind is None else read_apogee_spectrum(path, kind)
    raise ValueError(
        f"{path}: unsupported input format {path.suffix!r}; supported: .npz, .parquet, .csv, FITS table, "
        "aspcapStar/apStar .fits, or a dataset folder"
    )
