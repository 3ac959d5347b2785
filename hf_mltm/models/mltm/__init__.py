"""m-LTM audio-text retrieval: feature extractor and processor."""

from .feature_extraction_mltm import AISFX_FRONTEND, MLTMFeatureExtractor
from .processing_mltm import MLTMProcessor

__all__ = ["AISFX_FRONTEND", "MLTMFeatureExtractor", "MLTMProcessor"]
