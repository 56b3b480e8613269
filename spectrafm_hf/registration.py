"""Register SpectraFM with the ``transformers`` Auto classes (runs on ``import spectrafm_hf``).

After this, ``AutoConfig`` / ``AutoModel`` / ``AutoModelForPreTraining`` / ``AutoFeatureExtractor``
``.from_pretrained(dir)`` load any SpectraFM checkpoint without ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForPreTraining

from .configuration_spectrafm import SpectraFMConfig
from .feature_extraction_spectrafm import SpectraFMFeatureExtractor
from .modeling_spectrafm import SpectraFMForLabelPrediction, SpectraFMModel

#: The task Auto class that maps to ``SpectraFMForLabelPrediction`` (there is no AutoModelForRegression).
TASK_AUTO_CLASS = "AutoModelForPreTraining"

AutoConfig.register(SpectraFMConfig.model_type, SpectraFMConfig, exist_ok=True)
AutoModel.register(SpectraFMConfig, SpectraFMModel, exist_ok=True)
AutoModelForPreTraining.register(SpectraFMConfig, SpectraFMForLabelPrediction, exist_ok=True)
AutoFeatureExtractor.register(SpectraFMConfig, SpectraFMFeatureExtractor, exist_ok=True)
