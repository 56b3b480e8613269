"""The ``spectrafm`` command line: a thin layer over library functions.

Each subcommand's arguments are declared here; the work is done by a ``run_<command>(args)``
function in the module that owns it, imported only when that subcommand runs (fast ``--help``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command → (module, function, help)
_COMMANDS = {
    "predict": ("spectrafm_hf.predict", "run_predict", "predict labels with 1σ errors for spectra in a file"),
    "simulate": ("spectrafm_hf.data.simulated", "run_simulate", "build a simulated APOGEE dataset"),
    "build-apogee": ("spectrafm_hf.data.apogee", "run_build_apogee", "build a dataset from APOGEE DR17 files"),
    "pipeline": ("spectrafm_hf.pipeline", "run_pipeline", "run the three-stage pipeline, baselines and report"),
    "publish": ("spectrafm_hf.hub.publish", "run_publish",
                "upload a checkpoint or dataset folder to the Hugging Face Hub"),
    "convert-original": ("spectrafm_hf.convert_original", "run_convert_original",
                         "convert an original SpectraFM checkpoint"),
    "finetune": ("spectrafm_hf.training.finetune", "run_finetune",
                 "fine-tune a checkpoint on your own labelled stars in your own window (transformers.Trainer)"),
    "report": ("spectrafm_hf.pipeline.report", "run_report",
               "redraw the figures and rewrite report.md / report.html of a finished pipeline run"),
}


def add_command_arguments(name: str, p: argparse.ArgumentParser) -> None:
    """Declare the arguments of subcommand ``name`` on ``p``."""
    if name == "predict":
        _add_predict_arguments(p)
    elif name == "simulate":
        p.add_argument("--universe", choices=["synthetic", "observed"], required=True)
        p.add_argument("--n", type=int, required=True, help="number of spectra")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", required=True, help="output dataset folder")
        p.add_argument("--prior", default=None,
                       help="label prior: apogee, wide (20%% of stars at [Fe/H] -2.5..-1) or wide<P> (P%% there); "
                            "default: wide for synthetic, apogee for observed")
        p.add_argument("--overwrite", action="store_true")
        p.add_argument("--batch-size", type=int, default=256,
                       help="stars simulated at once (results do not depend on it)")
        p.add_argument("--num-proc", type=int, default=None,
                       help="processes simulating in parallel (default: every available core; "
                            "results do not depend on it)")
        p.add_argument("--snr-min", type=float, default=None, help="observed universe: lowest SNR (log-uniform draw)")
        p.add_argument("--snr-max", type=float, default=None, help="observed universe: highest SNR")
        p.add_argument("--gap-off", action="append", default=[], metavar="SWITCH",
                       help="observed universe: turn one gap term off (repeatable), e.g. --gap-off telluric")
        p.add_argument("--no-progress", action="store_true")
    elif name == "build-apogee":
        p.add_argument("--spectra-dir", required=True, help="folder of aspcapStar/apStar files")
        p.add_argument("--allstar", default=None, help="allStar catalogue FITS (labels, cuts)")
        p.add_argument("--kind", choices=["aspcap-observed", "aspcap-synthetic", "apstar"], default="aspcap-observed")
        p.add_argument("--out", required=True)
        p.add_argument("--paper-cuts", action="store_true", help="apply the paper's sample cuts")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--overwrite", action="store_true")
        p.add_argument("--bad-bits", default=None,
                       help="apStar APOGEE_PIXMASK bits treated as bad, comma-separated (default 0-7,12)")
        p.add_argument("--no-progress", action="store_true")
    elif name == "pipeline":
        from .pipeline import add_pipeline_arguments  # declared by the pipeline (training/stage*.py use it too)

        add_pipeline_arguments(p)
    elif name == "publish":
        _add_publish_arguments(p)
    elif name == "report":
        p.add_argument("run_dir", metavar="RUN", help="a run folder written by `spectrafm pipeline`")
        p.add_argument("--out", default=None, help="write the report here instead of into RUN")
    elif name == "convert-original":
        p.add_argument("src_dir")
        p.add_argument("out_dir")
        p.add_argument("--overwrite", action="store_true")
    elif name == "finetune":
        from .training.finetune import add_finetune_arguments  # declared by the command's module

        add_finetune_arguments(p)


def _add_predict_arguments(p: argparse.ArgumentParser) -> None:
    """``spectrafm predict``: input, output, columns, precision, shards."""
    p.add_argument("--model", required=True, help="checkpoint folder or Hub repo id")
    p.add_argument("--input", required=True,
                   help="spectra: a dataset folder (save_to_disk), .parquet, .npz, .csv, FITS table, an aspcapStar/"
                        "apStar file, or a folder or quoted glob of them (unreadable files are skipped)")
    p.add_argument("--split", default=None, help="dataset folders: the split to read (default: all splits)")
    # "extend": `--request FE_H TEFF` and `--request FE_H --request TEFF` mean the same (users type both)
    p.add_argument("--request", action="extend", nargs="+", required=True, metavar="LABEL",
                   help="labels to predict, e.g. --request FE_H TEFF (or --request FE_H --request TEFF)")
    p.add_argument("--output", required=True,
                   help="output table; format by extension: .parquet (recommended), .csv, .ecsv, .fits")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--inputs", action="extend", nargs="+", default=None, metavar="COLUMN",
                   help="named scalar inputs the model reads; default: the input's columns the model "
                        "knows, never labels or TRUE_* columns")
    p.add_argument("--keep", action="extend", nargs="+", default=[], metavar="COLUMN",
                   help="input columns carried into the output, e.g. --keep RA DEC")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="compute precision: bfloat16 = bf16 autocast (faster; needs bf16 hardware)")
    p.add_argument("--shard-size", type=int, default=1024,
                   help="stars per shard: the unit written to <output>.parts/ and resumed after an interruption")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--context", default="all",
                   help="'all' = every valid pixel at once, or an int: disjoint chunks of that size")
    p.add_argument("--all-pixels", action="store_true",
                   help="read every valid pixel, not only those inside the window the model was last "
                        "trained on (the default)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--cpu-heap-reuse", action=argparse.BooleanOptionalAction, default=False,
                   help="on CPU, serve large tensors from glibc's reused heap instead of fresh pages "
                        "(spectrafm_hf.cpu_allocator; Linux/glibc only)")


def _add_publish_arguments(p: argparse.ArgumentParser) -> None:
    """``spectrafm publish``: a checkpoint or dataset folder, the target repo and the card's lineage."""
    p.add_argument("stage_dir", metavar="FOLDER", help="a checkpoint folder (a stage) or a dataset folder")
    p.add_argument("--repo-id", required=True)
    p.add_argument("--repo-type", choices=["auto", "model", "dataset"], default="auto",
                   help="auto (default): a model repo for a checkpoint, a dataset repo for a dataset folder")
    p.add_argument("--revision", default=None)
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--commit-message", default=None)
    p.add_argument("--base-model", default=None, metavar="ORG/NAME",
                   help="Hub id of the published parent checkpoint (the card's base_model)")
    p.add_argument("--dataset", action="append", default=None, metavar="ORG/NAME",
                   help="Hub id of a published training dataset (the card's datasets; repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectrafm", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, _, help_text) in _COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_command_arguments(name, command)
        # also accepted after the subcommand; SUPPRESS keeps the top-level value when absent
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback of an error")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; every failure ends in one line on stderr and a non-zero exit code.

    Exit codes: 0 success, 2 bad input (the message names the value and the fix), 1 an unexpected
    error (``spectrafm --debug ...`` shows its traceback), 130 interrupted with Ctrl-C.
    """
    args = build_parser().parse_args(argv)
    module_name, function_name, _ = _COMMANDS[args.command]
    try:
        run = getattr(importlib.import_module(module_name), function_name)
        return int(run(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"spectrafm {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError) as err:
        if args.debug:
            raise
        # Bad input: a one-line message naming the problem is more useful than a traceback.
        print(f"spectrafm {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the last line of defence: never a bare traceback
        if args.debug:
            raise
        print(f"spectrafm {args.command}: unexpected error: {type(err).__name__}: {_one_line(err)} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    """The error's message on one line (multi-line messages are joined)."""
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
