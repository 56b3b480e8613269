"""``spectrafm publish``: upload a checkpoint folder or a dataset folder to the Hugging Face Hub.

**Checkpoints.** Stages can be separate repos (``--repo-id org/spectrafm-stage1`` ...) or branches of one
repo (``--repo-id org/spectrafm --revision stage1``). The folder is validated first (weights, config,
preprocessor config, card, remote code, ``auto_map``, and that it loads strictly: a truncated or
mismatched ``model.safetensors`` is refused). A card rendered by this package is re-rendered for the
repo id (its usage code names the repo id, never the local folder; ``--base-model`` names the published
parent, ``--dataset`` the published training data) and uploaded in place of the local README.md.

**Datasets.** A dataset folder (``save_to_disk`` layout, as ``simulate`` / ``build-apogee`` write, or the
Hub layout of :func:`spectrafm_hf.data.hub_layout.export_hub_dataset`) is uploaded with
``repo_type="dataset"`` in the Hub layout: Parquet shards that keep the wavelength grid,
``wavelength.json`` and a dataset card rendered for the repo id (an Arrow folder is exported to a
temporary folder first).

``--repo-type auto`` (the default) tells the two apart. The repo id must be ``owner/name``.
``--dry-run`` lists what would be uploaded with sizes and touches no network. The local folder is only
ever read: what differs from it (a re-rendered card, an export) is built in a temporary folder, whose
other files are links to the originals.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..checkpoints import MODEL_CODE_FILES, REQUIRED_AUTO_MAP_KEYS, checkpoints_inside_hint

#: Files every publishable checkpoint must contain (weights are checked separately: single or sharded).
REQUIRED_FILES = ("config.json", "preprocessor_config.json", "README.md", *MODEL_CODE_FILES)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


#: Top-level folders of a pipeline stage that are training by-products, never published: the resume
#: state (optimizer, RNG states pickled by Accelerate) and the tracker logs.
TRAINING_ONLY_DIRS = ("state", "logs", "checkpoint")


#: ``--repo-type`` values.
REPO_TYPES = ("auto", "model", "dataset")
#: Text of an unrendered usage snippet: a card that still holds it is never published.
PLACEHOLDER = "path/to/checkpoint"


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
            + ". Save the model AND its feature extractor with save_pretrained after `import spectrafm_hf` "
              "(or spectrafm_hf.checkpoints.save_checkpoint, which also writes the card), and add a README.md card."
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


def resolve_repo_type(folder: str | Path, requested: str = "auto") -> str:
    """``"model"`` for a checkpoint folder, ``"dataset"`` for a dataset folder (``requested="auto"``), or
    ``requested`` itself after checking it does not contradict the folder.

    Raises ``FileNotFoundError`` (no folder) or ``ValueError`` (neither kind, or the other kind).
    """
    from ..data.hub_layout import dataset_folder_layout

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"folder {str(root)!r} does not exist or is not a folder")
    if requested not in REPO_TYPES:
        raise ValueError(f"--repo-type {requested!r} is not one of {', '.join(REPO_TYPES)}")
    is_checkpoint = any((root / name).exists() for name in ("config.json", "preprocessor_config.json", *WEIGHT_FILES))
    found = "model" if is_checkpoint else ("dataset" if dataset_folder_layout(root) else None)
    if requested == "auto":
        if found is None:
            raise ValueError(f"{root} is neither a checkpoint folder (config.json, weights) nor a dataset folder "
                             "(dataset_dict.json of save_to_disk, or data/*.parquet); give one of those"
                             f"{checkpoints_inside_hint(root)}")
        return found
    if found is not None and found != requested:
        raise ValueError(f"--repo-type {requested} but {root} is a {found} folder; use --repo-type {found} or auto")
    return requested


def _link_files(root: Path, names: list[str], view: Path) -> None:
    """Make ``view/<name>`` a link to ``root/<name>`` for each name (a copy where links are impossible)."""
    for name in names:
        target = view / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink((root / name).resolve(), target)
        except OSError:
            shutil.copy2(root / name, target)


def prepare_model_upload(stage_dir: str | Path, repo_id: str, work: Path, base_model: str | None = None,
                         datasets: list[str] | None = None) -> tuple[Path, list[tuple[str, int]]]:
    """Validate a checkpoint folder; return (folder to upload, its listing).

    A card rendered by this package is re-rendered for ``repo_id`` into ``work/upload`` (the other
    files linked); another card is uploaded as it is, unless it still holds the unrendered
    ``path/to/checkpoint`` snippet (refused).
    """
    from .cards import card_info_from_text, render_for_repo

    root = Path(stage_dir)
    listing = validate_checkpoint_folder(root)
    text = (root / "README.md").read_text(encoding="utf-8")
    info = card_info_from_text(text)
    if info is None:
        if PLACEHOLDER in text:
            raise ValueError(f"{root / 'README.md'} still says {PLACEHOLDER!r} and was not rendered by this version "
                             "of spectrafm-hf, so it cannot be re-rendered for the repo id; render it with "
                             "spectrafm_hf.hub.cards.render_card(CardInfo(..., repo_id=...)) first")
        if base_model or datasets:
            raise ValueError(f"{root / 'README.md'} was not rendered by spectrafm-hf, so --base-model/--dataset "
                             "cannot be added to it; edit its YAML metadata instead")
        return root, listing
    view = work / "upload"
    _link_files(root, [name for name, _ in listing if name != "README.md"], view)
    render_for_repo(info, repo_id, base_model=base_model, datasets=datasets).save(view / "README.md")
    return view, list_checkpoint_files(view)


def prepare_dataset_upload(folder: str | Path, repo_id: str, work: Path) -> tuple[Path, list[tuple[str, int]]]:
    """A dataset folder in the Hub layout, with a card rendered for ``repo_id``, in ``work/upload``.

    An Arrow (``save_to_disk``) folder is exported (Parquet shards that keep the grid); a folder
    already in the Hub layout is checked (every shard's grid equals ``wavelength.json``'s), its shards
    and grid file linked and its card re-rendered.
    """
    from ..data.hub_layout import dataset_folder_layout, describe_hub_folder, export_hub_dataset
    from ..data.schema import WAVELENGTH_FILE, write_dataset_card

    root = Path(folder)
    view = work / "upload"
    if dataset_folder_layout(root) == "arrow":
        export_hub_dataset(root, view, repo_id=repo_id)
    else:
        payload, features, sizes, shards = describe_hub_folder(root)
        _link_files(root, shards, view)
        (view / WAVELENGTH_FILE).write_text(json.dumps({"spectrafm": payload}))
        write_dataset_card(view, payload, features, sizes, layout="parquet", repo_id=repo_id)
    return view, list_checkpoint_files(view)


def prepare_upload(folder: str | Path, repo_type: str, repo_id: str, work: Path, base_model: str | None = None,
                   datasets: list[str] | None = None) -> tuple[Path, list[tuple[str, int]]]:
    """(folder to upload, its listing) for a checkpoint or dataset folder; see the two ``prepare_*``."""
    if repo_type == "dataset":
        if base_model or datasets:
            raise ValueError("--base-model and --dataset describe a model's lineage; a dataset repo takes neither")
        return prepare_dataset_upload(folder, repo_id, work)
    return prepare_model_upload(folder, repo_id, work, base_model, datasets)


def publish_folder(stage_dir: str | Path, repo_id: str, *, revision: str | None = None,
                   private: bool = False, commit_message: str | None = None, api=None, repo_type: str = "auto",
                   base_model: str | None = None, datasets: list[str] | None = None):
    """Upload a validated checkpoint or dataset folder. Returns the ``CommitInfo`` of ``upload_folder``.

    Operations, in order: ``create_repo(repo_id, private=..., exist_ok=True, repo_type=...)``; if
    ``revision``, ``create_branch(repo_id, branch=revision, exist_ok=True, repo_type=...)``;
    ``upload_folder`` of exactly the listed files (``allow_patterns``) of the prepared folder (see
    :func:`prepare_upload`). Errors of the Hub (auth, network, rejected upload) propagate.
    """
    return _publish(stage_dir, repo_id, revision=revision, private=private, commit_message=commit_message, api=api,
                    repo_type=repo_type, base_model=base_model, datasets=datasets)[0]


def _publish(stage_dir, repo_id, *, revision, private, commit_message, api, repo_type, base_model, datasets):
    """:func:`publish_folder`, also returning the number of files uploaded."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    repo_type = resolve_repo_type(stage_dir, repo_type)
    with tempfile.TemporaryDirectory(prefix="spectrafm-publish-") as work:
        folder, listing = prepare_upload(stage_dir, repo_type, repo_id, Path(work), base_model, datasets)
        api = api or HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type=repo_type)
        kind = "checkpoint" if repo_type == "model" else "dataset"
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type=repo_type,
            revision=revision,
            commit_message=commit_message or f"Upload SpectraFM {kind} {Path(stage_dir).name}",
            allow_patterns=[name for name, _ in listing],
        )
    return info, len(listing)


def _cannot_reach_hub() -> str | None:
    """Why an upload cannot start (offline, no token), or None."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        return ("HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset it to upload, or use --dry-run to "
                "check the folder.")
    if get_token() is None:
        return ("no Hugging Face token found; run `hf auth login` or set HF_TOKEN (a token with write access to "
                "the target namespace).")
    return None


def check_revision(revision: str | None) -> None:
    """Refuse a ``--revision`` that cannot be a Hub branch name (empty, spaces, ``..``, a leading ``-`` or
    ``/``, characters git refuses), naming it, before anything is read or uploaded."""
    if revision is None:
        return
    bad = (not revision.strip() or revision != revision.strip() or revision.startswith(("-", "/")) or
           revision.endswith(("/", ".lock", ".")) or ".." in revision or "//" in revision or
           any(ch in revision for ch in " ~^:?*[\\") or any(ord(ch) < 32 for ch in revision))
    if bad:
        raise ValueError(f"--revision {revision!r} is not a valid branch name; use letters, digits, '-', '_', '.' "
                         "and '/' (e.g. --revision stage1)")


def run_publish(args) -> int:
    """CLI entry: ``spectrafm publish FOLDER --repo-id ORG/NAME [--repo-type auto|model|dataset]
    [--revision B] [--private] [--base-model ORG/NAME] [--dataset ORG/NAME ...] [--dry-run]``.

    Returns 0 on success; 1 when the Hub cannot be reached or refuses (message on stderr). Bad input
    (incomplete folder, bad repo id) raises ``ValueError``/``FileNotFoundError`` (the CLI exits 2).
    """
    check_repo_id(args.repo_id)  # before reading the folder: a bad id is refused even in a dry run
    check_revision(getattr(args, "revision", None))
    repo_type = resolve_repo_type(args.stage_dir, getattr(args, "repo_type", None) or "auto")
    base_model, datasets = getattr(args, "base_model", None), list(getattr(args, "dataset", None) or [])
    if base_model is not None:
        check_repo_id(base_model)
    target = args.repo_id + (f" (branch {args.revision})" if args.revision else "")
    if args.dry_run:
        with tempfile.TemporaryDirectory(prefix="spectrafm-publish-") as work:
            _, listing = prepare_upload(args.stage_dir, repo_type, args.repo_id, Path(work), base_model, datasets)
            print(f"dry run: would upload {args.stage_dir} to https://huggingface.co/"
                  f"{'datasets/' if repo_type == 'dataset' else ''}{target} as a {repo_type} repo"
                  f"{' (private)' if args.private else ''}:")
            print(format_listing(listing))
        return 0
    problem = _cannot_reach_hub()
    if problem:
        print(f"spectrafm publish: error: {problem}", file=sys.stderr)
        return 1
    try:
        info, n_files = _publish(args.stage_dir, args.repo_id, revision=args.revision, private=args.private,
                                 commit_message=args.commit_message, api=None, repo_type=repo_type,
                                 base_model=base_model, datasets=datasets)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # any Hub/network failure: report it, never a half-silent traceback
        print(f"spectrafm publish: error: upload to {target} failed ({type(err).__name__}: {err}). "
              "Nothing local was changed; check the token's write access, the repo id and the network, "
              "then re-run.", file=sys.stderr)
        return 1
    url = getattr(info, "commit_url", None) or f"https://huggingface.co/{args.repo_id}"
    print(f"uploaded {n_files} files to {target}: {url}")
    return 0
