"""One adapter per model family: how data, training, evaluation and scripts drive a model (`ModelAdapter`).

``get_adapter(model_or_config_or_type)`` returns the family's adapter; importing this package registers the two
families (``mltm_audio_text``, ``omit_image_text``).
"""

from .base import Encoded, ModelAdapter, get_adapter, register_adapter, registered_model_types
from .mltm import MLTMAdapter
from .omit import OMITAdapter

__all__ = [
    "Encoded",
    "MLTMAdapter",
    "ModelAdapter",
    "OMITAdapter",
    "get_adapter",
    "register_adapter",
    "registered_model_types",
]
