"""spectrafm-hf: SpectraFM (Koblischke & Bovy 2024) as a Hugging Face package.

Importing the package registers the model with the Auto classes (``AutoConfig``, ``AutoModel``,
the task class and ``AutoFeatureExtractor``), so ``AutoModel.from_pretrained(dir)`` works for any
stage's checkpoint.
"""

__version__ = "0.1.0"

from . import registration as _registration  # noqa: E402,F401  (side effect: Auto class registration)
from .configuration_spectrafm import SpectraFMConfig  # noqa: E402
from .feature_extraction_spectrafm import SpectraFMFeatureExtractor, SpectraFMTokenizer  # noqa: E402
from .modeling_spectrafm import (  # noqa: E402
    SpectraFMForLabelPrediction,
    SpectraFMModel,
    SpectraFMOutput,
    SpectraFMPreTrainedModel,
)

__all__ = [
    "SpectraFMConfig",
    "SpectraFMFeatureExtractor",
    "SpectraFMTokenizer",
    "SpectraFMModel",
    "SpectraFMPreTrainedModel",
    "SpectraFMForLabelPrediction",
    "SpectraFMOutput",
]
