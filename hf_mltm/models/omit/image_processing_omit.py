"""Image processor for OMIT image-text matching: PIL/NumPy backend (no torchvision needed).

Letters: ``B`` images in a batch, ``H x W`` the output height and width in pixels (``crop_size``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ["OMITImageProcessor", "EFFICIENTNET_LITE_MEAN", "EFFICIENTNET_LITE_STD"]

EFFICIENTNET_LITE_MEAN = (127.0 / 255.0,) * 3
"""Per-channel mean, in units of ``rescale_factor = 1/255``, of EfficientNet-Lite: ``(x * 255 - 127) / 128``."""
EFFICIENTNET_LITE_STD = (128.0 / 255.0,) * 3
"""Per-channel std, in units of ``rescale_factor = 1/255``, of EfficientNet-Lite: ``(x * 255 - 127) / 128``."""

_SIZE_KEYS = ("shortest_edge", "longest_edge", "height", "width", "max_height", "max_width")


class OMITImageProcessor(PilBackend):
    r"""Turns images into ``pixel_values`` of shape ``(B, 3, H, W)`` (float32) for OMIT's image tower.

    Pipeline, per image (the PIL/NumPy operations of `transformers.image_processing_backends.PilBackend`):
    conversion to RGB -> resize so that the shorter side is ``size["shortest_edge"]`` pixels (aspect ratio kept,
    the longer side rounded down as in transformers' ``get_resize_output_image_size``) with PIL ``resample`` ->
    centre crop to ``crop_size`` (``height x width``) -> multiply by ``rescale_factor`` (uint8 ``[0, 255]`` to
    ``[0, 1]``) -> ``(x - image_mean) / image_std`` per channel.

    Defaults: shortest edge 224, a 224 x 224 crop, bicubic resampling and the ImageNet mean/std
    (``IMAGENET_DEFAULT_MEAN``/``IMAGENET_DEFAULT_STD`` of torchvision models). For the offline
    EfficientNet-Lite0 grid encoder use `OMITImageProcessor.for_efficientnet_lite`, whose normalisation is
    ``(x * 255 - 127) / 128``.

    Numerics: resizing works on uint8 PIL images; rescaling and normalisation run on float32 arrays. Memory
    is one image at a time plus the ``B x 3 x H x W`` float32 output.

    Args:
        do_convert_rgb (`bool`, defaults to `True`): Convert grey, RGBA or palette images to RGB first.
        do_resize (`bool`, defaults to `True`): Resize before cropping.
        size (`dict[str, int]`, defaults to ``{"shortest_edge": 224}``): Resize target in pixels:
            ``{"shortest_edge": s}`` or ``{"height": h, "width": w}``.
        resample (`PILImageResampling` or `int`, defaults to ``PILImageResampling.BICUBIC``): PIL filter.
        do_center_crop (`bool`, defaults to `True`): Centre crop after resizing.
        crop_size (`dict[str, int]`, defaults to ``{"height": 224, "width": 224}``): Crop size in pixels.
        do_rescale (`bool`, defaults to `True`): Multiply pixel values by ``rescale_factor``.
        rescale_factor (`float`, defaults to ``1/255``): Scale applied to the uint8 pixel values.
        do_normalize (`bool`, defaults to `True`): Subtract ``image_mean`` and divide by ``image_std``.
        image_mean (`float` or 3 floats, defaults to the ImageNet mean): Per-channel mean (after rescaling).
        image_std (`float` or 3 floats, defaults to the ImageNet std): Per-channel std (after rescaling), > 0.

    Raises:
        ValueError: A size is not a positive integer, the crop is larger than the resized shorter side, or
            ``image_mean``/``image_std`` do not have 1 or 3 finite entries (std entries > 0).

    Example:

    ```python
    >>> import numpy as np
    >>> from PIL import Image
    >>> from hf_mltm.models.omit.image_processing_omit import OMITImageProcessor
    >>> processor = OMITImageProcessor()
    >>> image = Image.fromarray(np.full((150, 200, 3), 128, dtype=np.uint8))
    >>> processor(image, return_tensors="pt")["pixel_values"].shape
    torch.Size([1, 3, 224, 224])

    ```
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = tuple(IMAGENET_DEFAULT_MEAN)
    image_std = tuple(IMAGENET_DEFAULT_STD)
    size = {"shortest_edge": 224}
    default_to_square = False
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True

    def __init__(self, **kwargs: Unpack[ImagesKwargs]):
        super().__init__(**kwargs)
        self._validate_preprocess_kwargs(
            do_rescale=self.do_rescale,
            rescale_factor=self.rescale_factor,
            do_normalize=self.do_normalize,
            image_mean=self.image_mean,
            image_std=self.image_std,
            do_resize=self.do_resize,
            size=self.size,
            do_center_crop=self.do_center_crop,
            crop_size=self.crop_size,
            resample=self.resample,
        )

    @classmethod
    def for_efficientnet_lite(cls, **kwargs: Any) -> OMITImageProcessor:
        """The input pipeline of EfficientNet-Lite0 (224 x 224 crop, ``(x * 255 - 127) / 128``).

        Same resize and crop as the defaults, with ``rescale_factor = 1/255``, ``image_mean = 127/255`` and
        ``image_std = 128/255`` per channel, so that a pixel of uint8 value ``v`` becomes ``(v - 127) / 128``
        (in ``[-0.9922, 1.0]``), the normalisation the TensorFlow EfficientNet-Lite checkpoints were trained with.

        Args:
            **kwargs: Overrides of any constructor argument (e.g. ``resample``).

        Returns:
            `OMITImageProcessor`: The configured processor.
        """
        settings = {
            "rescale_factor": 1 / 255,
            "image_mean": EFFICIENTNET_LITE_MEAN,
            "image_std": EFFICIENTNET_LITE_STD,
        }
        settings.update(kwargs)
        return cls(**settings)

    def _validate_preprocess_kwargs(self, **kwargs: Any) -> None:
        """Check the settings of a call (or of the constructor), then transformers' own checks.

        Raises:
            ValueError: See the class docstring.
        """
        name = type(self).__name__
        if kwargs.get("do_resize"):
            _check_size(kwargs.get("size"), "size", name)
        if kwargs.get("do_center_crop"):
            _check_size(kwargs.get("crop_size"), "crop_size", name)
        shortest = _get(kwargs.get("size"), "shortest_edge") if kwargs.get("do_resize") else None
        crop = kwargs.get("crop_size") if kwargs.get("do_center_crop") else None
        if shortest is not None and crop is not None:
            crop_height, crop_width = _get(crop, "height"), _get(crop, "width")
            if crop_height is not None and crop_width is not None and max(crop_height, crop_width) > shortest:
                raise ValueError(
                    f"{name}: crop_size {crop_height}x{crop_width} is larger than size['shortest_edge']="
                    f"{shortest}, so the crop would be zero-padded; use a crop no larger than the shortest edge."
                )
        if kwargs.get("do_normalize"):
            _check_channels(kwargs.get("image_mean"), "image_mean", name, positive=False)
            _check_channels(kwargs.get("image_std"), "image_std", name, positive=True)
        if kwargs.get("do_rescale"):
            factor = kwargs.get("rescale_factor")
            if not isinstance(factor, int | float) or not math.isfinite(factor) or factor <= 0:
                raise ValueError(
                    f"{name}: rescale_factor must be a positive number (e.g. 1/255), got {factor!r}."
                )
        super()._validate_preprocess_kwargs(**kwargs)


def _get(size: Any, key: str) -> Any:
    """``size[key]`` for a dict or a transformers ``SizeDict`` (whose missing keys read as `None`)."""
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _check_size(size: Any, field: str, name: str) -> None:
    """Every given side length of ``size`` must be a positive integer, and at least one must be given."""
    if size is None:
        raise ValueError(
            f"{name}: `{field}` is required when it is used; pass e.g. {field}={{'height': 224, 'width': 224}}."
        )
    given = {key: _get(size, key) for key in _SIZE_KEYS if _get(size, key) is not None}
    if not given:
        raise ValueError(
            f"{name}: `{field}` has no side length ({dict(size)}); give 'shortest_edge' or 'height' and 'width'."
        )
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(
                f"{name}: {field}['{key}'] must be a positive integer number of pixels, got {value!r}."
            )


def _check_channels(values: Any, field: str, name: str, positive: bool) -> None:
    """``values`` must be one finite number or 3 (one per RGB channel); ``positive`` also requires > 0."""
    entries = list(values) if isinstance(values, Sequence) and not isinstance(values, str) else [values]
    if len(entries) not in (1, 3) or not all(
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        for value in entries
    ):
        raise ValueError(
            f"{name}: {field} must be one number or 3 numbers (R, G, B), got {values!r}; e.g. {field}="
            f"{tuple(IMAGENET_DEFAULT_MEAN if field == 'image_mean' else IMAGENET_DEFAULT_STD)}."
        )
    if positive and min(entries) <= 0:
        raise ValueError(
            f"{name}: every entry of {field} must be > 0 (it divides the pixels), got {values!r}."
        )
