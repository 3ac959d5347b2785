"""Precomputed CNN grid fragments for OMIT: extraction through the content-keyed feature cache, and loading.

OMIT can match captions against precomputed image fragments instead of running an image tower in every step.
This module computes them once with a frozen CNN, by default the offline EfficientNet-Lite0 ImageNet network
converted to `EfficientNetLiteModel` (``scripts/convert_efficientnet_lite_checkpoint.py``): its last feature map
at a 224 x 224 input, ``last_hidden_state`` ``(B, 1280, 7, 7)``, gives ``R = 49`` grid fragments of dimension
``D = 1280`` per image, flattened row-major (fragment ``r = 7 * row + column``).

Letters: ``B`` images in a batch, ``R`` fragments per image, ``D`` fragment dimension.

On disk there is one cache, `hf_mltm.feature_cache.FeatureCache`, rooted at the output folder:

* ``output_dir/image-<fingerprint>/``: the cache folder of one encoder (class, config, weights) and one set of
  settings (the image processor's ``to_dict()`` and the storage dtype), from `FeatureCache.for_tower`. Each row
  is ``{"fragments": (R, D)}`` stored as ``dtype``, keyed by ``content_key("file", file_fingerprint(path))``,
  the sha256 of the image file's bytes. Another encoder or setting gets another folder, so it never reads these
  rows; an edited image gets another key, so only it is computed again. The cache writes its shards atomically
  and resumes: a killed run loses at most one unfinished shard, and the next run computes only missing rows.
* ``output_dir/items.json``: the index that `load_grid_features` reads, written to a temporary file and renamed
  into place. It names the cache folder, the dtype and ``fragments_shape`` ``[R, D]``, and maps every extracted
  ``item_id`` to its content key, in row order. Extractions with the same encoder and settings add their items to
  it (an item extracted again takes its new key, in its old place); an extraction with another encoder or setting
  replaces it.

Both functions return a memory-mapped `datasets.Dataset` that datasets writes to its own cache
(``HF_DATASETS_CACHE``, by default ``~/.cache/huggingface/datasets``), under a fingerprint of the index entries
and of the cache folder's shard files (name, size, modification time): loading the same, unchanged folder
again reuses it; any change to the shards (a new, deleted or corrupt shard) builds it again from the cache,
checking every row.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import torch
from datasets.exceptions import DatasetGenerationError
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from hf_mltm.feature_cache import MANIFEST_NAME, SHARD_GLOB, FeatureCache, content_key, file_fingerprint
from hf_mltm.image import load_image
from hf_mltm.models.efficientnet_lite import EfficientNetLiteModel
from hf_mltm.models.omit.image_processing_omit import OMITImageProcessor

from .karpathy import read_karpathy_json
from .views import quiet_progress_bars

__all__ = [
    "EfficientNetLite0GridEncoder",
    "extract_grid_features",
    "find_images",
    "grid_features_features",
    "load_grid_features",
]

INDEX_NAME = "items.json"
INDEX_FORMAT = "hf_mltm.grid_features"
INDEX_VERSION = 2  # version 1 was the parquet-shard layout (shard-NNNNN.parquet), which is no longer read
CACHE_NAME = "image"  # the cache folders are output_dir/image-<fingerprint>
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
COLUMNS = ("item_id", "fragments")
DTYPES = ("float16", "float32")
# Rows held in memory at once while filling or reading the cache: 1024 x 49 x 1280 float16 is 128 MB.
READ_CHUNK = 1024
# Image-processor entries that say where its code lives, not what it computes: a processor loaded from a saved
# folder (which adds ``auto_map``) and the same one built in code share one cache folder.
PROCESSOR_LOCATION_KEYS = frozenset({"auto_map", "processor_class", "_processor_class"})
# The FeatureCache writer id of readers: constructing a cache deletes the leftover temporary files of its own
# writer id, so a reader must never use the id of a live writer ("main").
READER = "reader"
_TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}
_CACHE_FOLDER_PATTERN = re.compile(rf"{CACHE_NAME}-[0-9a-f]{{64}}")

PathLike = str | os.PathLike


class EfficientNetLite0GridEncoder(nn.Module):
    r"""EfficientNet-Lite0 as a grid-fragment encoder: ``(B, 3, 224, 224) -> (B, 49, 1280)``.

    A thin module around the converted `EfficientNetLiteModel`, kept for code that wants the fragments as one
    tensor: it returns ``last_hidden_state`` ``(B, 1280, 7, 7)`` flattened row-major to ``(B, 49, 1280)``
    (fragment ``7 * row + column``), which equals ``efficientnet_lite_pytorch``'s ``extract_features`` within the
    conversion's tolerance (1e-4). New code can use `EfficientNetLiteModel` directly; `extract_grid_features`
    accepts either and keys its cache by the wrapped model, so both share one cache folder. The module is put in
    eval mode (BatchNorm running statistics, no stochastic depth).

    Inputs must be normalised as the network was trained, ``(x * 255 - 127) / 128`` for ``x`` in ``[0, 1]``:
    `OMITImageProcessor.for_efficientnet_lite()`. The network's "same" padding is built for its
    ``config.image_size`` (224), so other sizes are rejected.

    Args:
        model (`EfficientNetLiteModel`, `str` or `os.PathLike`, *optional*): The model, or a folder saved by
            ``save_pretrained`` holding one. Defaults to the converted Lite0 ImageNet weights,
            `hf_mltm.training.model_factory.cached_efficientnet_lite0_dir()` (converted on first use).

    Raises:
        ValueError: ``model`` is neither an `EfficientNetLiteModel` nor an existing folder.

    Example:

    ```python
    >>> import torch
    >>> from hf_mltm.data.grid_features import EfficientNetLite0GridEncoder
    >>> encoder = EfficientNetLite0GridEncoder()
    >>> with torch.inference_mode():
    ...     fragments = encoder(torch.zeros(1, 3, 224, 224))
    >>> tuple(fragments.shape)
    (1, 49, 1280)

    ```
    """

    def __init__(self, model: EfficientNetLiteModel | PathLike | None = None):
        super().__init__()
        if model is None:
            from hf_mltm.training.model_factory import cached_efficientnet_lite0_dir

            model = cached_efficientnet_lite0_dir()
        if isinstance(model, (str, os.PathLike)):
            if not Path(model).is_dir():
                raise ValueError(
                    f"model {model} is not a folder; pass an EfficientNetLiteModel or the folder it was saved to "
                    f"(scripts/convert_efficientnet_lite_checkpoint.py --output_dir ...)."
                )
            model = EfficientNetLiteModel.from_pretrained(model)
        if not isinstance(model, EfficientNetLiteModel):
            raise ValueError(
                f"model must be an EfficientNetLiteModel or a folder holding one, got {type(model).__name__}."
            )
        self.model = model
        self.eval()

    @property
    def num_fragments(self) -> int:
        """`int`: Fragments per image, ``h * w`` of the last feature map (``7 * 7 = 49`` for Lite0 at 224)."""
        return self.model.config.feature_map_size**2

    @property
    def hidden_size(self) -> int:
        """`int`: Fragment dimension ``D``, the channels of the last feature map (1280 for Lite0)."""
        return self.model.config.hidden_sizes[-1]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Grid fragments of a batch of images.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, 3, 224, 224)`): Images normalised as
                ``(x * 255 - 127) / 128``.

        Returns:
            `torch.FloatTensor` of shape `(B, 49, 1280)`: Fragment ``7 * row + column`` of the last feature map.

        Raises:
            ValueError: ``pixel_values`` is not ``(B, 3, 224, 224)`` (raised by `EfficientNetLiteModel`).
        """
        return _grid_fragments(self.model(pixel_values).last_hidden_state)


def grid_features_features(num_fragments: int, dim: int, dtype: str = "float16") -> datasets.Features:
    """The `datasets.Features` of a grid-feature dataset: ``item_id`` string, ``fragments`` ``(R, D)`` array.

    Args:
        num_fragments (`int`): ``R``, fragments per item.
        dim (`int`): ``D``, fragment dimension.
        dtype (`str`, defaults to ``"float16"``): ``"float16"`` or ``"float32"``.

    Returns:
        `datasets.Features`: ``{"item_id": Value("string"), "fragments": Array2D((R, D), dtype)}``.
    """
    return datasets.Features(
        {
            "item_id": datasets.Value("string"),
            "fragments": datasets.Array2D(shape=(num_fragments, dim), dtype=dtype),
        }
    )


def find_images(
    image_dir: PathLike, karpathy_json: PathLike | None = None, limit: int | None = None
) -> tuple[list[Path], list[str]]:
    """The images of a folder, or those a Karpathy-split JSON lists, with their item ids.

    With ``karpathy_json`` (``{"images": [{"filename": ..., "filepath": ...}, ...]}``, the format of the
    Flickr30K/COCO retrieval splits), the images are those entries in JSON order, found at
    ``image_dir / filename`` or else ``image_dir / filepath / filename``; the item id is ``filename``. Without
    it, every image file directly in ``image_dir`` (suffixes ``.jpg .jpeg .png .bmp .gif .webp``) sorted by
    name, with the file name as item id.

    Args:
        image_dir (`str` or `os.PathLike`): Folder of the images.
        karpathy_json (`str` or `os.PathLike`, *optional*): Karpathy-split JSON selecting the images.
        limit (`int`, *optional*): Keep only the first ``limit`` images.

    Returns:
        `tuple[list[Path], list[str]]`: Image paths and their item ids, in the same order.

    Raises:
        ValueError: ``image_dir`` is not a folder, the JSON (read by `hf_mltm.data.karpathy.read_karpathy_json`,
            image list only) is missing, not UTF-8 JSON or lacks ``images``/``filename``, a ``filename`` or
            ``filepath`` is absolute or has a ``..`` component, a listed image is missing, no image is found, or
            ``limit < 1``.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise ValueError(f"image_dir {image_dir} is not a folder; pass the folder that holds the images.")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}.")
    if karpathy_json is None:
        paths = sorted(
            path for path in image_dir.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        )
        item_ids = [path.name for path in paths]
    else:
        paths, item_ids = _karpathy_images(image_dir, Path(karpathy_json))
    if not paths:
        raise ValueError(f"no images found in {image_dir} (suffixes {', '.join(IMAGE_SUFFIXES)}).")
    if limit is not None:
        paths, item_ids = paths[:limit], item_ids[:limit]
    return paths, item_ids


def _karpathy_images(image_dir: Path, karpathy_json: Path) -> tuple[list[Path], list[str]]:
    """Paths and ``filename`` ids of the images of a Karpathy-split JSON (see `find_images`)."""
    paths, item_ids = [], []
    for image in read_karpathy_json(karpathy_json, listing_only=True):
        path = image_dir / image.filename
        if not path.is_file() and image.filepath is not None:
            path = image_dir / image.filepath / image.filename
        if not path.is_file():
            raise ValueError(
                f"{image.source} filename {image.filename!r} is not in {image_dir}; pass the image folder as "
                f"image_dir."
            )
        paths.append(path)
        item_ids.append(image.filename)
    return paths, item_ids


def extract_grid_features(
    image_paths: Sequence[PathLike],
    item_ids: Sequence[str],
    output_dir: PathLike,
    *,
    encoder: nn.Module | None = None,
    image_processor: OMITImageProcessor | None = None,
    batch_size: int = 32,
    shard_size: int = 256,
    dtype: str = "float16",
    progress: bool = True,
) -> datasets.Dataset:
    """Compute the grid fragments of image files through the feature cache in ``output_dir`` (resumable).

    Each image is keyed by the sha256 of its file (``content_key("file", file_fingerprint(path))``) in the cache
    folder of ``encoder`` and its settings, ``FeatureCache.for_tower(output_dir, encoder, {"image_processor":
    image_processor.to_dict(), "dtype": dtype}, name="image")`` (see the module docstring). Images that folder
    already holds are read, the others are encoded in batches of ``batch_size`` and stored in shards of
    ``shard_size`` rows, each written atomically as it fills. Run again after an interruption, the function
    computes only the images no finished shard holds, and returns what an uninterrupted run returns. An edited
    image file has a new key and is computed again; another encoder, image processor or dtype uses another cache
    folder and computes everything. Files with equal bytes are computed once. When all rows exist, the item ids
    and keys are recorded in ``output_dir/items.json`` (atomically), so that `load_grid_features` gives the same
    rows without the encoder.

    Numerics: the encoder runs in eval mode under `torch.inference_mode` on the device of its first parameter,
    in its own dtype (float32 for the default); the fragments are stored as ``dtype`` (float16 keeps a relative
    error <= 2**-11 and values up to 65504). Memory: up to 1024 rows of ``R * D`` values plus one batch of
    images; the returned dataset is memory-mapped. Each image file is read twice (hashed, then decoded and
    checked against its hash); every cached row is read and checked once, and once more when the returned
    dataset is built.

    Args:
        image_paths (sequence of `str` or `os.PathLike`): Image files, readable by PIL.
        item_ids (sequence of `str`): Unique id of each image (e.g. the Karpathy ``filename``).
        output_dir (`str` or `os.PathLike`): Root folder of the feature cache and of ``items.json``; created if
            missing. One extraction at a time per folder.
        encoder (`torch.nn.Module`, *optional*): A frozen image tower whose class, config and weights key the
            cache: either it returns ``fragments`` ``(B, R, D)`` (as `EfficientNetLite0GridEncoder`, whose wrapped
            model is used as the key), or its output has a ``last_hidden_state``: a feature map ``(B, D, h, w)``
            (as `EfficientNetLiteModel`), flattened row-major to ``R = h * w`` fragments, or ``(B, R, D)`` tokens,
            used as they are. Defaults to
            ``EfficientNetLiteModel.from_pretrained(cached_efficientnet_lite0_dir())`` (``R, D = 49, 1280``).
        image_processor (`OMITImageProcessor`, *optional*): Turns PIL images into ``pixel_values`` ``(B, 3, H,
            W)``; its ``to_dict()`` (without ``auto_map``/``processor_class``) is part of the cache key. Defaults to
            `OMITImageProcessor.for_efficientnet_lite()`.
        batch_size (`int`, defaults to 32): Images per encoder call.
        shard_size (`int`, defaults to 256): Rows per cache shard, i.e. the most rows a killed run loses.
        dtype (`str`, defaults to ``"float16"``): Storage dtype, ``"float16"`` or ``"float32"``.
        progress (`bool`, defaults to `True`): Show a tqdm progress bar (per distinct image file).

    Returns:
        `datasets.Dataset`: Columns ``item_id`` (string) and ``fragments`` (``Array2D((R, D), dtype)``), one row
        per requested item in the order of ``item_ids``.

    Raises:
        ValueError: Mismatched or duplicate ``item_ids``; a missing, unreadable or (during the run) modified image
            file (named); a bad ``batch_size``/``shard_size``/``dtype``; an ``encoder`` that is not a module or
            whose output is neither ``(B, R, D)`` fragments nor a ``last_hidden_state`` of ``(B, D, h, w)`` or
            ``(B, R, D)``, or differs in shape between images; non-finite fragments (the image is named); an unreadable ``items.json``.
    """
    image_paths = [Path(path) for path in image_paths]
    item_ids = list(item_ids)
    _check_extraction_inputs(image_paths, item_ids, batch_size, shard_size, dtype)
    if encoder is not None and not isinstance(encoder, nn.Module):
        raise ValueError(
            f"encoder must be a torch.nn.Module (its class, config and weights key the feature cache), got "
            f"{type(encoder).__name__}; wrap a function in a module, or pass an EfficientNetLiteModel."
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(f".{INDEX_NAME}.*.tmp"):  # an index write of a killed run
        stale.unlink(missing_ok=True)
    previous = _read_index(output_dir) if (output_dir / INDEX_NAME).exists() else None

    if encoder is None:
        from hf_mltm.training.model_factory import cached_efficientnet_lite0_dir

        model_dir = cached_efficientnet_lite0_dir()
        with _transformers_progress(progress):
            encoder = EfficientNetLiteModel.from_pretrained(model_dir)
    if image_processor is None:
        image_processor = OMITImageProcessor.for_efficientnet_lite()
    tower = encoder.model if isinstance(encoder, EfficientNetLite0GridEncoder) else encoder
    cache = FeatureCache.for_tower(
        output_dir, tower, _cache_settings(image_processor, dtype), name=CACHE_NAME, shard_size=shard_size
    )
    keys = [content_key("file", file_fingerprint(path)) for path in image_paths]
    path_of_key: dict[str, Path] = {}
    for key, path in zip(keys, image_paths, strict=True):
        path_of_key.setdefault(key, path)
    distinct = list(path_of_key)

    shape: tuple[int, int] | None = None
    with (
        tqdm(
            total=len(distinct), desc="Extracting grid fragments", unit="image", disable=not progress
        ) as bar,
        _eval_mode(encoder),
    ):
        runner = _BatchEncoder(encoder, image_processor, _TORCH_DTYPES[dtype], bar)
        for start in range(0, len(distinct), READ_CHUNK):
            chunk = distinct[start : start + READ_CHUNK]
            computed_before = runner.images
            rows = cache.get_or_compute(
                chunk,
                partial(_compute_rows, runner, [(key, path_of_key[key]) for key in chunk]),
                batch_size=batch_size,
                progress=False,
            )
            bar.update(len(chunk) - (runner.images - computed_before))  # the rows read from finished shards
            for key, row in zip(chunk, rows, strict=True):
                row_shape = tuple(row["fragments"].shape)
                if shape is None:
                    shape = row_shape
                elif row_shape != shape:
                    raise ValueError(
                        f"the encoder gave fragments {shape} for one image but {row_shape} for "
                        f"{path_of_key[key]}; grid fragments must have one shape (R, D) per encoder."
                    )

    assert shape is not None  # image_paths is not empty
    items = dict(previous.items) if previous is not None and previous.cache_folder == cache.namespace else {}
    items.update(zip(item_ids, keys, strict=True))
    _write_index(output_dir, _Index(cache.namespace, dtype, shape, items))
    return _build_dataset(cache.path, list(zip(item_ids, keys, strict=True)), shape, dtype)


def load_grid_features(output_dir: PathLike) -> datasets.Dataset:
    """Load the grid fragments recorded in a folder written by `extract_grid_features`, without an encoder.

    Reads ``output_dir/items.json`` and takes each item's row from the feature-cache folder it names. Every row
    is checked (its shard's digest, finite values, the recorded shape and dtype) when the dataset is built; a
    corrupt shard is moved aside with a `UserWarning` naming it, and its items are reported as missing.

    Args:
        output_dir (`str` or `os.PathLike`): The ``output_dir`` of `extract_grid_features`.

    Returns:
        `datasets.Dataset`: Columns ``item_id`` (string) and ``fragments`` (``Array2D((R, D), dtype)``, float16 by
        default; datasets' numpy/torch formats return it as float32), one row per recorded item in ``items.json``
        order (items of earlier extractions with the same encoder first), memory-mapped.

    Raises:
        ValueError: The folder does not exist; it has no ``items.json`` (or only parquet shards of the old
            format), or an unreadable one; the cache folder it names is missing; or rows of some items are missing
            from the cache (they are named: run `extract_grid_features` again for them).
    """
    output_dir = Path(output_dir)
    index = _read_index(output_dir)
    cache_path = output_dir / index.cache_folder
    if not (cache_path / MANIFEST_NAME).is_file():
        raise ValueError(
            f"{output_dir / INDEX_NAME} names the feature-cache folder {cache_path}, which is missing or has no "
            f"{MANIFEST_NAME}; run extract_grid_features into {output_dir} again."
        )
    return _build_dataset(cache_path, list(index.items.items()), index.fragments_shape, index.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------------------


class _BatchEncoder:
    """Encodes batches of image files into cache rows ``{"fragments": (R, D)}`` and counts the images."""

    def __init__(
        self, encoder: nn.Module, image_processor: OMITImageProcessor, dtype: torch.dtype, bar: tqdm
    ) -> None:
        self.encoder, self.image_processor, self.dtype, self.bar = encoder, image_processor, dtype, bar
        parameter = next(iter(encoder.parameters()), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        self.images = 0

    def __call__(self, items: list[tuple[str, Path]]) -> list[dict[str, torch.Tensor]]:
        """Rows of ``(content key, path)`` pairs, each file checked against its key before it is decoded."""
        images = [_decode_image(path, key) for key, path in items]
        pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            fragments = _fragments_of(self.encoder(pixel_values.to(self.device)), len(items))  # (B, R, D)
            stored = fragments.to(self.dtype)
        rows = []
        for (_, path), row in zip(items, stored, strict=True):
            if not bool(torch.isfinite(row).all()):
                raise ValueError(
                    f"the encoder gave non-finite fragments for image file {path} (NaN or inf, or values beyond "
                    f"the range of {str(self.dtype).removeprefix('torch.')}: pass dtype='float32'); check the "
                    f"image and the encoder."
                )
            rows.append({"fragments": row.cpu()})
        self.images += len(items)
        self.bar.update(len(items))
        return rows


def _compute_rows(
    runner: _BatchEncoder, items: list[tuple[str, Path]], positions: list[int]
) -> list[dict[str, torch.Tensor]]:
    """`FeatureCache.get_or_compute`'s ``compute``: the rows of ``items[p]`` for ``p`` in ``positions``."""
    return runner([items[position] for position in positions])


def _fragments_of(output: Any, batch: int) -> torch.Tensor:
    """Fragments ``(B, R, D)`` of an encoder output: a ``(B, R, D)`` tensor, or a ``last_hidden_state`` map."""
    fragments = output
    if not isinstance(output, torch.Tensor):
        hidden = getattr(output, "last_hidden_state", None)
        fragments = (
            _grid_fragments(hidden) if isinstance(hidden, torch.Tensor) and hidden.ndim == 4 else hidden
        )
    if not isinstance(fragments, torch.Tensor) or fragments.ndim != 3 or fragments.shape[0] != batch:
        got = tuple(fragments.shape) if isinstance(fragments, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"the encoder must return fragments of shape (B={batch}, R, D), or an output whose last_hidden_state is "
            f"a feature map (B={batch}, D, h, w); got {got}."
        )
    return fragments


def _grid_fragments(feature_map: torch.Tensor) -> torch.Tensor:
    """``(B, D, h, w)`` -> ``(B, h * w, D)``, fragment ``w * row + column``."""
    return feature_map.flatten(2).transpose(1, 2)  # (B, h * w, D)


def _decode_image(path: Path, key: str) -> Image.Image:
    """Decode an image file to RGB after checking that its bytes still have content key ``key``."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read image file {path}: {error}; check the file.") from error
    if content_key("file", file_fingerprint(data)) != key:
        raise ValueError(
            f"image file {path} changed while the features were extracted; run extract_grid_features again."
        )
    return load_image(data, label=str(path))  # the one image input path: size checks, RGB, errors naming the file


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """Hide transformers' progress bars (e.g. "Loading weights") inside the block unless ``enabled``."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    if was_enabled and not enabled:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            transformers_logging.enable_progress_bar()


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode inside the block, then restore each one's own mode."""
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for submodule, training in modes:
            submodule.training = training


def _cache_settings(image_processor: Any, dtype: str) -> dict[str, Any]:
    """The settings that key the cache besides the encoder: the processor's ``to_dict()`` and the dtype."""
    to_dict = getattr(image_processor, "to_dict", None)
    if not callable(to_dict):
        raise ValueError(
            f"image_processor must be an image processor with to_dict() (e.g. "
            f"OMITImageProcessor.for_efficientnet_lite()), got {type(image_processor).__name__}."
        )
    settings = {key: value for key, value in to_dict().items() if key not in PROCESSOR_LOCATION_KEYS}
    return {"image_processor": settings, "dtype": dtype}


def _check_extraction_inputs(
    image_paths: list[Path], item_ids: list[str], batch_size: int, shard_size: int, dtype: str
) -> None:
    """Validate the arguments of `extract_grid_features` before any work is done."""
    if len(image_paths) != len(item_ids):
        raise ValueError(
            f"got {len(image_paths)} image_paths but {len(item_ids)} item_ids; give one id per image."
        )
    if not image_paths:
        raise ValueError("image_paths is empty; give at least one image.")
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    first_index: dict[str, int] = {}
    for index, item_id in enumerate(item_ids):
        if not isinstance(item_id, str) or not item_id:
            raise ValueError(f"item_ids[{index}] must be a non-empty string, got {item_id!r}.")
        if item_id in first_index:
            raise ValueError(
                f"item_ids[{first_index[item_id]}] and item_ids[{index}] are both {item_id!r}; ids must be unique."
            )
        first_index[item_id] = index
    missing = [str(path) for path in image_paths if not path.is_file()]
    if missing:
        raise ValueError(f"{len(missing)} image file(s) do not exist, e.g. {missing[:3]}; fix image_paths.")


# ---------------------------------------------------------------------------------------------------------------
# The index (items.json)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Index:
    """The content of ``items.json``: the cache folder, storage dtype, ``(R, D)`` and item id -> content key."""

    cache_folder: str
    dtype: str
    fragments_shape: tuple[int, int]
    items: dict[str, str]


def _read_index(output_dir: Path) -> _Index:
    """Read and check ``output_dir/items.json``, or raise `ValueError` saying what to do."""
    if not output_dir.is_dir():
        raise ValueError(
            f"grid-feature folder {output_dir} does not exist; create it with extract_grid_features "
            f"(scripts/extract_grid_features.py)."
        )
    path = output_dir / INDEX_NAME
    if not path.is_file():
        if any(output_dir.glob("shard-*.parquet")):
            raise ValueError(
                f"grid-feature folder {output_dir} holds parquet shards of the old format, which are no longer "
                f"read, and no {INDEX_NAME}; run extract_grid_features into a new folder (or into this one)."
            )
        raise ValueError(
            f"grid-feature folder {output_dir} has no {INDEX_NAME}; run extract_grid_features into it "
            f"(scripts/extract_grid_features.py)."
        )
    problem = None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raw, problem = None, f"not readable JSON ({error})"
    if problem is None:
        problem = _index_problem(raw)
    if problem is not None:
        raise ValueError(
            f"cannot use the grid-feature index {path}: {problem}; delete it and run extract_grid_features again."
        )
    rows, dim = raw["fragments_shape"]
    return _Index(raw["cache_folder"], raw["dtype"], (rows, dim), dict(raw["items"]))


def _index_problem(raw: Any) -> str | None:
    """What is wrong with a parsed ``items.json``, or `None`."""
    if not isinstance(raw, dict) or raw.get("format") != INDEX_FORMAT or raw.get("version") != INDEX_VERSION:
        return f"expected a JSON object with format {INDEX_FORMAT!r} and version {INDEX_VERSION}"
    folder = raw.get("cache_folder")
    if not isinstance(folder, str) or not _CACHE_FOLDER_PATTERN.fullmatch(folder):
        return f"cache_folder {folder!r} is not a cache folder name '{CACHE_NAME}-<64 hex digits>'"
    if raw.get("dtype") not in DTYPES:
        return f"dtype {raw.get('dtype')!r} is not one of {DTYPES}"
    shape = raw.get("fragments_shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in shape)
    ):
        return f"fragments_shape {shape!r} is not [R, D] with positive integers"
    items = raw.get("items")
    if not isinstance(items, dict) or not items:
        return "items is not a non-empty object of item_id -> content key"
    for item_id, key in items.items():
        if not item_id or not isinstance(key, str) or not key:
            return f"item {item_id!r} has the content key {key!r}, not a non-empty string"
    return None


def _write_index(output_dir: Path, index: _Index) -> None:
    """Write ``items.json`` atomically: to a hidden temporary file, flushed and fsynced, then renamed."""
    text = json.dumps(
        {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "cache_folder": index.cache_folder,
            "dtype": index.dtype,
            "fragments_shape": list(index.fragments_shape),
            "items": index.items,
        },
        indent=1,
        ensure_ascii=False,
    )
    temporary = output_dir / f".{INDEX_NAME}.{secrets.token_hex(4)}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, output_dir / INDEX_NAME)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------------
# The returned dataset
# ---------------------------------------------------------------------------------------------------------------


class _AbsentRows(Exception):
    """Raised by the ``compute`` of a reader: the cache lacks the rows at these positions."""

    def __init__(self, positions: list[int]):
        super().__init__(positions)
        self.positions = positions


def _absent(positions: list[int]) -> list[dict[str, torch.Tensor]]:
    raise _AbsentRows(positions)


def _build_dataset(
    cache_path: Path, items: list[tuple[str, str]], shape: tuple[int, int], dtype: str
) -> datasets.Dataset:
    """The dataset of ``(item_id, content key)`` rows from the cache folder ``cache_path`` (see the module
    docstring for where datasets stores it and when it is rebuilt)."""
    try:
        with quiet_progress_bars():
            return datasets.Dataset.from_generator(
                _generate_rows,
                features=grid_features_features(*shape, dtype),
                # A tuple, not a list: datasets splits list arguments into one generator call per element.
                gen_kwargs={
                    "cache_path": str(cache_path),
                    "items": tuple(items),
                    "shape": shape,
                    "dtype": dtype,
                },
                fingerprint=_dataset_fingerprint(cache_path, items, shape, dtype),
            )
    except DatasetGenerationError as error:
        if isinstance(error.__cause__, ValueError):  # ours, raised inside the generator: show it unwrapped
            raise error.__cause__ from None
        raise


def _generate_rows(
    cache_path: str, items: tuple[tuple[str, str], ...], shape: tuple[int, int], dtype: str
) -> Iterator[dict[str, Any]]:
    """Yield ``{"item_id", "fragments"}`` per item from the cache; raise naming every item without a row."""
    cache_path = Path(cache_path)
    cache = FeatureCache(cache_path.parent, cache_path.name, writer=READER)
    missing: list[str] = []
    for start in range(0, len(items), READ_CHUNK):
        chunk = items[start : start + READ_CHUNK]
        keys = [key for _, key in chunk]
        try:
            rows = cache.get_or_compute(keys, _absent, batch_size=len(keys), progress=False)
        except _AbsentRows as absent:
            absent_keys = {keys[position] for position in absent.positions}
            missing.extend(item_id for item_id, key in chunk if key in absent_keys)
            continue
        if missing:
            continue  # the dataset fails anyway: only look for more missing items
        for (item_id, _), row in zip(chunk, rows, strict=True):
            fragments = row.get("fragments")
            if (
                not isinstance(fragments, torch.Tensor)
                or tuple(fragments.shape) != tuple(shape)
                or fragments.dtype != _TORCH_DTYPES[dtype]
            ):
                got = (
                    (tuple(fragments.shape), fragments.dtype)
                    if isinstance(fragments, torch.Tensor)
                    else sorted(row)
                )
                raise ValueError(
                    f"the feature cache {cache_path} holds {got} for item {item_id!r}, not fragments {tuple(shape)} "
                    f"{dtype}; delete {cache_path} and run extract_grid_features again."
                )
            yield {"item_id": item_id, "fragments": fragments.numpy()}
    if missing:
        raise ValueError(
            f"{len(missing)} item(s) have no row in the feature cache {cache_path} (their shard is missing or was "
            f"corrupt), e.g. {missing[:5]}; run extract_grid_features again with these images."
        )


def _dataset_fingerprint(
    cache_path: Path, items: list[tuple[str, str]], shape: tuple[int, int], dtype: str
) -> str:
    """A digest of the rows a dataset holds: the cache folder, every ``(item_id, key)``, the shape, the dtype,
    and the name, size and modification time of each shard file (so any change to the shards rebuilds it)."""
    hasher = hashlib.sha256(f"{INDEX_FORMAT}.dataset.v{INDEX_VERSION}".encode())
    hasher.update(json.dumps([cache_path.name, list(shape), dtype]).encode())
    for item_id, key in items:
        hasher.update(json.dumps([item_id, key], ensure_ascii=False).encode("utf-8", errors="surrogatepass"))
    for shard in sorted(cache_path.glob(SHARD_GLOB)):
        try:
            status = shard.stat()
        except FileNotFoundError:  # moved aside meanwhile
            continue
        hasher.update(json.dumps([shard.name, status.st_size, status.st_mtime_ns]).encode())
    return hasher.hexdigest()
