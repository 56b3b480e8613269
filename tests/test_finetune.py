"""Fine-tuning on your own stars: ``spectrafm finetune`` end to end, its one-line refusals before any
training, and the Trainer pieces it is built from (whole-window evaluation rows, physical-unit
``compute_metrics`` equal to the pipeline's evaluation, NaN labels out of the loss, rehearsal)."""

import json

import numpy as np
import pytest
import torch
from _training_toys import cut, tiny_stage2, toy_data

from spectrafm_hf.checkpoints import load_model
from spectrafm_hf.cli import main
from spectrafm_hf.data.arrays import subset
from spectrafm_hf.data.collator import SpectraFMCollator, StarRow, evaluation_rows, training_rows
from spectrafm_hf.training.evaluation import evaluate_label, flat_label_metrics
from spectrafm_hf.training.loop import LoopConfig
from spectrafm_hf.training.stages import WINDOWS, StageSpec, predict
from spectrafm_hf.training.trainer import make_compute_metrics, physical_predictions, run_stage_with_trainer

FE = WINDOWS["fe_window"]
FE_WINDOW_A = ("16105.8", "16220")  # pixels 4107–4618 of the APOGEE grid, the pipeline's Fe window


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads; on a busy machine they cost several times the run time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny 'stage 2': a SpectraFM checkpoint on the whole APOGEE grid (two steps on toy spectra)."""
    return tiny_stage2(tmp_path_factory.mktemp("base") / "stage2")


def _npz(path, data, **drop):
    arrays = {"wavelength": data.wavelength, "flux": data.flux, "mask": data.mask, "FE_H": data.labels["FE_H"],
              "FE_H_ERR": data.label_errors["FE_H"], "TEFF": data.labels["TEFF"]}
    np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
    return str(path)


def _finetune(base, out, train, validation, *extra):
    return main(["finetune", "--model", str(base), "--train", train, "--validation", validation, "--labels", "FE_H",
                 "--window", *FE_WINDOW_A, "--max-steps", "4", "--eval-every", "2", "--batch-size", "4",
                 "--no-progress", "--out", str(out), *extra])


def test_finetune_cli_writes_a_checkpoint_with_card_and_the_pipelines_evaluation(base, tmp_path, capsys):
    train_stars = toy_data(20, 2, (-1.0, 0.4))
    train_stars.labels["FE_H"][:4] = np.nan  # unknown labels: left out, never a target
    train = _npz(tmp_path / "train.npz", train_stars)
    validation = _npz(tmp_path / "validation.npz", toy_data(8, 3, (-1.0, 0.4)))
    test_stars = toy_data(12, 4)
    test = _npz(tmp_path / "test.npz", test_stars)
    out = tmp_path / "finetuned"
    assert _finetune(base, out, train, validation, "--test", test, "--data-kind", "simulated") == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[finetune] note:")]
    assert len(notes) == 2 and "16 training star(s)" in notes[0] and "reads 8 validation star(s)" in notes[1]

    model, feature_extractor = load_model(out)  # complete: config, weights, preprocessor, code, card
    assert {"configuration_spectrafm.py", "modeling_spectrafm.py", "README.md", "metrics.json",
            "finetune.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "trainer").exists()  # Trainer's intermediate checkpoints are not part of the result
    before, _ = load_model(base)
    for key, value in before.state_dict().items():  # the paper's freezing by default: decoder + encoder.1
        if key.startswith(("decoder.", "head.", "encoder.1.")):
            assert torch.equal(model.state_dict()[key], value), key
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in before.state_dict().items()
               if k.startswith("encoder.0."))
    settings = json.loads((out / "finetune.json").read_text())
    assert settings["n_train"] == 16 and settings["n_pixels"] == FE.stop - FE.start
    assert feature_extractor.training_window_A == pytest.approx(settings["window_A"])

    # metrics.json holds the pipeline's evaluation of this checkpoint on the test stars, σ calibrated on validation
    metrics = json.loads((out / "metrics.json").read_text())
    test_fe, val_fe = cut(test_stars, FE), cut(toy_data(8, 3, (-1.0, 0.4)), FE)
    mean, sigma = predict(model, feature_extractor, test_fe, ("FE_H",))["FE_H"]
    val_mean, val_sigma = predict(model, feature_extractor, val_fe, ("FE_H",))["FE_H"]
    truth = test_fe.labels["FE_H"]
    expected = evaluate_label(mean, sigma, truth, truth, val_mean, val_sigma, val_fe.labels["FE_H"])
    assert metrics["finetuned"]["FE_H"]["rmse"] == pytest.approx(expected["bins"]["all"]["rmse"], rel=1e-12)
    assert metrics["finetuned"]["FE_H"]["rmse_feh_lt_-1"] == pytest.approx(expected["bins"]["feh_lt_-1"]["rmse"],
                                                                           rel=1e-12)
    card = (out / "README.md").read_text()
    assert "fine-tuned on your own stars" in card and "16105.9–16220.0 Å" in card and "simulated" in card
    assert f"{metrics['finetuned']['FE_H']['rmse']}" in card  # the model-index carries the measured numbers


@pytest.mark.parametrize("change, message", [
    ({"--labels": "FE_H=feh_apogee"}, "no label column 'feh_apogee'"),
    ({"--window": ["17500", "17600"]}, "no pixel in the model's trained range"),
    ({"--freeze": "decoder,encoder.5"}, "valid names: decoder, encoder, encoder.0, encoder.1, none"),
    ({"--labels": "VSINI"}, "the model has no label 'VSINI'"),
    ({"no_wavelength": True}, "'wavelength'"),
    ({"--rehearsal": "4"}, "--rehearsal 4 needs --rehearsal-data"),
    ({"foreign_out": True}, "spectrafm did not write"),
])
def test_bad_input_fails_in_one_line_before_any_training(base, tmp_path, capsys, monkeypatch, change, message):
    import spectrafm_hf.training.trainer as trainer

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(trainer, "run_stage_with_trainer", no_training)
    train = _npz(tmp_path / "train.npz", toy_data(10, 2, (-1.0, 0.4)), **({"wavelength": 1}
                                                                          if change.get("no_wavelength") else {}))
    validation = _npz(tmp_path / "validation.npz", toy_data(6, 3, (-1.0, 0.4)))
    out = tmp_path / "out"
    if change.get("foreign_out"):
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    args = ["finetune", "--model", str(base), "--train", train, "--validation", validation, "--labels", "FE_H",
            "--no-progress", "--out", str(out), "--overwrite"]
    for option, value in change.items():
        if option.startswith("--"):
            args += [option, *(value if isinstance(value, list) else [value])]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("spectrafm")]
    assert len(err) == 1 and message in err[0], err  # one line (besides progress bars on stderr)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # nothing staged
    assert (out / "notes.txt").read_text() == "mine" if change.get("foreign_out") else not out.exists()


@pytest.mark.parametrize("spelling", [["FE_H", "TEFF"], ["FE_H,TEFF"], ["FE_H,", "TEFF=TEFF"]])
def test_labels_take_spaces_or_commas(base, tmp_path, spelling):
    """``--labels FE_H TEFF`` plans what ``--labels FE_H,TEFF`` plans (it used to stop at "unrecognized
    arguments: TEFF")."""
    from spectrafm_hf.cli import build_parser
    from spectrafm_hf.training.finetune import plan_finetune

    train = _npz(tmp_path / "train.npz", toy_data(10, 2, (-1.0, 0.4)))
    validation = _npz(tmp_path / "validation.npz", toy_data(6, 3, (-1.0, 0.4)))
    args = build_parser().parse_args(["finetune", "--model", str(base), "--train", train, "--validation", validation,
                                      "--labels", *spelling, "--out", str(tmp_path / "out")])
    plan = plan_finetune(args)
    assert plan.labels == {"FE_H": "FE_H", "TEFF": "TEFF"}
    assert plan.settings["labels"] == plan.labels and not (tmp_path / "out").exists()  # planning writes nothing


def _tiny_model_and_stars(base):
    model, feature_extractor = load_model(base, device="cpu")
    stars = cut(toy_data(11, 7), FE)
    stars.labels["FE_H"][[2, 5]] = np.nan
    stars.mask[3, :] = True  # a star without one usable pixel: the model refuses it
    return model, feature_extractor, stars


def test_whole_window_evaluation_batches_are_deterministic_and_read_every_pixel(base):
    model, feature_extractor, stars = _tiny_model_and_stars(base)
    collator = SpectraFMCollator(feature_extractor, stars.wavelength, request=["FE_H"], context_length=8)
    rows = [evaluation_rows(stars)[i] for i in range(len(stars))]
    assert isinstance(rows[0], StarRow) and not isinstance(rows[0], dict)
    first, second = collator(rows), collator(rows)
    assert all(torch.equal(first[k], second[k]) for k in first if k != "labels")
    assert torch.equal(first["labels"].isnan(), second["labels"].isnan())
    usable = feature_extractor.usable_pixels(stars.wavelength, stars.flux, stars.mask).sum(axis=1)
    assert first["attention_mask"].sum(dim=1).tolist() == usable.tolist()  # every usable pixel, not 8
    assert first["labels"].dtype == torch.float64
    assert first["labels"][:, 0].isnan().tolist() == [i in (2, 3, 5) for i in range(11)]  # unknown or refused
    # the model reads exactly what the pipeline's predictions read: the same values
    with torch.no_grad():
        out = model(**first)
    values, _ = feature_extractor.to_physical(["FE_H"], out.mean, out.log_variance)
    mean, _ = predict(model, feature_extractor, stars, ("FE_H",))["FE_H"]
    answered = np.isfinite(mean)
    assert answered.tolist() == [i != 3 for i in range(11)]
    assert np.array_equal(values[answered, 0], mean[answered])


def test_nan_labels_are_masked_out_of_the_loss(base):
    model, feature_extractor, stars = _tiny_model_and_stars(base)
    collator = SpectraFMCollator(feature_extractor, stars.wavelength, request=["FE_H"], context_length=16)
    rows = evaluation_rows(stars)
    known = [0, 1, 4, 6]
    with torch.no_grad():
        loss_all = model(**collator([rows[i] for i in [0, 1, 2, 4, 5, 6]])).loss  # 2 and 5 lack FE_H
        loss_known = model(**collator([rows[i] for i in known])).loss
    torch.testing.assert_close(loss_all, loss_known, rtol=1e-6, atol=0)
    batch = collator([training_rows(stars)[i] for i in range(len(stars)) if i != 3])
    assert batch["query_mask"][:, 0].tolist() == [0 if i in (2, 5) else 1 for i in range(11) if i != 3]
    assert torch.isfinite(model(**batch).loss)


def test_compute_metrics_equal_the_pipelines_evaluation_through_a_default_trainer(base, tmp_path):
    """A plain Trainer with default TrainingArguments (remove_unused_columns=True): evaluation rows pass
    whole, label_ids arrive as the tuple (labels, label_errors), and compute_metrics give the numbers of
    the pipeline's evaluation (stages.predict + evaluation) of the same model on the same stars."""
    from transformers import Trainer, TrainingArguments

    model, feature_extractor, stars = _tiny_model_and_stars(base)
    # every star answered: a refused one would be dropped from the pipeline's batches and shift their
    # boundaries (padding then changes the predictions by ~1e-10 relative)
    stars = subset(stars, np.array([0, 1, 2, 4, 5, 6, 7, 8, 9, 10]))
    stars.labels["TEFF"][4] = np.nan
    labels = ["FE_H", "TEFF"]
    trainer = Trainer(model=model, args=TrainingArguments(str(tmp_path / "t"), per_device_eval_batch_size=4,
                                                          use_cpu=True, report_to="none"),
                      data_collator=SpectraFMCollator(feature_extractor, stars.wavelength, request=labels),
                      compute_metrics=make_compute_metrics(feature_extractor, labels))
    metrics = trainer.evaluate(evaluation_rows(stars))
    output = trainer.predict(evaluation_rows(stars))
    assert isinstance(output.label_ids, tuple) and len(output.label_ids) == 2
    pipeline = predict(model, feature_extractor, stars, labels, batch_size=4)
    for label in labels:
        expected = flat_label_metrics(*pipeline[label], stars.labels[label], stars.labels["FE_H"])
        assert expected["n"] == (8 if label == "FE_H" else 9)  # unknown labels left out
        for key, value in expected.items():
            assert metrics[f"eval_{label}_{key}"] == pytest.approx(value, rel=1e-12, abs=1e-15), (label, key)
    per_label = physical_predictions(output.predictions, output.label_ids, feature_extractor, labels)
    assert np.array_equal(per_label["TEFF"]["pred"], pipeline["TEFF"][0])  # the same predictions, bit for bit
    assert np.array_equal(per_label["FE_H"]["sigma"], pipeline["FE_H"][1])
    np.testing.assert_allclose(per_label["FE_H"]["true"], stars.labels["FE_H"], rtol=1e-14)  # NaN where unknown
    only_labels = physical_predictions(output.predictions, output.label_ids[0], feature_extractor, labels)
    np.testing.assert_array_equal(only_labels["TEFF"]["true"], per_label["TEFF"]["true"])
    with pytest.raises(ValueError, match="in its order"):
        physical_predictions(output.predictions, output.label_ids, feature_extractor, ["FE_H"])


def test_rehearsal_on_the_trainer_path(base, tmp_path):
    _, feature_extractor = load_model(base, device="cpu")
    train, pool = cut(toy_data(12, 2, (-1.0, 0.4)), FE), cut(toy_data(30, 5), FE)
    collator = SpectraFMCollator(feature_extractor, train.wavelength, request=["FE_H"], context_length=16,
                                 narrow_window_fraction=1.0, narrow_window_pixels=20).add_rehearsal(pool, 3)
    rows = [training_rows(train)[i] for i in range(4)]
    batch, again = collator(rows), collator(rows)
    assert batch["input_ids"].shape[0] == 4 + 3 and all(torch.equal(batch[k], again[k]) for k in batch)
    other = collator([training_rows(train)[i] for i in range(4, 8)])
    assert not torch.equal(other["input_values"][4:], batch["input_values"][4:])  # fresh draws per batch
    spans = [float(w[w > 0].max() - w[w > 0].min()) for w in batch["input_wavelength"]]
    assert max(spans[:4]) < 21 * 0.23 < min(spans[4:])  # narrow windows for the stars, whole window for rehearsal
    assert collator([evaluation_rows(train)[i] for i in range(4)])["input_ids"].shape[0] == 4  # none in evaluation
    with pytest.raises(ValueError, match="another pixel grid"):
        SpectraFMCollator(feature_extractor, train.wavelength).add_rehearsal(cut(pool, slice(0, 100)), 2)

    loop = LoopConfig(max_steps=2, eval_every=2, progress=False)
    spec = StageSpec("stage3", "fe_window", ["FE_H"], 4, 16, loop, select_on="val_rmse_FE_H", rehearsal=3)
    result = run_stage_with_trainer(spec, train, cut(toy_data(6, 3, (-1.0, 0.4)), FE), tmp_path / "stage3",
                                    init=base, rehearsal=pool)
    assert result.last_step == 2
    recorded = json.loads((tmp_path / "stage3" / "stage_config.json").read_text())
    assert recorded["data"]["rehearsal"] == pool.fingerprint() and recorded["trainer"] == "transformers"


def test_few_star_notes_name_each_small_set_only():
    from spectrafm_hf.training.finetune import FEW_STARS, few_star_notes

    assert few_star_notes(100, FEW_STARS) == []  # the paper's 100 stars and a 20-star validation: silent
    only_validation = few_star_notes(100, 5)
    assert len(only_validation) == 1 and "5 validation star(s)" in only_validation[0]
    assert len(few_star_notes(FEW_STARS - 1, 50)) == 1


def test_finetune_has_help(capsys):
    from spectrafm_hf.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["finetune", "--help"])
    assert exit_info.value.code == 0 and "--rehearsal-data" in capsys.readouterr().out


def test_aspcapstar_files_with_a_label_table_joined_on_the_star_id(tmp_path):
    """aspcapStar files + a CSV of labels (the user's own column names): labels by star id, NaN for a star
    the table does not list, spectra cut to the window."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fixtures.dr17_layouts import aspcap_arrays, write_aspcapstar

    from spectrafm_hf.data.labelled import read_label_table, read_labelled_stars

    folder = tmp_path / "spectra"
    folder.mkdir()
    for k, star in enumerate(("2M01", "2M02", "2M03")):
        row = {"APOGEE_ID": star, "TELESCOPE": "apo25m", "FIELD": "F1", "SNR": 200.0, "FE_H": 0.0, "TEFF": 4800.0}
        write_aspcapstar(folder / f"aspcapStar-dr17-{star}.fits", *aspcap_arrays(seed=k), row=row)
    (tmp_path / "labels.csv").write_text("APOGEE_ID,feh,feh_ERR\n2M03,-1.25,0.02\n2M01,0.15,0.01\n")
    table = read_label_table(tmp_path / "labels.csv")
    stars = read_labelled_stars(folder, {"FE_H": "feh"}, (16105.8, 16220.0), label_table=table)
    np.testing.assert_array_equal(stars.labels["FE_H"], [0.15, np.nan, -1.25])
    np.testing.assert_array_equal(stars.label_errors["FE_H"], [0.01, np.nan, 0.02])
    assert stars.flux.shape == (3, FE.stop - FE.start) and stars.wavelength[0] == pytest.approx(16105.863, abs=1e-3)
    (tmp_path / "no_ids.csv").write_text("name,feh\na,0.1\n")
    with pytest.raises(ValueError, match="no star-id column"):
        read_label_table(tmp_path / "no_ids.csv")


def test_plan_reads_a_dataset_folder_with_renamed_labels_and_holds_out_validation(base, tmp_path):
    """No training: the plan of a run reading a dataset folder's ``train`` split, FE_H from the column
    ``feh``, and (without --validation) a seeded fifth of the stars held out for selection."""
    from spectrafm_hf.cli import build_parser
    from spectrafm_hf.data.schema import write_dataset
    from spectrafm_hf.training.finetune import plan_finetune

    stars = toy_data(15, 2, (-1.0, 0.4))

    def batches():  # [Fe/H] in a column of another name
        yield {"id": np.array([f"s{i}" for i in range(15)]), "flux": stars.flux, "mask": stars.mask,
               "feh": stars.labels["FE_H"]}

    write_dataset(tmp_path / "labelled", {"train": batches, "test": batches}, stars.wavelength, extra_scalars=("feh",))
    args = build_parser().parse_args(["finetune", "--model", str(base), "--train", str(tmp_path / "labelled"),
                                      "--labels", "FE_H=feh", "--window", *FE_WINDOW_A, "--out",
                                      str(tmp_path / "out"), "--seed", "3"])
    plan = plan_finetune(args)
    assert (len(plan.train), len(plan.validation)) == (12, 3) and plan.spec.select_on == "val_rmse_FE_H"
    held_out = np.sort(plan.validation.labels["FE_H"])
    np.testing.assert_array_equal(held_out, np.sort(plan_finetune(args).validation.labels["FE_H"]))  # seeded
    assert set(held_out) | set(plan.train.labels["FE_H"]) == set(stars.labels["FE_H"].astype(np.float32))
    assert plan.train.flux.shape[1] == FE.stop - FE.start and not (tmp_path / "out").exists()
