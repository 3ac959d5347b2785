"""m-LTM's name for the PANNs log-mel front-end (`hf_mltm.models.panns.PannsFeatureExtractor`).

The implementation lives in the PANNs family, to which the log-mel front-end belongs. This class only keeps the
name under which m-LTM checkpoints were saved: their ``preprocessor_config.json`` says
``"feature_extractor_type": "MLTMFeatureExtractor"``, and they load through it unchanged.
"""

from __future__ import annotations

# absolute: trust_remote_code copies only this family's files
from hf_mltm.audio import AudioArray
from hf_mltm.models.panns.feature_extraction_panns import AISFX_FRONTEND, PannsFeatureExtractor

__all__ = ["AISFX_FRONTEND", "AudioArray", "MLTMFeatureExtractor"]


class MLTMFeatureExtractor(PannsFeatureExtractor):
    r"""The PANNs log-mel front-end (`PannsFeatureExtractor`) under the m-LTM family name.

    Same arguments, pipeline, defaults and outputs as `PannsFeatureExtractor`: log-mel spectrograms
    ``input_features`` ``(B, T, M)`` float32 and ``audio_attention_mask`` ``(B, T)`` int64.
    ``MLTMFeatureExtractor.aisfx_frontend()`` returns an `MLTMFeatureExtractor` with the aisfx settings
    (`AISFX_FRONTEND`).

    Example:

    ```python
    >>> import numpy as np
    >>> from hf_mltm.models.mltm import MLTMFeatureExtractor
    >>> extractor = MLTMFeatureExtractor()
    >>> batch = extractor([np.zeros(44100 * 3, dtype=np.float32)], sampling_rate=44100, return_tensors="pt")
    >>> batch["input_features"].shape, batch["audio_attention_mask"].sum(-1).tolist()
    (torch.Size([1, 1001, 64]), [301])

    ```
    """
