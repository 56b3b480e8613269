"""``spectrafm publish``: upload one complete stage checkpoint folder to the Hugging Face Hub.

Stages can be separate repos (``--repo-id org/spectrafm-stage1`` ...) or branches of one repo
(``--repo-id org/spectrafm --revision stage1``). The repo id must be ``owner/name``. The folder is
validated first (weights, config, preprocessor config, card, remote code, ``auto_map``, and that it
loads strictly: a truncated or mismatched ``model.safetensors`` is refused); ``--dry-run`` lists what
would be uploaded with sizes and touches no network. The local folder is only ever read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..checkpoints import MODEL_CODE_FILES, REQUIRED_AUTO_MAP_KEYS

#: Files every publishable checkpoint must contain (weights are checked separately: single or sharded).
REQUIRED_FILES = ("config.json", "preprocessor_config.json", "README.md", *MODEL_CODE_FILES)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


#: Top-level folders of a pipeline stage that are training by-products, never published: the resume
#: state (optimizer, RNG states pickled by Accelerate) and the tracker logs.
TRAINING_ONLY_DIRS = ("state", "logs", "checkpoint")


def list_checkpoint_files(stage_dir: str | Path) -> list[tuple[str, int]]:
    """Files that would be uploaded, as (path relative to ``stage_dir`` with '/', size in bytes), sorted.

    Hidden files and folders (``.git``, ``.cache`` ...), ``__pycache__``, pickles and the training
    by-products of a pipeline stage (``state/``, ``logs/``) are never uploaded.
    """
    root = Path(stage_dir)
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts) or not path.is_file():
            continue
        if rel.parts[0] in TRAINING_ONLY_DIRS or path.suffix in (".pkl", ".pickle", ".bin"):
            continue
        files.append((rel.as_posix(), path.stat().st_size))
    return files


def validate_checkpoint_folder(stage_dir: str | Path) -> list[tuple[str, int]]:
    """Check ``stage_dir`` is a complete checkpoint; return its file listing.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: files are missing or ``config.json`` lacks the remote-code ``auto_map`` (the message
            lists every problem and how to fix it); or the files are all there but the checkpoint does
            not load strictly (truncated weights, tensors that do not match the config).
    """
    root = Path(stage_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(root)!r} does not exist or is not a folder")
    listing = list_checkpoint_files(root)
    names = {name for name, _ in listing}
    problems = [f"missing {name}" for name in REQUIRED_FILES if name not in names]
    if not any(name in names for name in WEIGHT_FILES):
        problems.append("missing weights (model.safetensors or model.safetensors.index.json; "
                        "pickled pytorch_model.bin is not accepted)")
    if "config.json" in names:
        try:
            config = json.loads((root / "config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            problems.append(f"config.json is not valid JSON ({err})")
        else:
            auto_map = config.get("auto_map") or {}
            absent = [key for key in REQUIRED_AUTO_MAP_KEYS if key not in auto_map]
            if absent:
                problems.append(f"config.json auto_map lacks {', '.join(absent)} (remote code would not load)")
    if problems:
        raise ValueError(
            f"{root} is not a complete SpectraFM checkpoint: " + "; ".join(problems)
            + ". Write checkpoints with spectrafm_hf.checkpoints.save_checkpoint (every stage and "
              "convert-original do)."
        )
    check_loads_strictly(root)
    return listing


def check_loads_strictly(root: Path) -> None:
    """Refuse a folder whose files are all present but do not load as the model they describe.

    A truncated or corrupt ``model.safetensors``, tensors that do not match ``config.json``, or a
    broken preprocessor config would otherwise be uploaded and fail for everyone who downloads it.
    The strict loader of :func:`spectrafm_hf.checkpoints.load_model` (on CPU) is the one judge.
    """
    from ..checkpoints import load_model

    try:
        load_model(root, device="cpu")
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"{root} would not load, so it is not published: {err}") from err


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid Hub model id of the form ``owner/name``, else a one-line ValueError.

    The Hub's own validator (``huggingface_hub.utils.validate_repo_id``) judges the characters; an id
    without an owner is refused too, so a stage never lands in an unintended personal namespace.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    reason = None
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        reason = "it needs exactly one '/' between owner and name"
    else:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as err:
            reason = " ".join(str(err).split())
    if reason is not None:
        raise ValueError(f"--repo-id {repo_id!r} is not a valid Hub repo id ({reason}); use the form "
                         "owner/name, e.g. my-org/spectrafm-stage3")
    return repo_id


def _human_size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def format_listing(listing: list[tuple[str, int]]) -> str:
    """The dry-run table: one line per file (size in bytes and human units), then the total."""
    width = max((len(name) for name, _ in listing), default=4)
    lines = [f"{name:<{width}}  {size:>12d} B  ({_human_size(size)})" for name, size in listing]
    total = sum(size for _, size in listing)
    lines.append(f"{len(listing)} files, {total} B ({_human_size(total)}) in total")
    return "\n".join(lines)


def publish_folder(stage_dir: str | Path, repo_id: str, *, revision: str | None = None,
                   private: bool = False, commit_message: str | None = None, api=None):
    """Upload a validated checkpoint folder. Returns the ``CommitInfo`` of ``upload_folder``.

    Operations, in order: ``create_repo(repo_id, private=..., exist_ok=True)``; if ``revision``,
    ``create_branch(repo_id, branch=revision, exist_ok=True)``; ``upload_folder`` of exactly the listed
    files (``allow_patterns``). Errors of the Hub (auth, network, rejected upload) propagate.
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    listing = validate_checkpoint_folder(stage_dir)
    api = api or HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(stage_dir),
        repo_type="model",
        revision=revision,
        commit_message=commit_message or f"Upload SpectraFM checkpoint {Path(stage_dir).name}",
        allow_patterns=[name for name, _ in listing],
    )


def run_publish(args) -> int:
    """CLI entry: ``spectrafm publish STAGE_DIR --repo-id ORG/NAME [--revision B] [--private] [--dry-run]``.

    Returns 0 on success; 1 when the Hub cannot be reached or refuses (message on stderr). Bad input
    (incomplete folder, bad repo id) raises ``ValueError``/``FileNotFoundError`` (the CLI exits 2).
    """
    check_repo_id(args.repo_id)  # before reading the folder: a bad id is refused even in a dry run
    listing = validate_checkpoint_folder(args.stage_dir)
    target = args.repo_id + (f" (branch {args.revision})" if args.revision else "")
    if args.dry_run:
        print(f"dry run: would upload {args.stage_dir} to https://huggingface.co/{target}"
              f"{' as a private repo' if args.private else ''}:")
        print(format_listing(listing))
        return 0

    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        print("spectrafm publish: error: HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset it "
              "to upload, or use --dry-run to check the folder.", file=sys.stderr)
        return 1
    if get_token() is None:
        print("spectrafm publish: error: no Hugging Face token found; run `hf auth login` or set HF_TOKEN "
              "(a token with write access to the target namespace).", file=sys.stderr)
        return 1
    try:
        info = publish_folder(args.stage_dir, args.repo_id, revision=args.revision, private=args.private,
                              commit_message=args.commit_message)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # any Hub/network failure: report it, never a half-silent traceback
        print(f"spectrafm publish: error: upload to {target} failed ({type(err).__name__}: {err}). "
              "Nothing local was changed; check the token's write access, the repo id and the network, "
              "then re-run.", file=sys.stderr)
        return 1
    url = getattr(info, "commit_url", None) or f"https://huggingface.co/{args.repo_id}"
    print(f"uploaded {len(listing)} files to {target}: {url}")
    return 0


