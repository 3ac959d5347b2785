"""The one parser of Karpathy-split JSON files (Flickr8k, Flickr30K, COCO retrieval splits).

Format (``dataset_flickr30k.json``, ``dataset_flickr8k.json``, ``dataset_coco.json``)::

    {"images": [{"filename": "1000268201_693b08cb0e.jpg", "split": "train" | "val" | "test" | "restval",
                 "sentences": [{"raw": "A child in a pink dress ...", "tokens": [...]}, ...],
                 "filepath": "Images"   (optional; COCO: "train2014"/"val2014")}, ...]}

`read_karpathy_json` reads and checks the file once; the Flickr and COCO builders (`karpathy_items`) and
`hf_mltm.data.grid_features.find_images` use it. ``filename`` and ``filepath`` must be relative paths without
``..`` (they are joined to the data folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ._readers import check_relative_path, read_json, require_fields

__all__ = ["KARPATHY_LAYOUT", "KARPATHY_SPLITS", "KarpathyImage", "karpathy_items", "read_karpathy_json"]

# Karpathy split name -> canonical split name
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "validation", "test": "test"}
KARPATHY_LAYOUT = 'Karpathy format {"images": [{"filename", "split", "sentences": [{"raw"}]}]}'


class KarpathyImage(NamedTuple):
    """One ``images`` entry of a Karpathy JSON.

    Attributes:
        filename (`str`): The image file name (a relative path; the item id).
        filepath (`str` or `None`): The entry's ``filepath`` folder (relative), `None` when absent or empty.
        split (`str` or `None`): The Karpathy split (``"train"``, ``"restval"``, ``"val"``, ``"test"``); `None`
            when read with ``listing_only=True``.
        captions (`tuple[str, ...]`): The sentences' ``raw`` text (else the joined ``tokens``), in JSON order;
            empty when read with ``listing_only=True``.
        source (`str`): ``"<json path> images[<index>]"``, for messages.
    """

    filename: str
    filepath: str | None
    split: str | None
    captions: tuple[str, ...]
    source: str


def read_karpathy_json(path: Path, *, listing_only: bool = False) -> list[KarpathyImage]:
    """Parse a Karpathy-split JSON file.

    Args:
        path (`Path`): The JSON file.
        listing_only (`bool`, defaults to `False`): Read only the image list (``filename``, ``filepath``); the
            ``split`` and ``sentences`` fields are then neither required nor checked.

    Returns:
        `list[KarpathyImage]`: One entry per image, in JSON order.

    Raises:
        MissingDataFileError: The file does not exist.
        ValueError: The file is not UTF-8 JSON, has no ``images`` list, or an entry lacks a string
            ``filename``, has an unsafe path (absolute or with ``..``), an unknown ``split``, or no usable
            sentence. The message names the file and the entry (``images[3]``).
    """
    data = read_json(path, what=KARPATHY_LAYOUT)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(
            f"JSON file {str(path)!r}: expected a JSON object with an 'images' list ({KARPATHY_LAYOUT})."
        )
    images = []
    for index, entry in enumerate(data["images"]):
        where = f"{path} images[{index}]"
        filename = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(filename, str) or not filename:
            raise ValueError(f"{where} has no string field 'filename' ({KARPATHY_LAYOUT}).")
        check_relative_path(filename, where, "filename")
        filepath = entry.get("filepath")
        if isinstance(filepath, str) and filepath:
            check_relative_path(filepath, where, "filepath")
        else:
            filepath = None
        if listing_only:
            images.append(KarpathyImage(filename, filepath, None, (), where))
            continue
        require_fields(entry, ["split", "sentences"], where, KARPATHY_LAYOUT)
        if entry["split"] not in KARPATHY_SPLITS:
            raise ValueError(
                f"{where}: unknown split {entry['split']!r}; expected one of {list(KARPATHY_SPLITS)}."
            )
        if not isinstance(entry["sentences"], list) or not entry["sentences"]:
            raise ValueError(f"{where}: image {filename!r} has no sentences (a non-empty 'sentences' list).")
        captions = tuple(
            _sentence_text(sentence, f"{where}.sentences[{k}]")
            for k, sentence in enumerate(entry["sentences"])
        )
        images.append(KarpathyImage(filename, filepath, entry["split"], captions, where))
    return images


def _sentence_text(sentence: Any, where: str) -> str:
    if isinstance(sentence, dict) and isinstance(sentence.get("raw"), str) and sentence["raw"].strip():
        return sentence["raw"].strip()
    tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
    if isinstance(tokens, list) and tokens and all(isinstance(token, str) for token in tokens):
        return " ".join(tokens)
    raise ValueError(
        f"{where}: a sentence needs a non-empty 'raw' string or a 'tokens' list ({KARPATHY_LAYOUT})."
    )


def karpathy_items(
    json_path: Path,
    root: Path,
    *,
    wanted: Sequence[str],
    image_dir: str | None,
    default_image_dir: str,
    restval_to_train: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """The builders' item dicts of a Karpathy-split JSON, per canonical split.

    Args:
        json_path (`Path`): The JSON file.
        root (`Path`): Dataset root that ``filepath``/``image_dir`` are relative to.
        wanted (`Sequence[str]`): Canonical splits to keep.
        image_dir (`str`, *optional*): Folder of every image (relative to ``root``); overrides ``filepath``.
        default_image_dir (`str`): Folder for entries without ``filepath`` when ``image_dir`` is `None`.
        restval_to_train (`bool`, defaults to `True`): Put ``restval`` images into ``train`` (else drop them).

    Returns:
        `dict[str, list[dict]]`: Items (``item_id`` = ``filename``, ``image`` = absolute path, ``captions``,
        ``_source``) for each split of ``wanted``, in JSON order.

    Raises:
        MissingDataFileError: The JSON file does not exist.
        ValueError: See `read_karpathy_json`.
    """
    items: dict[str, list[dict[str, Any]]] = {split: [] for split in wanted}
    for image in read_karpathy_json(json_path):
        split = KARPATHY_SPLITS[image.split]
        if (image.split == "restval" and not restval_to_train) or split not in items:
            continue
        folder = image_dir if image_dir is not None else image.filepath or default_image_dir
        items[split].append(
            {
                "item_id": image.filename,
                "image": str(root / folder / image.filename),
                "captions": list(image.captions),
                "_source": image.source,
            }
        )
    return items
