"""Simulated datasets: label prior → simulator → ``datasets.DatasetDict`` (and ``spectrafm simulate``).

Rows follow the project schema (``schema.py``): ``id`` = ``sim-<universe>-<seed>-<index>``, ``flux``,
``flux_err``, ``mask``, the five labels (reported: exact for "synthetic", with label noise and ~0.7 %
missing abundances for "observed") and their ``_ERR``, ``snr`` (NaN for noise-free synthetic spectra,
whose ``flux_err`` is 0), plus extra float32 columns: the nuisances ``VMICRO VMACRO VSINI C_FE N_FE``
and ``TRUE_<LABEL>`` (the labels each spectrum was made from, for evaluation only).

Star ``i`` always gets the same labels and spectrum for a given (universe, seed, prior, gap config),
whatever ``n``, ``batch_size``, ``num_proc`` or the split it lands in: every random draw is keyed by
(seed, i). Labels are drawn in the main process; worker processes (``num_proc``) simulate whole batches
and the main process writes them in input order, so the Arrow data do not depend on the process count.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from contextlib import contextmanager
from typing import Iterable, Mapping

import numpy as np

from . import simulator as sim
from .labels import LABELS
from .prior import sample_labels  # noqa: F401  (re-exported for callers)
from .schema import split_indices, write_dataset

NUISANCE_COLUMNS = sim.NUISANCE_LABELS
TRUE_COLUMNS = tuple(f"TRUE_{name}" for name in LABELS)
EXTRA_COLUMNS = (*NUISANCE_COLUMNS, *TRUE_COLUMNS)
DEFAULT_SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def default_prior(universe: str) -> str:
    """The default label prior of a universe: "wide" for synthetic, "apogee" for observed."""
    return "wide" if universe == "synthetic" else "apogee"


def star_id(universe: str, seed: int, index: int) -> str:
    """The ``id`` of simulated star ``index`` of a dataset: ``sim-<universe>-<seed>-<index>``."""
    return f"sim-{universe}-{seed}-{int(index)}"


def star_index(star_id_: str) -> int:
    """The star index in an ``id`` made by :func:`star_id` (ValueError if it is not one)."""
    head, _, index = str(star_id_).rpartition("-")
    if not head.startswith("sim-") or not index.isdigit():
        raise ValueError(f"{star_id_!r} is not a simulated star id (sim-<universe>-<seed>-<index>)")
    return int(index)


def _batch_rows(out: dict, indices: np.ndarray, universe: str, seed: int) -> dict:
    """Simulator output → a schema batch (dict of arrays, leading axis = star)."""
    batch = {key: out[key] for key in ("flux", "flux_err", "mask", "snr")}
    batch["id"] = np.array([star_id(universe, seed, i) for i in indices])
    for name in LABELS:
        batch[name] = out[name]
        batch[f"{name}_ERR"] = out[f"{name}_ERR"]
        batch[f"TRUE_{name}"] = out[f"true_{name}"]
    for name in NUISANCE_COLUMNS:
        batch[name] = out[name]
    return batch


def _take(labels: Mapping[str, np.ndarray], rows: np.ndarray) -> dict:
    return {key: np.asarray(value)[rows] for key, value in labels.items()}


def simulate_label_table(
    labels: Mapping[str, np.ndarray],
    universe: str = "synthetic",
    seed: int = 0,
    indices: np.ndarray | None = None,
    gap_config: sim.GapConfig | None = None,
    wavelength: np.ndarray | None = None,
    resolving_power: float = sim.APOGEE_RESOLVING_POWER,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Simulate the stars of a given label table (dict of (n,) arrays, TRUE labels) in memory.

    ``indices`` (default ``arange(n)``) are the stars' global indices, which key their randomness.
    Returns a schema batch for all n stars (see :func:`_batch_rows`).
    """
    n = len(np.atleast_1d(labels["TEFF"]))
    indices = np.arange(n) if indices is None else np.asarray(indices)
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    pieces = []
    bar = _progress(n, f"simulate {universe}", progress)
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        out = sim.simulate(_take(labels, rows), universe=universe, seed=seed, indices=indices[rows],
                           wavelength=wavelength, resolving_power=resolving_power, gap_config=gap_config)
        pieces.append(_batch_rows(out, indices[rows], universe, seed))
        bar.update(len(rows))
    bar.close()
    if not pieces:
        raise ValueError("the label table is empty; nothing to simulate")
    return {key: np.concatenate([p[key] for p in pieces]) for key in pieces[0]}


def simulate_arrays(
    n: int,
    universe: str = "synthetic",
    seed: int = 0,
    prior: str | None = None,
    start_index: int = 0,
    gap_config: sim.GapConfig | None = None,
    wavelength: np.ndarray | None = None,
    resolving_power: float = sim.APOGEE_RESOLVING_POWER,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Draw ``n`` stars from the prior and simulate them in memory (tests, the pipeline)."""
    prior = prior or default_prior(universe)
    labels = sample_labels(n, seed=seed, prior=prior, start_index=start_index)
    return simulate_label_table(labels, universe, seed, np.arange(start_index, start_index + n), gap_config,
                                wavelength, resolving_power, batch_size, progress)


def build_simulated_dataset(
    out_dir: str | os.PathLike,
    universe: str,
    n: int,
    seed: int = 0,
    prior: str | None = None,
    splits: Mapping[str, float] | None = None,
    gap_config: sim.GapConfig | None = None,
    batch_size: int = 256,
    progress: bool = True,
    overwrite: bool = False,
    labels: Mapping[str, np.ndarray] | None = None,
    wavelength: np.ndarray | None = None,
    resolving_power: float = sim.APOGEE_RESOLVING_POWER,
    num_proc: int = 1,
):
    """Simulate ``n`` stars into a ``DatasetDict`` saved at ``out_dir`` (streamed, atomic).

    Args:
        out_dir: destination folder (must not exist unless ``overwrite``).
        universe: "synthetic" or "observed".
        n: number of spectra (ignored when ``labels`` is given: its length is used).
        seed: dataset seed (labels, noise, splits).
        prior: "apogee", "wide" or "wide<P>" (:func:`~spectrafm_hf.data.prior.metal_poor_share`; default:
            wide for synthetic, apogee for observed).
        splits: split name → fraction (default train/validation/test 0.8/0.1/0.1), reproducible.
        gap_config: observed-universe gap terms (default all on) or None for the universe default.
        batch_size: stars simulated at once (memory ≈ batch_size × 0.6 MB); results do not depend on it.
        progress: show a tqdm progress bar.
        overwrite: replace an existing ``out_dir``.
        labels: optional table of TRUE labels (dict of (n,) arrays) to simulate instead of the prior.
        wavelength, resolving_power: another instrument's grid (vacuum Å) and R.
        num_proc: processes simulating batches in parallel (1: in this process); the output is the same
            whatever the number (:func:`available_cores` gives every core this process may use).
    """
    if universe not in ("synthetic", "observed"):
        raise ValueError(f"universe must be 'synthetic' or 'observed', got {universe!r}")
    prior = prior or default_prior(universe)
    if labels is None:
        if n < 1:
            raise ValueError(f"n must be ≥ 1, got {n}")
        labels = sample_labels(n, seed=seed, prior=prior)
    else:
        n = len(np.atleast_1d(labels["TEFF"]))
        prior = "given label table"
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if num_proc < 1:
        raise ValueError(f"num_proc (--num-proc) must be ≥ 1, got {num_proc}")
    parts = split_indices(n, dict(splits or DEFAULT_SPLITS), seed)
    model = sim.get_line_model(wavelength)
    cfg = gap_config if gap_config is not None else (
        sim.GapConfig() if universe == "observed" else sim.GapConfig.clean())
    if universe == "observed":
        sim.get_universe(cfg, model)  # built once here: forked workers inherit it
    settings = dict(universe=universe, seed=seed, wavelength=wavelength, resolving_power=resolving_power,
                    gap_config=cfg)
    metadata = {
        "source": "simulator", "universe": universe, "seed": int(seed), "prior": prior, "n": int(n),
        "gap_config": cfg.to_dict(), "simulator_version": sim.SIMULATOR_VERSION,
        "resolving_power": float(resolving_power),
        "splits": {k: float(v) for k, v in (splits or DEFAULT_SPLITS).items()},
        "note": ("one-layer physical simulator (spectrafm_hf.data.simulator): realistic relative behaviour, "
                 "not for abundance work"),
    }
    n_batches = sum(-(-len(rows) // batch_size) for rows in parts.values())
    with _worker_pool(min(num_proc, n_batches)) as pool:
        bar = _progress(n, f"simulate {universe} → {os.fspath(out_dir)}", progress)
        try:
            return write_dataset(
                out_dir, {name: _split_batches(pool, labels, rows, batch_size, settings, bar, window=2 * num_proc)
                          for name, rows in parts.items()},
                model.wavelength, metadata, extra_scalars=EXTRA_COLUMNS, overwrite=overwrite)
        finally:
            bar.close()


def _split_batches(pool, labels, rows: np.ndarray, batch_size: int, settings: dict, bar, window: int):
    """The zero-argument batch source of one split for ``write_dataset``: the stars ``rows``,
    ``batch_size`` at a time, simulated in ``pool`` (or here) and yielded in order."""
    def generate():
        tasks = ((_take(labels, rows[start:start + batch_size]), rows[start:start + batch_size], settings)
                 for start in range(0, len(rows), batch_size))
        for batch in _in_order(pool, _simulate_batch, tasks, window):
            bar.update(len(batch["id"]))
            yield batch
    return generate


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask where the OS has one, else all cores."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _simulate_batch(task: tuple) -> dict:
    """One batch ``(labels, star indices, simulate keyword arguments)`` → a schema batch. A module-level
    function so that worker processes can receive it."""
    labels, indices, settings = task
    out = sim.simulate(labels, indices=indices, **settings)
    return _batch_rows(out, indices, settings["universe"], settings["seed"])


@contextmanager
def _worker_pool(num_proc: int):
    """A process pool of ``num_proc`` workers, or None for 1 (work in this process). Forked on Linux, so
    the workers inherit the imported simulator, its line model and universe (spawned elsewhere, where
    fork is unsafe or missing: each worker then imports and builds them once). Terminated on exit,
    also on an error or Ctrl-C."""
    if num_proc <= 1:
        yield None
        return
    import multiprocessing

    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with multiprocessing.get_context(method).Pool(num_proc) as pool:
        yield pool


def _in_order(pool, function, tasks: Iterable, window: int):
    """``function(task)`` for each task, in task order: in ``pool`` with at most ``window`` tasks in
    flight (so finished batches never pile up in memory faster than they are written), or here
    when ``pool`` is None. A task's exception is raised here, unchanged."""
    if pool is None:
        yield from map(function, tasks)
        return
    pending = deque()
    for task in tasks:
        pending.append(pool.apply_async(function, (task,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="spectra", disable=not enabled, dynamic_ncols=True)


def run_simulate(args) -> int:
    """``spectrafm simulate --universe U --n N --seed S --out DIR [--prior P] [--gap-off T ...]
    [--num-proc N]`` (default: every available core)."""
    gap_config = None
    num_proc = getattr(args, "num_proc", None)
    gap_off = list(getattr(args, "gap_off", None) or [])
    snr_min, snr_max = getattr(args, "snr_min", None), getattr(args, "snr_max", None)
    if gap_off or snr_min is not None or snr_max is not None:
        if args.universe != "observed":
            raise ValueError("--gap-off/--snr-min/--snr-max apply to --universe observed only")
        gap_config = sim.GapConfig().without(*gap_off)
        lo, hi = gap_config.snr_range
        lo, hi = (snr_min if snr_min is not None else lo), (snr_max if snr_max is not None else hi)
        if not 0 < lo <= hi:
            raise ValueError(f"need 0 < --snr-min <= --snr-max, got {lo} and {hi}")
        from dataclasses import replace

        gap_config = replace(gap_config, snr_range=(lo, hi))
    dataset = build_simulated_dataset(args.out, universe=args.universe, n=args.n, seed=args.seed,
                                      prior=getattr(args, "prior", None), gap_config=gap_config,
                                      batch_size=getattr(args, "batch_size", 256),
                                      progress=not getattr(args, "no_progress", False),
                                      overwrite=getattr(args, "overwrite", False),
                                      num_proc=available_cores() if num_proc is None else num_proc)
    sizes = ", ".join(f"{name} {len(split)}" for name, split in dataset.items())
    print(f"wrote {args.out}: {args.universe} universe, {sizes} spectra")
    return 0
