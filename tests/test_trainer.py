"""transformers.Trainer fine-tunes SpectraFM through SpectraFMCollator; checkpoints reload via the Auto classes."""

import numpy as np
import pytest
import torch
from conftest import toy_spectra
from datasets import Dataset
from transformers import AutoFeatureExtractor, AutoModel, Trainer, TrainingArguments

from spectrafm_hf import SpectraFMConfig, SpectraFMModel
from spectrafm_hf.data.collator import SpectraFMCollator


def _dataset(n: int, seed: int) -> Dataset:
    """Toy spectra as rows of the project schema (flux, mask, labels and their errors)."""
    toy = toy_spectra(n, seed=seed)
    fe_h = toy["labels"]["FE_H"].astype(np.float32)
    fe_h[::5] = np.nan  # some stars lack [Fe/H]: they must never be asked for it
    columns = {
        "id": [f"toy-{seed}-{i}" for i in range(n)],
        "flux": toy["flux"],
        "mask": toy["mask"],
        "FE_H": fe_h,
        "FE_H_ERR": np.full(n, 0.02, np.float32),
        "TEFF": toy["labels"]["TEFF"].astype(np.float32),
        "TEFF_ERR": np.full(n, 30.0, np.float32),
    }
    return Dataset.from_dict(columns).with_format("numpy"), toy["wavelength"]


def test_collator_batches_are_reproducible_and_never_request_missing_labels(feature_extractor):
    train, wavelength = _dataset(20, seed=3)
    rows = [train[i] for i in range(20)]
    first = SpectraFMCollator(feature_extractor, wavelength, context_length=24, seed=7)
    second = SpectraFMCollator(feature_extractor, wavelength, context_length=24, seed=7)
    a, b = first(rows), second(rows)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(first(rows)["input_wavelength"], a["input_wavelength"])  # same batch, same draw
    shuffled = first(rows[::-1])  # another batch (order): a new draw
    assert not torch.equal(shuffled["input_wavelength"].flip(0), a["input_wavelength"])
    no_ids = [{k: v for k, v in r.items() if k != "id"} for r in rows]
    assert not torch.equal(first(no_ids)["input_wavelength"], first(no_ids)["input_wavelength"])  # call count
    assert a["input_ids"].shape == (20, 24)
    fe_h_id = feature_extractor.token_id("FE_H")
    missing = np.isnan(np.array([r["FE_H"] for r in rows]))
    for _ in range(5):
        batch = first(rows)
        assert not torch.any(batch["query_ids"][missing, 0] == fe_h_id)
        assert torch.all(batch["query_mask"] == 1)

    window = SpectraFMCollator(feature_extractor, wavelength, request=["FE_H"], context_length=500,
                               pixel_window=[(15210.0, 15220.0)])
    batch = window(rows)
    used = batch["input_wavelength"][batch["attention_mask"] == 1]
    assert used.min() >= 15210.0 and used.max() <= 15220.0
    assert batch["query_mask"][:, 0].tolist() == [0 if m else 1 for m in missing]
    with pytest.raises(ValueError, match="selects no pixel"):
        SpectraFMCollator(feature_extractor, wavelength, pixel_window=[(16000.0, 16100.0)])


def test_rows_and_window_data_go_through_one_batcher(feature_extractor):
    """Dataset rows (the Trainer path) and WindowData stars (the Accelerate path) make the same batch from
    the same stars and batch seed: narrow windows, "all" requests and missing labels included."""
    from spectrafm_hf.data.arrays import WindowData

    toy = toy_spectra(12, seed=5)
    labels = {k: v.copy() for k, v in toy["labels"].items()}
    labels["FE_H"][[2, 7]] = np.nan
    errors = {"FE_H": np.full(12, 0.02), "TEFF": np.full(12, -30.0)}  # a negative error counts as its size
    data = WindowData(flux=toy["flux"], mask=toy["mask"], flux_err=toy["flux_err"], labels=labels,
                      label_errors=errors, wavelength=toy["wavelength"])
    rows = [{"flux": toy["flux"][i], "mask": toy["mask"][i],
             **{k: labels[k][i] for k in labels}, **{f"{k}_ERR": errors[k][i] for k in errors}} for i in range(12)]
    index = np.array([3, 0, 7, 7, 11, 2])
    for request in ("random", "all", ["FE_H"]):
        collator = SpectraFMCollator(feature_extractor, toy["wavelength"], request=request, context_length=24,
                                     narrow_window_fraction=0.5, narrow_window_pixels=40)
        a = collator.select(data, index, seed=11)
        b = collator([rows[i] for i in index], seed=11)
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
        if request == "all":
            fe_h = a["query_ids"][2] == feature_extractor.token_id("FE_H")  # index[2] is star 7, without FE_H
            assert a["query_ids"].shape == (6, 2) and a["query_mask"][2].tolist() == (~fe_h).long().tolist()
    assert torch.all(a["label_errors"] > 0)


@pytest.fixture
def one_thread():
    """A tiny model gains nothing from threads; on a busy machine they cost 5x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_trainer_fine_tunes_and_checkpoints_reload(feature_extractor, tmp_path, one_thread):
    train, wavelength = _dataset(256, seed=10)
    validation, _ = _dataset(64, seed=11)
    torch.manual_seed(0)
    model = SpectraFMModel(SpectraFMConfig.tiny(dropout=0.0))
    collator = SpectraFMCollator(feature_extractor, wavelength, request="random", context_length=64, seed=0)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        max_steps=90,
        learning_rate=3e-3,
        warmup_steps=0.1,
        eval_strategy="steps",
        eval_steps=45,
        save_strategy="steps",
        save_steps=90,
        logging_steps=20,
        remove_unused_columns=False,
        use_cpu=True,
        report_to="none",
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                      data_collator=collator, processing_class=feature_extractor)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    evals = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert evals[-1] < evals[0] < before and evals[-1] < before - 0.2, (before, evals)

    checkpoint = tmp_path / "run" / "checkpoint-90"
    assert (checkpoint / "model.safetensors").exists() and (checkpoint / "preprocessor_config.json").exists()
    reloaded = AutoModel.from_pretrained(checkpoint).eval()
    reloaded_fe = AutoFeatureExtractor.from_pretrained(checkpoint)
    toy = toy_spectra(4, seed=99)
    batch = reloaded_fe(toy["wavelength"], toy["flux"], request=["FE_H", "TEFF"])
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).mean, trainer.model(**batch).mean)
