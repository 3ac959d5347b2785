"""PANNs audio encoders (Cnn10, Cnn14, ResNet38) and the aisfx 9-layer CNN, registered with the Auto classes."""

from transformers import AutoConfig, AutoModel

from .configuration_panns import PANNS_VARIANTS, PannsConfig, PannsVariantSpec
from .modeling_panns import PannsModel, PannsPreTrainedModel

__all__ = ["PANNS_VARIANTS", "PannsConfig", "PannsModel", "PannsPreTrainedModel", "PannsVariantSpec"]

AutoConfig.register(PannsConfig.model_type, PannsConfig, exist_ok=True)
AutoModel.register(PannsConfig, PannsModel, exist_ok=True)
