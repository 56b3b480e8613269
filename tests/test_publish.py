"""``spectrafm publish``: folder validation, dry-run listing, exact HfApi calls, clear failures.

The Hub is never contacted: ``HfApi`` is replaced by a recording fake at the module boundary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from spectrafm_hf.checkpoints import MODEL_CODE_FILES, save_checkpoint
from spectrafm_hf.hub import publish

CARD = "---\nlicense: mit\n---\n# card\n"


@pytest.fixture
def checkpoint_source(tiny_model, feature_extractor, tmp_path_factory) -> Path:
    """One real tiny checkpoint (strictly loadable) that ``_make_folder`` copies."""
    return save_checkpoint(tiny_model, feature_extractor, tmp_path_factory.mktemp("src") / "ckpt", card=CARD)


@pytest.fixture
def make_folder(checkpoint_source):
    """``make_folder(root)``: a complete checkpoint folder at ``root`` plus a hidden ``.cache`` that is
    never uploaded."""
    def make(root: Path) -> Path:
        shutil.copytree(checkpoint_source, root)
        (root / ".cache").mkdir()
        (root / ".cache" / "junk").write_text("never uploaded")
        return root

    return make


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _args(stage_dir, **kw):
    base = dict(stage_dir=str(stage_dir), repo_id="org/spectrafm", revision=None, private=False,
                dry_run=False, commit_message=None)
    base.update(kw)
    return argparse.Namespace(**base)


class FakeApi:
    """Records every call; ``fail_on`` makes that method raise like a rejected request."""

    instances: list["FakeApi"] = []

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail_on = fail_on
        FakeApi.instances.append(self)

    def _record(self, name, args, kwargs):
        self.calls.append((name, args, kwargs))
        if name == self.fail_on:
            raise RuntimeError("403 Forbidden: you do not have write access to org/spectrafm")

    def create_repo(self, *a, **k):
        self._record("create_repo", a, k)

    def create_branch(self, *a, **k):
        self._record("create_branch", a, k)

    def upload_folder(self, *a, **k):
        self._record("upload_folder", a, k)
        # what the Hub would receive, read now: a prepared folder is temporary
        self.uploaded = {name: (Path(k["folder_path"]) / name).read_bytes() for name in k["allow_patterns"]}
        return argparse.Namespace(commit_url="https://huggingface.co/org/spectrafm/commit/abc")


@pytest.fixture
def fake_hub(monkeypatch):
    FakeApi.instances.clear()
    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_fake")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    return FakeApi


def test_upload_makes_exactly_these_calls(make_folder, tmp_path, fake_hub, capsys):
    folder = make_folder(tmp_path / "stage3")
    before = _snapshot(folder)
    assert publish.run_publish(_args(folder, revision="stage3", private=True, commit_message="stage 3")) == 0
    (api,) = fake_hub.instances
    expected_files = sorted(["README.md", "config.json", "model.safetensors", "preprocessor_config.json",
                             *MODEL_CODE_FILES])
    assert api.calls == [
        ("create_repo", ("org/spectrafm",), {"private": True, "exist_ok": True, "repo_type": "model"}),
        ("create_branch", ("org/spectrafm",), {"branch": "stage3", "exist_ok": True, "repo_type": "model"}),
        ("upload_folder", (), {"repo_id": "org/spectrafm", "folder_path": str(folder), "repo_type": "model",
                               "revision": "stage3", "commit_message": "stage 3",
                               "allow_patterns": expected_files}),
    ]
    assert "uploaded 8 files to org/spectrafm (branch stage3)" in capsys.readouterr().out
    assert _snapshot(folder) == before


def test_no_revision_means_no_branch_and_a_default_message(make_folder, tmp_path, fake_hub):
    folder = make_folder(tmp_path / "stage1")
    assert publish.run_publish(_args(folder)) == 0
    names = [c[0] for c in fake_hub.instances[0].calls]
    assert names == ["create_repo", "upload_folder"]
    upload_kwargs = fake_hub.instances[0].calls[1][2]
    assert upload_kwargs["revision"] is None and "stage1" in upload_kwargs["commit_message"]


def test_dry_run_lists_files_with_sizes_and_never_touches_the_hub(make_folder, tmp_path, monkeypatch, capsys):
    def explode(*a, **k):
        raise AssertionError("dry run must not build an HfApi")

    monkeypatch.setattr("huggingface_hub.HfApi", explode)
    folder = make_folder(tmp_path / "stage2")
    before = _snapshot(folder)
    assert publish.run_publish(_args(folder, dry_run=True)) == 0
    out = capsys.readouterr().out
    assert "would upload" in out and "org/spectrafm" in out
    size = (folder / "model.safetensors").stat().st_size
    assert any(line.startswith("model.safetensors") and f"{size} B" in line and "KiB)" in line
               for line in out.splitlines())
    assert ".cache" not in out and "junk" not in out
    assert "8 files" in out
    assert _snapshot(folder) == before


def test_training_state_and_pickles_of_a_pipeline_stage_are_never_listed(make_folder, tmp_path):
    """A pipeline stage folder also holds Accelerate's resume state (pickled RNG states, optimizer) and
    tracker logs: they are training by-products and must not reach the Hub."""
    folder = make_folder(tmp_path / "stage3")
    (folder / "state").mkdir()
    (folder / "state" / "random_states_0.pkl").write_bytes(b"pickle")
    (folder / "state" / "optimizer.bin").write_bytes(b"x")
    (folder / "logs" / "stage3").mkdir(parents=True)
    (folder / "logs" / "stage3" / "events.out.tfevents.1").write_bytes(b"x")
    (folder / "metrics.jsonl").write_text("{}\n")
    names = [name for name, _ in publish.list_checkpoint_files(folder)]
    assert not any(n.startswith(("state/", "logs/")) or n.endswith((".pkl", ".bin")) for n in names), names
    assert "model.safetensors" in names and "metrics.jsonl" in names


@pytest.mark.parametrize("fail_on", ["create_repo", "create_branch", "upload_folder"])
def test_rejected_operation_gives_error_and_nonzero_exit(make_folder, tmp_path, fake_hub, monkeypatch, capsys, fail_on):
    monkeypatch.setattr("huggingface_hub.HfApi", lambda: FakeApi(fail_on=fail_on))
    folder = make_folder(tmp_path / "s")
    before = _snapshot(folder)
    assert publish.run_publish(_args(folder, revision="b")) == 1
    err = capsys.readouterr().err
    assert "upload to org/spectrafm (branch b) failed" in err and "403 Forbidden" in err
    assert _snapshot(folder) == before


def test_no_token_and_offline_fail_clearly_before_any_call(make_folder, tmp_path, fake_hub, monkeypatch, capsys):
    folder = make_folder(tmp_path / "s")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert publish.run_publish(_args(folder)) == 1
    assert "no Hugging Face token" in capsys.readouterr().err
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert publish.run_publish(_args(folder)) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert fake_hub.instances == []


def test_incomplete_folder_is_refused_naming_every_missing_piece(make_folder, tmp_path, fake_hub):
    folder = make_folder(tmp_path / "s")
    (folder / "model.safetensors").unlink()
    (folder / "modeling_spectrafm.py").unlink()
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]["AutoFeatureExtractor"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as err:
        publish.run_publish(_args(folder))
    message = str(err.value)
    assert "missing modeling_spectrafm.py" in message and "missing weights" in message
    assert "auto_map lacks AutoFeatureExtractor" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        publish.run_publish(_args(tmp_path / "nowhere"))
    assert fake_hub.instances == []


@pytest.mark.parametrize("revision", ["", " stage1", "stage 1", "-x", "a..b", "stage1/", "x:y", "x.lock"])
def test_bad_revision_is_refused_before_any_hub_call(make_folder, tmp_path, fake_hub, revision):
    folder = make_folder(tmp_path / "s")
    with pytest.raises(ValueError, match="is not a valid branch name"):
        publish.run_publish(_args(folder, revision=revision))
    assert fake_hub.instances == []
    for good in ("stage1", "v1.0", "runs/seed-0"):
        publish.check_revision(good)


@pytest.mark.parametrize("repo_id", ["just-a-name", "../../etc", "a/b/c", "", "org/..", "org/x--y", "/x"])
def test_bad_repo_id(make_folder, tmp_path, fake_hub, repo_id):
    """A repo id that is not ``owner/name`` is refused before any Hub call (the Hub's own validator judges
    the characters). The CLI probes (dry run, exit 2, one line) are in test_bad_inputs.py."""
    folder = make_folder(tmp_path / "s")
    api = FakeApi()
    with pytest.raises(ValueError, match="owner/name"):
        publish.publish_folder(folder, repo_id, api=api)
    assert api.calls == []
    assert publish.check_repo_id("my-org/spectrafm-stage3") == "my-org/spectrafm-stage3"


def test_cli_dry_run_exit_code_and_missing_folder(make_folder, tmp_path, capsys):
    """The real CLI entry point (``spectrafm_hf.cli.main``): dry run exits 0; a bad folder exits 2 with a
    one-line error."""
    from spectrafm_hf.cli import main

    folder = make_folder(tmp_path / "s")
    assert main(["publish", str(folder), "--repo-id", "org/x", "--dry-run"]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert main(["publish", str(tmp_path / "nope"), "--repo-id", "org/x", "--dry-run"]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---- issue 14: cards rendered for the repo id; dataset folders ------------------------------------------

@pytest.fixture
def rendered_checkpoint(tiny_model, feature_extractor, tmp_path):
    """A checkpoint whose card was rendered by this package for its local run folder."""
    from spectrafm_hf.hub.cards import CardInfo, render_card

    info = CardInfo(stage="stage3", labels=["FE_H"], training_data="100 stars.", pixels=(4107, 4619),
                    base_model="runs/quickstart/stage2", local_path="runs/quickstart/stage3", context_length=32)
    return save_checkpoint(tiny_model, feature_extractor, tmp_path / "stage3", card=render_card(info))


def test_a_rendered_card_is_re_rendered_for_the_repo_id(rendered_checkpoint, fake_hub, capsys):
    from huggingface_hub import ModelCard

    folder = rendered_checkpoint
    before = _snapshot(folder)
    assert publish.run_publish(_args(folder, repo_id="org/spectrafm-stage3", base_model="org/spectrafm-stage2",
                                     dataset=["org/sim-observed"])) == 0
    (api,) = fake_hub.instances
    upload = api.calls[-1][2]
    assert upload["folder_path"] != str(folder) and upload["repo_type"] == "model"
    card = ModelCard(api.uploaded["README.md"].decode())
    assert card.data.base_model == "org/spectrafm-stage2" and card.data.datasets == ["org/sim-observed"]
    body = card.text.split("<!--")[0]
    assert 'checkpoint = "org/spectrafm-stage3"' in body and "runs/quickstart" not in body
    for name, content in api.uploaded.items():  # every other file is the local one, byte for byte
        if name != "README.md":
            assert hashlib.sha256(content).hexdigest() == before[name]
    assert _snapshot(folder) == before
    assert "uploaded 8 files to org/spectrafm-stage3" in capsys.readouterr().out


def test_an_unrendered_placeholder_card_is_refused(make_folder, tmp_path, fake_hub):
    folder = make_folder(tmp_path / "old")
    (folder / "README.md").write_text('---\nlicense: mit\n---\nmodel = load_model("path/to/checkpoint")\n')
    with pytest.raises(ValueError, match="path/to/checkpoint"):
        publish.run_publish(_args(folder))
    with pytest.raises(ValueError, match="not rendered by spectrafm-hf"):
        publish.run_publish(_args(make_folder(tmp_path / "foreign"), base_model="org/parent"))
    assert fake_hub.instances == []


@pytest.fixture
def dataset_folder(tmp_path):
    import numpy as np

    from spectrafm_hf.data.schema import write_dataset

    def batches(n):
        def make():
            yield {"id": np.array([f"s{i}" for i in range(n)]), "flux": np.ones((n, 6), np.float32)}
        return make

    write_dataset(tmp_path / "sim", {"train": batches(4), "test": batches(2)}, np.linspace(15200, 15210, 6),
                  {"source": "table", "path": "x.npz"})
    return tmp_path / "sim"


def test_a_dataset_folder_is_published_as_a_hub_dataset(dataset_folder, fake_hub, capsys):
    import io
    import json as _json

    import pyarrow.parquet as pq
    from huggingface_hub import DatasetCard

    before = _snapshot(dataset_folder)
    assert publish.run_publish(_args(dataset_folder, repo_id="org/sim-spectra", revision="v1")) == 0
    (api,) = fake_hub.instances
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert all(c[2]["repo_type"] == "dataset" for c in api.calls)
    assert sorted(api.uploaded) == ["README.md", "data/test-00000-of-00001.parquet",
                                    "data/train-00000-of-00001.parquet", "wavelength.json"]
    shard = pq.read_table(io.BytesIO(api.uploaded["data/train-00000-of-00001.parquet"]))
    assert _json.loads(shard.schema.metadata[b"spectrafm"])["wavelength_vac_A"][0] == 15200.0
    card = DatasetCard(api.uploaded["README.md"].decode())
    assert 'load_dataset("org/sim-spectra")' in card.text and str(dataset_folder) not in card.text.split("## Splits")[0]
    assert "Upload SpectraFM dataset sim" == api.calls[-1][2]["commit_message"]
    assert _snapshot(dataset_folder) == before
    assert "uploaded 4 files to org/sim-spectra (branch v1)" in capsys.readouterr().out


def test_a_hub_layout_folder_keeps_its_shards_and_gets_a_new_card(dataset_folder, tmp_path, fake_hub):
    from spectrafm_hf.data.hub_layout import export_hub_dataset

    hub = export_hub_dataset(dataset_folder, tmp_path / "hub")
    before = _snapshot(hub)
    assert publish.run_publish(_args(hub, repo_id="org/sim-spectra")) == 0
    (api,) = fake_hub.instances
    for name in ("data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"):
        assert hashlib.sha256(api.uploaded[name]).hexdigest() == before[name]
    assert b'load_dataset("org/sim-spectra")' in api.uploaded["README.md"]
    assert _snapshot(hub) == before


def test_dataset_dry_run_and_repo_type_checks(dataset_folder, make_folder, tmp_path, monkeypatch, capsys):
    from spectrafm_hf.cli import main

    def explode(*a, **k):
        raise AssertionError("dry run must not build an HfApi")

    monkeypatch.setattr("huggingface_hub.HfApi", explode)
    assert main(["publish", str(dataset_folder), "--repo-id", "org/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "datasets/org/x as a dataset repo" in out and "data/train-00000-of-00001.parquet" in out
    assert "4 files" in out
    assert main(["publish", str(dataset_folder), "--repo-id", "org/x", "--repo-type", "model", "--dry-run"]) == 2
    assert "is a dataset folder" in capsys.readouterr().err
    checkpoint = make_folder(tmp_path / "ckpt")
    assert main(["publish", str(checkpoint), "--repo-id", "org/x", "--repo-type", "dataset", "--dry-run"]) == 2
    (tmp_path / "neither").mkdir()
    (tmp_path / "neither" / "notes.txt").write_text("x")
    assert main(["publish", str(tmp_path / "neither"), "--repo-id", "org/x", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "neither a checkpoint folder" in err and "inside it" not in err
    make_folder(tmp_path / "neither" / "stage3")  # a pipeline run: the checkpoints one level down are named
    assert main(["publish", str(tmp_path / "neither"), "--repo-id", "org/x", "--dry-run"]) == 2
    assert f"the checkpoints inside it: {tmp_path / 'neither' / 'stage3'}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="a dataset repo takes neither"):
        publish.run_publish(_args(dataset_folder, dry_run=True, base_model="org/parent"))
