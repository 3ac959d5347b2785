"""hf_mltm: optimal-transport cross-modal retrieval for the Hugging Face ecosystem.

Importing the package registers its model types with the transformers Auto classes (``panns``,
``mltm_audio_text``, ``omit_image_text``), so ``AutoModel.from_pretrained`` loads saved folders. The OT core lives in
:mod:`hf_mltm.ot`, dataset builders and collators in :mod:`hf_mltm.data`, retrieval evaluation in
:mod:`hf_mltm.evaluation`, training in :mod:`hf_mltm.training`.
"""

from .models.mltm import (
    MLTMAudioTextConfig,
    MLTMAudioTextModel,
    MLTMAudioTextOutput,
    MLTMFeatureExtractor,
    MLTMProcessor,
)
from .models.omit import (
    OMITImageProcessor,
    OMITImageTextConfig,
    OMITImageTextModel,
    OMITImageTextOutput,
    OMITProcessor,
)
from .models.panns import PannsConfig, PannsModel

__version__ = "0.1.0.dev0"

__all__ = [
    "MLTMAudioTextConfig",
    "MLTMAudioTextModel",
    "MLTMAudioTextOutput",
    "MLTMFeatureExtractor",
    "MLTMProcessor",
    "OMITImageProcessor",
    "OMITImageTextConfig",
    "OMITImageTextModel",
    "OMITImageTextOutput",
    "OMITProcessor",
    "PannsConfig",
    "PannsModel",
]
