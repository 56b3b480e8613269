"""Every save route writes the same complete, self-contained checkpoint folder (issue 12, item 1).

Routes: ``model.save_pretrained`` + ``feature_extractor.save_pretrained``; ``Trainer.save_model`` with
``processing_class=feature_extractor``; ``model.push_to_hub`` + ``feature_extractor.push_to_hub``
(stopped at the ``HfApi`` boundary: the folder transformers uploads is captured, no network); and the
package's ``save_checkpoint``. Each folder then loads with ``trust_remote_code=True`` in ONE child
process that cannot import ``spectrafm_hf`` (the harness of ``test_remote_code.py``) and predicts
exactly what the in-process model predicts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_remote_code import REPO, make_inputs, predict_with, run_child

from spectrafm_hf import SpectraFMConfig, SpectraFMFeatureExtractor
from spectrafm_hf.checkpoints import CHECKPOINT_FILES, MODEL_CODE_FILES, save_checkpoint
from spectrafm_hf.hub.publish import list_checkpoint_files, validate_checkpoint_folder
from spectrafm_hf.modeling_spectrafm import SpectraFMForLabelPrediction

CARD = "---\nlicense: mit\nlibrary_name: transformers\ntags:\n- spectrafm\n---\n# SpectraFM tiny (test)\n"
FULL_AUTO_MAP = {
    "AutoConfig": "configuration_spectrafm.SpectraFMConfig",
    "AutoModel": "modeling_spectrafm.SpectraFMModel",
    "AutoModelForPreTraining": "modeling_spectrafm.SpectraFMForLabelPrediction",
    "AutoFeatureExtractor": "feature_extraction_spectrafm.SpectraFMFeatureExtractor",
}
#: The folder without its card; routes given a card add README.md.
CORE_FILES = set(CHECKPOINT_FILES) - {"README.md"}


def _fresh_pair():
    """A never-saved tiny task model (eval mode) and feature extractor: no auto_map set by an earlier save."""
    torch.manual_seed(0)
    model = SpectraFMForLabelPrediction(SpectraFMConfig.tiny()).eval()
    fe = SpectraFMFeatureExtractor(flux_median=0.98, flux_std=0.05, trained_wavelength_range=[15100.0, 17000.0],
                                   context_length=64)
    assert getattr(model.config, "auto_map", None) is None and getattr(fe, "auto_map", None) is None
    return model, fe


def _save_pretrained(model, fe, out: Path) -> None:
    model.save_pretrained(out)
    fe.save_pretrained(out)


def _trainer_save_model(model, fe, out: Path) -> None:
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(out.parent / "trainer_run"), use_cpu=True, report_to="none")
    Trainer(model=model, args=args, processing_class=fe).save_model(str(out))


def _push_to_hub(model, fe, out: Path, monkeypatch) -> list[str]:
    """Push both objects to a fake Hub repo whose files land in ``out``; return the commit messages.

    ``HfApi.create_repo`` / ``create_commit`` (what ``PushToHubMixin.push_to_hub`` calls) are replaced
    by fakes that copy each uploaded file; the repo's existing card (read by ``ModelCard.load``) is CARD.
    """
    from huggingface_hub import HfApi, ModelCard

    commits = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, commit_message=None, **kwargs):
        for op in operations:  # the temporary folder is deleted when push_to_hub returns: copy now
            (out / op.path_in_repo).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(op.path_or_fileobj, out / op.path_in_repo)
        commits.append(commit_message)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(ModelCard, "load", classmethod(lambda cls, repo_id, **kwargs: ModelCard(CARD)))
    out.mkdir(parents=True)
    model.push_to_hub("org/spectrafm-tiny")
    fe.push_to_hub("org/spectrafm-tiny")
    return commits


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    """route name → (folder, in-process model, feature extractor); each route saves its own fresh copy."""
    root = tmp_path_factory.mktemp("routes")
    model, fe = _fresh_pair()
    folders = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in ("save_pretrained", "trainer", "push_to_hub", "save_checkpoint"):
            route_model, route_fe = copy.deepcopy(model), copy.deepcopy(fe)
            out = root / name  # distinct names: each child load gets its own transformers_modules entry
            if name == "save_pretrained":
                _save_pretrained(route_model, route_fe, out)
            elif name == "trainer":
                _trainer_save_model(route_model, route_fe, out)
            elif name == "push_to_hub":
                commits = _push_to_hub(route_model, route_fe, out, monkeypatch)
                assert len(commits) == 2 and commits[1] == "Upload feature extractor", commits
            else:
                save_checkpoint(route_model, route_fe, out, card=CARD)
            folders[name] = (out, route_model, route_fe)
    return folders


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_route_writes_the_same_complete_folder(routes):
    reference = routes["save_checkpoint"][0]
    for name, (folder, _, _) in routes.items():
        files = {p.name for p in folder.iterdir()}
        extra = {"training_args.bin"} if name == "trainer" else set()  # transformers' own; never published
        card = {"README.md"} if name in ("push_to_hub", "save_checkpoint") else set()
        assert files == CORE_FILES | card | extra, name
        assert json.loads((folder / "config.json").read_text())["auto_map"] == FULL_AUTO_MAP, name
        fe_config = json.loads((folder / "preprocessor_config.json").read_text())
        assert fe_config["auto_map"] == {"AutoFeatureExtractor": FULL_AUTO_MAP["AutoFeatureExtractor"]}, name
        for code in MODEL_CODE_FILES:  # the package's own files, unchanged
            assert (folder / code).read_bytes() == (REPO / "spectrafm_hf" / code).read_bytes(), (name, code)
        for same in CORE_FILES - {"config.json"}:  # byte for byte the folder save_checkpoint writes
            assert _digest(folder / same) == _digest(reference / same), (name, same)
        config, expected = (json.loads((f / "config.json").read_text()) for f in (folder, reference))
        if name == "trainer":  # Trainer.__init__ sets config.use_cache = args.use_cache (False)
            assert config.pop("use_cache") is False
        assert config == expected, name
        if card:
            assert (folder / "README.md").read_text() == CARD, name


def test_every_route_loads_without_the_package_with_identical_predictions(routes, tmp_path):
    inputs = make_inputs(tmp_path / "spectra.npz")
    names = list(routes)
    child = run_child(tmp_path, [str(routes[name][0]) for name in names], inputs, remote=True,
                      auto_class="AutoModelForPreTraining")
    for i, name in enumerate(names):
        _, model, fe = routes[name]
        value, sigma = predict_with(model, fe, inputs)
        # the child ran the code files that travelled with this folder, not the package
        assert all(m.startswith("transformers_modules") for m in child[f"module_{i}"]), (name, child[f"module_{i}"])
        np.testing.assert_array_equal(child[f"value_{i}"], value, err_msg=name)
        np.testing.assert_array_equal(child[f"sigma_{i}"], sigma, err_msg=name)
        assert np.all(np.isfinite(value)) and np.all(sigma > 0)


def test_publish_accepts_folders_of_the_transformers_routes(routes, tmp_path):
    """``spectrafm publish``'s validation takes what save_pretrained / Trainer / push_to_hub write once a
    card is beside them, and never lists the Trainer's pickled training_args.bin."""
    for name in ("save_pretrained", "trainer", "push_to_hub"):
        folder = tmp_path / name
        shutil.copytree(routes[name][0], folder)
        if not (folder / "README.md").exists():
            with pytest.raises(ValueError, match="missing README.md"):
                validate_checkpoint_folder(folder)
            (folder / "README.md").write_text(CARD)
        listing = validate_checkpoint_folder(folder)
        assert {path for path, _ in listing} == set(CHECKPOINT_FILES) == {p for p, _ in list_checkpoint_files(folder)}


def test_a_model_saved_alone_lacks_only_the_feature_extractor(tmp_path):
    """The model does not own its feature extractor (as in every HF model with a processor): its own
    save writes weights, config, model code and the pipeline task's file; the folder is refused until the
    extractor is saved."""
    model, fe = _fresh_pair()
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "config.json", "configuration_spectrafm.py",
                                                    "modeling_spectrafm.py", "pipeline_spectrafm.py"}
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"] == FULL_AUTO_MAP
    (tmp_path / "README.md").write_text(CARD)
    with pytest.raises(ValueError, match="missing preprocessor_config.json.*missing feature_extraction_spectrafm.py"):
        validate_checkpoint_folder(tmp_path)
    fe.save_pretrained(tmp_path)
    assert {p for p, _ in validate_checkpoint_folder(tmp_path)} == set(CHECKPOINT_FILES)
