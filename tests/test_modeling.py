"""SpectraFMModel: save/load, masking, query independence, eager vs SDPA, loss, fine-tuning helpers."""

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForPreTraining

from spectrafm_hf import (
    SpectraFMConfig,
    SpectraFMFeatureExtractor,
    SpectraFMForLabelPrediction,
    SpectraFMModel,
    SpectraFMOutput,
)
from spectrafm_hf.modeling_spectrafm import gaussian_nll


def _predict(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.mean, out.log_variance


def test_auto_classes_load_a_saved_checkpoint_with_identical_outputs(tiny_model, feature_extractor, toy, tmp_path):
    batch = feature_extractor(toy["wavelength"], toy["flux"], request=["FE_H", "TEFF"])
    expected = _predict(tiny_model, batch)
    tiny_model.save_pretrained(tmp_path)
    feature_extractor.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors", "preprocessor_config.json"}

    assert type(AutoConfig.from_pretrained(tmp_path)) is SpectraFMConfig
    model = AutoModel.from_pretrained(tmp_path).eval()
    assert type(model) is SpectraFMModel
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)) is SpectraFMForLabelPrediction
    loaded_fe = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert type(loaded_fe) is SpectraFMFeatureExtractor
    got = _predict(model, loaded_fe(toy["wavelength"], toy["flux"], request=["FE_H", "TEFF"]))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_masked_junk_pixels_change_nothing(tiny_model, feature_extractor, toy):
    """Appending pixels that are masked (with absurd values) leaves every prediction unchanged."""
    batch = feature_extractor(toy["wavelength"], toy["flux"], request=["FE_H", "TEFF"])
    n, length = batch["input_ids"].shape
    junk = 50
    padded = {
        "input_ids": torch.cat([batch["input_ids"], torch.ones(n, junk, dtype=torch.long)], 1),
        "input_values": torch.cat([batch["input_values"], torch.full((n, junk), float("nan"))], 1),
        "input_wavelength": torch.cat([batch["input_wavelength"], torch.full((n, junk), 1e9)], 1),
        "attention_mask": torch.cat([batch["attention_mask"], torch.zeros(n, junk, dtype=torch.long)], 1),
        "query_ids": batch["query_ids"],
    }
    # and the junk interleaved, not only at the end
    perm = torch.randperm(length + junk)
    shuffled = {k: (v[:, perm] if k != "query_ids" else v) for k, v in padded.items()}
    expected = _predict(tiny_model, batch)
    for variant in (padded, shuffled):
        got = _predict(tiny_model, variant)
        torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=1e-5)


def test_masked_pixels_via_feature_extractor_mask_equal_dropping_them(tiny_model, feature_extractor, toy):
    mask = np.zeros_like(toy["mask"])
    mask[:, 40:90] = True
    flux = toy["flux"].copy()
    flux[:, 40:90] = 123.0  # garbage under the mask
    masked = _predict(tiny_model, feature_extractor(toy["wavelength"], flux, mask=mask, request=["FE_H"]))
    keep = ~mask[0]
    dropped = _predict(tiny_model, feature_extractor(toy["wavelength"][keep], toy["flux"][:, keep], request=["FE_H"]))
    torch.testing.assert_close(masked, dropped, atol=1e-5, rtol=1e-5)


def test_queries_are_independent(tiny_model, feature_extractor, toy):
    one = _predict(tiny_model, feature_extractor(toy["wavelength"], toy["flux"], request=["FE_H"]))
    three = _predict(tiny_model, feature_extractor(toy["wavelength"], toy["flux"], request=["TEFF", "FE_H", "LOGG"]))
    torch.testing.assert_close(three[0][:, 1], one[0][:, 0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(three[1][:, 1], one[1][:, 0], atol=1e-6, rtol=1e-6)


def test_eager_and_sdpa_agree_and_attention_weights_are_returned(tiny_model, feature_extractor, toy):
    mask = np.zeros_like(toy["mask"])
    mask[3, 10:100] = True  # star 3 is shorter: padding in the batch
    batch = feature_extractor(toy["wavelength"], toy["flux"], mask=mask, request=["FE_H", "TEFF"])
    assert tiny_model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa = tiny_model(**batch)
        with_weights = tiny_model(**batch, output_attentions=True)
    assert sdpa.encoder_attentions is None and sdpa.cross_attentions is None
    torch.testing.assert_close(with_weights.mean, sdpa.mean, atol=1e-5, rtol=1e-5)
    tiny_model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = tiny_model(**batch)
    torch.testing.assert_close(eager.log_variance, sdpa.log_variance, atol=1e-5, rtol=1e-5)

    n, length = batch["input_ids"].shape
    enc, cross = with_weights.encoder_attentions, with_weights.cross_attentions
    assert len(enc) == 2 and len(cross) == 3
    assert enc[0].shape == (n, 2, length, length + 1)  # + 1: the add_bias_kv slot, last
    assert cross[-1].shape == (n, 2, 2, length + 1)
    torch.testing.assert_close(cross[-1].sum(-1), torch.ones(n, 2, 2))
    padding = batch["attention_mask"][3] == 0
    assert padding.any() and torch.all(cross[-1][3][..., :-1][..., padding] == 0)
    assert torch.all(enc[0][3][..., :-1][..., padding] == 0)


def test_cross_only_attention_weights(tiny_model, feature_extractor, toy):
    """output_attentions="cross": the decoder's weights exactly as with True, no encoder weights."""
    batch = feature_extractor(toy["wavelength"], toy["flux"], request=["MG_FE"])
    with torch.no_grad():
        both = tiny_model(**batch, output_attentions=True)
        cross = tiny_model(**batch, output_attentions="cross")
    assert cross.encoder_attentions is None and len(cross.cross_attentions) == 3
    for a, b in zip(cross.cross_attentions, both.cross_attentions):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cross.mean, both.mean, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="output_attentions must be True, False or 'cross'"):
        tiny_model(**batch, output_attentions="encoder")


def test_padding_does_not_change_a_star(tiny_model, feature_extractor, toy):
    mask = np.zeros_like(toy["mask"])
    mask[0, :120] = True  # star 0 short, star 1 long → star 0 padded in the pair
    pair = _predict(tiny_model, feature_extractor(toy["wavelength"], toy["flux"][:2], mask=mask[:2], request=["FE_H"]))
    alone = _predict(tiny_model, feature_extractor(toy["wavelength"], toy["flux"][:1], mask=mask[:1], request=["FE_H"]))
    torch.testing.assert_close(pair[0][:1], alone[0], atol=1e-5, rtol=1e-5)


def _reference_modeling():
    """The model code before issue 11's speed work (frozen in ``benchmarks/reference``), imported as a
    submodule of the package so that its relative import of the configuration resolves."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reference" / "modeling_spectrafm_before_issue11.py"
    spec = importlib.util.spec_from_file_location("spectrafm_hf._modeling_before_issue11", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config_kwargs", [{}, {"add_bias_kv": False}, {"encoder_heads": [8, 4], "d_model": 64}])
def test_outputs_and_gradients_equal_the_code_before_the_speed_work(config_kwargs, feature_extractor, toy):
    """The fast paths (bias slot carried as a token, decoder attention in the encoder's space, fused
    embedding arithmetic) compute the same model: float32 outputs, attention weights and gradients
    within 1e-5 of the old code, with and without padding."""
    config = SpectraFMConfig.tiny(dropout=0.0, **config_kwargs)
    torch.manual_seed(3)
    new = SpectraFMModel(config).eval()
    old = _reference_modeling().SpectraFMModel(config).eval()
    old.load_state_dict(new.state_dict())
    mask = np.zeros_like(toy["mask"])
    mask[3, 10:100] = True  # star 3 shorter: padding in the batch
    for star_mask in (None, mask):
        batch = feature_extractor(toy["wavelength"], toy["flux"], mask=star_mask, request=["FE_H", "TEFF", "LOGG"])
        with torch.no_grad():
            got, expected = new(**batch, output_attentions=True), old(**batch, output_attentions=True)
            fast = new(**batch)
        for key in ("mean", "log_variance"):
            torch.testing.assert_close(getattr(got, key), getattr(expected, key), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(getattr(fast, key), getattr(expected, key), atol=1e-5, rtol=1e-5)
        for a, b in zip(got.encoder_attentions + got.cross_attentions,
                        expected.encoder_attentions + expected.cross_attentions):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    labels = feature_extractor(toy["wavelength"], toy["flux"], request=["FE_H", "TEFF"],
                               labels={k: toy["labels"][k] for k in ("FE_H", "TEFF")})
    for model in (new, old):
        model.train()
        model.zero_grad()
        model(**labels).loss.backward()
    old_grads = dict(old.named_parameters())
    for name, param in new.named_parameters():
        torch.testing.assert_close(param.grad, old_grads[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_loss_is_the_gaussian_nll_with_label_errors_over_valid_queries():
    mean = torch.tensor([[0.1, 0.5], [-0.3, 2.0]])
    log_variance = torch.tensor([[-1.0, 0.0], [0.5, -2.0]])
    labels = torch.tensor([[0.0, float("nan")], [1.0, 1.5]])
    errors = torch.tensor([[0.2, 0.1], [0.0, float("nan")]])
    query_mask = torch.tensor([[1, 1], [1, 0]])
    loss = gaussian_nll(mean, log_variance, labels, errors, query_mask)
    expected = []
    for (i, j) in [(0, 0), (1, 0)]:  # (0, 1) has no label, (1, 1) is masked
        v = np.exp(log_variance[i, j].item()) + errors[i, j].item() ** 2 + 1e-8
        expected.append(0.5 * ((labels[i, j].item() - mean[i, j].item()) ** 2 / v + np.log(v)))
    assert loss.item() == pytest.approx(np.mean(expected), rel=1e-6)
    none_valid = gaussian_nll(mean, log_variance, labels, errors, torch.zeros_like(query_mask))
    assert none_valid.item() == 0.0


def test_forward_with_labels_returns_loss_first_and_finite_gradients(tiny_config, feature_extractor, toy):
    model = SpectraFMModel(tiny_config).train()
    assert model.accepts_loss_kwargs is False
    labels = dict(toy["labels"])
    labels["FE_H"] = labels["FE_H"].copy()
    labels["FE_H"][::3] = np.nan  # missing labels are never requested
    batch = feature_extractor(toy["wavelength"], toy["flux"], request="random", sampling="random", seed=0,
                              labels=labels, label_errors={"TEFF": np.full(12, 30.0)})
    out = model(**batch)
    assert isinstance(out, SpectraFMOutput) and list(out.keys())[0] == "loss"
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    as_tuple = model(**batch, return_dict=False)
    assert torch.is_tensor(as_tuple[0]) and as_tuple[0].ndim == 0


def test_freeze_helpers(tiny_model):
    tiny_model.freeze_decoder()
    tiny_model.freeze_encoder_blocks([-1])
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("embeddings.", "encoder.0.")) for n in trainable)
    assert {"embeddings.weight", "embeddings.bias"} <= trainable
    with pytest.raises(ValueError, match="2 encoder blocks"):
        tiny_model.freeze_encoder_blocks([2])
    tiny_model.unfreeze()
    assert all(p.requires_grad for p in tiny_model.parameters())


def test_frozen_parts_do_not_move_in_a_training_step(tiny_config, feature_extractor, toy):
    model = SpectraFMModel(tiny_config).train()
    model.freeze_decoder()
    model.freeze_encoder_blocks([1])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = feature_extractor(toy["wavelength"], toy["flux"], request=["FE_H"], sampling="random", seed=0,
                              labels={"FE_H": toy["labels"]["FE_H"]})
    model(**batch).loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        moved = not torch.equal(param, before[name])
        assert moved == name.startswith(("embeddings.", "encoder.0.")), name


def test_add_named_tokens_keeps_old_rows_and_predictions(tiny_model, feature_extractor, toy, tmp_path):
    batch = feature_extractor(toy["wavelength"], toy["flux"], request=["FE_H"])
    before = _predict(tiny_model, batch)
    old_weight = tiny_model.embeddings.weight.detach().clone()
    ids = tiny_model.add_named_tokens(["G_MAG", "VMICRO"], {"G_MAG": (12.0, 1.5)})
    assert ids == [7, 8]
    assert tiny_model.config.named_tokens[-2:] == ["G_MAG", "VMICRO"]
    assert tiny_model.config.named_token_statistics["G_MAG"] == [12.0, 1.5]
    assert tiny_model.config.named_token_statistics["VMICRO"] == [0.0, 1.0]
    assert torch.equal(tiny_model.embeddings.weight[:7], old_weight)
    torch.testing.assert_close(_predict(tiny_model, batch), before)
    with pytest.raises(ValueError, match="already exist"):
        tiny_model.add_named_tokens(["TEFF"])

    feature_extractor.add_named_tokens(["G_MAG", "VMICRO"], {"G_MAG": (12.0, 1.5)})
    feature_extractor.check_compatible(tiny_model.config)
    with_photometry = feature_extractor(toy["wavelength"], toy["flux"], scalars={"G_MAG": np.full(12, 13.5)},
                                        request=["FE_H"])
    assert torch.all(with_photometry["input_ids"][:, 0] == 7)
    assert torch.all(with_photometry["input_values"][:, 0] == 1.0)  # (13.5 − 12) / 1.5
    after = _predict(tiny_model, with_photometry)
    assert not torch.allclose(after[0], before[0])  # the new input is read

    tiny_model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.named_tokens == tiny_model.config.named_tokens
    torch.testing.assert_close(_predict(reloaded, with_photometry), after)


def test_mixed_precision_forward_runs_on_cpu(tiny_model, feature_extractor, toy):
    batch = feature_extractor(toy["wavelength"], toy["flux"], request=["FE_H"])
    full = _predict(tiny_model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = _predict(tiny_model, batch)
    assert torch.isfinite(half[0]).all()
    torch.testing.assert_close(half[0].float(), full[0], atol=0.1, rtol=0.1)


def test_forward_needs_queries(tiny_model, feature_extractor, toy):
    batch = dict(feature_extractor(toy["wavelength"], toy["flux"], request=["FE_H"]))
    batch.pop("query_ids")
    with pytest.raises(ValueError, match="query_ids"):
        tiny_model(**batch)


def test_paper_size_parameter_count():
    model = SpectraFMModel(SpectraFMConfig())
    # the original's 11.87 M minus its 3.85 M never-used embedding rows (7520 × 256 × 2)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.87e6 - 3.85e6, rel=0.01)


_MEMORY_PROBE = """
import sys, torch
from spectrafm_hf import SpectraFMConfig, SpectraFMModel

def rss_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

torch.set_num_threads(1)
attention, B, L = sys.argv[1], int(sys.argv[2]), 2000
config = SpectraFMConfig.tiny(encoder_heads=[16, 16], decoder_heads=[16, 16, 16])
model = SpectraFMModel(config).eval()
model.set_attn_implementation(attention)
ids = torch.ones(B, L, dtype=torch.long)
mask = torch.ones(B, L, dtype=torch.long)
mask[:, 1700:] = 0  # padding: the attention gets a mask
inputs = dict(input_ids=ids, input_values=torch.randn(B, L),
              input_wavelength=torch.linspace(15100, 16900, L).expand(B, L),
              attention_mask=mask, query_ids=torch.full((B, 2), 4))
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak RSS (VmHWM) to the current RSS
before = rss_mb("VmRSS")
with torch.inference_mode():
    model(**inputs)
print(rss_mb("VmHWM") - before)
"""


def _peak_growth_mb(attention: str, batch: int) -> float:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, attention, str(batch)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"),
                    reason="needs Linux /proc peak-RSS reset")
def test_sdpa_with_a_padding_mask_never_materialises_the_attention_matrix():
    """One B×H×L×L float32 matrix at B = 4 would be 4 × 16 × 2001² × 4 B = 1 GB; SDPA's peak growth must
    stay far below. Control: eager attention at B = 1 (0.26 GB per matrix) is seen by the same probe."""
    assert _peak_growth_mb("sdpa", 4) < 150
    assert _peak_growth_mb("eager", 1) > 200
