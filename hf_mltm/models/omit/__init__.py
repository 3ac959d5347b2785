"""OMIT image-text matching: configuration, image processor, processor and model, registered with the Auto classes
(``model_type="omit_image_text"``), including `AutoModelForZeroShotImageClassification` for the zero-shot
image-classification pipeline."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .configuration_omit import OMITImageTextConfig
from .image_processing_omit import OMITImageProcessor
from .loss_omit import OMITLoss
from .modeling_omit import OMITImageTextModel, OMITImageTextOutput, OMITPreTrainedModel
from .processing_omit import OMITProcessor

__all__ = [
    "OMITImageProcessor",
    "OMITImageTextConfig",
    "OMITImageTextModel",
    "OMITImageTextOutput",
    "OMITLoss",
    "OMITPreTrainedModel",
    "OMITProcessor",
]

AutoConfig.register(OMITImageTextConfig.model_type, OMITImageTextConfig, exist_ok=True)
AutoModel.register(OMITImageTextConfig, OMITImageTextModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(OMITImageTextConfig, OMITImageTextModel, exist_ok=True)
AutoImageProcessor.register(OMITImageTextConfig, image_processor_classes={"pil": OMITImageProcessor}, exist_ok=True)
AutoProcessor.register(OMITImageTextConfig, OMITProcessor, exist_ok=True)

# save_pretrained also writes an auto_map and copies this family's code, so that a saved folder loads with
# trust_remote_code=True in a process that never imported hf_mltm (the code then imports the installed hf_mltm).
OMITImageTextConfig.register_for_auto_class()
OMITImageTextModel.register_for_auto_class("AutoModel")
OMITImageProcessor.register_for_auto_class("AutoImageProcessor")
OMITProcessor.register_for_auto_class("AutoProcessor")
