"""Register SpectraFM with the ``transformers`` Auto classes (runs on ``import spectrafm_hf``).

Two registrations per class, both from the one table :data:`AUTO_CLASSES`:

* local (``AutoConfig.register`` / ``AutoModel.register`` ...): with the package installed,
  ``AutoConfig`` / ``AutoModel`` / ``AutoModelForPreTraining`` / ``AutoFeatureExtractor``
  ``.from_pretrained(dir)`` load any SpectraFM checkpoint without ``trust_remote_code``;
* remote code (``Cls.register_for_auto_class``): transformers' own mechanism, so that EVERY save route
  (``save_pretrained`` of the model and of the feature extractor, ``push_to_hub``,
  ``Trainer.save_model``, and ``checkpoints.save_checkpoint``, which calls them) copies the code files
  into the folder (``dynamic_module_utils.custom_object_save``: the saved class's module and whatever it
  imports relatively) and writes ``auto_map``, so the folder loads with ``trust_remote_code=True`` where
  this package is absent.

``register_for_auto_class`` records only the class being saved (a task model would map just
``AutoConfig`` and ``AutoModelForPreTraining``), so the full map is also handed to the config class
(:attr:`SpectraFMConfig.family_auto_map`), whose ``save_pretrained`` writes it into ``config.json``.

The transformers pipeline task ``"stellar-label-prediction"`` (:mod:`.pipeline_spectrafm`) is registered
here too (``PIPELINE_REGISTRY``), and :attr:`SpectraFMConfig.family_custom_pipelines` makes every save
route write ``custom_pipelines`` and copy ``pipeline_spectrafm.py`` for remote-code users.
"""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForPreTraining

from .configuration_spectrafm import SpectraFMConfig
from .feature_extraction_spectrafm import SpectraFMFeatureExtractor
from .modeling_spectrafm import SpectraFMForLabelPrediction, SpectraFMModel
from .pipeline_spectrafm import CUSTOM_PIPELINES, register_pipeline

#: The task Auto class that maps to ``SpectraFMForLabelPrediction`` (there is no AutoModelForRegression).
TASK_AUTO_CLASS = "AutoModelForPreTraining"

#: Auto class name → the SpectraFM class it loads: the one table both registrations are made from.
AUTO_CLASSES = {
    "AutoConfig": SpectraFMConfig,
    "AutoModel": SpectraFMModel,
    TASK_AUTO_CLASS: SpectraFMForLabelPrediction,
    "AutoFeatureExtractor": SpectraFMFeatureExtractor,
}


def remote_code_reference(cls: type) -> str:
    """``"module.Class"`` as ``auto_map`` names a class of a code file saved beside the checkpoint
    (the last component of the module, e.g. ``"modeling_spectrafm.SpectraFMModel"``)."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


AutoConfig.register(SpectraFMConfig.model_type, SpectraFMConfig, exist_ok=True)
AutoModel.register(SpectraFMConfig, SpectraFMModel, exist_ok=True)
AutoModelForPreTraining.register(SpectraFMConfig, SpectraFMForLabelPrediction, exist_ok=True)
AutoFeatureExtractor.register(SpectraFMConfig, SpectraFMFeatureExtractor, exist_ok=True)

for _auto_class, _cls in AUTO_CLASSES.items():
    _cls.register_for_auto_class(_auto_class)
SpectraFMConfig.family_auto_map = {name: remote_code_reference(cls) for name, cls in AUTO_CLASSES.items()}

# The pipeline task: registered here, so `transformers.pipeline("stellar-label-prediction", model=folder)`
# works without remote code and reads spectra files; and written by every save route (config.save_pretrained).
register_pipeline(file_reader="spectrafm_hf.data.readers:read_spectra")
SpectraFMConfig.family_custom_pipelines = CUSTOM_PIPELINES
