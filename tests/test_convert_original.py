"""Test helpers: a checkpoint folder in the ORIGINAL SpectraFM format, and an independent forward pass.

Both are written from the format and semantics documented in ``../shared/docs/official-checkpoint.md``
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
    mean_std = F.linear(z, state["torch_decoder.decoder_out.weight"].double(), state["torch_decoder.decoder_out.bias"].double())
    logvar = F.linear(z, state["torch_decoder.decoder_logvar_out.weight"].double(),
                      state["torch_decoder.decoder_logvar_out.bias"].double())

    # 6. physical units
    m_label, s_label = mean[label_token], std[label_token]
    return float(mean_std * s_label + m_label), float(torch.sqrt(torch.exp(logvar)) * s_label)
