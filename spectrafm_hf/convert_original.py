"""``spectrafm convert-original SRC_DIR OUT_DIR``: an original SpectraFM checkpoint → this package's format.

The original format
-------------------
The paper's released checkpoints, and any run of the original training code, are a folder of three files:

- ``weights.pt``: a ``torch.save`` dict; its ``model_state_dict`` holds the network (key names and shapes:
  :func:`expected_state_shapes`). The other entries (optimizer state, epoch) are not needed. The file holds
  only tensors, dicts, strings and numbers, so it never needs full unpickling.
- ``config.json``, three sections: ``nn_config`` (``embedding_dim`` d, ``encoder_head_num`` and
  ``decoder_head_num`` H, ``encoder_dense_num`` and ``decoder_dense_num`` F, ``context_length``, the
  activations and dropout rates); ``tokenizer_config`` (``vocabs``: the token names, ``syn_apogee{i}`` for
  pixel i of the 7514-pixel APOGEE grid and label names such as ``TEFF`` or ``FE_H``; ``vocab_tokens``: the
  integer token of each name, 1..V, 0 being padding); ``norm_config`` (``_input_mean``, ``_input_std``:
  each value is standardised with its token's entries; length V + 1, indexed by token).
- ``embed_map.npz``: arrays ``keys`` and ``values``, token → the embedding row it actually uses (0..V).

The converted model reproduces the original forward pass: same means and σ in physical units for the
same pixels.

Mapping
-------
- Vocabulary: every pixel name ``syn_apogee{i}`` must map to ONE embedding row (row 1 in the released
  models); it becomes our shared pixel row (id 1), and pixel i gets the wavelength of pixel i of the
  7514-pixel APOGEE grid (``data.grid.apogee_wavelength``). Other names (labels, other scalars) become
  ``named_tokens`` in vocabulary order, each with the row ``embed_map`` gives it. Pixels mapping to
  different rows cannot be expressed by a shared-row model: refused.
- Architecture: d = embedding_dim; encoder heads (H, H/2), widths (F, F/2); decoder heads
  (H, H/2, H/4), widths (F, F/2, F/4); output MLP F, F/2, F/4, F/8; ``add_bias_kv=True``; GELU;
  LayerNorm ε = 1e-5 (PyTorch's default, which the original uses); the paper's linear 15000–17000 Å
  wavelength encoding with scale 1000 and base 10000.
- Standardisation: label statistics from ``_input_mean/_input_std`` at the label's token; per-pixel
  statistics (median, std) keyed by the pixel's wavelength go to the feature extractor (std 0 →
  value left as it is, as the original does).

Safety: ``weights.pt`` is read with ``torch.load(weights_only=True)`` only; a file that needs arbitrary
unpickling is refused. Every inconsistency names the file and key.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from .data.grid import APOGEE_NPIX, apogee_wavelength
from .output_guard import check_output_folder, staged_folder

PIXEL_NAME = re.compile(r"^syn_apogee(\d+)$")
NN_CONFIG_KEYS = ("context_length", "embedding_dim", "encoder_head_num", "encoder_dense_num",
                  "decoder_head_num", "decoder_dense_num")
#: The original's LayerNorm epsilon (torch.nn.LayerNorm default).
ORIGINAL_LAYER_NORM_EPS = 1e-5


# ---- reading the original folder -------------------------------------------------------------------
def _require_file(path: Path) -> None:
    """Refuse a folder that lacks one of the three files, naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: an original checkpoint folder holds weights.pt, "
                                "config.json and embed_map.npz")


def load_original_weights(path: Path) -> dict[str, torch.Tensor]:
    """``model_state_dict`` of ``weights.pt``, loaded with ``weights_only=True`` (never arbitrary pickle)."""
    _require_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} cannot be loaded with torch.load(weights_only=True): it contains objects other than "
            f"tensors, dicts, strings and numbers ({str(err).splitlines()[0]}). Refusing to unpickle "
            "arbitrary objects (that can run code); re-save it as a plain dict of tensors."
        ) from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path} is not a readable torch.save file ({err})") from None
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path}: expected a dict with 'model_state_dict' (original format), got {keys}")
    state = checkpoint["model_state_dict"]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: model_state_dict entries that are not tensors: {bad[:5]}")
    return state


def _read_config(path: Path) -> dict:
    """``config.json`` with its three sections and the keys this converter reads; GELU activations only."""
    _require_file(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    for section in ("nn_config", "tokenizer_config", "norm_config"):
        if not isinstance(config.get(section), dict):
            raise ValueError(f"{path}: section {section!r} is missing")
    missing = [k for k in NN_CONFIG_KEYS if k not in config["nn_config"]]
    if missing:
        raise ValueError(f"{path}: nn_config lacks {missing}")
    for key in ("vocabs", "vocab_tokens"):
        if key not in config["tokenizer_config"]:
            raise ValueError(f"{path}: tokenizer_config lacks {key!r}")
    for key in ("_input_mean", "_input_std"):
        if key not in config["norm_config"]:
            raise ValueError(f"{path}: norm_config lacks {key!r}")
    for key in ("embedding_activation", "encoder_activation", "decoder_activation"):
        act = config["nn_config"].get(key, "gelu")
        if act != "gelu":
            raise ValueError(f"{path}: nn_config.{key} = {act!r}; only 'gelu' (the paper's) is supported")
    return config


def _read_embed_map(path: Path) -> dict[int, int]:
    """``embed_map.npz`` as token → embedding row."""
    _require_file(path)
    with np.load(path, allow_pickle=False) as data:
        if "keys" not in data or "values" not in data:
            raise ValueError(f"{path}: expected arrays 'keys' and 'values', found {sorted(data.files)}")
        keys, values = data["keys"], data["values"]
    if keys.shape != values.shape or keys.ndim != 1:
        raise ValueError(f"{path}: 'keys' {keys.shape} and 'values' {values.shape} must be equal-length 1-D")
    return {int(k): int(v) for k, v in zip(keys, values)}


def expected_state_shapes(d: int, heads: int, dense: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """Key → shape of the original ``model_state_dict`` for these ``nn_config`` values (see module doc)."""
    shapes = {"embedding_layer.embeddings": (vocab + 1, d), "embedding_layer.bias": (vocab + 1, d)}

    def block(prefix: str, width: int) -> None:
        shapes.update({
            f"{prefix}attention.in_proj_weight": (3 * d, d), f"{prefix}attention.in_proj_bias": (3 * d,),
            f"{prefix}attention.bias_k": (1, 1, d), f"{prefix}attention.bias_v": (1, 1, d),
            f"{prefix}attention.out_proj.weight": (d, d), f"{prefix}attention.out_proj.bias": (d,),
            f"{prefix}dense_1.weight": (width, d), f"{prefix}dense_1.bias": (width,),
            f"{prefix}dense_2.weight": (d, width), f"{prefix}dense_2.bias": (d,),
            f"{prefix}layernorm_1.weight": (d,), f"{prefix}layernorm_1.bias": (d,),
            f"{prefix}layernorm_2.weight": (d,), f"{prefix}layernorm_2.bias": (d,),
        })

    for i, width in enumerate((dense, dense // 2), start=1):
        block(f"torch_encoder.encoder_transformer_block_{i}.", width)
    for i, width in enumerate((dense, dense // 2, dense // 4), start=1):
        block(f"torch_decoder.decoder_transformer_block_{i}.", width)
    widths = (d, dense, dense // 2, dense // 4, dense // 8)
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=3):
        shapes[f"torch_decoder.decoder_dense_{i}.weight"] = (fan_out, fan_in)
        shapes[f"torch_decoder.decoder_dense_{i}.bias"] = (fan_out,)
    for name in ("decoder_out", "decoder_logvar_out"):
        shapes[f"torch_decoder.{name}.weight"] = (1, dense // 8)
        shapes[f"torch_decoder.{name}.bias"] = (1,)
    return shapes


# ---- checking that the three files describe one model ----------------------------------------------
def _dimensions(nn_cfg: dict) -> tuple[int, int, int]:
    """(d = embedding_dim, H = encoder_head_num, F = encoder_dense_num) of an ``nn_config``."""
    return int(nn_cfg["embedding_dim"]), int(nn_cfg["encoder_head_num"]), int(nn_cfg["encoder_dense_num"])


def _check_vocabulary(tok: dict, cfg_path: Path) -> tuple[list[str], list[int]]:
    """(names, tokens) of ``tokenizer_config``: one token per name, the tokens exactly 1..V."""
    vocabs, tokens = list(tok["vocabs"]), [int(t) for t in tok["vocab_tokens"]]
    V = len(vocabs)
    if len(tokens) != V:
        raise ValueError(f"{cfg_path}: tokenizer_config has {V} vocabs but {len(tokens)} vocab_tokens")
    if sorted(tokens) != list(range(1, V + 1)):
        raise ValueError(f"{cfg_path}: tokenizer_config.vocab_tokens must be 1..{V} each once "
                         "(0 is padding)")
    return vocabs, tokens


def _read_statistics(norm: dict, V: int, cfg_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each (V+1,) float64 indexed by token, from ``norm_config``."""
    for key in ("_input_mean", "_input_std"):
        if len(norm[key]) != V + 1:
            raise ValueError(f"{cfg_path}: norm_config.{key} has length {len(norm[key])}, expected "
                             f"V + 1 = {V + 1} (indexed by token, index 0 unused)")
    return np.asarray(norm["_input_mean"], dtype=np.float64), np.asarray(norm["_input_std"], dtype=np.float64)


def _check_architecture(nn_cfg: dict, cfg_path: Path) -> None:
    """The original ties the decoder's heads/widths to the encoder's and halves them block by block."""
    d, heads, dense = _dimensions(nn_cfg)
    if int(nn_cfg["decoder_head_num"]) != heads or int(nn_cfg["decoder_dense_num"]) != dense:
        raise ValueError(f"{cfg_path}: nn_config decoder_head_num/decoder_dense_num "
                         f"({nn_cfg['decoder_head_num']}, {nn_cfg['decoder_dense_num']}) differ from the "
                         f"encoder's ({heads}, {dense}); the original architecture uses the same values")
    if heads % 4 or dense % 8 or d % heads:
        raise ValueError(f"{cfg_path}: nn_config needs encoder_head_num divisible by 4, "
                         f"encoder_dense_num by 8 and embedding_dim by encoder_head_num; got "
                         f"heads={heads}, dense={dense}, d={d}")


def _check_state_shapes(state: dict[str, torch.Tensor], nn_cfg: dict, V: int, weights_path: Path,
                        cfg_path: Path) -> None:
    """``model_state_dict`` has exactly the keys and shapes that ``nn_config`` and V imply."""
    d, heads, dense = _dimensions(nn_cfg)
    rows = state.get("embedding_layer.embeddings")
    if rows is not None and rows.shape[0] != V + 1:
        # the commonest mix-up (weights of one run, config of another) gets its own message
        raise ValueError(
            f"{weights_path}: embedding_layer.embeddings has {rows.shape[0]} rows but "
            f"{cfg_path} has V = {V} vocabulary tokens (expected V + 1 = {V + 1}): the two files "
            "come from different models"
        )
    expected = expected_state_shapes(d, heads, dense, V)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
        if wrong:
            parts.append(f"wrong shapes {wrong[:6]}")
        raise ValueError(f"{weights_path}: model_state_dict does not match nn_config of {cfg_path} "
                         f"(d={d}, heads={heads}, dense={dense}, V={V}): " + "; ".join(parts))


def _check_embed_map_range(embed_map: dict[int, int], V: int, emap_path: Path) -> None:
    """Every token 0..V has a row, and every row is one of the V + 1 rows of the embedding table."""
    absent = [t for t in range(V + 1) if t not in embed_map]
    if absent:
        raise ValueError(f"{emap_path}: tokens {absent[:6]} have no entry (keys must cover 0..{V})")
    bad_rows = {t: r for t, r in embed_map.items() if not 0 <= r <= V}
    if bad_rows:
        raise ValueError(f"{emap_path}: rows outside 0..{V}: {dict(list(bad_rows.items())[:5])}")


def _split_vocabulary(vocabs: list[str], tokens: list[int], embed_map: dict[int, int], cfg_path: Path):
    """Pixel names → (grid indices, tokens); other names → (name, token, row); both kinds must exist."""
    pixel_index, pixel_tokens, named = [], [], []
    for name, token in zip(vocabs, tokens):
        match = PIXEL_NAME.match(name)
        if match:
            index = int(match.group(1))
            if index >= APOGEE_NPIX:
                raise ValueError(f"{cfg_path}: pixel name {name!r} is beyond the {APOGEE_NPIX}-pixel grid")
            pixel_index.append(index)
            pixel_tokens.append(token)
        else:
            named.append((name, token, embed_map[token]))
    if not pixel_tokens:
        raise ValueError(f"{cfg_path}: no pixel tokens (syn_apogee<i>) in tokenizer_config.vocabs")
    if not named:
        raise ValueError(f"{cfg_path}: no label tokens in tokenizer_config.vocabs")
    return pixel_index, pixel_tokens, named


def _shared_pixel_row(pixel_tokens: list[int], named: list[tuple[str, int, int]], embed_map: dict[int, int],
                      emap_path: Path) -> int:
    """The ONE embedding row all pixel tokens use; no named token may use it too."""
    pixel_rows = sorted({embed_map[t] for t in pixel_tokens})
    if len(pixel_rows) != 1:
        raise ValueError(
            f"{emap_path}: pixel tokens map to {len(pixel_rows)} different embedding rows "
            f"({pixel_rows[:5]}...); this converter needs ONE shared pixel row (as in the released "
            "models, where every pixel maps to row 1): per-pixel embeddings cannot be expressed "
            "by this package's grid-agnostic model"
        )
    pixel_row = pixel_rows[0]
    clash = [n for n, _, r in named if r == pixel_row]
    if clash:
        raise ValueError(f"{emap_path}: named tokens {clash} share the pixel row {pixel_row}")
    return pixel_row


def _check_tokens_usable(pixel_index: list[int], named: list[tuple[str, int, int]], std: np.ndarray,
                         cfg_path: Path) -> None:
    """Each pixel appears once; each label has a positive spread (else σ in physical units is meaningless)."""
    if len(set(np.asarray(pixel_index))) != len(pixel_index):
        raise ValueError(f"{cfg_path}: a pixel name appears twice in tokenizer_config.vocabs")
    for name, token, _ in named:
        if not (np.isfinite(std[token]) and std[token] > 0):
            raise ValueError(f"{cfg_path}: norm_config._input_std of {name!r} (token {token}) is "
                             f"{std[token]}; a label needs a positive spread to report physical units")


class OriginalCheckpoint:
    """A validated original checkpoint folder.

    Attributes:
        state: the original ``model_state_dict`` (float32 tensors).
        nn_config: the ``nn_config`` section.
        pixel_index: (P,) int64, grid index i of each pixel token ``syn_apogee{i}``, in token order.
        pixel_tokens: (P,) int64, their tokens.
        pixel_row: the ONE embedding row every pixel token maps to.
        named: list of (name, token, row) for the non-pixel tokens, in vocabulary order.
        mean, std: (V+1,) float64 standardisation statistics indexed by token.
    """

    def __init__(self, src_dir: str | Path):
        src = Path(src_dir)
        if not src.is_dir():
            raise FileNotFoundError(f"original checkpoint folder {str(src)!r} does not exist")
        cfg_path, emap_path, weights_path = src / "config.json", src / "embed_map.npz", src / "weights.pt"
        config = _read_config(cfg_path)
        embed_map = _read_embed_map(emap_path)
        state = load_original_weights(weights_path)
        nn_cfg = config["nn_config"]

        vocabs, tokens = _check_vocabulary(config["tokenizer_config"], cfg_path)
        V = len(vocabs)
        self.mean, self.std = _read_statistics(config["norm_config"], V, cfg_path)
        _check_architecture(nn_cfg, cfg_path)
        _check_state_shapes(state, nn_cfg, V, weights_path, cfg_path)
        self.state = {k: v.float() for k, v in state.items()}
        self.nn_config = nn_cfg

        _check_embed_map_range(embed_map, V, emap_path)
        pixel_index, pixel_tokens, named = _split_vocabulary(vocabs, tokens, embed_map, cfg_path)
        self.pixel_row = _shared_pixel_row(pixel_tokens, named, embed_map, emap_path)
        _check_tokens_usable(pixel_index, named, self.std, cfg_path)
        self.pixel_index = np.asarray(pixel_index, dtype=np.int64)
        self.pixel_tokens = np.asarray(pixel_tokens, dtype=np.int64)
        self.named = named


# ---- building the new model ------------------------------------------------------------------------
def build_config(ckpt: OriginalCheckpoint):
    """The ``SpectraFMConfig`` with the original architecture and the paper's wavelength encoding."""
    from .configuration_spectrafm import SpectraFMConfig

    nn_cfg = ckpt.nn_config
    d, heads, dense = _dimensions(nn_cfg)
    return SpectraFMConfig.paper(
        d_model=d,
        encoder_heads=[heads, heads // 2],
        encoder_mlp=[dense, dense // 2],
        decoder_heads=[heads, heads // 2, heads // 4],
        decoder_mlp=[dense, dense // 2, dense // 4],
        head_mlp=[dense, dense // 2, dense // 4, dense // 8],
        dropout=float(nn_cfg.get("encoder_dropout_rate", 0.05)),
        activation="gelu",
        add_bias_kv=True,
        layer_norm_eps=ORIGINAL_LAYER_NORM_EPS,
        context_length=int(nn_cfg["context_length"]),
        wavelength_base=10000.0,
        named_tokens=[name for name, _, _ in ckpt.named],
        named_token_statistics={name: [float(ckpt.mean[t]), float(ckpt.std[t])] for name, t, _ in ckpt.named},
    )


def convert_state_dict(ckpt: OriginalCheckpoint) -> dict[str, torch.Tensor]:
    """Original ``model_state_dict`` → ``SpectraFMModel`` state dict (same tensors, new names/rows)."""
    s = ckpt.state
    # our rows: 0 padding (zeros: never attended), 1 the shared pixel row, 2.. named tokens in order
    rows = [ckpt.pixel_row] + [row for _, _, row in ckpt.named]
    out = {}
    for ours, theirs in (("weight", "embeddings"), ("bias", "bias")):
        table = s[f"embedding_layer.{theirs}"]
        out[f"embeddings.{ours}"] = torch.cat((torch.zeros(1, table.shape[1]), table[rows]))

    def block(ours: str, theirs: str) -> None:
        for a, b in (("attention.in_proj.weight", "attention.in_proj_weight"),
                     ("attention.in_proj.bias", "attention.in_proj_bias"),
                     ("attention.bias_k", "attention.bias_k"), ("attention.bias_v", "attention.bias_v"),
                     ("attention.out_proj.weight", "attention.out_proj.weight"),
                     ("attention.out_proj.bias", "attention.out_proj.bias"),
                     ("mlp.dense_1.weight", "dense_1.weight"), ("mlp.dense_1.bias", "dense_1.bias"),
                     ("mlp.dense_2.weight", "dense_2.weight"), ("mlp.dense_2.bias", "dense_2.bias"),
                     ("layernorm_1.weight", "layernorm_1.weight"), ("layernorm_1.bias", "layernorm_1.bias"),
                     ("layernorm_2.weight", "layernorm_2.weight"), ("layernorm_2.bias", "layernorm_2.bias")):
            out[f"{ours}.{a}"] = s[f"{theirs}.{b}"]

    for i in range(2):
        block(f"encoder.{i}", f"torch_encoder.encoder_transformer_block_{i + 1}")
    for i in range(3):
        block(f"decoder.{i}", f"torch_decoder.decoder_transformer_block_{i + 1}")
    for i in range(4):
        for p in ("weight", "bias"):
            out[f"head.layers.{i}.{p}"] = s[f"torch_decoder.decoder_dense_{i + 3}.{p}"]
    for ours, theirs in (("mean", "decoder_out"), ("log_variance", "decoder_logvar_out")):
        for p in ("weight", "bias"):
            out[f"head.{ours}.{p}"] = s[f"torch_decoder.{theirs}.{p}"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def build_model(ckpt: OriginalCheckpoint):
    """A ``SpectraFMForLabelPrediction`` holding the original weights (eval mode)."""
    from .modeling_spectrafm import SpectraFMForLabelPrediction

    model = SpectraFMForLabelPrediction(build_config(ckpt))
    result = model.load_state_dict(convert_state_dict(ckpt), strict=True)
    assert not result.missing_keys and not result.unexpected_keys  # strict=True raises before this
    return model.eval()


def pixel_statistics(ckpt: OriginalCheckpoint) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel (wavelength Å vacuum, median, std), sorted by wavelength; std 0 = leave unstandardised."""
    wavelength = apogee_wavelength()[ckpt.pixel_index]
    order = np.argsort(wavelength)
    return (wavelength[order], ckpt.mean[ckpt.pixel_tokens][order], ckpt.std[ckpt.pixel_tokens][order])


def build_feature_extractor(ckpt: OriginalCheckpoint, config):
    """The ``SpectraFMFeatureExtractor`` with the original's per-pixel and label statistics.

    Every vocabulary pixel is standardised with its own (median, std) looked up by wavelength. The
    global ``flux_median``/``flux_std`` (used by the extractor only for pixels absent from the table,
    which the original could not read at all) are the medians of the per-pixel values, so such pixels
    are at least on the same scale; ``trained_wavelength_range`` makes the extractor warn about them.
    """
    from .feature_extraction_spectrafm import SpectraFMFeatureExtractor

    wavelength, median, std = pixel_statistics(ckpt)
    positive = std[std > 0]
    if positive.size == 0:
        raise ValueError("norm_config._input_std is 0 for every pixel token: no flux scale to standardise with")
    return SpectraFMFeatureExtractor(
        named_tokens=list(config.named_tokens),
        named_token_statistics={k: list(v) for k, v in config.named_token_statistics.items()},
        flux_median=float(np.median(median)),
        flux_std=float(np.median(positive)),
        pixel_statistics={"wavelength": wavelength.tolist(), "median": median.tolist(), "std": std.tolist()},
        trained_wavelength_range=[float(wavelength[0]), float(wavelength[-1])],
        context_length=config.context_length,
        outlier_threshold=10.0,
    )


def run_convert_original(args) -> int:
    """CLI entry: ``spectrafm convert-original SRC_DIR OUT_DIR [--overwrite]``.

    Writes the converted checkpoint atomically (a temporary sibling folder renamed into place), so a
    failed conversion never leaves a half-written ``OUT_DIR``.
    """
    from .checkpoints import save_checkpoint
    from .hub.cards import CardInfo, render_card

    out = check_output_folder(args.out_dir, overwrite=getattr(args, "overwrite", False), inputs=[args.src_dir],
                              option="OUT_DIR")
    ckpt = OriginalCheckpoint(args.src_dir)
    model = build_model(ckpt)
    feature_extractor = build_feature_extractor(ckpt, model.config)
    wavelength = apogee_wavelength()[ckpt.pixel_index]
    card = CardInfo(
        stage="converted",
        labels=[name for name, _, _ in ckpt.named],
        training_data=(
            "Whatever the original run was trained on; this converter does not know. The paper's released "
            "checkpoints were trained on APOGEE DR17 (stage 1: ASPCAP best-fit synthetic spectra of 102,747 "
            "stars; stage 2: their observed spectra, pixels 0–3756; stage 3: 100 stars with [Fe/H] > −1, "
            "pixels 4107–4618). The vocabulary of this checkpoint has "
            f"{len(ckpt.pixel_index)} pixel tokens and the labels {', '.join(n for n, _, _ in ckpt.named)}."
        ),
        data_kind="unknown",
        wavelength_range_A=(float(wavelength.min()), float(wavelength.max())),
        n_pixels=len(ckpt.pixel_index),
        context_length=model.config.context_length,
        source=str(Path(args.src_dir).resolve()),
        extra_tags=["converted-original"],
    )
    with staged_folder(out, kind="checkpoint") as staging:
        save_checkpoint(model, feature_extractor, staging, card=render_card(card))
    print(f"converted {args.src_dir} → {out} ({len(ckpt.pixel_index)} pixels, labels "
          f"{', '.join(n for n, _, _ in ckpt.named)}, {sum(p.numel() for p in model.parameters())} parameters)")
    return 0
