"""``spectrafm convert-original``: an original-format checkpoint converts and reproduces the original
forward pass; bad inputs are refused clearly.

The first half of this file builds a checkpoint folder in the ORIGINAL format and an independent forward
pass. Both are written from the format and semantics documented in ``../shared/docs/official-checkpoint.md``
(and ``paper.md``), with plain torch (``nn.MultiheadAttention`` etc.), and share no code with
``spectrafm_hf``, so that agreement between the converted model and ``reference_forward`` is evidence.
The only thing imported from the package is the APOGEE wavelength grid, which is a fact of the format
(pixel i of ``syn_apogee{i}`` is pixel i of the 7514-pixel grid), not of the model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spectrafm_hf.data.grid import apogee_wavelength

N_PIXELS = 7514
LABELS = ["TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"]
LABEL_STATS = {"TEFF": (4702.5, 544.0), "LOGG": (2.478, 1.308), "O_FE": (0.0876, 0.0836),
               "MG_FE": (0.0670, 0.0849), "FE_H": (-0.159, 0.287)}


def _block_shapes(d, width):
    return {
        "attention.in_proj_weight": (3 * d, d), "attention.in_proj_bias": (3 * d,),
        "attention.bias_k": (1, 1, d), "attention.bias_v": (1, 1, d),
        "attention.out_proj.weight": (d, d), "attention.out_proj.bias": (d,),
        "dense_1.weight": (width, d), "dense_1.bias": (width,),
        "dense_2.weight": (d, width), "dense_2.bias": (d,),
        "layernorm_1.weight": (d,), "layernorm_1.bias": (d,),
        "layernorm_2.weight": (d,), "layernorm_2.bias": (d,),
    }


def original_state_dict(d: int, heads: int, dense: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with every documented key and shape (float32). Scales keep activations O(1)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"embedding_layer.embeddings": (vocab + 1, d), "embedding_layer.bias": (vocab + 1, d)}
    for i, width in enumerate([dense, dense // 2], start=1):
        shapes |= {f"torch_encoder.encoder_transformer_block_{i}.{k}": s for k, s in _block_shapes(d, width).items()}
    for i, width in enumerate([dense, dense // 2, dense // 4], start=1):
        shapes |= {f"torch_decoder.decoder_transformer_block_{i}.{k}": s for k, s in _block_shapes(d, width).items()}
    head = [(d, dense), (dense, dense // 2), (dense // 2, dense // 4), (dense // 4, dense // 8)]
    for i, (fan_in, fan_out) in zip(range(3, 7), head):
        shapes |= {f"torch_decoder.decoder_dense_{i}.weight": (fan_out, fan_in),
                   f"torch_decoder.decoder_dense_{i}.bias": (fan_out,)}
    for name in ("decoder_out", "decoder_logvar_out"):
        shapes |= {f"torch_decoder.{name}.weight": (1, dense // 8), f"torch_decoder.{name}.bias": (1,)}
    state = {}
    for key, shape in shapes.items():
        fan_in = shape[-1] if len(shape) == 2 else 1
        scale = 1.0 if key.startswith("embedding_layer") else 1.0 / math.sqrt(fan_in)
        value = torch.randn(shape, generator=gen) * scale
        if "layernorm" in key and key.endswith("weight"):
            value = 1.0 + 0.1 * value  # LayerNorm gains near 1, as after training
        state[key] = value.float()
    return state


def build_original_folder(root: Path, *, d: int = 16, heads: int = 4, dense: int = 32, context_length: int = 64,
                          pixel_indices=None, seed: int = 0) -> Path:
    """Write ``weights.pt``, ``config.json`` and ``embed_map.npz`` in the original format.

    The vocabulary is ``syn_apogee{i}`` for ``pixel_indices`` (default: all 7514), then the five labels;
    tokens 1..V in that order, as the original tokenizer assigns them. Per-pixel statistics have median
    ≈ 1 and MAD-std ≈ 0.011 (with a few std = 0 pixels, which the original leaves unstandardised).
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = np.arange(N_PIXELS) if pixel_indices is None else np.asarray(pixel_indices)
    vocabs = [f"syn_apogee{i}" for i in pixels] + LABELS
    V = len(vocabs)
    tokens = list(range(1, V + 1))
    mean = np.zeros(V + 1)
    std = np.zeros(V + 1)
    mean[1:len(pixels) + 1] = 1.0 + 0.01 * rng.standard_normal(len(pixels))
    std[1:len(pixels) + 1] = 0.011 * (1 + 0.2 * rng.random(len(pixels)))
    std[1 + np.arange(3)] = 0.0  # a few degenerate pixels: std 0 → value left as it is
    for j, name in enumerate(LABELS):
        mean[len(pixels) + 1 + j], std[len(pixels) + 1 + j] = LABEL_STATS[name]
    config = {
        "nn_config": {"backend_framework": "torch", "context_length": context_length, "embedding_dim": d,
                      "embedding_activation": "gelu", "encoder_head_num": heads, "encoder_dense_num": dense,
                      "encoder_dropout_rate": 0.05, "encoder_activation": "gelu", "decoder_head_num": heads,
                      "decoder_dense_num": dense, "decoder_dropout_rate": 0.05, "decoder_activation": "gelu"},
        "tokenizer_config": {"vocabs": vocabs, "vocab_tokens": tokens},
        "norm_config": {"_input_mean": mean.tolist(), "_input_std": std.tolist(),
                        "_input_standardized": [True] * (V + 1)},
    }
    (root / "config.json").write_text(json.dumps(config))
    state = original_state_dict(d, heads, dense, V, seed=seed)
    torch.save({"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []},
                "optimizer": "AdamW", "epoch": 325}, root / "weights.pt")
    keys = np.arange(V + 1)
    values = np.where((keys >= 1) & (keys <= len(pixels)), 1, keys)
    np.savez(root / "embed_map.npz", keys=keys, values=values)
    return root


def _pe(wavelength: torch.Tensor, d: int) -> torch.Tensor:
    """The paper's linear 15000–17000 Å sinusoidal encoding, float64, zero where λ = 0. (L,) → (L, d)."""
    lam_n = (wavelength - 15000.0) / 2000.0
    i = torch.arange(d // 2, dtype=torch.float64)
    angle = 1000.0 * lam_n[:, None] * 10000.0 ** (-2 * i / d)
    pe = torch.zeros(len(wavelength), d, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(angle), torch.cos(angle)
    return torch.where((wavelength == 0)[:, None], torch.zeros_like(pe), pe)


def _mha(state, prefix, d, heads):
    mha = nn.MultiheadAttention(d, heads, batch_first=True, add_bias_kv=True, dtype=torch.float64)
    mha.load_state_dict({k[len(prefix) + len("attention."):]: v.double() for k, v in state.items()
                         if k.startswith(prefix + "attention.")})
    return mha.eval()


def _block(state, prefix, d, heads, query, memory, key_padding_mask):
    """Post-LN block: h = LN1(q + MHA(q, m, m)); out = LN2(h + W2·gelu(W1·h)). Eval mode (no dropout)."""
    w = {k[len(prefix):]: v.double() for k, v in state.items() if k.startswith(prefix)}
    attn, _ = _mha(state, prefix, d, heads)(query, memory, memory, key_padding_mask=key_padding_mask,
                                             need_weights=False)
    h = F.layer_norm(query + attn, (d,), w["layernorm_1.weight"], w["layernorm_1.bias"], eps=1e-5)
    mlp = F.linear(F.gelu(F.linear(h, w["dense_1.weight"], w["dense_1.bias"])), w["dense_2.weight"], w["dense_2.bias"])
    return F.layer_norm(h + mlp, (d,), w["layernorm_2.weight"], w["layernorm_2.bias"], eps=1e-5)


@torch.no_grad()
def reference_forward(folder: Path, pixel_indices: np.ndarray, flux: np.ndarray, label: str):
    """The original model's prediction for ONE star, from the documented semantics, in float64.

    Args:
        folder: an original-format checkpoint folder.
        pixel_indices: (P,) indices into the 7514-pixel grid of the given pixels.
        flux: (P,) their flux (NaN = missing).
        label: the requested label name.

    Returns:
        (value, sigma) in physical units.
    """
    config = json.loads((folder / "config.json").read_text())
    nn_cfg, tok, norm = config["nn_config"], config["tokenizer_config"], config["norm_config"]
    d, heads = nn_cfg["embedding_dim"], nn_cfg["encoder_head_num"]
    state = torch.load(folder / "weights.pt", weights_only=True)["model_state_dict"]
    emap = np.load(folder / "embed_map.npz")
    row_of = dict(zip(emap["keys"].tolist(), emap["values"].tolist()))
    token_of = dict(zip(tok["vocabs"], tok["vocab_tokens"]))
    mean, std = np.asarray(norm["_input_mean"]), np.asarray(norm["_input_std"])

    # 1. standardise per token; NaN or |z| > 10 → missing (padding, masked from attention)
    tokens = np.array([token_of[f"syn_apogee{i}"] for i in pixel_indices])
    x = np.where(std[tokens] == 0, flux, (flux - mean[tokens]) / np.where(std[tokens] == 0, 1, std[tokens]))
    valid = np.isfinite(x) & (np.abs(x) <= 10)
    tokens = np.where(valid, tokens, 0)
    x = np.where(valid, x, 0.0)
    lam = np.where(valid, apogee_wavelength()[pixel_indices], 0.0)

    # 2. embedding gelu(E[row]·x + B[row]) + PE(λ); padding rows contribute nothing (masked)
    E, B = state["embedding_layer.embeddings"].double(), state["embedding_layer.bias"].double()
    rows = torch.tensor([row_of[t] for t in tokens])
    xt = torch.tensor(x)[:, None]
    emb = F.gelu(E[rows] * xt + B[rows]) + _pe(torch.tensor(lam), d)
    emb = emb[None]  # (1, P, d)
    pad = torch.tensor(~valid)[None]

    # 3. encoder, padding masked as keys
    h = emb
    for i, n_heads in ((1, heads), (2, heads // 2)):
        h = _block(state, f"torch_encoder.encoder_transformer_block_{i}.", d, n_heads, h, h, pad)

    # 4.–5. decoder from the raw label row, then the gelu MLP and the two linear outputs
    label_token = token_of[label]
    q = E[row_of[label_token]][None, None]
    for i, n_heads in ((1, heads), (2, heads // 2), (3, heads // 4)):
        q = _block(state, f"torch_decoder.decoder_transformer_block_{i}.", d, n_heads, q, h, pad)
    z = q[0, 0]
    for i in range(3, 7):
        z = F.gelu(F.linear(z, state[f"torch_decoder.decoder_dense_{i}.weight"].double(),
                            state[f"torch_decoder.decoder_dense_{i}.bias"].double()))
    mean_std = F.linear(z, state["torch_decoder.decoder_out.weight"].double(),
                        state["torch_decoder.decoder_out.bias"].double())
    logvar = F.linear(z, state["torch_decoder.decoder_logvar_out.weight"].double(),
                      state["torch_decoder.decoder_logvar_out.bias"].double())

    # 6. physical units
    m_label, s_label = mean[label_token], std[label_token]
    return float(mean_std * s_label + m_label), float(torch.sqrt(torch.exp(logvar)) * s_label)


# ---- tests -----------------------------------------------------------------------------------------
import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from spectrafm_hf.convert_original import OriginalCheckpoint, build_model, run_convert_original  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-5


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return build_original_folder(tmp_path_factory.mktemp("orig") / "stage1", seed=3)


@pytest.fixture(scope="module")
def converted(original, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "converted"
    assert run_convert_original(argparse.Namespace(src_dir=str(original), out_dir=str(out), overwrite=False)) == 0
    return out


def _stars(original, n=4, n_pixels=48, seed=0):
    """n stars, each a random set of grid pixels with flux around the per-pixel median (z ~ N(0, 3)),
    including a NaN pixel, a |z| > 10 outlier and a std-0 pixel (index 0..2) in every star."""
    cfg = json.loads((original / "config.json").read_text())
    mean, std = np.asarray(cfg["norm_config"]["_input_mean"]), np.asarray(cfg["norm_config"]["_input_std"])
    rng = np.random.default_rng(seed)
    stars = []
    for _ in range(n):
        idx = np.sort(np.concatenate([[1], rng.choice(np.arange(3, N_PIXELS), n_pixels - 1, replace=False)]))
        flux = mean[idx + 1] + std[idx + 1] * 3 * rng.standard_normal(idx.size)
        flux[idx == 1] = 0.3  # std 0 in the table → taken as it is (z = 0.3)
        flux[5] = np.nan
        flux[9] = mean[idx[9] + 1] + 25 * std[idx[9] + 1]  # an outlier: missing
        stars.append((idx, flux))
    return stars


def _converted_predict(model, fe, idx, flux, label):
    batch = fe(apogee_wavelength()[idx], flux[None], request=[label])
    with torch.no_grad():
        out = model(**batch)
    value, sigma = fe.to_physical([label], out.mean, out.log_variance)
    return float(value[0, 0]), float(sigma[0, 0])


def test_converted_model_reproduces_the_original_forward(original, converted):
    """AutoModel + AutoFeatureExtractor on the converted folder = the independent reference (1e-5 rel)."""
    from transformers import AutoFeatureExtractor, AutoModel

    model = AutoModel.from_pretrained(converted).eval()
    fe = AutoFeatureExtractor.from_pretrained(converted)
    assert model.config.add_bias_kv and model.config.wavelength_encoding == "linear"
    assert (model.config.wavelength_min, model.config.wavelength_max) == (15000.0, 17000.0)
    refs = []
    for idx, flux in _stars(original):
        for label in ("FE_H", "TEFF"):
            ref = reference_forward(original, idx, flux, label)
            got = _converted_predict(model, fe, idx, flux, label)
            np.testing.assert_allclose(got, ref, rtol=RTOL, err_msg=f"label {label}")
            refs.append(ref)
    # The comparison can fail: predictions differ between stars by far more than the tolerance.
    fe_h = np.array(refs[0::2])[:, 0]
    assert np.ptp(fe_h) > 20 * RTOL * np.abs(fe_h).max()


def test_a_wrong_semantic_is_detected(original):
    """Control: zeroing the learned bias key/value (dropping add_bias_kv's effect) breaks agreement,
    so the tolerance is tight enough to see a semantic mistake."""
    ckpt = OriginalCheckpoint(original)
    fe_model = build_model(ckpt)
    from spectrafm_hf.convert_original import build_feature_extractor

    fe = build_feature_extractor(ckpt, fe_model.config)
    idx, flux = _stars(original, n=1)[0]
    ref = reference_forward(original, idx, flux, "FE_H")
    np.testing.assert_allclose(_converted_predict(fe_model, fe, idx, flux, "FE_H"), ref, rtol=RTOL)
    with torch.no_grad():
        for block in (*fe_model.encoder, *fe_model.decoder):
            block.attention.bias_v.zero_()
    broken = _converted_predict(fe_model, fe, idx, flux, "FE_H")
    assert abs(broken[0] - ref[0]) > 10 * RTOL * abs(ref[0])


def test_converted_folder_is_a_complete_checkpoint_with_card(converted):
    from huggingface_hub import ModelCard

    from spectrafm_hf.hub.publish import validate_checkpoint_folder

    names = {name for name, _ in validate_checkpoint_folder(converted)}
    assert {"model.safetensors", "README.md", "modeling_spectrafm.py"} <= names
    card = ModelCard.load(converted / "README.md")
    assert "converted-original" in card.data.tags and "model-index" not in str(card)
    assert "15000–17000 Å" in card.text
    # the original's nn_config context length, not "not recorded"
    context = json.loads((converted / "config.json").read_text())["context_length"]
    assert f"{context} pixels per star per training step" in card.text and "not recorded" not in card.text
    fe_config = json.loads((converted / "preprocessor_config.json").read_text())
    assert len(fe_config["pixel_statistics"]["wavelength"]) == N_PIXELS
    config = json.loads((converted / "config.json").read_text())
    assert config["named_tokens"] == LABELS
    assert config["named_token_statistics"]["TEFF"] == [4702.5, 544.0]


def test_predict_cli_on_converted_folder(original, converted, tmp_path):
    """``spectrafm predict`` reads the converted folder and writes the reference values."""
    idx = np.arange(4107, 4619)
    cfg = json.loads((original / "config.json").read_text())
    mean, std = np.asarray(cfg["norm_config"]["_input_mean"]), np.asarray(cfg["norm_config"]["_input_std"])
    rng = np.random.default_rng(7)
    flux = mean[idx + 1] + std[idx + 1] * rng.standard_normal((2, idx.size))
    np.savez(tmp_path / "spectra.npz", wavelength=apogee_wavelength()[idx], flux=flux)
    out_csv = tmp_path / "out.csv"
    result = subprocess.run(
        [sys.executable, "-m", "spectrafm_hf.cli", "predict", "--model", str(converted), "--input",
         str(tmp_path / "spectra.npz"), "--request", "FE_H", "--output", str(out_csv)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    import csv

    rows = list(csv.DictReader(out_csv.open()))
    assert [r["id"] for r in rows] == ["spectra-0", "spectra-1"]  # npz without ids: <file stem>-<row>
    for i, row in enumerate(rows):
        ref = reference_forward(original, idx, flux[i], "FE_H")
        np.testing.assert_allclose([float(row["FE_H"]), float(row["FE_H_err"])], ref, rtol=1e-4)


def test_refuses_to_overwrite_without_flag(original, converted):
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_convert_original(argparse.Namespace(src_dir=str(original), out_dir=str(converted), overwrite=False))


def _copy(original, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(original, dst)
    return dst


def test_pickled_objects_are_refused(original, tmp_path):
    src = _copy(original, tmp_path)
    state = torch.load(src / "weights.pt", weights_only=True)
    state["scheduler"] = argparse.Namespace(lr=1e-4)  # an arbitrary object: needs full unpickling
    torch.save(state, src / "weights.pt")
    with pytest.raises(ValueError, match="weights_only=True.*Refusing to unpickle"):
        OriginalCheckpoint(src)


def test_inconsistent_files_are_named(original, tmp_path):
    src = _copy(original, tmp_path)
    ckpt = torch.load(src / "weights.pt", weights_only=True)
    del ckpt["model_state_dict"]["torch_encoder.encoder_transformer_block_2.attention.bias_k"]
    ckpt["model_state_dict"]["torch_decoder.decoder_dense_3.weight"] = torch.zeros(5, 5)
    torch.save(ckpt, src / "weights.pt")
    with pytest.raises(ValueError) as err:
        OriginalCheckpoint(src)
    msg = str(err.value)
    assert "weights.pt" in msg and "encoder_transformer_block_2.attention.bias_k" in msg
    assert "decoder_dense_3.weight (5, 5) (expected (32, 16))" in msg

    src2 = build_original_folder(tmp_path / "v", seed=1)
    cfg = json.loads((src2 / "config.json").read_text())
    cfg["tokenizer_config"]["vocabs"].append("NEW_LABEL")
    cfg["tokenizer_config"]["vocab_tokens"].append(len(cfg["tokenizer_config"]["vocab_tokens"]) + 1)
    (src2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"norm_config._input_mean has length 7520, expected V \+ 1 = 7521"):
        OriginalCheckpoint(src2)
    for key in ("_input_mean", "_input_std", "_input_standardized"):
        cfg["norm_config"][key].append(1.0)
    (src2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="embedding_layer.embeddings has 7520 rows.*V = 7520"):
        OriginalCheckpoint(src2)


def test_per_pixel_embedding_rows_are_refused(original, tmp_path):
    src = _copy(original, tmp_path)
    with np.load(src / "embed_map.npz") as data:
        keys, values = data["keys"], data["values"].copy()
    values[10] = 10  # one pixel token with its own row
    np.savez(src / "embed_map.npz", keys=keys, values=values)
    with pytest.raises(ValueError, match="embed_map.npz: pixel tokens map to 2 different embedding rows"):
        OriginalCheckpoint(src)


def _edit_config(folder, edit):
    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def _edit_embed_map(folder, token, row):
    with np.load(folder / "embed_map.npz") as data:
        keys, values = data["keys"], data["values"].copy()
    values[keys == token] = row
    np.savez(folder / "embed_map.npz", keys=keys, values=values)


# tokens in build_original_folder: 1..7514 the pixels, 7515..7519 TEFF, LOGG, O_FE, MG_FE, FE_H
@pytest.mark.parametrize("edit, message", [
    (lambda f: _edit_config(f, lambda c: c["nn_config"].update(decoder_head_num=8)),
     r"config.json: nn_config decoder_head_num/decoder_dense_num \(8, 32\) differ from the encoder's"),
    (lambda f: _edit_config(f, lambda c: c["nn_config"].update(decoder_activation="relu")),
     r"config.json: nn_config.decoder_activation = 'relu'; only 'gelu'"),
    (lambda f: _edit_config(f, lambda c: c["tokenizer_config"]["vocabs"].__setitem__(0, "syn_apogee9999")),
     r"config.json: pixel name 'syn_apogee9999' is beyond the 7514-pixel grid"),
    (lambda f: _edit_config(f, lambda c: c["tokenizer_config"]["vocabs"].__setitem__(1, "syn_apogee0")),
     r"config.json: a pixel name appears twice"),
    (lambda f: _edit_config(f, lambda c: c["norm_config"]["_input_std"].__setitem__(7516, 0.0)),
     r"config.json: norm_config._input_std of 'LOGG' \(token 7516\) is 0.0; a label needs a positive spread"),
    (lambda f: _edit_embed_map(f, 7516, 1), r"embed_map.npz: named tokens \['LOGG'\] share the pixel row 1"),
    (lambda f: _edit_embed_map(f, 7, 9999), r"embed_map.npz: rows outside 0..7519: \{7: 9999\}"),
], ids=["decoder-heads", "activation", "beyond-grid", "duplicate-pixel", "label-std-0", "row-clash",
        "row-out-of-range"])
def test_inconsistent_config_and_embed_map_are_named(original, tmp_path, edit, message):
    """Each consistency rule between the three files is checked, naming the file at fault."""
    src = _copy(original, tmp_path)
    edit(src)
    with pytest.raises(ValueError, match=message):
        OriginalCheckpoint(src)


def test_missing_file_is_named(original, tmp_path):
    src = _copy(original, tmp_path)
    (src / "embed_map.npz").unlink()
    with pytest.raises(FileNotFoundError, match="embed_map.npz is missing"):
        OriginalCheckpoint(src)


def test_paper_size_checkpoint_converts_and_matches(tmp_path):
    """The paper's dimensions (d = 256, 16 heads, dense 2048, context 512, 7514 pixels + 5 labels):
    11.87 M parameters in the original, reproduced to 1e-5 relative on 512 pixels."""
    original = build_original_folder(tmp_path / "paper", d=256, heads=16, dense=2048, context_length=512, seed=5)
    state = torch.load(original / "weights.pt", weights_only=True)["model_state_dict"]
    n_params = sum(v.numel() for v in state.values())
    assert 11.8e6 < n_params < 11.9e6
    out = tmp_path / "converted"
    run_convert_original(argparse.Namespace(src_dir=str(original), out_dir=str(out), overwrite=False))
    from transformers import AutoFeatureExtractor, AutoModel

    model, fe = AutoModel.from_pretrained(out).eval(), AutoFeatureExtractor.from_pretrained(out)
    for idx, flux in _stars(original, n=2, n_pixels=512):
        np.testing.assert_allclose(_converted_predict(model, fe, idx, flux, "FE_H"),
                                   reference_forward(original, idx, flux, "FE_H"), rtol=RTOL)
