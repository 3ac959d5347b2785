"""The adapter of the OMIT image-text family (`OMITImageTextModel`): images and captions as projected fragments with
masks, each image-caption pair scored by fragment OT; the cost is ``1 - score``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import (
    Encoded,
    ModelAdapter,
    batch_slices,
    eval_mode,
    model_device,
    processor_settings,
    register_adapter,
    stack_rows,
    tower_rows,
)

__all__ = ["OMITAdapter"]


def _image_content_key(value: Any) -> str:
    from PIL import Image

    from hf_mltm.feature_cache import content_key, file_fingerprint

    if isinstance(value, Image.Image):
        return content_key("pil", value.mode, str(value.size), value.tobytes())
    if isinstance(value, Mapping):
        value = value.get("bytes") or value.get("path")  # the source load_image reads: non-empty bytes first
    if not isinstance(value, (str, bytes, Path)) or not value:
        raise ValueError(f"cannot key the image value {str(value)[:80]!r}: expected a path, bytes, a PIL image or a "
                         "dict with 'bytes' or 'path'.")
    return content_key("file", file_fingerprint(value))


class OMITAdapter(ModelAdapter):
    """Adapter of ``model_type="omit_image_text"`` (see `ModelAdapter`)."""

    model_type = "omit_image_text"
    item_column = "image"
    item_name = "image"

    # -- building and training ------------------------------------------------------------------------------------

    def build(self, section: Mapping[str, Any]) -> tuple[nn.Module, Any]:
        """OMIT on precomputed image fragments (grid features, ``data.fragments``) with a text tower (MiniLM)."""
        from transformers import AutoTokenizer

        from hf_mltm.models.omit import (
            OMITImageProcessor,
            OMITImageTextConfig,
            OMITImageTextModel,
            OMITProcessor,
        )
        from hf_mltm.training.model_factory import check_config_keys, load_tower, tokenizer_path

        section = {"text_tower": "minilm", **section}
        config_kwargs = dict(section.get("config") or {})
        check_config_keys(OMITImageTextConfig, config_kwargs)
        text_model = load_tower(section["text_tower"], "text_tower")
        config = OMITImageTextConfig(text_config=text_model.config, **config_kwargs)
        model = OMITImageTextModel(config, text_model=text_model)
        image_processor = OMITImageProcessor(**dict(section.get("image_processor") or {}))
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(section))
        return model, OMITProcessor(image_processor, tokenizer)

    def collator(self, processor: Any, *, fragments: Any = None, **kwargs: Any) -> Callable[[list[dict]], dict]:
        from hf_mltm.data import ImageTextCollator

        tokenizer = getattr(processor, "tokenizer", processor)
        if fragments is not None:
            return ImageTextCollator(tokenizer, fragments=fragments, **kwargs)
        return ImageTextCollator(tokenizer, image_processor=getattr(processor, "image_processor", None), **kwargs)

    def loss(self, model: nn.Module, *, gather: bool = False) -> nn.Module:
        from hf_mltm.models.omit import OMITLoss

        return OMITLoss.from_model(model, gather=gather)

    # -- tower outputs --------------------------------------------------------------------------------------------

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
        """``{"image_fragments": (R, in), "image_fragment_mask": (R,)}`` per row: looked up in the precomputed
        ``fragments`` by ``item_id`` (once per distinct item), or the vision tower's fragments (cached by the image
        file's content)."""
        collate = self.collator(processor, fragments=fragments)
        device = model_device(model, device)
        if fragments is not None:
            item_ids = list(rows["item_id"])
            distinct = list(dict.fromkeys(item_ids))
            found = {}
            for chunk in batch_slices(len(distinct), batch_size):
                batch = collate([{"item_id": item_id, "item_index": 0} for item_id in distinct[chunk]])
                found.update((item_id, {"image_fragments": values[mask], "image_fragment_mask": mask[mask]})
                             for item_id, values, mask in zip(distinct[chunk], batch["image_fragments"],
                                                              batch["image_fragment_mask"], strict=True))
            return [found[item_id] for item_id in item_ids]
        images = list(rows[self.item_column])

        def compute(positions: list[int]) -> list[dict[str, torch.Tensor]]:
            batch = collate([{self.item_column: images[p], "item_index": 0} for p in positions])
            with torch.no_grad():
                tower = model.get_tower_outputs(pixel_values=batch["pixel_values"].to(device))
            return [{"image_fragments": values.float().cpu(), "image_fragment_mask": mask.cpu()}
                    for values, mask in zip(tower["image_fragments"], tower["image_fragment_mask"], strict=True)]

        settings = {"image_processor": processor_settings(processor.image_processor),
                    "drop_vision_cls_token": model.config.drop_vision_cls_token}
        keys = [_image_content_key(image) for image in images]
        with eval_mode(model):
            return tower_rows(keys, compute, cache_dir=cache_dir, tower=model.vision_model, settings=settings,
                              name="image", batch_size=batch_size, progress=progress, writer=writer)

    def text_tower_outputs(self, model: nn.Module, tokens: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """``{"text_hidden_states": (L, hidden), "attention_mask": (L,)}`` per caption, cut to its own length."""
        tower = model.get_tower_outputs(**tokens)
        lengths = tokens["attention_mask"].sum(-1).tolist()
        return [{"text_hidden_states": states[:length].float().cpu(), "attention_mask": mask[:length].cpu()}
                for states, mask, length in zip(tower["text_hidden_states"], tower["attention_mask"], lengths,
                                                strict=True)]

    def text_settings(self, model: nn.Module) -> dict[str, Any]:
        return {}

    def project_items(self, model: nn.Module, rows: list[dict[str, torch.Tensor]], batch_size: int, device) -> Encoded:
        return _project(model, model.project_image_fragments, rows, ("image_fragments", "image_fragment_mask"),
                        batch_size, device)

    def project_texts(self, model: nn.Module, rows: list[dict[str, torch.Tensor]], batch_size: int, device) -> Encoded:
        return _project(model, model.project_text_fragments, rows, ("text_hidden_states", "attention_mask"),
                        batch_size, device)

    def cost_block(self, model: nn.Module, items: Encoded, texts: Encoded, rows: slice) -> torch.Tensor:
        device = model_device(model)
        with torch.no_grad():
            scores = model.pair_scores(items.tensors["fragments"][rows].to(device),
                                       items.tensors["mask"][rows].to(device), texts.tensors["fragments"].to(device),
                                       texts.tensors["mask"].to(device)).value
        return 1 - scores.float().cpu()  # (rows, T)

    def ranking_settings(self, model: nn.Module) -> dict[str, Any]:
        return {"epsilon": float(model.config.ot_epsilon), "normalization": "none"}


def _project(model: nn.Module, head, rows, keys: tuple[str, str], batch_size: int, device) -> Encoded:
    """Projected fragments ``(n, k, d)`` and masks ``(n, k)`` (CPU, padded to the longest row) of tower rows."""
    device = model_device(model, device)
    fragments, masks = [], []
    with eval_mode(model), torch.no_grad():
        for chunk in batch_slices(len(rows), batch_size):
            batch = stack_rows(rows[chunk], keys)
            values, mask = head(batch[keys[0]].to(device), batch[keys[1]].to(device))
            fragments.extend(values.float().cpu())
            masks.extend(mask.cpu())
    stacked = stack_rows([{"fragments": f, "mask": m} for f, m in zip(fragments, masks, strict=True)])
    weights = stacked["mask"][..., None].float()
    pooled = torch.nn.functional.normalize((stacked["fragments"] * weights).sum(1) / weights.sum(1).clamp_min(1), dim=-1)
    return Encoded(stacked, pooled)


register_adapter(OMITAdapter())
