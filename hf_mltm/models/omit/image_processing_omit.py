"""Image processor for OMIT image-text matching: PIL/NumPy backend (no torchvision needed).

Letters: ``B`` images in a batch, ``H x W`` the output height and width in pixels (``crop_size``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_backends import PilBackend
from transformers.image_transforms import (
    get_resize_output_image_size,
    get_size_with_aspect_ratio,
    to_pil_image,
)
from transformers.image_utils import ChannelDimension, PILImageResampling, get_image_size_for_max_height_width
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

# absolute: trust_remote_code copies only this family's files
from hf_mltm.image import check_image_size, load_image, to_rgb

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

    Inputs: PIL images (any 8-bit or 16-bit mode; see `hf_mltm.image.to_rgb`), NumPy arrays or torch tensors of
    shape ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with ``C`` in 1, 3, 4 (an ambiguous layout such as
    ``(3, 5, 3)`` is read channels last for arrays and channels first for tensors, unless ``input_data_format``
    says otherwise), a 4-D batch of those, paths, encoded bytes or ``{"bytes", "path"}`` dicts (opened with
    `hf_mltm.image.load_image`), or a list of any of these. Integer arrays must hold values in [0, 255]. Float
    arrays must be finite; with ``do_rescale`` they must lie in [0, 255], and a float image whose values all lie
    in [0, 1] and are not all whole numbers is taken as already rescaled: it is multiplied by 255 first, with a
    `UserWarning`, so that it gives the same ``pixel_values`` as its uint8 version instead of being divided by
    255 twice.

    Limits: every image must be at least 1 x 1, at most `hf_mltm.image.MAX_IMAGE_PIXELS` (50 M) pixels and at most
    `hf_mltm.image.MAX_ASPECT_RATIO` (20:1) elongated; the size is checked before any pixel is converted.

    Numerics: resizing works on uint8 PIL images (float images are rounded to uint8 for it); rescaling and
    normalisation run on float32 arrays. Work and memory per image are O(input pixels + resized pixels); the
    aspect-ratio limit bounds the resized image by ``20 * shortest_edge**2`` pixels, 20 times the default
    crop, so an elongated strip can no longer blow up into a 896000 x 224 intermediate. (Resampling only
    the region the crop keeps, PIL ``resize(..., box=...)``, would be cheaper still but is not bit-identical:
    Pillow rounds the box to float32 and about 0.03 % of the pixels of a Flickr photograph change by 1/255.)
    Memory is one image at a time plus the ``B x 3 x H x W`` float32 output.

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
            ``image_mean``/``image_std`` do not have 1 or 3 finite entries (std entries > 0). From ``__call__``:
            an image of an unsupported type, shape, channel count or dtype, with NaN/inf or out-of-range values,
            breaking the size limits, or a file that cannot be read; the message names the image by its position
            (and its shape and dtype, never its pixel values).

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

    def _prepare_image_like_inputs(
        self, images: Any, *args: Any, expected_ndims: int = 3, **kwargs: Any
    ) -> list[np.ndarray]:
        """Validate every image and turn it into a channels-first array, naming bad images by position.

        Replaces transformers' flattening (whose error message prints the whole pixel array) and
        ``fetch_images`` (URLs are not supported here; local paths and bytes go through `load_image`).
        """
        return [self._process_one(image, f"image {index}", **kwargs) for index, image in enumerate(_flat(images))]

    def _process_one(
        self,
        image: Any,
        label: str,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        do_rescale: bool | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """One image -> checked ``(C, H, W)`` array (uint8, or float32/float64 in [0, 255] with ``do_rescale``)."""
        if isinstance(image, str | os.PathLike | bytes | bytearray | Mapping):
            image = load_image(image, label=label)
        if isinstance(image, Image.Image):
            check_image_size(image.width, image.height, label=label)
            if do_convert_rgb:
                return super().process_image(to_rgb(image, label=label), do_convert_rgb=True)
            array, prefer_first = np.asarray(image), False
        elif isinstance(image, torch.Tensor):
            tensor = image.detach().cpu()
            array, prefer_first = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy(), True
        elif isinstance(image, np.ndarray):
            array, prefer_first = image, False
        else:
            raise ValueError(
                f"{type(self).__name__}: {label} is of type {type(image).__name__}; expected a PIL image, a NumPy array, "
                f"a torch tensor, a file path, bytes or a {{'bytes', 'path'}} dict."
            )
        array = _checked_array(array, label, input_data_format, prefer_first)  # (H, W, C)
        processed = super().process_image(
            array, do_convert_rgb=do_convert_rgb, input_data_format=ChannelDimension.LAST
        )  # (C, H, W)
        if do_rescale and processed.dtype.kind == "f" and _looks_rescaled(processed):
            warnings.warn(
                f"{type(self).__name__}: {label} is a float image with all values in [0, 1], so it looks already "
                f"rescaled; it is multiplied by 255 before rescale_factor is applied. Pass uint8 or [0, 255] "
                f"values, or do_rescale=False, to silence this warning.",
                UserWarning,
                stacklevel=2,
            )
            processed = processed * processed.dtype.type(255)
        if do_rescale and processed.dtype.kind == "f" and processed.size:
            low, high = float(processed.min()), float(processed.max())
            if low < 0 or high > 255:
                raise ValueError(
                    f"{type(self).__name__}: {label} has float values in [{low:g}, {high:g}], but with do_rescale "
                    f"the processor expects 8-bit values in [0, 255] (or [0, 1]); scale the image, or pass "
                    f"do_rescale=False for values that need no rescaling."
                )
        return processed

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: Any,
        resample: PILImageResampling | int | None,
        do_center_crop: bool,
        crop_size: Any,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | Sequence[float] | None,
        image_std: float | Sequence[float] | None,
        do_pad: bool | None,
        pad_size: Any,
        return_tensors: str | TensorType | None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Resize, crop, rescale and normalise each image: the steps of `PilBackend._preprocess`, with float
        images rounded to uint8 for PIL and a final check that every output value is finite."""
        processed = []
        for index, image in enumerate(images):
            label = f"image {index}"
            if do_resize:
                image = self._resize_8bit(image, size, resample, label)
            if do_center_crop:
                image = self.center_crop(image, crop_size)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            if image.dtype.kind == "f" and not np.isfinite(image).all():
                raise ValueError(
                    f"{type(self).__name__}: {label} gives NaN or infinite pixel values (input range too large "
                    f"for float32 after rescale_factor and image_std); pass values in [0, 255]."
                )
            processed.append(image)
        if do_pad:
            processed = self.pad(processed, pad_size=pad_size)
        return BatchFeature(data={"pixel_values": processed}, tensor_type=return_tensors)

    def _resize_8bit(self, image: np.ndarray, size: Any, resample: Any, label: str) -> np.ndarray:
        """``(C, H, W)`` -> resized to ``size`` with PIL, as `PilBackend.resize` does, but with float input rounded
        to uint8 (see `_pil_resize`) and a `ValueError` for an empty output size."""
        if resample is not None and not isinstance(resample, PILImageResampling | int):
            return self.resize(image, size, resample=resample)  # a torchvision mode: transformers maps it
        new_height, new_width = _resized_size(image, size)
        if new_height < 1 or new_width < 1:
            raise ValueError(
                f"{type(self).__name__}: {label} of shape {image.shape} would be resized to {new_height} x "
                f"{new_width} pixels by size={dict(size)}; use a larger size."
            )
        resample = PILImageResampling.BILINEAR if resample is None else resample
        return _pil_resize(image, new_height, new_width, resample, label)

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


def _describe(image: Any) -> str:
    """Type, shape and dtype of an image-like value, never its content."""
    shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", None)
    if shape is not None:
        return f"{type(image).__name__} of shape {tuple(shape)} and dtype {dtype}"
    return type(image).__name__


def _flat(images: Any) -> list[Any]:
    """A single image, a 4-D batch array/tensor, or a flat list/tuple of images -> a list of images."""
    if isinstance(images, list | tuple):
        if not images:
            raise ValueError("Got an empty list of images: pass at least one image.")
        for index, image in enumerate(images):
            if isinstance(image, list | tuple):
                raise ValueError(
                    f"image {index} is a {type(image).__name__} ({len(image)} entries): pass a flat list of images."
                )
        return list(images)
    if isinstance(images, np.ndarray | torch.Tensor) and images.ndim == 4:
        if len(images) == 0:
            raise ValueError(f"Got an empty batch of images ({_describe(images)}).")
        return list(images)
    if images is None:
        raise ValueError("Got images=None: pass a PIL image, an array, a tensor, a file path or a list of them.")
    return [images]


def _channel_layout(
    shape: tuple[int, ...], input_data_format: str | ChannelDimension | None, prefer_first: bool, label: str
) -> ChannelDimension:
    """Where the channel axis of a 3-D image of ``shape`` is."""
    if input_data_format is not None:
        layout = ChannelDimension(input_data_format)
        channels = shape[0] if layout == ChannelDimension.FIRST else shape[-1]
        if channels not in (1, 3, 4):
            raise ValueError(
                f"{label} has shape {shape} with {channels} channels ({layout.value}): expected 1, 3 or 4 channels."
            )
        return layout
    last, first = shape[-1] in (1, 3, 4), shape[0] in (1, 3, 4)
    if last and (not first or not prefer_first):
        return ChannelDimension.LAST
    if first:
        return ChannelDimension.FIRST
    raise ValueError(
        f"{label} has shape {shape}: expected (height, width), (height, width, channels) or "
        f"(channels, height, width) with 1, 3 or 4 channels."
    )


def _checked_array(
    array: np.ndarray, label: str, input_data_format: str | ChannelDimension | None, prefer_first: bool
) -> np.ndarray:
    """Check an image array; return it ``(H, W, C)``, uint8 for integer input, float32/float64 for float input."""
    if array.dtype == np.bool_ or array.dtype.kind not in "uif":
        raise ValueError(
            f"{label} ({_describe(array)}) has an unsupported dtype: expected uint8 (integers in [0, 255]) or "
            f"float pixel values."
        )
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3:
        if _channel_layout(array.shape, input_data_format, prefer_first, label) == ChannelDimension.FIRST:
            array = np.moveaxis(array, 0, -1)
    else:
        raise ValueError(
            f"{label} ({_describe(array)}) is not an image: expected (height, width), (height, width, channels) "
            f"or (channels, height, width)."
        )
    height, width = array.shape[:2]
    check_image_size(width, height, label=label)
    if array.dtype.kind in "ui":
        if array.dtype != np.uint8:
            low, high = int(array.min()), int(array.max())
            if low < 0 or high > 255:
                raise ValueError(
                    f"{label} ({_describe(array)}) has values in [{low}, {high}]: expected 8-bit values in "
                    f"[0, 255]; scale 16-bit images to 8 bits first (e.g. values // 257)."
                )
            array = array.astype(np.uint8)
        return array
    if array.dtype != np.float64:
        array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{label} ({_describe(array)}) contains NaN or infinite pixel values.")
    return array


def _looks_rescaled(image: np.ndarray) -> bool:
    """Float pixel values all in [0, 1] and not all whole numbers (whole ones read as uint8 values, as in
    transformers' PIL conversion)."""
    return bool(image.min() >= 0 and image.max() <= 1 and not np.array_equal(image, np.round(image)))


# Adapted from transformers 5.24 image_processing_backends.py (PilBackend.resize): the output size for each form of
# `size`.
def _resized_size(image: np.ndarray, size: Any) -> tuple[int, int]:
    """``(new_height, new_width)`` of the ``(C, H, W)`` ``image`` resized to ``size`` (a transformers SizeDict)."""
    height, width = image.shape[-2:]
    if size.shortest_edge and size.longest_edge:
        return tuple(get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge))
    if size.shortest_edge:
        return tuple(
            get_resize_output_image_size(
                image, size=size.shortest_edge, default_to_square=False, input_data_format=ChannelDimension.FIRST
            )
        )
    if size.max_height and size.max_width:
        return tuple(get_image_size_for_max_height_width((height, width), size.max_height, size.max_width))
    if size.height and size.width:
        return size.height, size.width
    raise ValueError(
        f"size must have 'shortest_edge' (and optionally 'longest_edge'), 'max_height' and 'max_width', or "
        f"'height' and 'width'; got {dict(size)}."
    )


def _pil_resize(
    image: np.ndarray, height: int, width: int, resample: PILImageResampling | int, label: str
) -> np.ndarray:
    """Resize a ``(C, H, W)`` image to ``(C, height, width)`` with PIL.

    Like ``transformers.image_transforms.resize``: uint8 goes to PIL as it is; float [0, 1] images (not all whole
    numbers) are scaled to [0, 255] for PIL and back after; other floats must lie in [0, 255]. Floats are rounded
    to uint8 (transformers truncates, and rejects fractional values above 1).
    """
    scale_back = False
    if image.dtype != np.uint8:
        low, high = float(image.min()), float(image.max())
        if _looks_rescaled(image):
            image, scale_back = image * 255.0, True
        elif low < 0 or high > 255:
            raise ValueError(
                f"{label} has float values in [{low:g}, {high:g}], which cannot be resized as an 8-bit image: pass "
                f"values in [0, 255] (or [0, 1])."
            )
        image = np.round(image).astype(np.uint8)
    pil_image = to_pil_image(image, do_rescale=False, input_data_format=ChannelDimension.FIRST)
    resized = np.array(pil_image.resize((width, height), resample=resample))
    resized = resized[:, :, None] if resized.ndim == 2 else resized  # PIL drops a single channel
    resized = np.moveaxis(resized, -1, 0)  # (C, height, width)
    return (resized.astype(np.float32) / np.float32(255.0)) if scale_back else resized
