"""Checkpoint folders: the one writer (:func:`save_checkpoint`) and the one loader (:func:`load_model`).

Every save route writes the same complete, self-contained folder:

    out_dir/
        model.safetensors                 weights (never pickle)
        config.json                       SpectraFMConfig + the full auto_map (AutoConfig, AutoModel,
                                          AutoModelForPreTraining, AutoFeatureExtractor)
        preprocessor_config.json          SpectraFMFeatureExtractor + its auto_map (AutoFeatureExtractor)
        README.md                         the model card (when given)
        configuration_spectrafm.py        ┐ self-contained copies of the package's model code, so
        modeling_spectrafm.py             │ AutoModel / AutoFeatureExtractor.from_pretrained(...,
        feature_extraction_spectrafm.py   ┘ trust_remote_code=True) work where spectrafm_hf is absent

The code files and both auto_maps come from transformers' own remote-code mechanism
(``register_for_auto_class``, done once in :mod:`spectrafm_hf.registration`), so the routes agree:

* ``model.save_pretrained(dir)`` + ``feature_extractor.save_pretrained(dir)``: the model writes weights,
  config.json, configuration_spectrafm.py and modeling_spectrafm.py; the feature extractor writes
  preprocessor_config.json and feature_extraction_spectrafm.py. As for every Hugging Face model with a
  processor, the model does not own its feature extractor: ``model.save_pretrained`` alone writes no
  preprocessor config, and such a folder is not a complete checkpoint (``load_model`` and
  ``spectrafm publish`` refuse it, naming the missing file);
* ``Trainer(..., processing_class=feature_extractor).save_model(dir)``: both of the above (plus
  transformers' ``training_args.bin``, a pickle that ``spectrafm publish`` never uploads);
* ``model.push_to_hub(repo)`` + ``feature_extractor.push_to_hub(repo)``: the same files, uploaded;
* :func:`save_checkpoint` (every stage and ``spectrafm convert-original``): both ``save_pretrained``
  calls, then the model card, the self-containment check of the code that travels
  (:func:`check_travelling_code`) and the user's usual file permissions.

``load_model(name_or_path, device=None)`` reads such a folder (or a Hub repo id) back as
``(model, feature_extractor)``, safetensors only.

This module sits below :mod:`spectrafm_hf.hub` (cards, publishing, caches), which imports it; it never
imports ``hub``. A card is therefore passed in already rendered (``hub.cards.render_card``).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
from pathlib import Path

import torch

#: The files that travel with every checkpoint as remote code (siblings of this module). Adding one
#: (e.g. a custom pipeline module) is this one line: ``save_checkpoint`` then copies it if no registered
#: class saved it, checks it is self-contained, and ``spectrafm publish`` requires it.
MODEL_CODE_FILES = ("configuration_spectrafm.py", "modeling_spectrafm.py", "feature_extraction_spectrafm.py",
                    "pipeline_spectrafm.py")

#: Files of a complete checkpoint folder (README.md only when a card was given).
CHECKPOINT_FILES = ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", *MODEL_CODE_FILES)

#: auto_map keys every checkpoint needs; a task class key ("AutoModelFor...") is required in addition.
REQUIRED_AUTO_MAP_KEYS = ("AutoConfig", "AutoModel", "AutoFeatureExtractor")

#: Top-level modules the travelling files may import (besides the standard library and each other).
ALLOWED_THIRD_PARTY = {"torch", "numpy", "transformers"}


def package_code_dir() -> Path:
    """Folder holding the package's copies of the model files (``spectrafm_hf/``)."""
    return Path(__file__).resolve().parent


def check_self_contained(path: str | Path) -> None:
    """Raise ``ValueError`` if a travelling model file imports anything but the standard library, torch,
    numpy, transformers or (relatively) its siblings — such a file would break remote-code loading."""
    path = Path(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    siblings = {name[:-3] for name in MODEL_CODE_FILES}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            target = (node.module or "").split(".")[0]
            if node.level != 1 or target not in siblings:
                raise ValueError(
                    f"{path.name} line {node.lineno}: relative import of {'.' * node.level}{node.module or ''} "
                    f"— remote code may import only its siblings ({', '.join(sorted(siblings))})"
                )
            continue
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) else [])
        for name in names:
            top = (name or "").split(".")[0]
            if top in ALLOWED_THIRD_PARTY or top in sys.stdlib_module_names or top == "__future__":
                continue
            raise ValueError(
                f"{path.name} line {node.lineno}: imports {name!r}, which is not available where the "
                f"checkpoint is loaded with trust_remote_code; allowed: the standard library, "
                f"{', '.join(sorted(ALLOWED_THIRD_PARTY))} and relative sibling imports"
            )


def check_travelling_code(folder: str | Path) -> None:
    """Raise ``ValueError`` unless ``folder`` carries what remote-code loading needs: every file of
    :data:`MODEL_CODE_FILES`, each self-contained; ``config.json``'s auto_map with
    :data:`REQUIRED_AUTO_MAP_KEYS` and a task class, and its ``custom_pipelines`` entry for the pipeline
    task; ``preprocessor_config.json``'s own auto_map (AutoFeatureExtractor reads only that one once
    ``feature_extractor_type`` is set)."""
    folder = Path(folder)
    missing = [name for name in MODEL_CODE_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} lacks the remote-code file(s) {', '.join(missing)}; the classes must be "
                         "registered with register_for_auto_class (import spectrafm_hf: registration.py does it)")
    for name in MODEL_CODE_FILES:
        check_self_contained(folder / name)
    config_map = _auto_map_of(folder / "config.json")
    absent = [key for key in REQUIRED_AUTO_MAP_KEYS if key not in config_map]
    if not any(key.startswith("AutoModelFor") for key in config_map):
        absent.append("a task class (AutoModelFor...)")
    if "AutoFeatureExtractor" not in _auto_map_of(folder / "preprocessor_config.json"):
        absent.append("AutoFeatureExtractor in preprocessor_config.json")
    config_path = folder / "config.json"
    pipelines = (json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}) \
        .get("custom_pipelines") or {}
    if not any(str(spec.get("impl", "")).startswith("pipeline_spectrafm.") for spec in pipelines.values()):
        absent.append("the pipeline task in config.json's custom_pipelines")
    if absent:
        raise ValueError(f"{folder}: auto_map lacks {', '.join(absent)}; save with the classes of spectrafm_hf "
                         "after importing it (registration.py sets the full map)")


def _auto_map_of(path: Path) -> dict:
    """The ``auto_map`` of a saved JSON config ({} when the file or the key is absent)."""
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get("auto_map") or {}


def save_checkpoint(model, feature_extractor, out_dir: str | Path, card=None) -> Path:
    """Write a complete, self-contained checkpoint folder (layout in the module docstring).

    The same files as ``model.save_pretrained(out_dir)`` + ``feature_extractor.save_pretrained(out_dir)``
    (these two calls write them, through transformers' remote-code mechanism), plus the card, a check
    that the travelling code is complete and self-contained, and the user's usual file permissions.

    Args:
        model: a ``SpectraFMPreTrainedModel`` (any task class); saved in eval-ready safetensors.
        feature_extractor: the ``SpectraFMFeatureExtractor`` with the statistics the model was trained with.
        out_dir: target folder (created; existing files with the same names are replaced).
        card: the model card, already rendered: an object with ``.save(path)`` (a
            ``huggingface_hub.ModelCard``, e.g. from ``spectrafm_hf.hub.cards.render_card``) or its
            Markdown text; None writes no README.md (``spectrafm publish`` then refuses the folder).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        TypeError: ``card`` is neither a rendered card nor Markdown text (nothing is written).
        ValueError: the written folder lacks remote code or auto_map entries (:func:`check_travelling_code`).
    """
    from . import registration  # noqa: F401  (register_for_auto_class: makes save_pretrained copy the code)

    if card is not None and not isinstance(card, str) and not callable(getattr(card, "save", None)):
        raise TypeError(
            f"card must be a rendered card (an object with .save(path), e.g. a huggingface_hub.ModelCard) or "
            f"Markdown text, got {type(card).__name__}; render a CardInfo with spectrafm_hf.hub.cards.render_card"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    feature_extractor.save_pretrained(out_dir)
    _copy_code_no_class_saves(out_dir)
    check_travelling_code(out_dir)
    if card is not None:
        if isinstance(card, str):
            from huggingface_hub import ModelCard

            card = ModelCard(card)
        card.save(out_dir / "README.md")
    _with_usual_permissions(out_dir)
    return out_dir


def _copy_code_no_class_saves(out_dir: Path) -> None:
    """Copy the travelling files that no registered class's ``save_pretrained`` wrote.

    transformers copies the module of every class registered with ``register_for_auto_class`` and the
    siblings it imports relatively, which today is all of :data:`MODEL_CODE_FILES` (so this copies
    nothing); a file outside that graph (e.g. a custom pipeline module) is copied here.
    """
    for name in MODEL_CODE_FILES:
        if not (out_dir / name).is_file():
            source = package_code_dir() / name
            if not source.is_file():
                raise FileNotFoundError(f"model code file {source} is missing from the package")
            shutil.copyfile(source, out_dir / name)


def _with_usual_permissions(folder: Path) -> None:
    """Give the checkpoint's files the user's usual permissions (umask), not 0600.

    transformers writes model.safetensors through a private temporary file (mode 0600), so on a shared
    filesystem colleagues could not read a checkpoint whose other files they can see.
    """
    umask = os.umask(0)
    os.umask(umask)
    for name in CHECKPOINT_FILES:
        path = folder / name
        if path.is_file():
            path.chmod(0o666 & ~umask)


def load_model(name_or_path: str | os.PathLike, device: str | torch.device | None = None):
    """(model, feature_extractor) from a checkpoint folder or Hub repo, via the Auto classes.

    Loading is strict: the folder must hold a SpectraFM config, safetensors weights (never pickle) with
    exactly the model's tensors — a missing or unexpected tensor is an error, never a randomly
    initialised layer — and the feature extractor saved with it. The model is put in eval mode on
    ``device`` (default: CUDA when available, else CPU).

    Raises:
        FileNotFoundError: a local folder without one of the required files.
        ValueError: a file that cannot be read, a non-SpectraFM config, tensors that do not match, or
            weights that cannot be the trained ones (stored as integers/bool, NaN or inf).
    """
    from transformers import AutoFeatureExtractor

    from . import registration  # noqa: F401  (Auto class registration)

    path = str(name_or_path)
    device = resolve_device(device)
    if os.path.isdir(path):
        _check_local_folder(Path(path))
    config = _load_config(path)
    model = _load_weights_strictly(path, config)
    try:
        feature_extractor = AutoFeatureExtractor.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the feature extractor of {path} (preprocessor_config.json): "
                         f"{_first_line(err)}") from None
    feature_extractor.check_compatible(model.config)
    model.to(device).eval()
    return model, feature_extractor


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def checkpoints_inside_hint(folder: Path) -> str:
    """``"; the checkpoints inside it: RUN/stage1, RUN/stage2"`` for a folder (a pipeline run) that holds
    checkpoints one level down, else ``""``: the fix to name when such a folder is given for a checkpoint."""
    inside = sorted(child for child in Path(folder).iterdir() if (child / "config.json").is_file())
    return f"; the checkpoints inside it: {', '.join(str(child) for child in inside)}" if inside else ""


def _check_local_folder(folder: Path) -> None:
    """Name the missing file of a local checkpoint folder (transformers' messages talk about the Hub)."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a SpectraFM checkpoint folder"
                                f"{checkpoints_inside_hint(folder)}")
    if not (folder / "model.safetensors").is_file():
        pickled = [name for name in ("pytorch_model.bin", "model.pt", "weights.pt") if (folder / name).exists()]
        hint = (f" (it holds {', '.join(pickled)}: pickled weights are never loaded; an original SpectraFM "
                "checkpoint converts with `spectrafm convert-original`)") if pickled else ""
        raise FileNotFoundError(f"{folder} has no model.safetensors{hint}")
    if not (folder / "preprocessor_config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no preprocessor_config.json (the feature extractor saved with every checkpoint); "
            "write checkpoints with spectrafm_hf.checkpoints.save_checkpoint"
        )


def _load_config(path: str):
    """The checkpoint's config, which must be a SpectraFMConfig (not any model AutoConfig knows)."""
    from transformers import AutoConfig

    from .configuration_spectrafm import SpectraFMConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot read config.json of {path}: {_first_line(err)}") from None
    if not isinstance(config, SpectraFMConfig):
        raise ValueError(
            f"{path} holds a {getattr(config, 'model_type', type(config).__name__)!r} model, not a SpectraFM "
            f"checkpoint (config.json model_type must be {SpectraFMConfig.model_type!r})"
        )
    return config


def _load_weights_strictly(path: str, config):
    """The model of ``config`` with every tensor from model.safetensors, or a ValueError naming the mismatch."""
    from transformers import AutoModel

    try:
        model, info = AutoModel.from_pretrained(path, config=config, use_safetensors=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"cannot read the weights of {path} (model.safetensors): {_first_line(err)}") from None
    except Exception as err:  # safetensors' own error type (SafetensorError) does not derive from the above
        if type(err).__module__.split(".")[0] != "safetensors":
            raise
        raise ValueError(f"cannot read the weights of {path} (model.safetensors): {_first_line(err)}") from None
    problems = []
    for key, what in (("missing_keys", "missing"), ("unexpected_keys", "unexpected"),
                      ("mismatched_keys", "of the wrong shape")):
        names = sorted(str(name) for name in info.get(key) or ())
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            problems.append(f"{len(names)} tensor(s) {what}: {shown}")
    if problems or info.get("error_msgs"):
        problems += [str(msg) for msg in info.get("error_msgs") or ()]
        raise ValueError(f"{path}: model.safetensors does not match its config.json ({'; '.join(problems)}); "
                         "the checkpoint is incomplete or from another model")
    _refuse_unusable_values(path, model)
    return model


def _refuse_unusable_values(path: str, model) -> None:
    """Refuse weights whose names and shapes match but whose values cannot be the trained ones.

    transformers casts whatever dtype the file holds into the model's parameters, so an integer or
    boolean tensor where the model has floating-point weights loads silently as zeros and ones; and a
    corrupt payload can hold NaN or inf. Either would answer with a broken model. (Float-to-float
    differences, e.g. weights stored in float16, are fine.)
    """
    stored = _stored_dtypes(path)
    problems = []
    for name, tensor in model.state_dict().items():
        if name not in stored or not tensor.is_floating_point():
            continue
        if not stored[name].startswith(("F", "BF")):
            problems.append(f"{name} is stored as {stored[name]}, not floating point")
        elif not bool(torch.isfinite(tensor).all()):
            problems.append(f"{name} holds NaN or inf")
    if problems:
        shown = "; ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"{path}: model.safetensors holds weights that cannot be the trained ones ({shown}); "
                         "the file is corrupt or was not written by save_checkpoint")


def _stored_dtypes(path: str) -> dict[str, str]:
    """Tensor name → safetensors dtype code (``F32``, ``I64`` ...) of every weight file of a checkpoint
    (a local folder, or a Hub repo already in the cache: ``from_pretrained`` has just fetched it)."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    def locate(name: str) -> str | None:
        if os.path.isdir(path):
            return os.path.join(path, name) if os.path.isfile(os.path.join(path, name)) else None
        return cached_file(path, name, _raise_exceptions_for_missing_entries=False)

    single = locate("model.safetensors")
    if single is not None:
        files = [single]
    else:
        index = locate("model.safetensors.index.json")
        shards = json.loads(Path(index).read_text(encoding="utf-8"))["weight_map"].values() if index else ()
        files = [locate(name) for name in sorted(set(shards))]
    dtypes = {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():
                dtypes[name] = handle.get_slice(name).get_dtype()
    return dtypes


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``; None → CUDA when available, else CPU.

    Raises:
        ValueError: an unknown device name, or a CUDA/MPS device this machine does not have.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asked for, but MPS is not available here; use --device cpu")
    return resolved
