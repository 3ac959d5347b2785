"""The evidence suite's data: real datasets, their splits, and frozen-tower outputs computed once.

Every clip, image and caption goes through its frozen tower exactly once, through the content-keyed
`hf_mltm.feature_cache.FeatureCache` in one folder for the whole suite (``cache_dir``): the family adapters'
``item_tower_rows`` / ``text_tower_rows`` for audio and text, `hf_mltm.data.extract_grid_features` for the
EfficientNet-Lite0 grid fragments. A second run of the suite reads everything from that folder. Runs then train
only heads on these rows (`hf_mltm.experiments.training`).

Rows are in the adapters' format (dicts of CPU float32 tensors): ``{"audio_tower_embeds": (512,)}``,
``{"text_tower_embeds": (384,)}`` for pooled vectors (`MLTMAudioTextModel`), ``{"image_fragments": (49, 1280),
"image_fragment_mask": (49,)}`` and ``{"text_hidden_states": (L, 384), "attention_mask": (L,)}`` for OMIT.

Audio zero-shot protocol (Table 3 of the m-LTM paper on our data): train on template captions of the ESC-50 fold-1
classes outside ESC-10, the TAU scenes and the UrbanSound8K classes, minus every training class whose name shares
a word with an ESC-10 class (`overlapping_classes`); hold out a seeded fraction of each training class's clips for
validation (zero-shot over the training classes' prompts); test zero-shot on the ESC-10 clips.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "AudioZeroShotData",
    "ImageTextData",
    "PairSet",
    "RetrievalSplit",
    "ZeroShotSplit",
    "audio_zero_shot_data",
    "image_text_data",
    "overlapping_classes",
]

TRAIN_TEMPLATE = "the sound of {label}"
PROMPT_TEMPLATE = "This is a sound of {label}."
AUDIO_TOWERS = {"audio_tower": "aisfx", "text_tower": "minilm", "text_pooling": "mean"}
Row = dict[str, torch.Tensor]


@dataclass
class PairSet:
    """Training pairs: row ``i`` of ``item_rows`` and ``text_rows`` is a (possibly noisy) pair.

    Attributes:
        item_rows (`list[dict]`), text_rows (`list[dict]`): the ``n`` pairs' cached tower outputs.
        item_ids (`torch.LongTensor` of shape `(n,)`): the item (clip, image) of each pair.
        caption_ids (`torch.LongTensor` of shape `(n,)`): the distinct caption text of each pair (equal for the
            template captions of one class).
        captions (`list[str]`): the ``n`` caption texts.
        is_noisy (`torch.BoolTensor` of shape `(n,)`): pairs whose caption was replaced (never shown to training).
    """

    item_rows: list[Row]
    text_rows: list[Row]
    item_ids: torch.Tensor
    caption_ids: torch.Tensor
    captions: list[str]
    is_noisy: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.item_rows)

    def positive_ids(self, positives: str) -> torch.Tensor:
        """The ``item_ids`` the loss gets: ``"item"`` (rows of one clip or image are positives, as the trainer
        does) or ``"caption"`` (rows sharing a caption text are positives too)."""
        if positives == "item":
            return self.item_ids
        if positives == "caption":
            # Two rows are positives when they share the item or the caption: merge both into one id per group.
            parent = list(range(len(self)))

            def find(i: int) -> int:
                while parent[i] != i:
                    parent[i] = parent[parent[i]]
                    i = parent[i]
                return i

            for ids in (self.item_ids.tolist(), self.caption_ids.tolist()):
                first: dict[int, int] = {}
                for row, key in enumerate(ids):
                    if key in first:
                        parent[find(row)] = find(first[key])
                    else:
                        first[key] = row
            return torch.tensor([find(row) for row in range(len(self))], dtype=torch.long)
        raise ValueError(f"positives must be 'item' or 'caption', got {positives!r}.")


@dataclass
class ZeroShotSplit:
    """Items classified zero-shot by ranking class prompts.

    Attributes:
        item_rows (`list[dict]`): ``N`` items' tower outputs.
        prompt_rows (`list[dict]`): ``C`` class prompts' tower outputs.
        labels (`list[str]`): the ``C`` class names; prompts (`list[str]`): their prompts.
        item_label (`torch.LongTensor` of shape `(N,)`): the class of each item.
        item_ids (`list[str]`): ``"<source>/<item_id>"`` of each item.
    """

    item_rows: list[Row]
    prompt_rows: list[Row]
    labels: list[str]
    prompts: list[str]
    item_label: torch.Tensor
    item_ids: list[str]


@dataclass
class RetrievalSplit:
    """A retrieval gallery: ``N`` items, ``T`` captions and the item of each caption (``text_item``, ``(T,)``)."""

    item_rows: list[Row]
    text_rows: list[Row]
    text_item: torch.Tensor
    item_ids: list[str]
    captions: list[str]


@dataclass
class AudioZeroShotData:
    """Splits and feature widths of the audio zero-shot protocol; ``description`` says exactly what is in them."""

    train: PairSet
    validation: ZeroShotSplit
    test: ZeroShotSplit
    item_hidden: int
    text_hidden: int
    description: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageTextData:
    """Flickr8k (Karpathy split) in one representation (``"pooled"`` vectors or ``"fragments"``).

    ``train`` holds every training caption as a pair; `pairs_with_captions` rebuilds it with other caption texts
    (noisy correspondence), reusing the cached rows of the captions (the noisy ones are other training captions).
    """

    train: PairSet
    validation: RetrievalSplit
    test: RetrievalSplit
    item_hidden: int
    text_hidden: int
    representation: str
    text_row_of: dict[str, Row]
    train_captions: Any  # the training split in the captions view (`datasets.Dataset`)
    description: dict[str, Any] = field(default_factory=dict)

    def pairs_with_captions(self, captions: Sequence[str], is_noisy: Sequence[bool] | None = None) -> PairSet:
        """The training pairs with caption ``i`` replaced by ``captions[i]`` (same items, same order)."""
        if len(captions) != len(self.train):
            raise ValueError(f"captions must give one caption per training pair ({len(self.train)}), got "
                             f"{len(captions)}.")
        missing = [caption for caption in captions if caption not in self.text_row_of]
        if missing:
            raise ValueError(f"{len(missing)} captions have no cached text rows (e.g. {missing[0]!r}); noisy "
                             "captions must be captions of the same dataset.")
        caption_ids = _text_ids(captions)
        return PairSet(self.train.item_rows, [self.text_row_of[caption] for caption in captions],
                       self.train.item_ids, caption_ids, list(captions),
                       None if is_noisy is None else torch.tensor(list(is_noisy), dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------------------
# Class-name overlap


def _words(name: str) -> set[str]:
    words = set()
    for word in re.split(r"[\s_\-]+", name.lower()):
        if not word:
            continue
        # A plural 's' (waves/wave, drops/drop) does not make another word; short words are kept as they are.
        words.add(word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word)
    return words


def overlapping_classes(candidates: Iterable[str], reserved: Iterable[str]) -> dict[str, str]:
    """Candidate class names that share a word with a reserved (held-out) class name.

    Words are the lower-case parts of a name split at spaces, underscores and hyphens, with a plural ``s``
    removed (``"sea waves"`` has the words ``sea``, ``wave``). ``"dog bark"`` overlaps ``"dog"``; ``"clock alarm"``
    overlaps ``"clock tick"``; ``"fireworks"`` does not overlap ``"crackling fire"`` (whole words only).

    Returns:
        `dict[str, str]`: each overlapping candidate -> the first reserved class (sorted) it overlaps.

    Example:
        >>> overlapping_classes(["dog bark", "siren", "clock alarm"], ["dog", "clock tick"])
        {'dog bark': 'dog', 'clock alarm': 'clock tick'}
    """
    reserved = sorted(set(reserved))
    found = {}
    for candidate in candidates:
        for name in reserved:
            if _words(candidate) & _words(name):
                found[candidate] = name
                break
    return found


def _text_ids(texts: Sequence[str]) -> torch.Tensor:
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(text, len(index)) for text in texts], dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------------
# Audio zero-shot


def _audio_sources(root: Path, template: str) -> tuple[list[tuple[str, Any]], Any]:
    from hf_mltm.data import build_esc50, build_tau22_scenes, build_urbansound8k

    for name in ("esc50", "tau22_scenes", "urbansound8k"):
        if not (root / name).is_dir():
            raise ValueError(f"data_root {root} has no {name}/ folder; point --data_root (or $HF_MLTM_DATA) at the "
                             "shared data folder (../shared/data).")
    sources = [
        ("esc50", build_esc50(root / "esc50", view="items", exclude_esc10=True, caption_template=template)["test"]),
        ("tau22_scenes", build_tau22_scenes(root / "tau22_scenes", view="items", caption_template=template)["train"]),
        ("urbansound8k", build_urbansound8k(root / "urbansound8k", view="items", caption_template=template)["train"]),
    ]
    test = build_esc50(root / "esc50", view="items", esc10_only=True)["test"]
    return sources, test


def _audio_towers(towers: Mapping[str, Any]) -> tuple[torch.nn.Module, Any]:
    from hf_mltm.adapters import get_adapter

    towers = {**AUDIO_TOWERS, **dict(towers)}
    section = {"type": "mltm_audio_text", "audio_tower": towers["audio_tower"], "text_tower": towers["text_tower"],
               # the heads of this model are never used: it only fills the feature cache
               "config": {"text_pooling": towers["text_pooling"], "projection_hidden_size": 8, "projection_dim": 8}}
    model, processor = get_adapter("mltm_audio_text").build(section)
    return model.eval(), processor


def audio_zero_shot_data(
    data_root: str | Path,
    cache_dir: str | Path,
    *,
    val_fraction: float = 0.25,
    split_seed: int = 0,
    val_split: str = "clips",
    train_template: str = TRAIN_TEMPLATE,
    prompt_template: str = PROMPT_TEMPLATE,
    towers: Mapping[str, Any] | None = None,
    max_clips_per_class: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> AudioZeroShotData:
    """The audio zero-shot splits with their frozen-tower outputs (see the module docstring).

    Args:
        data_root (`str` or `Path`): the shared data folder (``esc50/``, ``tau22_scenes/``, ``urbansound8k/``).
        cache_dir (`str` or `Path`): the suite's feature-cache folder.
        val_fraction (`float`, defaults to 0.25): fraction held out for validation: of each training class's clips
            (``val_split="clips"``; rounded, at least 1 and at most all but one) or of the training classes
            (``val_split="classes"``).
        split_seed (`int`, defaults to 0): seed of the held-out draw (the same split for every run and seed).
        val_split (`str`, defaults to `"clips"`): ``"clips"`` (validation: held-out clips of the training classes,
            ranked over all training prompts) or ``"classes"`` (validation: all clips of held-out classes, ranked
            over those classes' prompts, a zero-shot validation like the test; those classes are not trained on).
        train_template (`str`): caption of a training clip; prompt_template (`str`): zero-shot prompt of a class
            (validation and test).
        towers (`Mapping`, *optional*): ``audio_tower``, ``text_tower``, ``text_pooling`` (default aisfx, MiniLM,
            mean pooling).
        max_clips_per_class (`int`, *optional*): keep only the first clips (by source and id) of every class, in
            training and test, before any tower runs (``--quick``; at least 2 for the held-out split).
        batch_size (`int`, defaults to 16): clips per tower call when filling the cache.
        progress (`bool`, defaults to `False`): progress bars while filling the cache.

    Returns:
        `AudioZeroShotData`; ``description`` lists the classes per source, the dropped classes with the ESC-10
        class each overlaps, and the clip counts per split.

    Raises:
        ValueError: a missing data folder, a ``val_fraction`` outside (0, 1), or a class with a single clip.
    """
    from datasets import Dataset

    from hf_mltm.adapters import get_adapter

    if isinstance(val_fraction, bool) or not 0 < float(val_fraction) < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}.")
    if val_split not in ("clips", "classes"):
        raise ValueError(f"val_split must be 'clips' or 'classes', got {val_split!r}.")
    if max_clips_per_class is not None and (isinstance(max_clips_per_class, bool) or max_clips_per_class < 2):
        raise ValueError(f"max_clips_per_class must be an integer >= 2 (one training and one validation clip) or "
                         f"None, got {max_clips_per_class!r}.")
    root = Path(data_root)
    sources, test = _audio_sources(root, train_template)
    test_labels = sorted(set(test["label"]))
    candidates = sorted({label for _, dataset in sources for label in dataset["label"]})
    dropped = overlapping_classes(candidates, test_labels)
    by_label: dict[str, list[tuple[str, str, str]]] = {}  # label -> [(source/item_id, audio path, caption)]
    classes_per_source: dict[str, list[str]] = {}
    for name, dataset in sources:
        classes_per_source[name] = sorted(set(dataset["label"]) - set(dropped))
        for item_id, audio, label, captions in zip(dataset["item_id"], dataset["audio"], dataset["label"],
                                                    dataset["captions"], strict=True):
            if label not in dropped:
                by_label.setdefault(label, []).append((f"{name}/{item_id}", audio, captions[0]))
    rng = np.random.default_rng(split_seed)
    train_items, val_items = [], []
    labels = sorted(by_label)
    held_classes: set[str] = set()
    if val_split == "classes":
        count = min(max(2, round(val_fraction * len(labels))), len(labels) - 2)
        held_classes = {labels[i] for i in rng.choice(len(labels), size=count, replace=False).tolist()}
    for label in labels:
        clips = sorted(by_label[label])[:max_clips_per_class]
        if val_split == "classes":
            (val_items if label in held_classes else train_items).extend((label, *clip) for clip in clips)
            continue
        if len(clips) < 2:
            raise ValueError(f"training class {label!r} has {len(clips)} clip: it cannot be split into training "
                             "and validation clips.")
        count = min(max(1, round(val_fraction * len(clips))), len(clips) - 1)
        held = set(rng.choice(len(clips), size=count, replace=False).tolist())
        for position, clip in enumerate(clips):
            (val_items if position in held else train_items).append((label, *clip))
    test_items, per_class = [], {}
    for item_id, audio, label in sorted(zip(test["item_id"], test["audio"], test["label"], strict=True)):
        per_class[label] = per_class.get(label, 0) + 1
        if max_clips_per_class is None or per_class[label] <= max_clips_per_class:
            test_items.append((label, f"esc50/{item_id}", audio, None))

    model, processor = _audio_towers(towers or {})
    adapter = get_adapter(model)
    everything = train_items + val_items + test_items
    audio_rows = adapter.item_tower_rows(model, processor, Dataset.from_dict({"audio": [it[2] for it in everything]}),
                                         batch_size=batch_size, progress=progress, cache_dir=cache_dir)
    train_labels = sorted(set(labels) - held_classes)
    val_labels = sorted(held_classes) if val_split == "classes" else train_labels
    prompts = {label: prompt_template.format(label=label) for label in labels + test_labels}
    captions = [item[3] for item in train_items]
    texts = list(dict.fromkeys(captions + list(prompts.values())))
    text_rows = dict(zip(texts, adapter.text_tower_rows(model, processor, texts, batch_size=64, progress=progress,
                                                          cache_dir=cache_dir), strict=True))
    n_train, n_val = len(train_items), len(val_items)
    train = PairSet(audio_rows[:n_train], [text_rows[caption] for caption in captions],
                    torch.arange(n_train), _text_ids(captions), captions)

    def zero_shot(items, rows, labels) -> ZeroShotSplit:
        position = {label: index for index, label in enumerate(labels)}
        return ZeroShotSplit(rows, [text_rows[prompts[label]] for label in labels], labels,
                             [prompts[label] for label in labels],
                             torch.tensor([position[item[0]] for item in items], dtype=torch.long),
                             [item[1] for item in items])

    validation = zero_shot(val_items, audio_rows[n_train:n_train + n_val], val_labels)
    test_split = zero_shot(test_items, audio_rows[n_train + n_val:], test_labels)
    description = {
        "train_classes": {name: [label for label in classes if label not in held_classes]
                          for name, classes in classes_per_source.items()},
        "num_train_classes": len(train_labels),
        "val_split": val_split,
        "validation_classes": val_labels if val_split == "classes" else "held-out clips of every training class",
        "dropped_classes": [{"class": label, "overlaps_esc10_class": esc10,
                             "source": [name for name, dataset in sources if label in set(dataset["label"])]}
                            for label, esc10 in sorted(dropped.items())],
        "test_classes": test_labels,
        "num_clips": {"train": n_train, "validation": n_val, "test": len(test_items)},
        "train_template": train_template,
        "prompt_template": prompt_template,
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "max_clips_per_class": max_clips_per_class,
        "towers": {**AUDIO_TOWERS, **dict(towers or {})},
    }
    return AudioZeroShotData(train, validation, test_split, model.config.audio_config.hidden_size,
                             model.config.text_config.hidden_size, description)


# ---------------------------------------------------------------------------------------------------------------
# Image-text (Flickr8k)


def _flickr_towers(representation: str) -> tuple[torch.nn.Module, Any]:
    """A model holding the offline MiniLM text tower, only to fill the text rows of the cache."""
    from transformers import AutoTokenizer

    from hf_mltm.training.model_factory import load_tower, minilm_dir

    from .models import CachedFeatureConfig, CachedFeatureTower

    text_model = load_tower("minilm", "text_tower").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    if representation == "pooled":
        from hf_mltm.models.mltm import MLTMAudioTextConfig, MLTMAudioTextModel

        placeholder = CachedFeatureTower(CachedFeatureConfig(hidden_size=1280))
        config = MLTMAudioTextConfig(audio_config=placeholder.config, text_config=text_model.config,
                                     text_pooling="mean", projection_hidden_size=8, projection_dim=8)
        return MLTMAudioTextModel(config, audio_model=placeholder, text_model=text_model).eval(), tokenizer
    from hf_mltm.models.omit import OMITImageTextConfig, OMITImageTextModel

    config = OMITImageTextConfig(vision_config=None, text_config=text_model.config, image_fragment_dim=1280,
                                 embed_dim=8, image_projection_hidden_size=8)
    return OMITImageTextModel(config, text_model=text_model).eval(), tokenizer


def _grid_fragments(cache_dir: Path, items: Sequence[tuple[str, str]], progress: bool) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 grid fragments ``(49, 1280)`` (float32) per item id, through the feature cache."""
    from hf_mltm.data import extract_grid_features

    dataset = extract_grid_features([path for _, path in items], [item_id for item_id, _ in items], cache_dir,
                                    progress=progress)
    dataset = dataset.with_format("torch")
    found = {}
    for start in range(0, len(dataset), 256):
        chunk = dataset[start:start + 256]
        found.update(zip(chunk["item_id"], chunk["fragments"].float(), strict=True))
    return found


def image_text_data(
    data_root: str | Path,
    cache_dir: str | Path,
    *,
    representation: str = "pooled",
    dataset_dir: str = "flickr8k_1k",
    max_images: Mapping[str, int] | None = None,
    progress: bool = False,
) -> ImageTextData:
    """Flickr8k (800 / 100 / 100 Karpathy split of ``flickr8k_1k``) with cached tower outputs.

    Args:
        data_root (`str` or `Path`): the shared data folder.
        cache_dir (`str` or `Path`): the suite's feature-cache folder (the grid fragments are extracted into it).
        representation (`str`, defaults to `"pooled"`): ``"pooled"`` (the mean of the 49 EfficientNet-Lite0 grid
            fragments, 1280-d, and the mean-pooled MiniLM sentence vector, 384-d, for `MLTMAudioTextModel`) or
            ``"fragments"`` (the 49 grid fragments and the MiniLM token states, for `OMITImageTextModel`).
        dataset_dir (`str`, defaults to `"flickr8k_1k"`): folder of the dataset under ``data_root``.
        max_images (`Mapping[str, int]`, *optional*): keep only the first images of some splits (``{"train": 64,
            "validation": 20, "test": 20}``), before any tower runs (``--quick``).
        progress (`bool`, defaults to `False`): progress bars while filling the cache.

    Raises:
        ValueError: an unknown representation or a missing dataset folder.
    """
    from hf_mltm.adapters import get_adapter
    from hf_mltm.data import build_flickr8k, items_to_captions

    if representation not in ("pooled", "fragments"):
        raise ValueError(f"representation must be 'pooled' or 'fragments', got {representation!r}.")
    root = Path(data_root) / dataset_dir
    if not root.is_dir():
        raise ValueError(f"no {dataset_dir}/ folder under data_root {data_root}; point --data_root at the shared data "
                         "folder (../shared/data).")
    splits = build_flickr8k(root, view="items")
    for name, limit in dict(max_images or {}).items():
        if name not in splits or isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
            raise ValueError(f"max_images must map split names {sorted(splits)} to integers >= 2, got "
                             f"{dict(max_images)!r}.")
        splits[name] = splits[name].select(range(min(limit, len(splits[name]))))
    images = [(item_id, path) for name in ("train", "validation", "test")
              for item_id, path in zip(splits[name]["item_id"], splits[name]["image"], strict=True)]
    fragments = _grid_fragments(Path(cache_dir), images, progress)
    if representation == "pooled":
        image_row = {item_id: {"audio_tower_embeds": grid.mean(0)} for item_id, grid in fragments.items()}
    else:
        image_row = {item_id: {"image_fragments": grid, "image_fragment_mask": torch.ones(len(grid), dtype=torch.bool)}
                     for item_id, grid in fragments.items()}
    del fragments
    model, tokenizer = _flickr_towers(representation)
    adapter = get_adapter(model)
    texts = list(dict.fromkeys(caption for name in ("train", "validation", "test")
                               for captions in splits[name]["captions"] for caption in captions))
    text_rows = adapter.text_tower_rows(model, tokenizer, texts, batch_size=64, progress=progress, cache_dir=cache_dir)
    if representation == "pooled":
        text_rows = [{"text_tower_embeds": row["text_tower_embeds"]} for row in text_rows]
    text_row_of = dict(zip(texts, text_rows, strict=True))

    train_view = items_to_captions(splits["train"])
    item_index = {item_id: index for index, item_id in enumerate(splits["train"]["item_id"])}
    captions = list(train_view["caption"])
    train = PairSet([image_row[item_id] for item_id in train_view["item_id"]],
                    [text_row_of[caption] for caption in captions],
                    torch.tensor([item_index[item_id] for item_id in train_view["item_id"]], dtype=torch.long),
                    _text_ids(captions), captions)

    def gallery(name: str) -> RetrievalSplit:
        split = splits[name]
        owners = [row for row, group in enumerate(split["captions"]) for _ in group]
        flat = [caption for group in split["captions"] for caption in group]
        return RetrievalSplit([image_row[item_id] for item_id in split["item_id"]],
                              [text_row_of[caption] for caption in flat], torch.tensor(owners, dtype=torch.long),
                              list(split["item_id"]), flat)

    item_hidden = 1280
    text_hidden = model.config.text_config.hidden_size
    description = {
        "dataset": dataset_dir,
        "num_images": {name: len(splits[name]) for name in ("train", "validation", "test")},
        "num_training_pairs": len(train),
        "representation": representation,
        "max_images": dict(max_images or {}),
        "image_tower": "efficientnet_lite0 (ImageNet), 7x7x1280 last feature map"
                       + (", mean of the 49 cells" if representation == "pooled" else ", 49 grid fragments"),
        "text_tower": "all-MiniLM-L6-v2" + (", mean pooling" if representation == "pooled" else ", token states"),
    }
    return ImageTextData(train, gallery("validation"), gallery("test"), item_hidden, text_hidden, representation,
                         text_row_of, train_view, description)
