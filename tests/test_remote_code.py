"""Remote code: a checkpoint written by ``save_checkpoint`` loads with ``trust_remote_code=True`` in a
fresh Python process that CANNOT import ``spectrafm_hf``, and predicts exactly what the package predicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _isolated_child import REPO, run_isolated

from spectrafm_hf import SpectraFMConfig, SpectraFMFeatureExtractor
from spectrafm_hf.checkpoints import MODEL_CODE_FILES, check_self_contained, save_checkpoint
from spectrafm_hf.hub.cards import CardInfo, render_card
from spectrafm_hf.modeling_spectrafm import SpectraFMForLabelPrediction

REQUEST = ["FE_H", "TEFF"]

# The child's work after the isolating preamble: load each checkpoint and write its predictions.
CHILD = '''
    if job.get("import_package"):  # the "installed package" case: lift the block, import it
        sys.meta_path.pop(0)
        sys.path.insert(0, REPO)
        import spectrafm_hf  # noqa: F401
    import transformers
    from transformers import AutoFeatureExtractor
    data = np.load(job["inputs"])
    result = {}
    for i, source in enumerate(job["sources"]):
        kwargs = {"trust_remote_code": True} if job["remote"] else {}
        model = getattr(transformers, job.get("auto_class", "AutoModel")).from_pretrained(source, **kwargs).eval()
        fe = AutoFeatureExtractor.from_pretrained(source, **kwargs)
        batch = fe(data["wavelength"], data["flux"], mask=data["mask"], request=job["request"])
        with torch.no_grad():
            out = model(**batch)
        value, sigma = fe.to_physical(job["request"], out.mean, out.log_variance)
        result[f"value_{i}"], result[f"sigma_{i}"] = value, sigma
        result[f"module_{i}"] = np.array([type(model).__module__, type(fe).__module__])
    np.savez(job["output"], **result)
'''


def make_tiny_checkpoint(out_dir: Path, seed: int = 0) -> Path:
    """A tiny, randomly initialised SpectraFM checkpoint (log wavelength encoding, 5 labels), saved with
    ``save_checkpoint`` and a rendered stage-1 card."""
    torch.manual_seed(seed)
    model = SpectraFMForLabelPrediction(SpectraFMConfig.tiny()).eval()
    fe = SpectraFMFeatureExtractor(flux_median=0.98, flux_std=0.05, trained_wavelength_range=[15100.0, 17000.0],
                                   context_length=64)
    card = CardInfo(stage="stage1", labels=list(model.config.named_tokens),
                    training_data="Random initialisation (a test fixture, never trained).",
                    wavelength_range_A=(15100.0, 17000.0), repo_id="org/spectrafm-tiny")
    return save_checkpoint(model, fe, out_dir, card=render_card(card))


def make_inputs(path: Path, n: int = 3, n_pixels: int = 300, seed: int = 0) -> Path:
    """Spectra for the child process: (P,) wavelength (Å), (N, P) flux, (N, P) mask."""
    rng = np.random.default_rng(seed)
    wavelength = np.sort(rng.uniform(15150.0, 16950.0, n_pixels))
    flux = 1.0 - 0.2 * rng.random((n, n_pixels)) ** 4 + 0.01 * rng.standard_normal((n, n_pixels))
    mask = rng.random((n, n_pixels)) < 0.05
    np.savez(path, wavelength=wavelength, flux=flux, mask=mask)
    return path


def predict_here(source, inputs: Path, request=REQUEST):
    """The installed package's predictions (this process), with the same steps as the child."""
    from transformers import AutoFeatureExtractor, AutoModel

    return predict_with(AutoModel.from_pretrained(source).eval(), AutoFeatureExtractor.from_pretrained(source),
                        inputs, request)


def predict_with(model, fe, inputs: Path, request=REQUEST):
    """(value, sigma) in physical units of ``model`` (in eval mode) and ``fe`` on the spectra of
    ``inputs``, on one thread, with the same steps as the child."""
    data = np.load(inputs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch = fe(data["wavelength"], data["flux"], mask=data["mask"], request=request)
        with torch.no_grad():
            out = model(**batch)
    finally:
        torch.set_num_threads(threads)
    return fe.to_physical(request, out.mean, out.log_variance)


def run_child(tmp_path: Path, sources: list[str], inputs: Path, remote: bool, env_extra: dict | None = None,
              import_package: bool = False, auto_class: str = "AutoModel") -> dict:
    """Run CHILD in a process that cannot import spectrafm_hf (:func:`run_isolated`); return its
    predictions (models loaded with ``auto_class``)."""
    output = tmp_path / f"child_out_{len(list(tmp_path.glob('child_out_*')))}.npz"
    run_isolated(tmp_path, CHILD, {"sources": sources, "inputs": str(inputs), "request": REQUEST, "remote": remote,
                                   "output": str(output), "import_package": import_package,
                                   "auto_class": auto_class}, env_extra)
    with np.load(output) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_checkpoint_carries_code_and_full_auto_map(tiny):
    config = json.loads((tiny / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_spectrafm.SpectraFMConfig",
        "AutoModel": "modeling_spectrafm.SpectraFMModel",
        "AutoModelForPreTraining": "modeling_spectrafm.SpectraFMForLabelPrediction",
        "AutoFeatureExtractor": "feature_extraction_spectrafm.SpectraFMFeatureExtractor",
    }
    fe_config = json.loads((tiny / "preprocessor_config.json").read_text())
    assert fe_config["auto_map"] == {"AutoFeatureExtractor": "feature_extraction_spectrafm.SpectraFMFeatureExtractor"}
    for name in MODEL_CODE_FILES:
        assert (tiny / name).read_bytes() == (REPO / "spectrafm_hf" / name).read_bytes()
    assert (tiny / "model.safetensors").is_file() and not list(tiny.glob("*.bin"))
    assert (tiny / "README.md").read_text().startswith("---\n")


def test_remote_code_reproduces_installed_predictions_exactly(tiny, tmp_path):
    inputs = make_inputs(tmp_path / "spectra.npz")
    value, sigma = predict_here(tiny, inputs)
    child = run_child(tmp_path, [str(tiny)], inputs, remote=True)
    # the child really used the code that travelled with the checkpoint
    assert all(m.startswith("transformers_modules") for m in child["module_0"]), child["module_0"]
    np.testing.assert_array_equal(child["value_0"], value)
    np.testing.assert_array_equal(child["sigma_0"], sigma)
    assert np.all(np.isfinite(value)) and np.all(sigma > 0)


def test_without_trust_remote_code_the_child_cannot_load(tiny, tmp_path):
    """Control: the child's import block works (without remote code, nothing can build the model)."""
    inputs = make_inputs(tmp_path / "spectra.npz", n=1)
    result = run_isolated(tmp_path, CHILD, {"sources": [str(tiny)], "inputs": str(inputs), "request": REQUEST,
                                            "remote": False, "output": str(tmp_path / "x.npz")}, check=False)
    assert result.returncode != 0
    assert "trust_remote_code" in result.stderr


def test_self_containment_check_rejects_package_imports(tmp_path):
    bad = tmp_path / "modeling_spectrafm.py"
    bad.write_text("import torch\nfrom spectrafm_hf.data import grid\n")
    with pytest.raises(ValueError, match="line 2: imports 'spectrafm_hf.data'"):
        check_self_contained(bad)
    bad.write_text("from .data.grid import apogee_wavelength\n")
    with pytest.raises(ValueError, match="relative import of .data.grid"):
        check_self_contained(bad)
    for name in MODEL_CODE_FILES:  # the package's own files pass
        check_self_contained(REPO / "spectrafm_hf" / name)


def test_save_checkpoint_takes_rendered_cards_only(tmp_path):
    """The writer sits below the Hub layer: Markdown text or an object with ``.save`` is written as
    README.md; an unrendered ``CardInfo`` is refused before anything is written."""
    model = SpectraFMForLabelPrediction(SpectraFMConfig.tiny()).eval()
    fe = SpectraFMFeatureExtractor(flux_median=1.0, flux_std=0.05, context_length=64)
    folder = save_checkpoint(model, fe, tmp_path / "text", card="---\nlicense: mit\n---\n# A card\n")
    assert "# A card" in (folder / "README.md").read_text()
    assert not (save_checkpoint(model, fe, tmp_path / "none") / "README.md").exists()
    info = CardInfo(stage="stage1", labels=["FE_H"], training_data="nothing")
    with pytest.raises(TypeError, match="render_card"):
        save_checkpoint(model, fe, tmp_path / "info", card=info)
    assert not (tmp_path / "info").exists()


def test_checkpoints_module_never_imports_the_hub_layer():
    import ast

    tree = ast.parse((REPO / "spectrafm_hf" / "checkpoints.py").read_text(encoding="utf-8"))
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not [name for name in imported if name == "hub" or name.startswith(("hub.", "spectrafm_hf.hub"))]
