"""hf_mltm: optimal-transport cross-modal retrieval for the Hugging Face ecosystem.

Importing the package registers its model types with the transformers Auto classes (``panns``,
``efficientnet_lite``, ``mltm_audio_text``, ``omit_image_text``), so ``AutoModel.from_pretrained`` loads saved
folders. Each model family has an adapter (:mod:`hf_mltm.adapters`) through which training and evaluation reach
it. The OT core lives in :mod:`hf_mltm.ot`, dataset builders and collators in :mod:`hf_mltm.data`, the feature cache
in :mod:`hf_mltm.feature_cache`, retrieval evaluation in :mod:`hf_mltm.evaluation`, training in
:mod:`hf_mltm.training`. The layers are drawn in ``docs/architecture.md``.
"""

from .models.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteModel
from .models.mltm import (
    MLTMAudioTextConfig,
    MLTMAudioTextModel,
    MLTMAudioTextOutput,
    MLTMFeatureExtractor,
    MLTMLoss,
    MLTMProcessor,
)
from .models.omit import (
    OMITImageProcessor,
    OMITImageTextConfig,
    OMITImageTextModel,
    OMITImageTextOutput,
    OMITLoss,
    OMITProcessor,
)
from .models.panns import PannsConfig, PannsFeatureExtractor, PannsModel

__version__ = "0.1.0.dev0"

__all__ = [
    "EfficientNetLiteConfig",
    "EfficientNetLiteModel",
    "MLTMAudioTextConfig",
    "MLTMAudioTextModel",
    "MLTMAudioTextOutput",
    "MLTMFeatureExtractor",
    "MLTMLoss",
    "MLTMProcessor",
    "OMITImageProcessor",
    "OMITImageTextConfig",
    "OMITImageTextModel",
    "OMITImageTextOutput",
    "OMITLoss",
    "OMITProcessor",
    "PannsConfig",
    "PannsFeatureExtractor",
    "PannsModel",
]
