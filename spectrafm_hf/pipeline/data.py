"""Step 1, data: simulate (or load from the cache) every dataset and cut the arrays each role needs.

Datasets (cached under ``data.cache_dir``, keyed by universe, prior, size and data seed, so several
runs share them):

* synthetic: ``data.synthetic.n`` spectra, "wide" prior (more metal-poor stars than APOGEE), split
  train / validation.
* observed: ``data.observed.n`` spectra, APOGEE-like prior, split train / validation / test. Stage 2
  trains on train; stage 3 draws its ``n_stars`` stars from the iron-rich ([Fe/H] > −1) part of train
  with the run seed; stage-3 and baseline selection use the iron-rich part of validation.
* test set: the observed test split (realistic [Fe/H] distribution, ~2.5 % below −1) PLUS an iron-poor
  supplement of ``data.test.n_iron_poor`` observed stars drawn from the same APOGEE prior restricted to
  [Fe/H] < −1, so that the iron-poor bins hold enough stars. Per-bin metrics do not depend on this
  mix; the "all" bin does, and is reported for the mixed set.

A role whose config names a ``path`` (``data.synthetic.path``, ``data.observed.path``) reads that dataset
instead of simulating (:func:`dataset_at_path`): a dataset folder or a table of spectra on the
7514-pixel APOGEE grid, its splits used as they are or, when it has one split, divided by the
configured fractions with ``data.seed``. Nothing is cached for it: it is already on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..data.arrays import WindowData, concatenate, cut_window, subset, window_data
from ..data.grid import APOGEE_NPIX, FE_WINDOW
from .config import SYNTHETIC_SPLITS, PipelineConfig

#: [Fe/H] (dex) separating the iron-rich stars stage 3 may see from the iron-poor ones it is tested on.
FEH_RICH_MIN = -1.0

#: Every pixel of the 7514-pixel APOGEE grid (the other windows: ``grid.FIRST_HALF``, ``grid.FE_WINDOW``).
ALL_PIXELS = slice(0, APOGEE_NPIX)


@dataclass
class PipelineData:
    """Every array the pipeline trains and evaluates on, by role.

    Attributes:
        synthetic_train, synthetic_val: synthetic spectra, all 7514 pixels (stage 1).
        observed_train, observed_val: observed spectra, all pixels (stage 2 after a cut to the first half).
        test: the observed test split then the iron-poor supplement, all pixels.
        n_observed_test: how many of ``test``'s stars come from the observed test split.
        stage3_train: the stage-3 draw of iron-rich training stars, Fe window (4107–4618).
        stage3_val: iron-rich validation stars (stage-3 and baseline selection), Fe window.
        test_fe: ``test`` in the Fe window.
    """

    synthetic_train: WindowData
    synthetic_val: WindowData
    observed_train: WindowData
    observed_val: WindowData
    test: WindowData
    n_observed_test: int
    stage3_train: WindowData
    stage3_val: WindowData
    test_fe: WindowData

    @property
    def true_feh(self) -> np.ndarray:
        """(N_test,) true [Fe/H] of the test stars, dex."""
        return self.test.labels["FE_H"]


def process_state():
    """Accelerate's state of this process (its rank and device under ``accelerate launch``). ``cpu=``
    comes from the launcher's env: a CPU-only state created here would ignore the process group."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def load_data(config: PipelineConfig, out: Path) -> PipelineData:
    """Simulate or load the datasets, then cut them into the arrays of :class:`PipelineData`."""
    # Under accelerate launch: simulate once, the other processes load the cache.
    with process_state().main_process_first():
        datasets = prepare_datasets(config, out)
    synthetic_train = window_data(datasets["synthetic"]["train"], ALL_PIXELS)
    synthetic_val = window_data(datasets["synthetic"]["validation"], ALL_PIXELS)
    observed_train = window_data(datasets["observed"]["train"], ALL_PIXELS)
    observed_val = window_data(datasets["observed"]["validation"], ALL_PIXELS)
    test = window_data(datasets["observed"]["test"], ALL_PIXELS)
    if "iron_poor" in datasets:
        test = concatenate(test, window_data(datasets["iron_poor"]["test"], ALL_PIXELS))
    draw = stage3_draw(observed_train.labels["FE_H"], config.stage3.n_stars, config.seed)
    rich_val = np.flatnonzero(observed_val.labels["FE_H"] > FEH_RICH_MIN)[: config.stage3.n_validation]
    return PipelineData(
        synthetic_train=synthetic_train,
        synthetic_val=synthetic_val,
        observed_train=observed_train,
        observed_val=observed_val,
        test=test,
        n_observed_test=len(datasets["observed"]["test"]),
        stage3_train=cut_window(subset(observed_train, draw), FE_WINDOW),
        stage3_val=cut_window(subset(observed_val, rich_val), FE_WINDOW),
        test_fe=cut_window(test, FE_WINDOW),
    )


def first_rows(data: WindowData, n: int) -> WindowData:
    """The first ``n`` stars of ``data`` (all of them if it has fewer)."""
    return subset(data, np.arange(min(len(data), n)))


def stage3_draw(feh: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` stars with finite [Fe/H] > −1, drawn with ``seed`` (sorted)."""
    candidates = np.flatnonzero(np.isfinite(feh) & (feh > FEH_RICH_MIN))
    if len(candidates) < n:
        raise ValueError(
            f"only {len(candidates)} iron-rich ([Fe/H] > −1) observed training stars for a {n}-star stage 3; "
            "raise data.observed.n"
        )
    return np.sort(np.random.default_rng([seed, 3]).choice(candidates, size=n, replace=False))


# ----------------------------------------------------------------------------------------------
# Simulated datasets, cached
# ----------------------------------------------------------------------------------------------


def prepare_datasets(config: PipelineConfig, out: Path) -> dict:
    """Simulate or load every dataset the pipeline needs; the DatasetDicts by role
    ("synthetic", "observed" and, with ``data.test.n_iron_poor``, "iron_poor")."""
    data = config.data
    cache_dir = Path(data.cache_dir) if data.cache_dir is not None else out / "data"
    # datasets named by path first: a bad path fails before minutes of simulation
    if data.observed.path is not None:
        observed = dataset_at_path(data.observed.path, "data.observed.path", data.observed.splits, data.seed + 1)
    if data.synthetic.path is not None:
        synthetic = dataset_at_path(data.synthetic.path, "data.synthetic.path", SYNTHETIC_SPLITS, data.seed)
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        synthetic = _cached_dataset(cache_dir, "synthetic", data.synthetic.n, data.seed, data.synthetic.prior,
                                    SYNTHETIC_SPLITS)
    if data.observed.path is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        observed = _cached_dataset(cache_dir, "observed", data.observed.n, data.seed + 1, data.observed.prior,
                                   data.observed.splits)
    result = {"synthetic": synthetic, "observed": observed}
    if data.test.n_iron_poor:
        result["iron_poor"] = _cached_dataset(cache_dir, "observed", data.test.n_iron_poor, data.seed + 2,
                                              data.observed.prior, {"test": 1.0}, feh_below=FEH_RICH_MIN)
    return result


def dataset_at_path(path: str | Path, option: str, splits: Mapping[str, float], seed: int):
    """A dataset read from disk as a DatasetDict holding the ``splits`` names, on the APOGEE grid.

    ``path``: a dataset folder (``save_to_disk`` layout: ``spectrafm build-apogee`` / ``simulate`` output)
    or a table of spectra (Parquet, FITS table, npz; :func:`spectrafm_hf.data.tables.load_table`). A
    DatasetDict with every name of ``splits`` is used as it is; one split (or a table) is divided by
    the fractions of ``splits`` (``schema.split_indices`` with ``seed``). ``option`` names the setting
    in error messages.
    """
    from datasets import Dataset, DatasetDict, load_from_disk

    from ..data.schema import split_indices
    from ..data.tables import load_table

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{option}: {path} does not exist; give a dataset folder (spectrafm build-apogee "
                                "--out) or a table of spectra (.parquet, FITS table, .npz)")
    loaded = load_from_disk(str(path)) if path.is_dir() else load_table(path)
    if isinstance(loaded, DatasetDict) and set(splits) <= set(loaded):
        chosen = DatasetDict({name: loaded[name] for name in splits})
    else:
        if isinstance(loaded, DatasetDict) and len(loaded) != 1:
            raise ValueError(f"{option}: {path} has splits {sorted(loaded)}, not {sorted(splits)}; give a dataset "
                             "with those splits or with a single split to divide")
        stars = loaded if isinstance(loaded, Dataset) else next(iter(loaded.values()))
        parts = split_indices(len(stars), dict(splits), seed)
        chosen = DatasetDict({name: stars.select(index) for name, index in parts.items()})
    _check_apogee_grid(chosen, path, option)
    return chosen


def _check_apogee_grid(datasets, path: Path, option: str) -> None:
    """The pipeline's windows are pixel ranges of the 7514-pixel APOGEE grid: refuse any other grid."""
    from ..data.grid import apogee_wavelength
    from ..data.schema import get_wavelength

    wavelength = get_wavelength(next(iter(datasets.values())))
    if len(wavelength) != APOGEE_NPIX or not np.allclose(wavelength, apogee_wavelength(), rtol=1e-7):
        raise ValueError(f"{option}: {path} has {len(wavelength)} pixels ({wavelength[0]:.1f}–{wavelength[-1]:.1f} Å), "
                         f"not the {APOGEE_NPIX}-pixel APOGEE grid the pipeline's windows are cut from; resample it "
                         "to spectrafm_hf.data.grid.apogee_wavelength(), or fine-tune on it with spectrafm finetune")


def _cached_dataset(cache_dir: Path, universe: str, n: int, seed: int, prior: str, splits: Mapping[str, float],
                    feh_below: float | None = None):
    """Build a simulated DatasetDict once; later runs (and other processes) load it from the cache.

    ``feh_below``: draw the stars from ``prior`` restricted to [Fe/H] < ``feh_below`` (the prior is
    sampled until ``n`` such stars are found, i.e. rejection sampling of the same distribution).
    """
    from datasets import load_from_disk

    from ..data.prior import sample_labels
    from ..data.schema import get_metadata
    from ..data.simulated import build_simulated_dataset
    from ..data.simulator import SIMULATOR_VERSION

    tag = f"-feh_below{feh_below:g}" if feh_below is not None else ""
    folder = cache_dir / f"{universe}-{prior}-n{n}-seed{seed}{tag}"
    if folder.exists():
        cached = load_from_disk(str(folder))
        version = get_metadata(cached).get("simulator_version")
        if version != SIMULATOR_VERSION:
            # a cache from another simulator version would silently mix data generations: rebuild it
            print(f"[pipeline] {folder} was simulated by simulator {version}, this is {SIMULATOR_VERSION}: rebuilding",
                  flush=True)
        elif not _same_split_assignment(cached, n, splits, seed):
            # e.g. built with other split fractions (not in the folder name), or by a version of
            # split_indices that depended on the order of the names
            print(f"[pipeline] {folder} holds other train/validation/test assignments than {dict(splits)}: rebuilding",
                  flush=True)
        else:
            return cached
    labels = None
    if feh_below is not None:
        pool = sample_labels(max(1000, 100 * n), seed=seed, prior=prior)
        keep = np.flatnonzero(np.asarray(pool["FE_H"]) < feh_below)
        if len(keep) < n:
            raise ValueError(
                f"the {prior!r} prior gave only {len(keep)} stars below [Fe/H] {feh_below}; lower n_iron_poor"
            )
        labels = {k: np.asarray(v)[keep[:n]] for k, v in pool.items()}
    return build_simulated_dataset(folder, universe, n, seed, prior=prior, splits=dict(splits), labels=labels,
                                   progress=True, overwrite=True)


def _same_split_assignment(cached, n: int, splits: Mapping[str, float], seed: int) -> bool:
    """True when every split of ``cached`` holds exactly the star indices ``split_indices`` gives now."""
    from ..data.schema import split_indices
    from ..data.simulated import star_index

    expected = split_indices(n, dict(splits), seed)
    if set(cached) != set(expected):
        return False
    for name, index in expected.items():
        try:
            held = [star_index(i) for i in cached[name]["id"]]
        except ValueError:
            return False
        if held != index.tolist():
            return False
    return True
