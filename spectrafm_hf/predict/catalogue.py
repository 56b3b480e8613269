"""Catalogue-scale prediction: a survey streamed through the model, shard by shard, by one or many
processes, into one table.

::

    source (data.sources) ──► shards of rows ──► blocks of ``read_size`` rows ──► predict_labels
        ──► shard files (<output>.parts/) ──► the main process merges them in input order ──► output

Memory is that of one block (spectra) plus the model, whatever the number of stars. Shards are the
unit of resumption (:mod:`.shards`) and of distribution: under ``accelerate launch`` / ``torchrun``
(``WORLD_SIZE`` > 1) process ``r`` of ``W`` runs shards ``r, r + W, r + 2W ...`` on its own device,
and the main process merges once every process is done. Rows are cut into the same shards and
batches whatever the number of processes, so the output is identical (bit for bit on the same
hardware and thread count) to a one-process run.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..checkpoints import resolve_device
from ..data.sources import SpectraSource, open_source
from ..output_guard import check_output_file
from .core import autocast_context, checked_options, flag_summary, predict_labels, refused_rows
from .inputs import ColumnChoice, choose_columns
from .output import TableWriter, output_format
from .shards import WorkFolder, model_fingerprint, run_fingerprint, shard_ranges

#: Internal shard column (valid pixels left out by the training window), dropped from the output.
_NOT_READ = "_n_pixels_not_read"


@dataclass
class CatalogueOptions:
    """Options of a catalogue run that change its numbers (all part of the resume fingerprint but
    ``progress``); the meaning of each is that of :func:`~spectrafm_hf.predict.core.predict_labels`.

    ``shard_size``: rows per shard (the unit written to disk and resumed); ``read_size``: rows read
    and prepared at once (memory).
    """

    request: list[str]
    batch_size: int = 8
    context: str | int = "all"
    pixels: str = "window"
    dtype: str = "float32"
    inputs: list[str] | None = None
    keep: list[str] = field(default_factory=list)
    split: str | None = None
    shard_size: int = 1024
    read_size: int = 256
    progress: bool = True


@dataclass
class CatalogueResult:
    """What a catalogue run wrote: ``n_rows`` rows to ``output``; ``summary`` (flags, pixels left
    out) and ``skipped`` (unreadable input files) as one line each, or None."""

    output: Path
    n_rows: int
    summary: str | None
    skipped: str | None


def _process_group(device):
    """(rank, world size, device, barrier) from the launcher's environment (``accelerate launch``,
    ``torchrun``: ``WORLD_SIZE``); one process without it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device, lambda: None
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # PartialState, unlike Accelerator, does not read ACCELERATE_USE_CPU itself: without cpu=True a
    # CPU-only launch would see one process per rank instead of a gloo group
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    if state.num_processes <= 1:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but no process group could be formed "
                         f"({state.distributed_type}); launch with accelerate launch or torchrun")
    # each process on its own GPU: a bare "cuda" would put every process on cuda:0
    own_device = state.device if device is None or str(device) == "cuda" else device
    return state.process_index, state.num_processes, own_device, state.wait_for_everyone


def predict_catalogue(model, feature_extractor, source: SpectraSource | str | os.PathLike, output: str | os.PathLike,
                      options: CatalogueOptions, device=None, overwrite: bool = False,
                      log=print) -> CatalogueResult | None:
    """Predict every star of ``source`` into ``output`` (format by extension, :mod:`.output`).

    Resumes from ``<output>.parts/`` when an earlier run with the same model, input and options
    was interrupted. Under a multi-process launcher every process calls this; the main one merges
    and returns the result, the others return None.

    Args:
        source: a :class:`~spectrafm_hf.data.sources.SpectraSource` or a path for ``open_source``.
        log: where one-line notes go (input columns ignored, resuming); main process only.

    Raises:
        ValueError: bad options, columns or input values (before any shard, or as they are met);
            no star readable or predictable (nothing written).
        FileExistsError: ``output`` exists and ``overwrite`` is False.
    """
    output = Path(output)
    check_output_file(output, overwrite=overwrite,
                      inputs=[source.path if isinstance(source, SpectraSource) else source])
    output_format(output)
    source = source if isinstance(source, SpectraSource) else open_source(source, options.split)
    choice = choose_columns(source.columns, feature_extractor.named_tokens, options.request,
                            _prediction_columns(options.request), options.inputs, options.keep, str(source.path))
    rank, world, device, barrier = _process_group(device)
    if device is not None:
        model.to(resolve_device(device))
    checked_options(model, feature_extractor, options.request, options.context, options.batch_size, options.pixels)
    autocast_context(options.dtype, next(model.parameters()).device)  # refuses bf16 without hardware support
    if options.shard_size < 1 or options.read_size < 1:
        raise ValueError(f"shard_size and read_size must be >= 1, got {options.shard_size} and {options.read_size}")
    work = WorkFolder(output)
    fingerprint = run_fingerprint(model_fingerprint(model, feature_extractor), source.identity(),
                                  _fingerprinted(options, choice, next(model.parameters()).device))
    if rank == 0:
        for line in (choice.note(), work.open(fingerprint)[1]):
            if line:
                log(line)
    barrier()  # the work folder exists and holds only shards of this fingerprint
    shards = shard_ranges(len(source), options.shard_size)
    if rank == 0 and world > 1:
        log(f"{len(shards)} shards on {world} processes (process r runs shards r, r + {world}, ...)")
    try:
        _run_shards(model, feature_extractor, source, choice, options, work, shards[rank::world], rank, world)
    except BaseException as err:
        done = work.n_done()
        if rank == 0 and world == 1 and done == 0:
            work.remove()  # nothing worth resuming: leave no trace of the failed run
        elif rank == 0:
            kept = f"{done} of {len(shards)} shards are done in {work.path}; the same command resumes from there"
            if isinstance(err, (ValueError, OSError)) and len(err.args) == 1 and isinstance(err.args[0], str):
                err.args = (f"{err.args[0]} ({kept})",)
            else:
                log(kept)
        raise
    barrier()
    if rank != 0:
        return None
    return _merge(work, len(shards), output, choice, feature_extractor, options)


def _prediction_columns(request: Sequence[str]) -> list[str]:
    return ["id", *(f"{label}{suffix}" for label in request for suffix in ("", "_err")), "flags"]


def _fingerprinted(options: CatalogueOptions, choice: ColumnChoice, device) -> dict:
    """Everything that changes a number or a column of a shard."""
    return {"request": list(options.request), "batch_size": options.batch_size, "context": str(options.context),
            "pixels": options.pixels, "dtype": str(options.dtype), "inputs": choice.inputs, "keep": choice.keep,
            "split": options.split, "shard_size": options.shard_size, "read_size": options.read_size,
            "device": getattr(device, "type", str(device))}


def _run_shards(model, feature_extractor, source, choice, options, work, shards, rank, world) -> None:
    """Predict this process's shards (``shards``: ``(index, (start, stop))``) not already on disk."""
    indices = range(rank, rank + world * len(shards), world)
    todo = [(index, rows) for index, rows in zip(indices, shards) if not work.is_done(index)]
    bar = None
    if options.progress and rank == 0 and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(stop - start for _, (start, stop) in todo), desc="predict", unit="star")
    try:
        for index, (start, stop) in todo:
            columns, skipped = _predict_rows(model, feature_extractor, source, choice, options, start, stop, bar)
            work.write_shard(index, columns, skipped)
    finally:
        if bar is not None:
            bar.close()


def _predict_rows(model, feature_extractor, source, choice, options, start, stop, bar):
    """Prediction columns of rows ``[start, stop)``, read ``options.read_size`` rows at a time, and
    the input files skipped among them."""
    blocks, skipped = [], []
    for low in range(start, stop, options.read_size):
        high = min(low + options.read_size, stop)
        spectra = source.read(low, high, choice.to_read)
        skipped += spectra.skipped
        if len(spectra):
            predictions = predict_labels(
                model, feature_extractor, spectra.wavelength, spectra.flux, flux_err=spectra.flux_err,
                mask=spectra.mask, scalars={name: spectra.scalars[name] for name in choice.inputs} or None,
                request=options.request, batch_size=options.batch_size, context=options.context, progress=False,
                pixels=options.pixels, dtype=options.dtype, ids=spectra.ids,
            )
            columns = predictions.output_columns()
            columns.update({kept: spectra.scalars[name] for name, kept in choice.keep.items()})
            columns[_NOT_READ] = np.asarray(predictions.n_pixels_not_read, dtype=np.int64)
            blocks.append(columns)
        if bar is not None:
            bar.update(high - low)
    if not blocks:
        return {}, skipped
    return {name: np.concatenate([block[name] for block in blocks]) for name in blocks[0]}, skipped


def _merge(work: WorkFolder, n_shards: int, output: Path, choice, feature_extractor, options) -> CatalogueResult:
    """Write every shard, in input order, to ``output`` (atomically), then remove the work folder."""
    counts, skipped, tally = Counter(), [], {"n": 0, "flagged": 0, "refused": 0, "not_read": 0}
    with TableWriter(output) as writer:
        for index in range(n_shards):
            if not work.is_done(index):
                raise ValueError(f"shard {index} of {n_shards} is missing in {work.path} (a process stopped early); "
                                 "run the same command again to compute it")
            columns, shard_skipped = work.read_shard(index)
            skipped += shard_skipped
            if not columns or len(columns["id"]) == 0:
                continue
            flags = columns["flags"]
            counts.update(f for text in flags for f in str(text).split(";") if f)
            tally["n"] += len(flags)
            tally["flagged"] += int(sum(1 for text in flags if text))
            tally["refused"] += int(refused_rows(flags).sum())
            tally["not_read"] += int(columns.pop(_NOT_READ).sum())
            writer.write(columns)
        window = feature_extractor.training_window_A if options.pixels == "window" else None
        summary = flag_summary(counts, tally["flagged"], tally["refused"], tally["n"], tally["not_read"], window)
        skipped_line = _skipped_line(skipped, tally["n"] + len(skipped))
        if tally["n"] == 0 or tally["refused"] == tally["n"]:
            work.remove()  # every shard is done and none holds an answer: nothing to resume
            if tally["n"] == 0:
                raise ValueError(f"no spectrum could be read ({skipped_line}); nothing written to {output}")
            raise ValueError(f"no spectrum could be predicted ({summary}); nothing written to {output}")
    work.remove()
    return CatalogueResult(output=output, n_rows=writer.n_rows, summary=summary, skipped=skipped_line)


def _skipped_line(skipped: list[str], n_files: int) -> str | None:
    """One line naming the skipped files (the first three in full)."""
    if not skipped:
        return None
    shown = "; ".join(skipped[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
    return f"{len(skipped)} of {n_files} input files could not be read and were skipped: {shown}"


def print_note(line: str) -> None:
    """``spectrafm predict: <line>`` on stderr (the CLI's notes)."""
    print(f"spectrafm predict: {line}", file=sys.stderr, flush=True)
