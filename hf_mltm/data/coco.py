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
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import DatasetDict

from ._common import (
    MissingDataFileError,
    as_dir,
    assemble,
    check_choice,
    check_common_args,
    read_json,
    require_fields,
    select_splits,
)
from .flickr import karpathy_items

__all__ = ["build_coco"]

OFFICIAL_SPLITS = {"train": "train", "validation": "val"}
OFFICIAL_LAYOUT = (
    'COCO captions {"images": [{"id", "file_name"}], "annotations": [{"id", "image_id", "caption"}]}'
)


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
        ValueError: Bad arguments, malformed JSON, a missing field or an annotation of an unknown image.
    """
    check_common_args(view, on_missing)
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
    data = read_json(json_path, what=OFFICIAL_LAYOUT)
    require_fields(data, ["images", "annotations"], f"JSON file {str(json_path)!r}", OFFICIAL_LAYOUT)
    images: dict[Any, dict[str, Any]] = {}
    for index, image in enumerate(data["images"]):
        where = f"{json_path} images[{index}]"
        require_fields(image, ["id", "file_name"], where, OFFICIAL_LAYOUT)
        images[image["id"]] = {
            "item_id": image["file_name"],
            "image": str(image_dir / image["file_name"]),
            "_captions": [],
            "_source": where,
        }
    for index, annotation in enumerate(data["annotations"]):
        where = f"{json_path} annotations[{index}]"
        require_fields(annotation, ["image_id", "caption"], where, OFFICIAL_LAYOUT)
        if annotation["image_id"] not in images:
            raise ValueError(f"{where}: image_id {annotation['image_id']!r} is not in 'images'.")
        caption = str(annotation["caption"]).strip()
        if caption:
            images[annotation["image_id"]]["_captions"].append((annotation.get("id", index), index, caption))
    items = []
    for item in images.values():
        if not item["_captions"]:
            continue  # an image without captions is no retrieval item
        item["captions"] = [caption for *_, caption in sorted(item.pop("_captions"))]
        items.append(item)
    return items
