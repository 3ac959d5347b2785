"""`ModelAdapter`: how the data, training and evaluation code drives one model family, and the family registry.

Everything outside the model families (the trainer, the model factory, evaluation, scripts, and later the Space and
the gallery index) reaches a model through its adapter instead of dispatching on model-type strings or ``hasattr``:

- ``build(section)``: a model and its processor from the ``model`` section of an experiment config;
- ``collator(processor, ...)``: rows of a captions-view dataset -> model inputs (+ ``item_ids``);
- ``loss(model, gather=...)``: the family's loss module (`MLTMLoss`, `OMITLoss`);
- ``tower_rows(...)`` / ``cached_training_data(...)``: frozen-tower outputs per item or caption, through the
  content-keyed `hf_mltm.feature_cache.FeatureCache` when a cache folder is given;
- ``encode_items`` / ``encode_texts``: a gallery and its queries in the family's representation (embeddings, or
  fragments with masks), and ``cost_block``: the cost ``(rows, T)`` of some items against all texts, lower is
  better. Retrieval ranks from these costs (`hf_mltm.evaluation.ranks_from_cost`).

Letters: ``N`` items (clips or images), ``T`` captions, ``d`` joint dimension.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from hf_mltm.tensors import pad_and_stack

__all__ = ["Encoded", "ModelAdapter", "get_adapter", "register_adapter", "registered_model_types"]

_REGISTRY: dict[str, ModelAdapter] = {}


@dataclass
class Encoded:
    """A gallery or a set of captions encoded by a model, in its family's representation.

    Attributes:
        tensors (`dict[str, torch.Tensor]`): per-row tensors with the rows along dim 0 (e.g. ``embeds`` ``(N, d)``,
            or ``fragments`` ``(N, R, d)`` and ``mask`` ``(N, R)``), on the CPU.
        pooled (`torch.Tensor` of shape `(N, d)`): one L2-normalised vector per row (modality gap, plots).
    """

    tensors: dict[str, torch.Tensor]
    pooled: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pooled)

    def rows(self, rows: slice) -> dict[str, torch.Tensor]:
        """The tensors of ``rows``."""
        return {key: value[rows] for key, value in self.tensors.items()}


class ModelAdapter(ABC):
    """The bridge between one model family and hf_mltm's data, training and evaluation code (module docstring)."""

    model_type: ClassVar[str]
    item_column: ClassVar[str]
    """Column of the media in a dataset row (``"audio"`` or ``"image"``)."""
    item_name: ClassVar[str]
    """Name of the items in retrieval directions (``"text_to_<item_name>"``, ``"<item_name>_to_text"``)."""

    # -- building and training ------------------------------------------------------------------------------------

    @abstractmethod
    def build(self, section: Mapping[str, Any]) -> tuple[nn.Module, Any]:
        """``(model, processor)`` from the ``model`` section of an experiment config (`build_model_and_processor`)."""

    @abstractmethod
    def collator(self, processor: Any, *, fragments: Any = None, **kwargs: Any) -> Callable[[list[dict]], dict]:
        """Rows of a captions-view dataset -> model inputs and ``item_ids``; ``kwargs`` are the ``data.collator``
        settings of the config."""

    @abstractmethod
    def loss(self, model: nn.Module, *, gather: bool = False) -> nn.Module:
        """The family's loss module bound to ``model`` (``gather``: global batch across processes)."""

    # -- tower outputs (the family-specific parts) -----------------------------------------------------------

    @abstractmethod
    def item_tower_rows(
        self,
        model: nn.Module,
        processor: Any,
        rows: Any,
        *,
        collator_kwargs: Mapping[str, Any] | None = None,
        fragments: Any = None,
        batch_size: int = 32,
        device: torch.device | None = None,
        progress: bool = True,
        cache_dir: str | Path | None = None,
        writer: str | int | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """The frozen item tower's outputs for each row of ``rows`` (a dataset with the media column), as the
        keyword arguments ``forward`` takes in place of raw media (e.g. ``{"audio_tower_embeds": (h,)}``)."""

    @abstractmethod
    def text_tower_outputs(self, model: nn.Module, tokens: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """The frozen text tower's outputs for a tokenized batch, one dict per caption (CPU tensors), as the keyword
        arguments ``forward`` takes in place of ``input_ids``."""

    @abstractmethod
    def text_settings(self, model: nn.Module) -> dict[str, Any]:
        """Settings outside the text tower that change its cached output (e.g. the pooling)."""

    @abstractmethod
    def project_items(self, model: nn.Module, rows: list[dict[str, torch.Tensor]], batch_size: int, device) -> Encoded:
        """Item tower rows through the model's head(s): the gallery representation used by `cost_block`."""

    @abstractmethod
    def project_texts(self, model: nn.Module, rows: list[dict[str, torch.Tensor]], batch_size: int, device) -> Encoded:
        """Text tower rows through the model's head(s)."""

    # -- shared implementations -----------------------------------------------------------------------------------

    def text_tower_rows(
        self,
        model: nn.Module,
        processor: Any,
        texts: Sequence[str],
        *,
        text_max_length: int | None = None,
        batch_size: int = 32,
        device: torch.device | None = None,
        progress: bool = True,
        cache_dir: str | Path | None = None,
        writer: str | int | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """The frozen text tower's outputs per caption (each distinct caption computed once; cached by its text
        when ``cache_dir`` is given)."""
        tokenizer = getattr(processor, "tokenizer", processor)
        device = model_device(model, device)

        def compute(positions: list[int]) -> list[dict[str, torch.Tensor]]:
            tokens = tokenizer([texts[p] for p in positions], padding=True, truncation=True, max_length=text_max_length,
                               return_tensors="pt")
            inputs = {key: tokens[key].to(device) for key in ("input_ids", "attention_mask", "token_type_ids")
                      if key in tokens}
            with torch.no_grad():
                return self.text_tower_outputs(model, inputs)

        settings = {**tokenizer_settings(tokenizer, text_max_length), **self.text_settings(model)}
        keys = [text_content_key(text) for text in texts]
        with eval_mode(model):
            return tower_rows(keys, compute, cache_dir=cache_dir, tower=model.text_model, settings=settings,
                              name="text", batch_size=batch_size, progress=progress, writer=writer)

    def cached_training_data(
        self,
        model: nn.Module,
        processor: Any,
        rows: Any,
        *,
        cache_dir: str | Path | None,
        collator_kwargs: Mapping[str, Any],
        fragments: Any = None,
        batch_size: int = 32,
        progress: bool = True,
        writer: str | int | None = None,
    ) -> tuple[list[int], Callable[[list[int]], dict[str, torch.Tensor]]]:
        """With frozen towers: the rows' tower outputs (cached by content) and a collate function that batches them
        into the keyword arguments ``model.forward`` takes in place of raw inputs, plus ``item_ids``."""
        collator_kwargs = dict(collator_kwargs)
        caption_column = collator_kwargs.pop("caption_column", "caption")
        text_max_length = collator_kwargs.pop("text_max_length", None)
        shared = {"batch_size": batch_size, "progress": progress, "cache_dir": cache_dir, "writer": writer}
        items = self.item_tower_rows(model, processor, rows, collator_kwargs=collator_kwargs, fragments=fragments,
                                     **shared)
        texts = self.text_tower_rows(model, processor, rows[caption_column], text_max_length=text_max_length, **shared)
        item_ids = torch.tensor(rows["item_index"], dtype=torch.long)

        def collate(indices: list[int]) -> dict[str, torch.Tensor]:
            batch = stack_rows([items[i] for i in indices])
            batch.update(stack_rows([texts[i] for i in indices]))
            batch["item_ids"] = item_ids[list(indices)]
            return batch

        return list(range(len(item_ids))), collate

    def encode_items(
        self,
        model: nn.Module,
        items: Any,
        processor: Any,
        *,
        batch_size: int = 32,
        device: torch.device | None = None,
        progress: bool = True,
        fragments: Any = None,
        cache_dir: str | Path | None = None,
    ) -> Encoded:
        """The items (rows of an items-view dataset) as the model represents them for matching."""
        rows = self.item_tower_rows(model, processor, items, fragments=fragments, batch_size=batch_size,
                                    device=device, progress=progress, cache_dir=cache_dir)
        return self.project_items(model, rows, batch_size, device)

    def encode_texts(
        self,
        model: nn.Module,
        texts: Sequence[str],
        processor: Any,
        *,
        batch_size: int = 32,
        device: torch.device | None = None,
        progress: bool = True,
        cache_dir: str | Path | None = None,
    ) -> Encoded:
        """Captions (or class prompts) as the model represents them for matching."""
        rows = self.text_tower_rows(model, processor, texts, batch_size=batch_size, device=device, progress=progress,
                                    cache_dir=cache_dir)
        return self.project_texts(model, rows, batch_size, device)

    @abstractmethod
    def cost_block(self, model: nn.Module, items: Encoded, texts: Encoded, rows: slice) -> torch.Tensor:
        """Cost ``(len(rows), T)`` of items ``rows`` against all texts, float32 on the CPU, lower is better."""

    @abstractmethod
    def ranking_settings(self, model: nn.Module) -> dict[str, Any]:
        """The transductive-OT ranking defaults of the model: ``{"epsilon": ..., "normalization": ...}``."""

    def cost_matrix(self, model: nn.Module, items: Encoded, texts: Encoded, *, chunk_size: int = 64) -> torch.Tensor:
        """The whole ``(N, T)`` cost, computed ``chunk_size`` items at a time."""
        with torch.no_grad():
            blocks = [self.cost_block(model, items, texts, slice(start, start + chunk_size))
                      for start in range(0, len(items), chunk_size)]
        return torch.cat(blocks) if blocks else torch.zeros(0, len(texts))


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Make ``adapter`` the one used for models of ``adapter.model_type``."""
    _REGISTRY[adapter.model_type] = adapter
    return adapter


def registered_model_types() -> tuple[str, ...]:
    """The model types that have an adapter."""
    return tuple(_REGISTRY)


def get_adapter(model: nn.Module | Any | str) -> ModelAdapter:
    """The adapter of a model, a config or a ``model_type`` string.

    Raises:
        ValueError: no adapter is registered for that model type (the message lists those that are).
    """
    model_type = model if isinstance(model, str) else getattr(getattr(model, "config", model), "model_type", None)
    if model_type not in _REGISTRY:
        from hf_mltm.validation import closest_match

        hint = closest_match(model_type, _REGISTRY) if isinstance(model_type, str) else None
        raise ValueError(
            f"no hf_mltm model family for model_type={model_type!r}"
            + (f" (did you mean {hint!r}?)" if hint else "")
            + f"; known: {sorted(_REGISTRY)}."
        )
    return _REGISTRY[model_type]


def model_device(model: nn.Module, device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter (CPU without parameters)."""
    if device is not None:
        return torch.device(device)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def stack_rows(rows: Sequence[Mapping[str, torch.Tensor]], keys: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Per-row tensor dicts -> one batch per key, padded at the end of every dim (0 / `False`)."""
    keys = list(rows[0]) if keys is None else keys
    return {key: pad_and_stack([row[key] for row in rows]) for key in keys}


def batch_slices(count: int, batch_size: int) -> list[slice]:
    """``[0:b], [b:2b], ...`` covering ``count`` rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    return [slice(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def tower_rows(
    keys: Sequence[str],
    compute: Callable[[list[int]], list[dict[str, torch.Tensor]]],
    *,
    cache_dir: str | Path | None,
    tower: nn.Module,
    settings: Mapping[str, Any],
    name: str,
    batch_size: int,
    progress: bool,
    writer: str | int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """One row of tower outputs per key, each distinct key computed once (``compute(positions)`` gets up to
    ``batch_size`` positions into ``keys`` and returns their rows on the CPU). With ``cache_dir``, rows come from
    and go to the `FeatureCache` of ``tower`` and ``settings`` (a stale row is impossible: see its docstring)."""
    if cache_dir is not None:
        from hf_mltm.feature_cache import FeatureCache

        cache = FeatureCache.for_tower(cache_dir, tower, settings, name=name, writer=writer)
        return cache.get_or_compute(keys, compute, batch_size=batch_size, progress=progress, desc=f"{name} tower")
    first: dict[str, int] = {}
    for position, key in enumerate(keys):
        first.setdefault(key, position)
    positions = list(first.values())
    found: dict[str, dict[str, torch.Tensor]] = {}
    for rows in batch_slices(len(positions), batch_size):
        batch = positions[rows]
        found.update(zip((keys[p] for p in batch), compute(batch), strict=True))
    return [found[key] for key in keys]


def audio_content_key(value: Any, where: str = "the audio value") -> str:
    """Content key of a dataset row's ``audio`` value: the sha256 of the file's bytes (path, bytes or
    ``{"bytes", "path"}``), or of a decoded ``{"array", "sampling_rate"}``'s samples and rate. ``where`` names the
    row in errors."""
    from hf_mltm.feature_cache import content_key, file_fingerprint

    if isinstance(value, Mapping):
        if value.get("array") is not None:
            import numpy as np

            array = np.ascontiguousarray(np.asarray(value["array"]))
            return content_key("array", str(array.dtype), str(array.shape), array.tobytes(),
                               str(value.get("sampling_rate")))
        value = value.get("bytes") or value.get("path")  # the source load_audio reads: non-empty bytes first
    if not isinstance(value, (str, bytes, Path)) or not value:
        raise ValueError(f"{where} has an unusable 'audio' value {str(value)[:80]!r}: expected a file path, bytes, or a "
                         "dict with 'bytes', 'path' or 'array' (keep the column undecoded, Audio(decode=False)).")
    return content_key("file", file_fingerprint(value))


def text_content_key(text: str) -> str:
    """Content key of a caption."""
    from hf_mltm.feature_cache import content_key

    return content_key("text", text)


VOLATILE_PROCESSOR_KEYS = ("auto_map", "processor_class", "feature_extractor_type", "image_processor_type")


def processor_settings(processor: Any) -> dict[str, Any]:
    """A feature extractor's or image processor's ``to_dict()`` without the entries that name classes or code
    locations (a processor loaded from a saved folder computes the same as the one built in code)."""
    return {key: value for key, value in processor.to_dict().items() if key not in VOLATILE_PROCESSOR_KEYS}


def tokenizer_settings(tokenizer: Any, max_length: int | None) -> dict[str, Any]:
    """What of a tokenizer changes a text tower's output: its full definition (vocabulary, normalisation) as a
    digest, its class, and the length limit."""
    import json

    from hf_mltm.feature_cache import content_key

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # to_str() also records the truncation/padding state, which the first call changes: leave it out, or a
        # process's first and later calls would use different cache folders.
        state = {key: value for key, value in json.loads(backend.to_str()).items()
                 if key not in ("truncation", "padding")}
        definition = json.dumps(state, sort_keys=True)
    else:
        definition = repr(sorted(tokenizer.get_vocab().items()))
    return {"tokenizer": type(tokenizer).__name__, "definition": content_key(definition),
            "model_max_length": getattr(tokenizer, "model_max_length", None), "max_length": max_length}


class eval_mode:
    """Run a model in eval mode inside the block, restoring its training flag after."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)
