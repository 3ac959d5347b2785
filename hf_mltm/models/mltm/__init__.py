"""m-LTM audio-text retrieval: configuration, feature extractor, processor and model, registered with the Auto
classes (``model_type="mltm_audio_text"``)."""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoProcessor

from .configuration_mltm import MLTMAudioTextConfig
from .feature_extraction_mltm import AISFX_FRONTEND, MLTMFeatureExtractor
from .loss_mltm import MLTMLoss
from .modeling_mltm import MLTMAudioTextModel, MLTMAudioTextOutput, MLTMPreTrainedModel
from .processing_mltm import MLTMProcessor

__all__ = [
    "AISFX_FRONTEND",
    "MLTMAudioTextConfig",
    "MLTMAudioTextModel",
    "MLTMAudioTextOutput",
    "MLTMFeatureExtractor",
    "MLTMLoss",
    "MLTMPreTrainedModel",
    "MLTMProcessor",
]

AutoConfig.register(MLTMAudioTextConfig.model_type, MLTMAudioTextConfig, exist_ok=True)
AutoModel.register(MLTMAudioTextConfig, MLTMAudioTextModel, exist_ok=True)
AutoFeatureExtractor.register(MLTMAudioTextConfig, MLTMFeatureExtractor, exist_ok=True)
AutoProcessor.register(MLTMAudioTextConfig, MLTMProcessor, exist_ok=True)

# save_pretrained also writes an auto_map and copies this family's code, so that a saved folder loads with
# trust_remote_code=True in a process that never imported hf_mltm (the code then imports the installed hf_mltm).
MLTMAudioTextConfig.register_for_auto_class()
MLTMAudioTextModel.register_for_auto_class("AutoModel")
MLTMFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
MLTMProcessor.register_for_auto_class("AutoProcessor")
