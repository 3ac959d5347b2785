"""ESC-50 (environmental sound classification) from its official layout.

Layout (https://github.com/karolpiczak/ESC-50)::

    <data_dir>/meta/esc50.csv      filename,fold,target,category,esc10,src_file,take
    <data_dir>/audio/{fold}-{freesound_id}-{take}-{target}.wav   (any libsndfile format works)

Each clip is one item with one template caption (``caption_template`` with the class name, underscores as
spaces). ``label_id`` is the official ``target`` (0..49) and ``fold`` the official fold (1..5). Each row is
checked against the official classes: ``target`` must be in 0..49 and name the row's ``category``.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from datasets import DatasetDict, Value

from hf_mltm.validation import check_bool, strict_keywords

from ._arguments import as_dir, check_common_args, select_splits
from ._assemble import assemble
from ._readers import check_relative_path, read_csv_rows
from .labels import format_caption, label_text

__all__ = ["ESC50_CATEGORIES", "ESC50_FOLDS", "build_esc50", "class_prompts"]

ESC50_FOLDS = (1, 2, 3, 4, 5)
# the official classes: target t is ESC50_CATEGORIES[t] (meta/esc50.csv, columns target and category)
ESC50_CATEGORIES = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind", "pouring_water",
    "toilet_flush", "thunderstorm",
    "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing", "brushing_teeth",
    "snoring", "drinking_sipping",
    "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks", "can_opening", "washing_machine",
    "vacuum_cleaner", "clock_alarm", "clock_tick", "glass_breaking",
    "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells", "airplane", "fireworks",
    "hand_saw",
)  # fmt: skip
ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10")
DEFAULT_CAPTION_TEMPLATE = "the sound of {label}"


def class_prompts(labels: Sequence[str], template: str = "This is a sound of {label}.") -> list[str]:
    """Zero-shot text prompts for class names.

    Args:
        labels (`Sequence[str]`): Class names, e.g. ESC-50 categories (``"chirping_birds"``).
        template (`str`, defaults to ``"This is a sound of {label}."``): Prompt with a ``{label}`` placeholder.

    Returns:
        `list[str]`: One prompt per label, underscores replaced by spaces
        (``"This is a sound of chirping birds."``).

    Example:

    ```python
    >>> from hf_mltm.data import class_prompts
    >>> class_prompts(["dog", "chirping_birds"])
    ['This is a sound of dog.', 'This is a sound of chirping birds.']

    ```
    """
    return [format_caption(template, label_text(label), f"label {label!r}") for label in labels]


def _folds(name: str, folds: int | Sequence[int] | None) -> set[int] | None:
    if folds is None:
        return None
    values = [folds] if isinstance(folds, numbers.Integral) else folds
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a fold number or a list of them, e.g. [1, 2], got {folds!r}.")
    values = list(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in values):
        raise ValueError(f"{name} must be a non-empty subset of {list(ESC50_FOLDS)}, got {folds!r}.")
    values = {int(fold) for fold in values}
    if values - set(ESC50_FOLDS):
        raise ValueError(f"{name} must be a non-empty subset of {list(ESC50_FOLDS)}, got {folds!r}.")
    return values


def _split_folds(
    folds: Sequence[int] | None, train_folds: Sequence[int] | None, test_folds: Sequence[int] | None
) -> dict[str, set[int]]:
    if folds is not None and (train_folds is not None or test_folds is not None):
        raise ValueError("Pass either `folds` (one 'test' split) or `train_folds`/`test_folds`, not both.")
    train, test = _folds("train_folds", train_folds), _folds("test_folds", test_folds)
    if train is None and test is None:
        return {"test": _folds("folds", folds) or set(ESC50_FOLDS)}
    train = train if train is not None else set(ESC50_FOLDS) - test
    test = test if test is not None else set(ESC50_FOLDS) - train
    if train & test:
        raise ValueError(f"train_folds and test_folds overlap on folds {sorted(train & test)}.")
    return {"train": train, "test": test}


@strict_keywords()
def build_esc50(
    data_dir: str | os.PathLike,
    *,
    view: str = "captions",
    splits: str | Sequence[str] | None = None,
    on_missing: str = "error",
    verify_files: bool = False,
    folds: Sequence[int] | None = None,
    train_folds: Sequence[int] | None = None,
    test_folds: Sequence[int] | None = None,
    esc10_only: bool = False,
    exclude_esc10: bool = False,
    caption_template: str = DEFAULT_CAPTION_TEMPLATE,
) -> DatasetDict:
    """Build ESC-50 from ``meta/esc50.csv`` and ``audio/``.

    Splits: by default a single ``"test"`` split with every clip (zero-shot evaluation); ``folds`` restricts that
    split to some folds; ``train_folds`` and/or ``test_folds`` give a ``"train"`` and a ``"test"`` split (the one
    not given is the complement in folds 1..5, the official cross-validation protocol).

    Args:
        data_dir (`str` or `os.PathLike`): The ESC-50 root (holding ``meta/`` and ``audio/``).
        view (`str`, defaults to ``"captions"``): ``"captions"`` or ``"items"``.
        splits (`str` or `Sequence[str]`, *optional*): Keep only these of the splits defined by the fold arguments.
        on_missing (`str`, defaults to ``"error"``): ``"error"`` or ``"skip"`` for missing/corrupt audio files.
        verify_files (`bool`, defaults to `False`): Read each file's header with ``soundfile.info`` (slower).
        folds (`Sequence[int]`, *optional*): Folds of the single ``"test"`` split.
        train_folds (`Sequence[int]`, *optional*): Folds of the ``"train"`` split.
        test_folds (`Sequence[int]`, *optional*): Folds of the ``"test"`` split.
        esc10_only (`bool`, defaults to `False`): Keep only the 10 ESC-10 classes (``esc10 == True``).
        exclude_esc10 (`bool`, defaults to `False`): Drop the ESC-10 classes (e.g. to train on the other 40 and
            test zero-shot on ESC-10).
        caption_template (`str`, defaults to ``"the sound of {label}"``): Caption of each clip.

    Returns:
        `DatasetDict`: Columns ``item_id`` (file stem, e.g. ``"1-100032-A-0"``), ``item_index``, ``audio``
        (absolute path), ``caption``/``caption_index`` or ``captions``, ``label`` (``"chirping birds"``),
        ``label_id`` (official target 0..49), ``fold`` (1..5). Attribute ``skipped_files``.

    Raises:
        MissingDataFileError: ``meta/esc50.csv`` or (with ``on_missing="error"``) a clip is missing.
        CorruptDataFileError: A clip's header is unreadable (``verify_files=True``, ``on_missing="error"``).
        ValueError: Bad arguments, or a malformed CSV (missing column, bad fold/target/esc10 value, a target outside
            0..49 or not matching its category, a filename that is absolute or has a ``..`` component).

    Example:

    ```python
    >>> from hf_mltm.data import build_esc50
    >>> esc50 = build_esc50("../shared/data/esc50", esc10_only=True)  # doctest: +SKIP
    >>> esc50["test"][0]["caption"]  # doctest: +SKIP
    'the sound of dog'

    ```
    """
    check_common_args(view, on_missing, verify_files)
    check_bool("esc10_only", esc10_only)
    check_bool("exclude_esc10", exclude_esc10)
    if esc10_only and exclude_esc10:
        raise ValueError("esc10_only and exclude_esc10 exclude each other.")
    split_folds = _split_folds(folds, train_folds, test_folds)
    wanted = select_splits(splits, list(split_folds), "ESC-50")
    root = as_dir(data_dir, "ESC-50")
    csv_path = root / "meta" / "esc50.csv"
    rows = read_csv_rows(csv_path, ESC50_COLUMNS, what="the official ESC-50 meta/esc50.csv")
    items_by_split: dict[str, list[dict]] = {split: [] for split in wanted}
    for row in rows:
        source = f"{csv_path} line {row['_line']}"
        fold, target, esc10 = _parse_row(row, source)
        if (esc10_only and not esc10) or (exclude_esc10 and esc10):
            continue
        label = label_text(row["category"])
        item = {
            "item_id": Path(row["filename"]).stem,
            "audio": str(root / "audio" / row["filename"]),
            "captions": [format_caption(caption_template, label, source)],
            "label": label,
            "label_id": target,
            "fold": fold,
            "_source": source,
        }
        for split in wanted:
            if fold in split_folds[split]:
                items_by_split[split].append(item)
    extra = {"label": Value("string"), "label_id": Value("int64"), "fold": Value("int64")}
    return assemble(
        items_by_split,
        media_key="audio",
        view=view,
        on_missing=on_missing,
        verify_files=verify_files,
        dataset_name="ESC-50",
        extra_features=extra,
    )


def _parse_row(row: dict, source: str) -> tuple[int, int, bool]:
    try:
        fold, target = int(row["fold"]), int(row["target"])
    except ValueError as error:
        raise ValueError(
            f"{source}: 'fold' and 'target' must be integers, got {row['fold']!r} and {row['target']!r}."
        ) from error
    if fold not in ESC50_FOLDS:
        raise ValueError(f"{source}: 'fold' must be in {list(ESC50_FOLDS)}, got {fold}.")
    if not 0 <= target < len(ESC50_CATEGORIES):
        raise ValueError(
            f"{source}: 'target' must be an ESC-50 class index in 0..{len(ESC50_CATEGORIES) - 1}, got {target}."
        )
    esc10 = row["esc10"].strip().lower()
    if esc10 not in ("true", "false"):
        raise ValueError(f"{source}: 'esc10' must be True or False, got {row['esc10']!r}.")
    if not row["filename"] or not row["category"]:
        raise ValueError(f"{source}: 'filename' and 'category' must not be empty.")
    if row["category"] != ESC50_CATEGORIES[target]:
        raise ValueError(
            f"{source}: 'target' {target} is the class {ESC50_CATEGORIES[target]!r}, but 'category' is "
            f"{row['category']!r}; fix one of the two fields (the official table: target t is class t of "
            f"hf_mltm.data.esc50.ESC50_CATEGORIES)."
        )
    check_relative_path(row["filename"], source, "filename")
    return fold, target, esc10 == "true"
