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
    "publish": ("spectrafm_hf.hub.publish", "run_publish", "upload a stage checkpoint to the Hugging Face Hub"),
    "convert-original": ("spectrafm_hf.convert_original", "run_convert_original",
                         "convert an original SpectraFM checkpoint"),
}


def add_command_arguments(name: str, p: argparse.ArgumentParser) -> None:
    """Declare the arguments of subcommand ``name`` on ``p``."""
    if name == "predict":
        p.add_argument("--model", required=True, help="checkpoint folder or Hub repo id")
        p.add_argument("--input", required=True, help="spectra file (.npz, ...)")
        p.add_argument("--request", action="append", required=True, metavar="LABEL",
                       help="label to predict (repeatable), e.g. --request FE_H --request TEFF")
        p.add_argument("--output", required=True, help="output CSV")
        p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--context", default="all",
                       help="'all' = every valid pixel at once, or an int: disjoint chunks of that size")
        p.add_argument("--all-pixels", action="store_true",
                       help="read every valid pixel, not only those inside the window the model was last "
                            "trained on (the default)")
        p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    elif name == "simulate":
        p.add_argument("--universe", choices=["synthetic", "observed"], required=True)
        p.add_argument("--n", type=int, required=True, help="number of spectra")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", required=True, help="output dataset folder")
        p.add_argument("--prior", choices=["apogee", "wide"], default=None,
                       help="label prior (default: wide for synthetic, apogee for observed)")
        p.add_argument("--overwrite", action="store_true")
        p.add_argument("--batch-size", type=int, default=256,
                       help="stars simulated at once (results do not depend on it)")
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
        p.add_argument("stage_dir")
        p.add_argument("--repo-id", required=True)
        p.add_argument("--revision", default=None)
        p.add_argument("--private", action="store_true")
        p.add_argument("--dry-run", action="store_true")
        p.add_argument("--commit-message", default=None)
    elif name == "convert-original":
        p.add_argument("src_dir")
        p.add_argument("out_dir")
        p.add_argument("--overwrite", action="store_true")


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
