"""predict_labels, load_model and ``spectrafm predict``: physical units, batching, chunks, CSV, errors."""

import csv

import numpy as np
import pytest
import torch

from spectrafm_hf.cli import main
from spectrafm_hf.predict import load_model, predict_labels


def test_predict_labels_in_physical_units_match_the_model(tiny_model, feature_extractor, toy):
    result = predict_labels(tiny_model, feature_extractor, toy["wavelength"], toy["flux"],
                            request=["TEFF", "FE_H"], batch_size=5, progress=False)
    assert result.names == ["TEFF", "FE_H"] and len(result) == 12
    with torch.no_grad():
        out = tiny_model(**feature_extractor(toy["wavelength"], toy["flux"], request=["TEFF", "FE_H"]))
    values, sigma = feature_extractor.to_physical(["TEFF", "FE_H"], out.mean, out.log_variance)
    np.testing.assert_allclose(result.values["TEFF"], values[:, 0], rtol=1e-5)
    np.testing.assert_allclose(result.errors["FE_H"], sigma[:, 1], rtol=1e-5)
    assert list(result.to_columns()) == ["TEFF", "TEFF_err", "FE_H", "FE_H_err"]


def test_chunked_prediction_covers_every_pixel_and_matches_full_when_one_chunk(tiny_model, feature_extractor, toy):
    full = predict_labels(tiny_model, feature_extractor, toy["wavelength"], toy["flux"], progress=False)
    one_chunk = predict_labels(tiny_model, feature_extractor, toy["wavelength"], toy["flux"], context=160,
                               progress=False)
    np.testing.assert_allclose(one_chunk.values["FE_H"], full.values["FE_H"], rtol=1e-5)
    chunks = predict_labels(tiny_model, feature_extractor, toy["wavelength"], toy["flux"], context="40",
                            batch_size=4, progress=False)
    assert np.isfinite(chunks.values["FE_H"]).all() and (chunks.errors["FE_H"] > 0).all()


def test_load_model_and_predict_restores_train_mode(checkpoint, toy):
    model, feature_extractor = load_model(checkpoint, device="cpu")
    assert not model.training
    model.train()
    predict_labels(model, feature_extractor, toy["wavelength"], toy["flux"][:2], progress=False)
    assert model.training


def test_load_model_refuses_pickle_only_checkpoints(checkpoint, tiny_model):
    (checkpoint / "model.safetensors").unlink()
    torch.save(tiny_model.state_dict(), checkpoint / "pytorch_model.bin")
    with pytest.raises(Exception, match="safetensors"):
        load_model(checkpoint)


def test_load_model_on_a_run_folder_names_the_checkpoints_inside(checkpoint, tmp_path):
    """``--model runs/quickstart`` (the run, not its stage) is a tired user's first try: name the stages."""
    import shutil

    run = tmp_path / "run"
    for stage in ("stage3", "stage1"):
        shutil.copytree(checkpoint, run / stage)
    (run / "figures").mkdir()
    with pytest.raises(FileNotFoundError, match=r"not a SpectraFM checkpoint folder; the checkpoints inside it: "
                                                r".*run/stage1, .*run/stage3$"):
        load_model(run)
    with pytest.raises(FileNotFoundError, match=r"not a SpectraFM checkpoint folder$"):
        load_model(run / "figures")


def test_cli_writes_csv_in_request_order(checkpoint, toy, tmp_path, capsys):
    npz = tmp_path / "spectra.npz"
    np.savez(npz, wavelength=toy["wavelength"], flux=toy["flux"][:5], mask=toy["mask"][:5])
    out = tmp_path / "out" / "pred.csv"
    code = main(["predict", "--model", str(checkpoint), "--input", str(npz), "--request", "FE_H",
                 "--request", "TEFF", "--output", str(out), "--batch-size", "2", "--device", "cpu"])
    assert code == 0
    with open(out) as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "FE_H", "FE_H_err", "TEFF", "TEFF_err", "flags"]  # `index` until issue 11
    assert [r[0] for r in rows[1:]] == [f"spectra-{i}" for i in range(5)]  # no ids in the file: <stem>-<row>
    assert [r[5] for r in rows[1:]] == [""] * 5  # toy spectra: nothing to flag
    teff = np.array([float(r[3]) for r in rows[1:]])
    assert np.all((teff > 1000) & (teff < 20000))


@pytest.mark.parametrize("spelling", [["FE_H", "TEFF"], ["FE_H,TEFF"], ["FE_H, TEFF,"]])
def test_cli_request_takes_several_labels_in_one_option(checkpoint, toy, tmp_path, spelling):
    """``--request FE_H TEFF`` and ``--request FE_H,TEFF`` write what ``--request FE_H --request TEFF``
    writes (users type all three; the first used to stop at "unrecognized arguments: TEFF")."""
    npz = tmp_path / "spectra.npz"
    np.savez(npz, wavelength=toy["wavelength"], flux=toy["flux"][:3], mask=toy["mask"][:3])
    outputs = {}
    for name, request in (("repeated", ["--request", "FE_H", "--request", "TEFF"]),
                          ("one option", ["--request", *spelling])):
        out = tmp_path / f"{name}.csv"
        assert main(["predict", "--model", str(checkpoint), "--input", str(npz), *request,
                     "--output", str(out), "--device", "cpu", "--no-progress"]) == 0
        outputs[name] = out.read_text()
    assert outputs["one option"] == outputs["repeated"]
    assert outputs["repeated"].splitlines()[0].startswith("id,FE_H,FE_H_err,TEFF,TEFF_err")


def test_cli_bad_input_is_a_one_line_error(checkpoint, toy, tmp_path, capsys):
    npz = tmp_path / "microns.npz"
    np.savez(npz, wavelength=toy["wavelength"] / 1e4, flux=toy["flux"][:2])
    code = main(["predict", "--model", str(checkpoint), "--input", str(npz), "--request", "FE_H",
                 "--output", str(tmp_path / "x.csv")])
    assert code == 2
    assert "micrometres" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
    code = main(["predict", "--model", str(checkpoint), "--input", str(npz), "--request", "NA_FE",
                 "--output", str(tmp_path / "x.csv")])
    assert code == 2 and "unknown label" in capsys.readouterr().err


def test_cli_cpu_heap_reuse_switches_the_allocator_and_changes_no_number(checkpoint, toy, tmp_path, monkeypatch):
    """``--cpu-heap-reuse`` turns on spectrafm_hf.cpu_allocator for the process and writes the same table."""
    from spectrafm_hf import cpu_allocator

    calls = []
    monkeypatch.setattr(cpu_allocator, "reuse_large_allocations", lambda enable=True: calls.append(enable) or True)
    npz = tmp_path / "spectra.npz"
    np.savez(npz, wavelength=toy["wavelength"], flux=toy["flux"][:4], mask=toy["mask"][:4])
    outputs = []
    for extra in ([], ["--cpu-heap-reuse"], ["--no-cpu-heap-reuse"]):
        out = tmp_path / f"pred{len(outputs)}.csv"
        assert main(["predict", "--model", str(checkpoint), "--input", str(npz), "--request", "FE_H",
                     "--output", str(out), "--device", "cpu", "--no-progress", *extra]) == 0
        outputs.append(out.read_text())
    assert calls == [True]  # only the run that asked for it
    assert outputs[0] == outputs[1] == outputs[2]
