"""Flickr30K and Flickr8k image-text retrieval from Karpathy-split JSON files and an image folder.

The JSON format is read by `hf_mltm.data.karpathy` (``{"images": [{"filename", "split", "sentences",
"filepath"?}]}``). Layouts::

    <data_dir>/dataset_flickr30k.json + <data_dir>/flickr30k-images/<filename>
    <data_dir>/dataset_flickr8k.json  + <data_dir>/Images/<filename> (or Flicker8k_Dataset/)

An entry's ``filepath`` (relative to ``data_dir``) wins over the default image folder unless ``image_dir`` is
given. ``val`` becomes ``validation`` and ``restval`` joins ``train`` (``restval_to_train=False`` drops it).
Each image is an item with its captions (the ``raw`` sentences, or the joined ``tokens``) in JSON order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from datasets import DatasetDict

from hf_mltm.validation import check_bool, strict_keywords

from ._arguments import as_dir, check_common_args, select_splits
from ._assemble import assemble
from .errors import MissingDataFileError
from .karpathy import karpathy_items

__all__ = ["build_flickr30k", "build_flickr8k"]


def _find_json(root: Path, karpathy_json: str | None, candidates: Sequence[str], dataset_name: str) -> Path:
    if karpathy_json is not None:
        return root / karpathy_json
    for pattern in candidates:
        matches = sorted(root.glob(pattern))
        if matches:
            return matches[0]
    raise MissingDataFileError(
        f"No {dataset_name} Karpathy JSON in {str(root)!r}: expected one of {list(candidates)} (or pass karpathy_json)."
    )


def _build_karpathy(
    data_dir: str | os.PathLike,
    *,
    dataset_name: str,
    json_candidates: Sequence[str],
    image_dir_candidates: Sequence[str],
    karpathy_json: str | None,
    image_dir: str | None,
    view: str,
    splits: str | Sequence[str] | None,
    on_missing: str,
    verify_files: bool,
    restval_to_train: bool,
) -> DatasetDict:
    check_common_args(view, on_missing, verify_files)
    check_bool("restval_to_train", restval_to_train)
    wanted = select_splits(splits, ["train", "validation", "test"], dataset_name)
    root = as_dir(data_dir, dataset_name)
    json_path = _find_json(root, karpathy_json, json_candidates, dataset_name)
    default_dir = next(
        (name for name in image_dir_candidates if (root / name).is_dir()), image_dir_candidates[0]
    )
    items = karpathy_items(
        json_path,
        root,
        wanted=wanted,
        image_dir=image_dir,
        default_image_dir=default_dir,
        restval_to_train=restval_to_train,
    )
    return assemble(
        items,
        media_key="image",
        view=view,
        on_missing=on_missing,
        verify_files=verify_files,
        dataset_name=dataset_name,
    )


@strict_keywords()
def build_flickr30k(
    data_dir: str | os.PathLike,
    *,
    view: str = "captions",
    splits: str | Sequence[str] | None = None,
    on_missing: str = "error",
    verify_files: bool = False,
    karpathy_json: str | None = None,
    image_dir: str | None = None,
    restval_to_train: bool = True,
) -> DatasetDict:
    """Build Flickr30K (Karpathy splits: 29000 / 1014 / 1000 images, 5 captions each).

    Args:
        data_dir (`str` or `os.PathLike`): Root holding the JSON and the image folder.
        view (`str`, defaults to ``"captions"``): ``"captions"`` or ``"items"``.
        splits (`str` or `Sequence[str]`, *optional*): Splits to build; `None` for all three.
        on_missing (`str`, defaults to ``"error"``): ``"error"`` or ``"skip"`` for missing/corrupt images.
        verify_files (`bool`, defaults to `False`): Open and verify every image with PIL (slower).
        karpathy_json (`str`, *optional*): JSON path relative to ``data_dir`` (default ``dataset_flickr30k.json``).
        image_dir (`str`, *optional*): Image folder relative to ``data_dir`` (default: each entry's ``filepath``,
            else ``flickr30k-images``).
        restval_to_train (`bool`, defaults to `True`): Count ``restval`` images as training images.

    Returns:
        `DatasetDict`: Columns ``item_id`` (the JSON ``filename``), ``item_index``, ``image`` (absolute path),
        ``caption``/``caption_index`` or ``captions``. Attribute ``skipped_files``.

    Raises:
        MissingDataFileError: The JSON or (with ``on_missing="error"``) an image is missing.
        CorruptDataFileError: An image cannot be verified (``verify_files=True``, ``on_missing="error"``).
        ValueError: An unknown keyword argument, malformed JSON, a missing field, or an image path that is
            absolute or has a ``..`` component.
    """
    return _build_karpathy(
        data_dir,
        dataset_name="Flickr30K",
        json_candidates=["dataset_flickr30k.json"],
        image_dir_candidates=["flickr30k-images", "flickr30k_images", "Images"],
        karpathy_json=karpathy_json,
        image_dir=image_dir,
        view=view,
        splits=splits,
        on_missing=on_missing,
        verify_files=verify_files,
        restval_to_train=restval_to_train,
    )


@strict_keywords()
def build_flickr8k(
    data_dir: str | os.PathLike,
    *,
    view: str = "captions",
    splits: str | Sequence[str] | None = None,
    on_missing: str = "error",
    verify_files: bool = False,
    karpathy_json: str | None = None,
    image_dir: str | None = None,
    restval_to_train: bool = True,
) -> DatasetDict:
    """Build Flickr8k (Karpathy splits: 6000 / 1000 / 1000 images, 5 captions each).

    Same arguments, returns and errors as `build_flickr30k`; the JSON defaults to ``dataset_flickr8k.json``
    (else the first ``dataset_flickr8k*.json``) and the image folder to ``Images`` or ``Flicker8k_Dataset``.

    Example:

    ```python
    >>> from hf_mltm.data import build_flickr8k
    >>> flickr = build_flickr8k("../shared/data/flickr8k_1k", view="items")  # doctest: +SKIP
    >>> flickr["train"].num_rows, len(flickr["train"][0]["captions"])  # doctest: +SKIP
    (800, 5)

    ```
    """
    return _build_karpathy(
        data_dir,
        dataset_name="Flickr8k",
        json_candidates=["dataset_flickr8k.json", "dataset_flickr8k*.json"],
        image_dir_candidates=["Images", "Flicker8k_Dataset", "Flickr8k_Dataset"],
        karpathy_json=karpathy_json,
        image_dir=image_dir,
        view=view,
        splits=splits,
        on_missing=on_missing,
        verify_files=verify_files,
        restval_to_train=restval_to_train,
    )
