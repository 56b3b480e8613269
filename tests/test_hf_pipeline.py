"""The transformers pipeline task "stellar-label-prediction" (``spectrafm_hf/pipeline_spectrafm.py``):
with the package installed (registered task, file inputs) and from a checkpoint folder in a process that
cannot import ``spectrafm_hf`` (``trust_remote_code=True``), giving the numbers of ``predict_labels``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _isolated_child import REPO, run_isolated
from transformers import AutoModelForPreTraining, pipeline

from spectrafm_hf import SpectraFMConfig, SpectraFMFeatureExtractor
from spectrafm_hf.checkpoints import check_self_contained, save_checkpoint
from spectrafm_hf.modeling_spectrafm import SpectraFMForLabelPrediction
from spectrafm_hf.pipeline_spectrafm import CUSTOM_PIPELINES, TASK, SpectraFMLabelPipeline
from spectrafm_hf.predict import predict_labels

REQUEST = ["FE_H", "TEFF"]
READER = "spectrafm_hf.data.readers:read_spectra"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random checkpoint written by ``save_checkpoint``: it carries ``pipeline_spectrafm.py`` and
    the ``custom_pipelines`` entry like every save route."""
    torch.manual_seed(0)
    model = SpectraFMForLabelPrediction(SpectraFMConfig.tiny()).eval()
    fe = SpectraFMFeatureExtractor(flux_median=0.98, flux_std=0.05, trained_wavelength_range=[15100.0, 17000.0],
                                   context_length=64)
    return save_checkpoint(model, fe, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def installed(checkpoint):
    """The pipeline as an installed-package user gets it: ``import spectrafm_hf`` registered the task, so
    ``transformers.pipeline`` builds the package's class from the folder without ``trust_remote_code``,
    although the folder's config names the remote-code pipeline too."""
    return pipeline(TASK, model=str(checkpoint), device="cpu")


def spectra(n: int = 4, n_pixels: int = 300, seed: int = 0) -> dict:
    """(P,) wavelength (Å), (N, P) flux and mask, N ids."""
    rng = np.random.default_rng(seed)
    wavelength = np.sort(rng.uniform(15150.0, 16950.0, n_pixels))
    flux = 1.0 - 0.2 * rng.random((n, n_pixels)) ** 4 + 0.01 * rng.standard_normal((n, n_pixels))
    mask = rng.random((n, n_pixels)) < 0.05
    return {"wavelength": wavelength, "flux": flux, "mask": mask, "ids": np.array([f"star-{i}" for i in range(n)])}


def reference(pipe, data: dict, request=REQUEST, **options):
    """``predict_labels`` with the pipeline's model and feature extractor on the same spectra."""
    return predict_labels(pipe.model, pipe.feature_extractor, data["wavelength"], data["flux"], mask=data["mask"],
                          request=request, progress=False, **options)


def test_installed_pipeline_gives_predict_labels_numbers_with_ids_and_flags(installed):
    data = spectra()
    data["mask"][2] = True  # nothing valid: refused, NaN values, flagged
    rows = installed(data, labels=REQUEST)
    expected = reference(installed, data)
    assert isinstance(installed, SpectraFMLabelPipeline) and len(rows) == 4
    assert list(rows[0]) == ["id", "FE_H", "FE_H_err", "TEFF", "TEFF_err", "flags"]
    assert [row["id"] for row in rows] == ["star-0", "star-1", "star-2", "star-3"]
    for name in REQUEST:
        np.testing.assert_array_equal([row[name] for row in rows], expected.values[name])
        np.testing.assert_array_equal([row[f"{name}_err"] for row in rows], expected.errors[name])
    assert [row["flags"] for row in rows] == list(expected.flags)
    assert "no_valid_pixels" in rows[2]["flags"] and np.isnan(rows[2]["FE_H"])
    assert all(np.isfinite(row["FE_H"]) and row["FE_H_err"] > 0 for i, row in enumerate(rows) if i != 2)


def test_input_shapes_default_labels_and_chunked_context(installed):
    data = spectra(n=3)
    one = installed({"wavelength": data["wavelength"], "flux": data["flux"][0]})
    assert isinstance(one, dict) and list(one)[:2] == ["TEFF", "TEFF_err"]  # every label, model order
    assert set(one) == {"TEFF", "TEFF_err", "LOGG", "LOGG_err", "FE_H", "FE_H_err", "MG_FE", "MG_FE_err",
                        "O_FE", "O_FE_err", "flags"}
    several = installed([{"wavelength": data["wavelength"], "flux": data["flux"][:2]},
                         {"wavelength": data["wavelength"], "flux": data["flux"][2:]}], labels="FE_H")
    assert [len(result) for result in several] == [2, 1]
    chunked = installed(data, labels=REQUEST, context=64, spectra_per_batch=2)
    expected = reference(installed, data, context=64, batch_size=2)
    np.testing.assert_array_equal([row["FE_H_err"] for row in chunked], expected.errors["FE_H"])


def test_a_file_path_is_read_by_the_package_readers(installed, tmp_path):
    data = spectra(n=2)
    path = tmp_path / "spectra.npz"
    # a truth label column and an unknown column in the file are not model inputs
    np.savez(path, wavelength=data["wavelength"], flux=data["flux"], mask=data["mask"], id=data["ids"],
             FE_H=np.array([0.1, -0.5]), RA=np.array([10.0, 20.0]))
    rows = installed(str(path), labels=REQUEST)
    expected = reference(installed, data)
    assert [row["id"] for row in rows] == ["star-0", "star-1"]
    np.testing.assert_array_equal([row["FE_H"] for row in rows], expected.values["FE_H"])


def test_bad_inputs_are_refused_in_one_line(installed, monkeypatch):
    data = spectra(n=2)
    cases = [
        (lambda: installed({"wavelength": data["wavelength"], "fluxes": data["flux"]}), "unknown"),
        (lambda: installed({"flux": data["flux"]}), "missing"),
        (lambda: installed(data["flux"]), "takes a dict of arrays"),
        (lambda: installed(data, labels=["VMICRO"]), "VMICRO"),
        (lambda: installed(data, context=0), "context must be"),
        (lambda: installed(data, pixels="some"), "pixels must be"),
        (lambda: installed([data, data], batch_size=2), "batch_size must be 1"),
        (lambda: installed({**data, "ids": np.array(["a"])}), "ids has 1 entries"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            call()
        assert "\n" not in str(error.value)
    monkeypatch.setattr(SpectraFMLabelPipeline, "file_reader", None)  # as remote code
    with pytest.raises(ValueError, match="reading files needs the spectrafm_hf package"):
        installed("spectra.npz")


def test_import_registers_the_task_and_every_save_route_carries_the_pipeline(checkpoint, installed, tmp_path):
    """``import spectrafm_hf`` alone registers the task with file reading (no call by the user), and
    ``save_pretrained`` (which push_to_hub and Trainer.save_model call) writes the pipeline file and the
    ``custom_pipelines`` entry; in memory a loaded config drops the entry, so the installed class wins."""
    assert type(installed) is SpectraFMLabelPipeline and SpectraFMLabelPipeline.file_reader == READER
    check_self_contained(checkpoint / "pipeline_spectrafm.py")
    assert (checkpoint / "pipeline_spectrafm.py").read_bytes() == (REPO / "spectrafm_hf" / "pipeline_spectrafm.py") \
        .read_bytes()
    assert json.loads((checkpoint / "config.json").read_text())["custom_pipelines"] == CUSTOM_PIPELINES
    model = AutoModelForPreTraining.from_pretrained(checkpoint)
    assert TASK not in (getattr(model.config, "custom_pipelines", None) or {})
    model.save_pretrained(tmp_path / "resaved")  # a plain transformers save of a loaded model
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["custom_pipelines"] == CUSTOM_PIPELINES
    assert (tmp_path / "resaved" / "pipeline_spectrafm.py").is_file()
    assert TASK not in (getattr(model.config, "custom_pipelines", None) or {})  # memory unchanged by the save


# The child's work after the isolating preamble (tests/_isolated_child.py): the pipeline from remote code.
CHILD = '''
    from transformers import pipeline
    pipe = pipeline("stellar-label-prediction", model=job["model"], trust_remote_code=True, device="cpu")
    data = np.load(job["inputs"])
    rows = pipe({"wavelength": data["wavelength"], "flux": data["flux"], "mask": data["mask"]}, labels=job["request"])
    try:
        pipe("spectra.npz")
        refused = ""
    except ValueError as error:
        refused = str(error)
    json.dump({"rows": rows, "module": type(pipe).__module__, "model_module": type(pipe.model).__module__,
               "refused": refused}, open(job["output"], "w"))
'''


def test_remote_code_pipeline_without_the_package_gives_the_same_numbers(checkpoint, installed, tmp_path):
    data = spectra(n=3, seed=4)
    inputs = tmp_path / "spectra.npz"
    np.savez(inputs, wavelength=data["wavelength"], flux=data["flux"], mask=data["mask"])
    output = tmp_path / "out.json"
    run_isolated(tmp_path, CHILD, {"model": str(checkpoint), "inputs": str(inputs), "request": REQUEST,
                                   "output": str(output)})
    child = json.loads(output.read_text())
    # the child really ran the code that travelled with the checkpoint
    assert child["module"].startswith("transformers_modules") and child["module"].endswith("pipeline_spectrafm")
    assert child["model_module"].startswith("transformers_modules")
    assert "reading files needs the spectrafm_hf package" in child["refused"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = reference(installed, data)
    finally:
        torch.set_num_threads(threads)
    for name in REQUEST:
        np.testing.assert_allclose([row[name] for row in child["rows"]], expected.values[name], rtol=1e-6)
        np.testing.assert_allclose([row[f"{name}_err"] for row in child["rows"]], expected.errors[name], rtol=1e-6)
    assert [row["flags"] for row in child["rows"]] == list(expected.flags)
