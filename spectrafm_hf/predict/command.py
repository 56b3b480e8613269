"""``spectrafm predict``: the command line's predict, one process or many (``accelerate launch``).

Arguments are declared in :mod:`spectrafm_hf.cli`; this module turns them into a catalogue run
(:mod:`.catalogue`). Several processes: ``accelerate launch [--multi_gpu] --num_processes N -m
spectrafm_hf.cli predict ...`` (README, "Catalogue-scale prediction").
"""

from __future__ import annotations

import sys

from ..checkpoints import load_model
from ..data.sources import open_source
from ..output_guard import check_output_file
from .catalogue import CatalogueOptions, predict_catalogue, print_note
from .output import output_format


def column_names(values) -> list[str] | None:
    """``--request FE_H,TEFF`` as ``--request FE_H TEFF``: names split on commas (as ``spectrafm finetune
    --labels`` takes them), blanks dropped; ``None`` stays ``None`` (the option was not given)."""
    if values is None:
        return None
    return [name.strip() for value in values for name in str(value).split(",") if name.strip()]


def run_predict(args) -> int:
    """``spectrafm predict --model DIR --input PATH --request FE_H [...] --output OUT.parquet``.

    Cheap checks come first (output path and format, input readable, columns), then the model is
    loaded, so a mistake costs seconds, not a model load.
    """
    # before any work: a bad --output must not throw away the predictions made for it
    check_output_file(args.output, overwrite=getattr(args, "overwrite", False), inputs=[args.input])
    output_format(args.output)
    source = open_source(args.input, getattr(args, "split", None))
    model, feature_extractor = load_model(args.model, device=args.device)
    if getattr(args, "cpu_heap_reuse", False) and next(model.parameters()).device.type == "cpu":
        from ..cpu_allocator import reuse_large_allocations

        if not reuse_large_allocations(True):
            print_note("note: --cpu-heap-reuse needs Linux with glibc; the default allocator is used")
    options = CatalogueOptions(
        request=column_names(args.request), batch_size=args.batch_size, context=args.context,
        pixels="all" if getattr(args, "all_pixels", False) else "window",
        dtype=getattr(args, "dtype", "float32"), inputs=column_names(getattr(args, "inputs", None)),
        keep=column_names(getattr(args, "keep", None)) or [], split=getattr(args, "split", None),
        shard_size=getattr(args, "shard_size", 1024), progress=not getattr(args, "no_progress", False),
    )
    result = predict_catalogue(model, feature_extractor, source, args.output, options, device=args.device,
                               overwrite=getattr(args, "overwrite", False), log=print_note)
    if result is None:  # not the main process: it merged nothing
        return 0
    if result.summary:
        print_note(result.summary)
    if result.skipped:
        print_note(f"warning: {result.skipped}")
    print(f"wrote {result.n_rows} predictions of {', '.join(options.request)} to {result.output}", file=sys.stdout)
    return 0
