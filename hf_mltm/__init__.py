"""hf_mltm: optimal-transport cross-modal retrieval for the Hugging Face ecosystem.

Importing the package registers its model types with the transformers Auto classes (``panns``,
``mltm_audio_text``), so ``AutoModel.from_pretrained`` loads saved folders. The OT core lives in :mod:`hf_mltm.ot`,
retrieval evaluation in :mod:`hf_mltm.evaluation`.
"""

from .models.mltm import (
    MLTMAudioTextConfig,
    MLTMAudioTextModel,
    MLTMAudioTextOutput,
    MLTMFeatureExtractor,
    MLTMProcessor,
)
from .models.panns import PannsConfig, PannsModel

__version__ = "0.1.0.dev0"

__all__ = [
    "MLTMAudioTextConfig",
    "MLTMAudioTextModel",
    "MLTMAudioTextOutput",
    "MLTMFeatureExtractor",
    "MLTMProcessor",
    "PannsConfig",
    "PannsModel",
]
