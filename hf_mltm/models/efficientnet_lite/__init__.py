"""EfficientNet-Lite CNN towers (Lite0 by default), registered with the Auto classes (``model_type="efficientnet_lite"``).

The offline ImageNet weights of EfficientNet-Lite0 are converted into a saved folder by
``scripts/convert_efficientnet_lite_checkpoint.py``.
"""

from transformers import AutoConfig, AutoModel

from .configuration_efficientnet_lite import EfficientNetLiteConfig
from .modeling_efficientnet_lite import EfficientNetLiteModel, EfficientNetLitePreTrainedModel

__all__ = ["EfficientNetLiteConfig", "EfficientNetLiteModel", "EfficientNetLitePreTrainedModel"]

AutoConfig.register(EfficientNetLiteConfig.model_type, EfficientNetLiteConfig, exist_ok=True)
AutoModel.register(EfficientNetLiteConfig, EfficientNetLiteModel, exist_ok=True)

# save_pretrained also writes an auto_map and copies this family's code, so that a saved folder loads with
# trust_remote_code=True in a process that never imported hf_mltm (the modeling code imports only its sibling).
EfficientNetLiteConfig.register_for_auto_class()
EfficientNetLiteModel.register_for_auto_class("AutoModel")
