"""GAP-MLLM for transformers: the flat Hub folder (`trust_remote_code` copies it next to the weights).

Importing the package registers the classes with the Auto* factories, so that
`AutoModel.from_pretrained(folder)` works with or without `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_gap_mllm import GapMllmConfig, GapMllmFusionConfig, GapMllmGeometryConfig
from .modeling_gap_mllm import GapMllmForConditionalGeneration, GapMllmOutput, GapMllmPreTrainedModel
from .processing_gap_mllm import GapMllmProcessor

AutoConfig.register(GapMllmGeometryConfig.model_type, GapMllmGeometryConfig, exist_ok=True)
AutoConfig.register(GapMllmFusionConfig.model_type, GapMllmFusionConfig, exist_ok=True)
AutoConfig.register(GapMllmConfig.model_type, GapMllmConfig, exist_ok=True)
AutoModel.register(GapMllmConfig, GapMllmForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(GapMllmConfig, GapMllmForConditionalGeneration, exist_ok=True)
AutoProcessor.register(GapMllmConfig, GapMllmProcessor, exist_ok=True)

# save_pretrained writes auto_map entries and copies the remote code for these classes.
GapMllmConfig.register_for_auto_class()
GapMllmForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
GapMllmProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "GapMllmConfig",
    "GapMllmForConditionalGeneration",
    "GapMllmFusionConfig",
    "GapMllmGeometryConfig",
    "GapMllmOutput",
    "GapMllmPreTrainedModel",
    "GapMllmProcessor",
]
