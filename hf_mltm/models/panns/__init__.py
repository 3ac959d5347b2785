"""PANNs audio encoders (Cnn10, Cnn14, ResNet38), the aisfx 9-layer CNN and their log-mel front-end, registered with
the Auto classes (``model_type="panns"``)."""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

from .configuration_panns import PANNS_VARIANTS, PannsConfig, PannsVariantSpec
from .feature_extraction_panns import AISFX_FRONTEND, PannsFeatureExtractor
from .modeling_panns import PannsModel, PannsPreTrainedModel

__all__ = [
    "AISFX_FRONTEND",
    "PANNS_VARIANTS",
    "PannsConfig",
    "PannsFeatureExtractor",
    "PannsModel",
    "PannsPreTrainedModel",
    "PannsVariantSpec",
]

AutoConfig.register(PannsConfig.model_type, PannsConfig, exist_ok=True)
AutoModel.register(PannsConfig, PannsModel, exist_ok=True)
AutoFeatureExtractor.register(PannsConfig, PannsFeatureExtractor, exist_ok=True)

# save_pretrained also writes an auto_map and copies feature_extraction_panns.py, so that a saved front-end loads
# with trust_remote_code=True in a process that never imported hf_mltm (the code then imports the installed hf_mltm).
PannsFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
