"""MS-COCO captions from the official annotation files or from Karpathy's ``dataset_coco.json``.

Official layout (https://cocodataset.org, 2014 release)::

    <data_dir>/annotations/captions_train2014.json   {"images": [{"id", "file_name"}],
    <data_dir>/annotations/captions_val2014.json      "annotations": [{"id", "image_id", "caption"}]}
    <data_dir>/train2014/<file_name>, <data_dir>/val2014/<file_name>

``train2014`` becomes ``train`` and ``val2014`` ``validation`` (the official test images have no captions);
captions of an image are ordered by annotation ``id``.

Karpathy layout: ``<data_dir>/dataset_coco.json`` (``filepath`` ``train2014``/``val2014``) with the
``train``/``restval``/``val``/``test`` splits (113287 / 5000 / 5000 images with ``restval`` in ``train``).

Items are images (``item_id`` = file name, e.g. ``"COCO_val2014_000000391895.jpg"``, the same key in both
formats) with their captions.

`build_coco_captions` reads one COCO-format caption file for *any* image folder (e.g. Flickr8k images with
captions written in the COCO format) into the same schema, all of it in one split named by the caller.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import DatasetDict

from hf_mltm.validation import check_bool, check_choice, strict_keywords

from ._arguments import SPLITS, as_dir, check_common_args, select_splits
from ._assemble import assemble
from ._readers import check_relative_path, read_json, require_fields
from .errors import MissingDataFileError
from .karpathy import karpathy_items

__all__ = ["build_coco", "build_coco_captions"]

OFFICIAL_SPLITS = {"train": "train", "validation": "val"}
OFFICIAL_LAYOUT = (
    'COCO captions {"images": [{"id", "file_name"}], "annotations": [{"id", "image_id", "caption"}]}'
)


@strict_keywords()
def build_coco(
    data_dir: str | os.PathLike,
    *,
    view: str = "captions",
    splits: str | Sequence[str] | None = None,
    on_missing: str = "error",
    verify_files: bool = False,
    annotation_format: str = "auto",
    year: int = 2014,
    karpathy_json: str = "dataset_coco.json",
    restval_to_train: bool = True,
) -> DatasetDict:
    """Build COCO captions.

    Args:
        data_dir (`str` or `os.PathLike`): The COCO root.
        view (`str`, defaults to ``"captions"``): ``"captions"`` or ``"items"``.
        splits (`str` or `Sequence[str]`, *optional*): Splits to build. `None`: all (Karpathy: train,
            validation, test; official: the annotation files that exist).
        on_missing (`str`, defaults to ``"error"``): ``"error"`` or ``"skip"`` for missing/corrupt images.
        verify_files (`bool`, defaults to `False`): Open and verify every image with PIL (slower).
        annotation_format (`str`, defaults to ``"auto"``): ``"karpathy"``, ``"official"``, or ``"auto"``
            (Karpathy when ``karpathy_json`` exists, else official).
        year (`int`, defaults to 2014): Release of the official files (``captions_{split}{year}.json`` and image
            folders ``{split}{year}/``).
        karpathy_json (`str`, defaults to ``"dataset_coco.json"``): Karpathy JSON relative to ``data_dir``.
        restval_to_train (`bool`, defaults to `True`): Karpathy ``restval`` images join ``train``.

    Returns:
        `DatasetDict`: Columns ``item_id``, ``item_index``, ``image`` (absolute path),
        ``caption``/``caption_index`` or ``captions``. Attribute ``skipped_files``.

    Raises:
        MissingDataFileError: An annotation file or (with ``on_missing="error"``) an image is missing.
        CorruptDataFileError: An image cannot be verified (``verify_files=True``, ``on_missing="error"``).
        ValueError: Bad arguments, malformed JSON, a missing field, an annotation of an unknown image, or an image
            path that is absolute or has a ``..`` component.
    """
    check_common_args(view, on_missing, verify_files)
    check_bool("restval_to_train", restval_to_train)
    check_choice("annotation_format", annotation_format, ("auto", "karpathy", "official"))
    root = as_dir(data_dir, "COCO")
    if annotation_format == "auto":
        annotation_format = "karpathy" if (root / karpathy_json).is_file() else "official"
    if annotation_format == "karpathy":
        wanted = select_splits(splits, ["train", "validation", "test"], "COCO (Karpathy splits)")
        items = karpathy_items(
            root / karpathy_json,
            root,
            wanted=wanted,
            image_dir=None,
            default_image_dir="",
            restval_to_train=restval_to_train,
        )
        # entries without "filepath": the image folder is part of the name (COCO_val2014_...)
        for split_items in items.values():
            for item in split_items:
                if Path(item["image"]).parent == root:
                    item["image"] = str(root / _folder_from_name(item["item_id"]) / item["item_id"])
    else:
        annotation_files = {
            split: root / "annotations" / f"captions_{name}{year}.json"
            for split, name in OFFICIAL_SPLITS.items()
        }
        if splits is None:
            wanted = [split for split, path in annotation_files.items() if path.is_file()]
            if not wanted:
                raise MissingDataFileError(
                    f"No COCO annotations in {str(root)!r}: expected annotations/captions_train{year}.json and/or "
                    f"annotations/captions_val{year}.json, or a Karpathy {karpathy_json}."
                )
        else:
            wanted = select_splits(splits, list(OFFICIAL_SPLITS), "COCO (official annotations)")
        items = {
            split: _official_items(annotation_files[split], root / f"{OFFICIAL_SPLITS[split]}{year}")
            for split in wanted
        }
    return assemble(
        items,
        media_key="image",
        view=view,
        on_missing=on_missing,
        verify_files=verify_files,
        dataset_name="COCO",
    )


def _folder_from_name(file_name: str) -> str:
    parts = file_name.split("_")
    return parts[1] if len(parts) >= 3 and parts[0] == "COCO" else ""


def _official_items(json_path: Path, image_dir: Path) -> list[dict[str, Any]]:
    """Items of a COCO-format caption file: images with at least one caption, in ``images`` order, captions
    ordered by annotation ``id`` (annotations without ``id`` by position)."""
    data = read_json(json_path, what=OFFICIAL_LAYOUT)
    require_fields(data, ["images", "annotations"], f"JSON file {str(json_path)!r}", OFFICIAL_LAYOUT)
    for field in ("images", "annotations"):
        if not isinstance(data[field], list):
            raise ValueError(f"JSON file {str(json_path)!r}: {field!r} must be a list ({OFFICIAL_LAYOUT}).")
    images: dict[Any, dict[str, Any]] = {}
    for index, image in enumerate(data["images"]):
        where = f"{json_path} images[{index}]"
        require_fields(image, ["id", "file_name"], where, OFFICIAL_LAYOUT)
        if image["id"] in images:
            raise ValueError(
                f"{where}: id {image['id']!r} is already used by {images[image['id']]['_source']}; image ids "
                f"must be unique."
            )
        file_name = check_relative_path(image["file_name"], where, "file_name")
        images[image["id"]] = {
            "item_id": file_name,
            "image": str(image_dir / file_name),
            "_captions": [],
            "_source": where,
        }
    for index, annotation in enumerate(data["annotations"]):
        where = f"{json_path} annotations[{index}]"
        require_fields(annotation, ["image_id", "caption"], where, OFFICIAL_LAYOUT)
        if annotation["image_id"] not in images:
            raise ValueError(f"{where}: image_id {annotation['image_id']!r} is not in 'images'.")
        if not isinstance(annotation["caption"], str):
            raise ValueError(f"{where}: field 'caption' must be a string, got {annotation['caption']!r}.")
        order = annotation.get("id", index)
        if not isinstance(order, int) or isinstance(order, bool):
            raise ValueError(f"{where}: field 'id' must be an integer, got {order!r}.")
        caption = annotation["caption"].strip()
        if caption:
            images[annotation["image_id"]]["_captions"].append((order, index, caption))
    items = []
    for item in images.values():
        if not item["_captions"]:
            continue  # an image without captions is no retrieval item
        item["captions"] = [caption for *_, caption in sorted(item.pop("_captions"))]
        items.append(item)
    return items


@strict_keywords()
def build_coco_captions(
    data_dir: str | os.PathLike,
    *,
    annotation_file: str | os.PathLike,
    split: str = "test",
    view: str = "captions",
    splits: str | Sequence[str] | None = None,
    on_missing: str = "error",
    verify_files: bool = False,
) -> DatasetDict:
    """Build an image-text set from any image folder and one COCO-format caption file.

    The caption file has the layout of COCO's ``captions_*.json``::

        {"images": [{"id": 1, "file_name": "1000268201_693b08cb0e.jpg"}, ...],
         "annotations": [{"id": 10, "image_id": 1, "caption": "A child in a pink dress ..."}, ...]}

    ``file_name`` is relative to ``data_dir`` (sub-folders allowed, no ``..``). A COCO file carries no split, so
    every image goes to the one split named by ``split``. Images without a caption are left out; captions are
    ordered by annotation ``id`` (position when absent), images by their order in ``images``.

    Args:
        data_dir (`str` or `os.PathLike`): The image folder.
        annotation_file (`str` or `os.PathLike`): The caption file; a relative path is relative to ``data_dir``.
        split (`str`, defaults to ``"test"``): The split that holds every image (a canonical name or an alias such
            as ``"val"``).
        view (`str`, defaults to ``"captions"``): ``"captions"`` or ``"items"``.
        splits (`str` or `Sequence[str]`, *optional*): Only ``split`` (or its alias) can be selected; `None` keeps it.
        on_missing (`str`, defaults to ``"error"``): ``"error"`` or ``"skip"`` for missing/corrupt images.
        verify_files (`bool`, defaults to `False`): Open and verify every image with PIL (slower).

    Returns:
        `DatasetDict`: One split, columns ``item_id`` (the ``file_name``), ``item_index``, ``image`` (absolute
        path), ``caption``/``caption_index`` or ``captions``. Attribute ``skipped_files``.

    Raises:
        MissingDataFileError: ``data_dir``, the caption file or (with ``on_missing="error"``) an image is missing.
        CorruptDataFileError: An image cannot be verified (``verify_files=True``, ``on_missing="error"``).
        ValueError: Bad arguments, malformed JSON, a missing field, a duplicate image id, an annotation of an
            unknown image, or a ``file_name`` that is absolute or has a ``..`` component.

    Example:

    ```python
    >>> from hf_mltm.data import build_coco_captions
    >>> flickr = build_coco_captions("flickr8k_1k/Images", annotation_file="/tmp/captions_coco.json")  # doctest: +SKIP
    >>> list(flickr), flickr["test"][0]["item_id"]  # doctest: +SKIP
    (['test'], '1000268201_693b08cb0e.jpg')

    ```
    """
    check_common_args(view, on_missing, verify_files)
    if not isinstance(split, str):
        raise ValueError(f"split must be one split name such as 'test', got {split!r}.")
    (canonical,) = select_splits(split, SPLITS, "COCO-format captions")
    wanted = select_splits(splits, [canonical], f"COCO-format captions (split={split!r})")
    root = as_dir(data_dir, "COCO-format captions")
    if not isinstance(annotation_file, str | os.PathLike):
        raise ValueError(
            f"annotation_file must be a path to a COCO-format caption file, got {annotation_file!r}."
        )
    json_path = root / Path(annotation_file).expanduser()  # an absolute path replaces root
    items = {name: _official_items(json_path, root) for name in wanted}
    return assemble(
        items,
        media_key="image",
        view=view,
        on_missing=on_missing,
        verify_files=verify_files,
        dataset_name="COCO-format captions",
    )
