"""SpectraFM model configuration.

This file travels to the Hugging Face Hub as remote code: it imports only ``transformers`` (and the
standard library).
"""

import math
import shutil
from pathlib import Path
from typing import ClassVar

from transformers import PreTrainedConfig

#: The five APOGEE labels of the paper, in the vocabulary order used by default. A copy of
#: ``spectrafm_hf.data.labels.LABELS`` (this file travels to the Hub alone, so it imports nothing of
#: the package; tests/test_schema.py checks the two agree).
DEFAULT_NAMED_TOKENS = ("TEFF", "LOGG", "FE_H", "MG_FE", "O_FE")

#: Median / MAD-std (physical units) of the labels of the paper's released checkpoints.
PAPER_LABEL_STATISTICS = {
    "TEFF": [4702.5, 544.0],
    "LOGG": [2.478, 1.308],
    "FE_H": [-0.159, 0.287],
    "MG_FE": [0.0670, 0.0849],
    "O_FE": [0.0876, 0.0836],
}

# Default log-wavelength encoding, chosen so that the fastest sinusoid has the paper's angular
# frequency at 1.6 µm (derivation in the SpectraFMConfig docstring).
_LOG_MIN_A = 3000.0
_LOG_MAX_A = 30000.0
_PAPER_MAX_RAD_PER_A = 1000.0 / 2000.0  # paper: 1000 · λn with λn = (λ − 15000) / 2000  →  0.5 rad/Å
_LOG_SCALE = round(_PAPER_MAX_RAD_PER_A * 16000.0 * math.log(_LOG_MAX_A / _LOG_MIN_A), 1)  # 18420.7


class SpectraFMConfig(PreTrainedConfig):
    r"""Configuration of a SpectraFM model (Koblischke & Bovy 2024, arXiv 2411.04750).

    Defaults are the paper's architecture (11.9 M parameters in the original, which wasted 3.85 M of
    them on embedding rows that all spectral pixels shared anyway; here every pixel uses ONE row).

    Vocabulary: token id 0 = padding, 1 = spectral pixel (one shared embedding row; a pixel's identity
    comes only from the wavelength encoding), ``2 + i`` = ``named_tokens[i]`` (labels and other
    non-spectral scalars such as photometry).

    Args:
        d_model (`int`, defaults to 256):
            Embedding / residual width.
        encoder_heads (`list[int]`, defaults to `[16, 8]`):
            Attention heads of each encoder block (its length is the number of encoder blocks).
        encoder_mlp (`list[int]`, defaults to `[2048, 1024]`):
            Hidden width of each encoder block's MLP (same length as ``encoder_heads``).
        decoder_heads (`list[int]`, defaults to `[16, 8, 4]`):
            Attention heads of each cross-attention decoder block.
        decoder_mlp (`list[int]`, defaults to `[2048, 1024, 512]`):
            Hidden width of each decoder block's MLP (same length as ``decoder_heads``).
        head_mlp (`list[int]`, defaults to `[2048, 1024, 512, 256]`):
            Widths of the output MLP ``d_model → head_mlp[0] → ... → head_mlp[-1]``, followed by two
            linear outputs: mean and log-variance.
        dropout (`float`, defaults to 0.05):
            Dropout after attention, after every MLP, and inside the output MLP.
        attention_dropout (`float`, defaults to 0.0):
            Dropout on attention probabilities (training only).
        activation (`str`, defaults to `"gelu"`):
            Activation of the embedding, the block MLPs and the output MLP (a ``transformers`` ACT2FN name).
        add_bias_kv (`bool`, defaults to `True`):
            Append one learned key/value position to every attention (as ``nn.MultiheadAttention``'s
            ``add_bias_kv``). It is never masked, so a query always has something to attend to. It is the
            LAST key index of returned attention weights.
        layer_norm_eps (`float`, defaults to 1e-5):
            LayerNorm epsilon.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of linear layers.
        context_length (`int`, defaults to 512):
            Number of spectral tokens per training example (the feature extractor samples this many
            pixels per star). Inference is not limited by it: the model can read all pixels at once.
        wavelength_encoding (`str`, defaults to `"log"`):
            ``"log"`` (default) or ``"linear"``. The sinusoidal encoding of a pixel's vacuum wavelength λ (Å):
            ``λn = (f(λ) − f(wavelength_min)) / (f(wavelength_max) − f(wavelength_min))`` with f = ln for
            ``"log"`` and the identity for ``"linear"``; then for i in 0..d/2−1
            ``PE[2i] = sin(wavelength_scale · λn · wavelength_base^(−2i/d))``,
            ``PE[2i+1] = cos(same)``; ``PE = 0`` where λ = 0 (named tokens, padding).
            The paper's encoding is ``"linear"`` with min 15000, max 17000, scale 1000: it is tied to
            the H band. The log encoding covers the optical to the infrared with the same resolution
            in velocity everywhere.
        wavelength_min (`float`, defaults to 3000.0) / wavelength_max (`float`, defaults to 30000.0):
            Normalisation range of the encoding (Å). Pixels outside it are still encoded (λn outside
            [0, 1]); the range only fixes the scale.
        wavelength_scale (`float`, defaults to 18420.7):
            Angular scale of the fastest sinusoid per unit λn. Derivation of the log default: the
            fastest sinusoid's phase is ``φ = s · ln(λ/λmin) / ln(λmax/λmin)``, so
            ``dφ/dλ = s / (λ · ln(λmax/λmin))``. The paper's fastest sinusoid has
            ``dφ/dλ = 1000 / 2000 Å = 0.5 rad/Å``. Matching it at λ = 16000 Å with λmax/λmin = 10 gives
            ``s = 0.5 · 16000 · ln 10 = 18420.7``. The slowest sinusoid
            (``s · 10000^(−(d−2)/d)`` ≈ 2 rad across the whole 0.3–3 µm range for d = 256) never
            wraps, so every wavelength has a unique code.
        wavelength_base (`float`, defaults to 10000.0):
            Geometric base of the frequencies.
        named_tokens (`list[str]`, defaults to the five labels `TEFF, LOGG, FE_H, MG_FE, O_FE`):
            Names of the non-spectral tokens; ``named_tokens[i]`` has token id ``2 + i``. Any of them can
            be requested as a label or given as an input. Extend with ``model.add_named_tokens``.
        named_token_statistics (`dict[str, list[float]]`, defaults to the paper's label statistics):
            ``name → [median, MAD-std]`` in physical units, used to standardise a named token's value
            and to report predictions in physical units. The feature extractor holds the statistics it
            was fitted with; the two are kept equal when a model is trained with this package.
    """

    model_type = "spectrafm"
    keys_to_ignore_at_inference = ["encoder_attentions", "cross_attentions"]
    #: Every Auto class of the SpectraFM family → its class in the travelling code files
    #: (``{"AutoModel": "modeling_spectrafm.SpectraFMModel", ...}``), set by the package's
    #: ``registration.py``. ``register_for_auto_class`` puts only the class being saved into ``auto_map``;
    #: :meth:`save_pretrained` writes this whole map. None where this file runs as remote code: there the
    #: config was read from a ``config.json`` that already carries the map.
    family_auto_map: ClassVar[dict[str, str] | None] = None
    #: ``{task: {"impl": "pipeline_spectrafm.SpectraFMLabelPipeline", ...}}`` (the transformers pipeline task
    #: of the family, ``pipeline_spectrafm.CUSTOM_PIPELINES``), set by ``registration.py``. :meth:`save_pretrained`
    #: writes it as ``custom_pipelines`` and copies ``pipeline_spectrafm.py`` beside the config, so every save
    #: route carries the task for ``trust_remote_code`` users. Where the package is installed the task is
    #: registered locally, and a loaded config drops these entries: transformers would otherwise insist on
    #: ``trust_remote_code`` for a task the installed package already provides.
    family_custom_pipelines: ClassVar[dict | None] = None

    d_model: int = 256
    encoder_heads: list[int] | tuple[int, ...] = (16, 8)
    encoder_mlp: list[int] | tuple[int, ...] = (2048, 1024)
    decoder_heads: list[int] | tuple[int, ...] = (16, 8, 4)
    decoder_mlp: list[int] | tuple[int, ...] = (2048, 1024, 512)
    head_mlp: list[int] | tuple[int, ...] = (2048, 1024, 512, 256)
    dropout: float = 0.05
    attention_dropout: float = 0.0
    activation: str = "gelu"
    add_bias_kv: bool = True
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    context_length: int = 512
    wavelength_encoding: str = "log"
    wavelength_min: float = _LOG_MIN_A
    wavelength_max: float = _LOG_MAX_A
    wavelength_scale: float = _LOG_SCALE
    wavelength_base: float = 10000.0
    named_tokens: list[str] | tuple[str, ...] = DEFAULT_NAMED_TOKENS
    named_token_statistics: dict | None = None

    def __post_init__(self, **kwargs):
        # Lists, not tuples, so that the config round-trips through JSON unchanged.
        for name in ("encoder_heads", "encoder_mlp", "decoder_heads", "decoder_mlp", "head_mlp"):
            setattr(self, name, [int(v) for v in getattr(self, name)])
        self.named_tokens = [str(v) for v in self.named_tokens]
        if self.named_token_statistics is None:
            self.named_token_statistics = {
                k: list(v) for k, v in PAPER_LABEL_STATISTICS.items() if k in self.named_tokens
            }
        else:
            self.named_token_statistics = {
                str(k): [float(v[0]), float(v[1])] for k, v in self.named_token_statistics.items()
            }
        super().__post_init__(**kwargs)
        if self.family_custom_pipelines and getattr(self, "custom_pipelines", None):
            others = {task: spec for task, spec in self.custom_pipelines.items()
                      if task not in self.family_custom_pipelines}
            if others:
                self.custom_pipelines = others
            else:  # as a config that never had the entry (to_dict equal to a fresh config's)
                del self.custom_pipelines
        self.validate()

    # ---- derived values -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Rows of the embedding table: padding, the shared pixel row, and one per named token."""
        return 2 + len(self.named_tokens)

    def token_id(self, name: str) -> int:
        """Token id of a named token (``ValueError`` naming the known ones if unknown)."""
        try:
            return 2 + self.named_tokens.index(name)
        except ValueError:
            raise ValueError(
                f"unknown named token {name!r}; this model knows {self.named_tokens} "
                "(add new ones with model.add_named_tokens)"
            ) from None

    @classmethod
    def paper(cls, **kwargs) -> "SpectraFMConfig":
        """The paper's exact configuration, including its linear 15000–17000 Å wavelength encoding."""
        values = dict(wavelength_encoding="linear", wavelength_min=15000.0, wavelength_max=17000.0,
                      wavelength_scale=1000.0)
        values.update(kwargs)
        return cls(**values)

    @classmethod
    def tiny(cls, **kwargs) -> "SpectraFMConfig":
        """A tiny configuration for tests and quick experiments (d = 32, ~60 k parameters)."""
        values = dict(d_model=32, encoder_heads=[2, 2], encoder_mlp=[64, 64], decoder_heads=[2, 2, 2],
                      decoder_mlp=[64, 64, 64], head_mlp=[64, 32], context_length=64)
        values.update(kwargs)
        return cls(**values)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """``PreTrainedConfig.save_pretrained``, with ``auto_map`` naming every Auto class of the family
        (:attr:`family_auto_map`), so ``AutoModel``, the task class and ``AutoFeatureExtractor`` all load
        the folder with ``trust_remote_code=True`` whichever model class was saved; and with the pipeline
        task (:attr:`family_custom_pipelines`: ``custom_pipelines`` plus ``pipeline_spectrafm.py``)."""
        if self.family_auto_map:
            self.auto_map = {**(getattr(self, "auto_map", None) or {}), **self.family_auto_map}
        had_pipelines, pipelines = hasattr(self, "custom_pipelines"), getattr(self, "custom_pipelines", None)
        if self.family_custom_pipelines and _copy_pipeline_code(save_directory):
            self.custom_pipelines = {**(pipelines or {}), **self.family_custom_pipelines}
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:  # in memory the config keeps relying on the local registration of the task
            if had_pipelines:
                self.custom_pipelines = pipelines
            elif hasattr(self, "custom_pipelines"):
                del self.custom_pipelines

    def validate(self):
        """Check the architecture is consistent (called on construction and by ``save_pretrained``)."""
        if len(self.encoder_heads) != len(self.encoder_mlp) or not self.encoder_heads:
            raise ValueError(
                f"encoder_heads {self.encoder_heads} and encoder_mlp {self.encoder_mlp} must be non-empty "
                "lists of the same length (one entry per encoder block)"
            )
        if len(self.decoder_heads) != len(self.decoder_mlp) or not self.decoder_heads:
            raise ValueError(
                f"decoder_heads {self.decoder_heads} and decoder_mlp {self.decoder_mlp} must be non-empty "
                "lists of the same length (one entry per decoder block)"
            )
        if self.d_model % 2:
            raise ValueError(f"d_model must be even for the sin/cos wavelength encoding, got {self.d_model}")
        for heads in (*self.encoder_heads, *self.decoder_heads):
            if heads < 1 or self.d_model % heads:
                raise ValueError(f"d_model={self.d_model} is not divisible by a block's head count {heads}")
        if self.wavelength_encoding not in ("log", "linear"):
            raise ValueError(f"wavelength_encoding must be 'log' or 'linear', got {self.wavelength_encoding!r}")
        if not (0 < self.wavelength_min < self.wavelength_max):
            raise ValueError(
                f"need 0 < wavelength_min < wavelength_max (Å), got {self.wavelength_min}, {self.wavelength_max}"
            )
        if len(set(self.named_tokens)) != len(self.named_tokens):
            raise ValueError(f"named_tokens has duplicates: {self.named_tokens}")
        unknown = set(self.named_token_statistics) - set(self.named_tokens)
        if unknown:
            raise ValueError(f"named_token_statistics has entries for unknown tokens {sorted(unknown)}")
        for name, (median, std) in self.named_token_statistics.items():
            if not (math.isfinite(median) and math.isfinite(std) and std > 0):
                raise ValueError(f"statistics of {name!r} must be finite with std > 0, got {[median, std]}")


__all__ = ["SpectraFMConfig"]


#: The transformers pipeline module that travels beside the model code (a sibling of this file).
PIPELINE_CODE_FILE = "pipeline_spectrafm.py"


def _copy_pipeline_code(save_directory) -> bool:
    """Copy :data:`PIPELINE_CODE_FILE` into ``save_directory``; False when this copy of the code has none
    beside it (remote code loaded from a folder that lacked it), so no ``custom_pipelines`` entry is written."""
    source = Path(__file__).resolve().parent / PIPELINE_CODE_FILE
    if not source.is_file():
        return False
    target = Path(save_directory) / PIPELINE_CODE_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file() or target.read_bytes() != source.read_bytes():
        shutil.copyfile(source, target)
    return True

