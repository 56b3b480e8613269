"""A frozen copy of ``spectrafm_hf/modeling_spectrafm.py`` as it was before issue 11's speed work
(commit 9d6d73d), kept as the "old code path" so that the speed and the outputs of the current model can be
compared with it in the same run (``benchmarks/bench_model.py``, ``tests/test_modeling.py``). Load it as a
submodule of the package so that its relative import finds ``spectrafm_hf.configuration_spectrafm``:
``importlib.util.spec_from_file_location("spectrafm_hf._modeling_before_issue11", <this file>)``.
Not part of the package; do not edit (it is the reference).
"""

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_spectrafm import SpectraFMConfig


@dataclass
class SpectraFMOutput(ModelOutput):
    """Output of :class:`SpectraFMModel`.

    Args:
        loss: scalar Gaussian negative log-likelihood over the queries that have a target (only when
            ``labels`` are given), in standardised units.
        mean: (B, Q) predicted value of each requested label, standardised.
        log_variance: (B, Q) predicted log-variance ``s``, standardised; the 1σ uncertainty in physical
            units is ``sqrt(exp(s)) × MAD-std`` (``SpectraFMFeatureExtractor.to_physical``).
        encoder_attentions: with ``output_attentions=True``, one (B, H, L, L + 1) tensor per encoder
            block: self-attention probabilities; the LAST key index is the learned ``add_bias_kv`` slot.
        cross_attentions: with ``output_attentions=True`` or ``"cross"``, one (B, H, Q, L + 1) tensor per
            decoder block: attention of each label query over the encoder outputs; the LAST key index
            is the bias slot.
    """

    loss: torch.FloatTensor | None = None
    mean: torch.FloatTensor | None = None
    log_variance: torch.FloatTensor | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


def wavelength_encoding(wavelength: torch.Tensor, config: SpectraFMConfig) -> torch.Tensor:
    """Sinusoidal encoding of vacuum wavelength (Å): (..., ) → (..., d_model), float32.

    ``λn = (f(λ) − f(λmin)) / (f(λmax) − f(λmin))``, f = ln (``"log"``) or identity (``"linear"``);
    ``PE[2i] = sin(scale · λn · base^(−2i/d))``, ``PE[2i+1] = cos(...)``; ``PE = 0`` where λ ≤ 0.
    Computed in float32 whatever the autocast dtype: the fastest sinusoid needs it.
    """
    d = config.d_model
    lam = wavelength.float()
    present = lam > 0
    lo, hi = float(config.wavelength_min), float(config.wavelength_max)
    if config.wavelength_encoding == "log":
        # ln(λ/λmin) rather than ln λ − ln λmin: keeps float32 precision (~0.003 Å at 1.6 µm).
        lam_n = torch.log(torch.where(present, lam, lo) / lo) / math.log(hi / lo)
    else:
        lam_n = (lam - lo) / (hi - lo)
    exponent = torch.arange(0, d, 2, device=lam.device, dtype=torch.float32) / d
    frequencies = float(config.wavelength_scale) * float(config.wavelength_base) ** (-exponent)
    angle = lam_n.unsqueeze(-1) * frequencies  # (..., d/2)
    encoding = torch.stack((torch.sin(angle), torch.cos(angle)), dim=-1).flatten(-2)  # sin, cos interleaved
    return encoding * present.unsqueeze(-1)


class SpectraFMEmbeddings(nn.Module):
    """Input tokens → vectors: ``act(w[t] · x + b[t]) + PE(λ)``; a label query → ``w[t]``.

    Row 0 is padding, row 1 the ONE row shared by every spectral pixel (a pixel's identity is its
    wavelength encoding), rows 2.. the named tokens. Named tokens have λ = 0 hence PE = 0.
    """

    def __init__(self, config: SpectraFMConfig):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.empty(config.vocab_size, config.d_model))
        self.bias = nn.Parameter(torch.empty(config.vocab_size, config.d_model))
        self.act = ACT2FN[config.activation]

    def forward(
        self,
        input_ids: torch.LongTensor,  # (B, L)
        input_values: torch.FloatTensor,  # (B, L)
        input_wavelength: torch.FloatTensor,  # (B, L) Å
        attention_mask: torch.BoolTensor,  # (B, L) True = real token
    ) -> torch.FloatTensor:  # (B, L, d)
        # Masked tokens may carry NaN (a bad pixel's flux): zero them so that nothing non-finite reaches
        # the attention, where 0 × NaN would leak through the softmax even with a -inf mask.
        values = torch.where(attention_mask, input_values, 0.0).nan_to_num(0.0, 0.0, 0.0)
        wavelength = torch.where(attention_mask, input_wavelength, 0.0).nan_to_num(0.0, 0.0, 0.0)
        ids = torch.where(attention_mask, input_ids, 0)
        hidden = self.act(F.embedding(ids, self.weight) * values.unsqueeze(-1) + F.embedding(ids, self.bias))
        return hidden + wavelength_encoding(wavelength, self.config).to(hidden.dtype)

    def query(self, query_ids: torch.LongTensor) -> torch.FloatTensor:
        """(B, Q) token ids of requested labels → (B, Q, d) raw embedding rows (no value, no PE)."""
        return F.embedding(query_ids, self.weight)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,  # (B, H, Lq, hd)
    key: torch.Tensor,  # (B, H, Lk, hd)
    value: torch.Tensor,  # (B, H, Lk, hd)
    attention_mask: torch.Tensor | None,  # (B, 1, 1 or Lq, Lk) bool, True = attend
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention that also returns the probabilities (B, H, Lq, Lk)."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, Lq, H, hd)
    return output, weights


class SpectraFMAttention(nn.Module):
    """Multi-head attention (self or cross) with an optional learned extra key/value (``add_bias_kv``).

    Parameters follow ``nn.MultiheadAttention``: ``in_proj`` (3d ← d, q/k/v stacked), ``out_proj``,
    ``bias_k`` and ``bias_v`` (1, 1, d). The bias key/value is appended as the LAST key position and
    is never masked, so every query has at least one key even if all its tokens were masked.
    The attention kernel is SDPA unless the model is set to eager or weights are requested. The
    padding mask goes to SDPA as a broadcast (B, 1, 1, L + 1) boolean, never expanded; with it the
    CPU kernel keeps memory O(L) (measured: all 7514 APOGEE pixels at batch 8 peak at 1.6 GB RSS at
    paper size, ``benchmarks/bench_model.py``; eager would need 29 GB per B×H×L×L matrix; not
    measured on CUDA).
    """

    is_causal = False

    def __init__(self, config: SpectraFMConfig, num_heads: int):
        super().__init__()
        self.config = config
        self.d_model = config.d_model
        self.num_heads = num_heads
        self.head_dim = config.d_model // num_heads
        self.scaling = self.head_dim**-0.5
        self.in_proj = nn.Linear(config.d_model, 3 * config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)
        if config.add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, config.d_model))
            self.bias_v = nn.Parameter(torch.empty(1, 1, config.d_model))
        else:
            self.bias_k = self.bias_v = None

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, Lq, d)
        key_padding_mask: torch.BoolTensor,  # (B, Lk) True = attend
        key_value_states: torch.Tensor | None = None,  # (B, Lk, d); None = self-attention
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, q_len, d = hidden_states.shape
        if key_value_states is None:
            query, key, value = self.in_proj(hidden_states).chunk(3, dim=-1)
        else:
            w, b = self.in_proj.weight, self.in_proj.bias
            query = F.linear(hidden_states, w[:d], b[:d])
            key, value = F.linear(key_value_states, w[d:], b[d:]).chunk(2, dim=-1)
        if self.bias_k is not None:
            key = torch.cat((key, self.bias_k.to(key.dtype).expand(batch, 1, d)), dim=1)
            value = torch.cat((value, self.bias_v.to(value.dtype).expand(batch, 1, d)), dim=1)
            key_padding_mask = F.pad(key_padding_mask, (0, 1), value=True)

        def heads(x):  # (B, L, d) → (B, H, L, hd)
            return x.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

        if output_attentions:
            attention_interface = eager_attention_forward
        else:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        output, weights = attention_interface(
            self,
            heads(query),
            heads(key),
            heads(value),
            key_padding_mask[:, None, None, :],  # broadcast over heads and queries: never a (B, H, L, L) mask
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        output = self.out_proj(output.reshape(batch, q_len, d))
        return output, (weights if output_attentions else None)


class SpectraFMMLP(nn.Module):
    """``dense_2(act(dense_1(x)))``: d → width → d."""

    def __init__(self, config: SpectraFMConfig, width: int):
        super().__init__()
        self.dense_1 = nn.Linear(config.d_model, width)
        self.dense_2 = nn.Linear(width, config.d_model)
        self.act = ACT2FN[config.activation]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense_2(self.act(self.dense_1(hidden_states)))


class SpectraFMBlock(nn.Module):
    """Post-LayerNorm transformer block, shared by the encoder (self-attention) and the decoder
    (cross-attention from label queries to encoder outputs; queries never attend to each other):

    ``h = LN1(x + drop(attn(x, kv)))``, ``out = LN2(h + drop(MLP(h)))``.
    """

    def __init__(self, config: SpectraFMConfig, num_heads: int, mlp_width: int):
        super().__init__()
        self.attention = SpectraFMAttention(config, num_heads)
        self.layernorm_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = SpectraFMMLP(config, mlp_width)
        self.layernorm_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, Lq, d)
        key_padding_mask: torch.BoolTensor,  # (B, Lk)
        key_value_states: torch.Tensor | None = None,  # (B, Lk, d) for cross-attention
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attention(hidden_states, key_padding_mask, key_value_states, output_attentions)
        hidden_states = self.layernorm_1(hidden_states + self.dropout(attended))
        hidden_states = self.layernorm_2(hidden_states + self.dropout(self.mlp(hidden_states)))
        return hidden_states, weights


class SpectraFMHead(nn.Module):
    """Decoder output → (mean, log-variance): MLP d → head_mlp[0] → ... → head_mlp[-1] (act, dropout),
    then two linear outputs."""

    def __init__(self, config: SpectraFMConfig):
        super().__init__()
        widths = [config.d_model, *config.head_mlp]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.act = ACT2FN[config.activation]
        self.dropout = nn.Dropout(config.dropout)
        self.mean = nn.Linear(widths[-1], 1)
        self.log_variance = nn.Linear(widths[-1], 1)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.layers:
            hidden_states = self.dropout(self.act(layer(hidden_states)))
        return self.mean(hidden_states).squeeze(-1), self.log_variance(hidden_states).squeeze(-1)


def gaussian_nll(
    mean: torch.Tensor,  # (B, Q)
    log_variance: torch.Tensor,  # (B, Q)
    labels: torch.Tensor,  # (B, Q), NaN allowed where query_mask is 0
    label_errors: torch.Tensor | None = None,  # (B, Q) 1σ, standardised; NaN = unknown = 0
    query_mask: torch.Tensor | None = None,  # (B, Q) 1 = has a target
) -> torch.Tensor:
    """Mean over valid queries of ``0.5 · ((y − ŷ)² / V + log V)``, ``V = exp(s) + σ_label² + 1e-8``.

    Computed in float32; 0 (with gradient) if no query has a target. No host synchronisation.
    """
    mean, log_variance, labels = mean.float(), log_variance.float(), labels.float()
    valid = torch.isfinite(labels)
    if query_mask is not None:
        valid = valid & query_mask.bool()
    target = torch.where(valid, labels, 0.0)
    if label_errors is None:
        error_sq = torch.zeros_like(target)
    else:
        label_errors = label_errors.float()
        error_sq = torch.where(valid & torch.isfinite(label_errors), label_errors, 0.0).square()
    variance = torch.exp(log_variance) + error_sq + 1e-8
    nll = 0.5 * ((target - mean).square() / variance + torch.log(variance))
    weight = valid.to(nll.dtype)
    return (nll * weight).sum() / weight.sum().clamp_min(1.0)


class SpectraFMPreTrainedModel(PreTrainedModel):
    config: SpectraFMConfig
    base_model_prefix = "spectrafm"
    main_input_name = "input_values"
    input_modalities = ("spectrum",)
    _no_split_modules = ["SpectraFMBlock"]
    _supports_sdpa = True
    # forward takes no loss kwargs: Trainer must not rescale the loss for gradient accumulation.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # LayerNorm: 1, 0
        if isinstance(module, nn.Linear):
            # PyTorch's own Linear initialisation (what the original model trained with): its scale
            # follows the fan-in, so a d = 32 test model is as well conditioned as the d = 256 one. A fixed
            # N(0, 0.02) starves narrow models: their outputs then ignore the input for hundreds of steps.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1.0 / math.sqrt(module.in_features)
            init.uniform_(module.bias, -bound, bound)
        if isinstance(module, SpectraFMEmbeddings):
            # Unit-scale rows: act(w·x + b) then competes with the unit-amplitude wavelength encoding.
            init.normal_(module.weight, mean=0.0, std=1.0)
            init.zeros_(module.bias)
        elif isinstance(module, SpectraFMAttention):
            init.xavier_uniform_(module.in_proj.weight)
            if module.bias_k is not None:
                init.xavier_normal_(module.bias_k)
                init.xavier_normal_(module.bias_v)


class SpectraFMModel(SpectraFMPreTrainedModel):
    """The full SpectraFM model: embedding, encoder, cross-attention decoder and mean/log-variance
    head. ``AutoModel.from_pretrained(dir)`` returns this class, ready to predict labels.

    Fine-tuning helpers: :meth:`freeze_decoder`, :meth:`freeze_encoder_blocks`, :meth:`unfreeze`,
    :meth:`add_named_tokens`.
    """

    def __init__(self, config: SpectraFMConfig):
        super().__init__(config)
        self.embeddings = SpectraFMEmbeddings(config)
        self.encoder = nn.ModuleList(
            SpectraFMBlock(config, heads, width) for heads, width in zip(config.encoder_heads, config.encoder_mlp)
        )
        self.decoder = nn.ModuleList(
            SpectraFMBlock(config, heads, width) for heads, width in zip(config.decoder_heads, config.decoder_mlp)
        )
        self.head = SpectraFMHead(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor,
        input_values: torch.FloatTensor,
        input_wavelength: torch.FloatTensor,
        attention_mask: torch.LongTensor | None = None,
        query_ids: torch.LongTensor | None = None,
        labels: torch.FloatTensor | None = None,
        label_errors: torch.FloatTensor | None = None,
        query_mask: torch.LongTensor | None = None,
        spectrum_index: torch.LongTensor | None = None,
        output_attentions: bool | str | None = None,
    ) -> SpectraFMOutput:
        r"""Predict the requested labels of a batch of tokenised spectra.

        Steps: embed the input tokens; run the encoder blocks (self-attention over unmasked tokens);
        embed the label queries; run the decoder blocks (each query attends to the encoder outputs
        only); map each query to (mean, log-variance); if ``labels`` are given, the Gaussian NLL.

        Args:
            input_ids: (B, L) token ids; 0 = padding, 1 = spectral pixel, 2.. = named tokens.
            input_values: (B, L) standardised values (flux or named scalar).
            input_wavelength: (B, L) vacuum Å of pixels, 0 for named tokens and padding.
            attention_mask: (B, L) 1 = attend, 0 = never attended. Default: ``input_ids != 0``.
            query_ids: (B, Q) token ids of the requested labels.
            labels: (B, Q) standardised targets (training); NaN or ``query_mask`` 0 = no target.
            label_errors: (B, Q) standardised 1σ errors of the targets (added to the variance).
            query_mask: (B, Q) 1 = this query has a target.
            spectrum_index: ignored by the model; chunked inference batches carry it so that chunk
                predictions can be combined per spectrum (``SpectraFMFeatureExtractor.combine_chunks``).
            output_attentions: return encoder self-attention and decoder cross-attention weights per
                block (computed with eager attention for this call; the last key is the bias_kv slot).
                ``"cross"``: decoder cross-attention weights only; the encoder keeps its fast kernel,
                so long contexts never materialise a B×H×L×L matrix (the Q×L cross weights are small).
        """
        if query_ids is None:
            raise ValueError(
                "query_ids is required: the token ids of the labels to predict, shape (batch, n_queries); "
                "the feature extractor makes them from request=[...]"
            )
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        if output_attentions not in (True, False, "cross"):
            raise ValueError(f"output_attentions must be True, False or 'cross', got {output_attentions!r}")
        encoder_weights = output_attentions is True
        cross_weights = bool(output_attentions)
        key_mask = (input_ids != 0) if attention_mask is None else attention_mask.bool()

        hidden = self.embeddings(input_ids, input_values, input_wavelength, key_mask)
        encoder_attentions = () if encoder_weights else None
        for block in self.encoder:
            hidden, weights = block(hidden, key_mask, output_attentions=encoder_weights)
            if encoder_weights:
                encoder_attentions += (weights,)

        queries = self.embeddings.query(query_ids)
        cross_attentions = () if cross_weights else None
        for block in self.decoder:
            queries, weights = block(queries, key_mask, key_value_states=hidden, output_attentions=cross_weights)
            if cross_weights:
                cross_attentions += (weights,)

        mean, log_variance = self.head(queries)
        loss = None
        if labels is not None:
            loss = gaussian_nll(mean, log_variance, labels, label_errors, query_mask)
        return SpectraFMOutput(
            loss=loss,
            mean=mean,
            log_variance=log_variance,
            encoder_attentions=encoder_attentions,
            cross_attentions=cross_attentions,
        )

    # ---- fine-tuning helpers ----------------------------------------------------------------
    def freeze_decoder(self, include_head: bool = True) -> None:
        """Stop gradients through the decoder blocks (and, by default, the output head), as in the
        paper's stage 3. The embedding (including the label query rows) stays trainable."""
        modules = [self.decoder, self.head] if include_head else [self.decoder]
        for module in modules:
            module.requires_grad_(False)

    def freeze_encoder_blocks(self, indices: Iterable[int]) -> None:
        """Stop gradients through the given encoder blocks (0-based; negative counts from the end).
        The embedding stays trainable."""
        n = len(self.encoder)
        for index in indices:
            if not -n <= index < n:
                raise ValueError(f"encoder block index {index} out of range: this model has {n} encoder blocks")
            self.encoder[index].requires_grad_(False)

    def unfreeze(self) -> None:
        """Make every parameter trainable again."""
        self.requires_grad_(True)

    def add_named_tokens(
        self, names: Iterable[str], statistics: Mapping[str, Iterable[float]] | None = None
    ) -> list[int]:
        """Add named (non-spectral) tokens, e.g. new labels or photometry, as new embedding rows.

        Existing rows are kept, so a trained model keeps everything it knew. The config's
        ``named_tokens`` and ``named_token_statistics`` are updated. Re-create the optimizer after
        calling this (the embedding parameters are new tensors). Update the feature extractor with
        ``feature_extractor.add_named_tokens(names, statistics)``.

        Args:
            names: new token names (must not exist yet).
            statistics: ``name → (median, MAD-std)`` in physical units, used to standardise the value
                of each new token; a name without an entry gets (0, 1): its values are used as given.

        Returns:
            The token ids of the new tokens.
        """
        names = [str(n) for n in names]
        clash = [n for n in names if n in self.config.named_tokens]
        if clash or len(set(names)) != len(names):
            raise ValueError(
                f"named tokens {clash or names} already exist or repeat; existing: {self.config.named_tokens}"
            )
        statistics = dict(statistics or {})
        unknown = set(statistics) - set(names)
        if unknown:
            raise ValueError(f"statistics given for {sorted(unknown)}, which are not among the new names {names}")
        old = self.embeddings.weight
        n_new = len(names)
        weight = torch.empty(n_new, old.shape[1], dtype=old.dtype, device=old.device)
        nn.init.normal_(weight, std=1.0)
        self.embeddings.weight = nn.Parameter(torch.cat((old.data, weight)))
        self.embeddings.bias = nn.Parameter(
            torch.cat((self.embeddings.bias.data, torch.zeros_like(weight)))
        )
        first_id = self.config.vocab_size
        self.config.named_tokens = [*self.config.named_tokens, *names]
        for name in names:
            median, std = statistics.get(name, (0.0, 1.0))
            self.config.named_token_statistics[name] = [float(median), float(std)]
        self.config.validate()
        return list(range(first_id, first_id + n_new))


class SpectraFMForLabelPrediction(SpectraFMModel):
    """The same model under the task-class name (registered with ``AutoModelForPreTraining``);
    checkpoints of either class load into the other."""


__all__ = [
    "SpectraFMOutput",
    "SpectraFMPreTrainedModel",
    "SpectraFMModel",
    "SpectraFMForLabelPrediction",
    "gaussian_nll",
    "wavelength_encoding",
]
