"""The adapter of the m-LTM audio-text family (`MLTMAudioTextModel`): embeddings ``(N, d)`` matched by the model's
ground cost (learned metric, Euclidean, or ``1 - cos`` for the InfoNCE / triplet baselines)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import (
    Encoded,
    ModelAdapter,
    audio_content_key,
    batch_slices,
    eval_mode,
    model_device,
    processor_settings,
    register_adapter,
    tower_rows,
)

__all__ = ["MLTMAdapter"]


class MLTMAdapter(ModelAdapter):
    """Adapter of ``model_type="mltm_audio_text"`` (see `ModelAdapter`)."""

    model_type = "mltm_audio_text"
    item_column = "audio"
    item_name = "audio"

    # -- building and training ------------------------------------------------------------------------------------

    def build(self, section: Mapping[str, Any]) -> tuple[nn.Module, Any]:
        from transformers import AutoTokenizer

        from hf_mltm.models.mltm import (
            MLTMAudioTextConfig,
            MLTMAudioTextModel,
            MLTMFeatureExtractor,
            MLTMProcessor,
        )
        from hf_mltm.training.model_factory import check_config_keys, load_tower, resolve_path, tokenizer_path

        for key in ("audio_tower", "text_tower"):
            if key not in section:
                raise ValueError(f"model.{key} is required for type mltm_audio_text (e.g. audio_tower: aisfx, "
                                 "text_tower: minilm).")
        config_kwargs = dict(section.get("config") or {})
        check_config_keys(MLTMAudioTextConfig, config_kwargs)
        audio_model = load_tower(section["audio_tower"], "audio_tower")
        text_model = load_tower(section["text_tower"], "text_tower")
        config = MLTMAudioTextConfig(audio_config=audio_model.config, text_config=text_model.config, **config_kwargs)
        model = MLTMAudioTextModel(config, audio_model=audio_model, text_model=text_model)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(section))
        extractor_spec = section.get("feature_extractor")
        audio_folder = (Path(resolve_path(section["audio_tower"], "audio_tower"))
                        if isinstance(section["audio_tower"], str) else None)
        if extractor_spec == "aisfx":
            extractor = MLTMFeatureExtractor.aisfx_frontend(max_length_s=None)
        elif isinstance(extractor_spec, dict):
            extractor = MLTMFeatureExtractor(**extractor_spec)
        elif extractor_spec is None and audio_folder is not None and (audio_folder / "preprocessor_config.json").is_file():
            extractor = MLTMFeatureExtractor.from_pretrained(audio_folder)
        elif extractor_spec is None:
            extractor = MLTMFeatureExtractor()
        else:
            raise ValueError(f"model.feature_extractor must be 'aisfx', a mapping or null, got {extractor_spec!r}.")
        return model, MLTMProcessor(extractor, tokenizer)

    def collator(self, processor: Any, *, fragments: Any = None, **kwargs: Any) -> Callable[[list[dict]], dict]:
        from hf_mltm.data import AudioTextCollator

        if fragments is not None:
            raise ValueError("data.fragments (precomputed image fragments) is for image-text models, not "
                             "mltm_audio_text.")
        return AudioTextCollator(processor, **kwargs)

    def loss(self, model: nn.Module, *, gather: bool = False) -> nn.Module:
        from hf_mltm.models.mltm import MLTMLoss

        return MLTMLoss.from_model(model, gather=gather)

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
        """``{"audio_tower_embeds": (audio_hidden,)}`` per clip (pooled audio tower output, before the head), cached
        by the clip file's content."""
        if fragments is not None:
            raise ValueError("fragments (precomputed image fragments) are for image-text models, not mltm_audio_text.")
        collator_kwargs = dict(collator_kwargs or {})
        if collator_kwargs.get("random_crop"):
            raise ValueError("frozen-tower features cannot be cached with data.collator.random_crop: a random crop "
                             "changes the tower output every epoch. Set training.embedding_cache: false, or turn "
                             "random_crop off.")
        audio_column = collator_kwargs.pop("audio_column", self.item_column)
        audio_settings = {key: value for key, value in collator_kwargs.items()
                          if key not in ("text_max_length", "caption_column", "seed")}
        collate = self.collator(processor, **audio_settings)
        audio_values = rows[audio_column]
        device = model_device(model, device)

        def compute(positions: list[int]) -> list[dict[str, torch.Tensor]]:
            batch = collate([{"audio": audio_values[p], "item_index": 0} for p in positions])
            with torch.no_grad():
                embeds = model.get_tower_outputs(input_features=batch["input_features"].to(device),
                                                 audio_attention_mask=batch["audio_attention_mask"].to(device))
            return [{"audio_tower_embeds": row} for row in embeds["audio_tower_embeds"].float().cpu()]

        settings = {"feature_extractor": processor_settings(processor.feature_extractor), "collator": audio_settings}
        keys = [audio_content_key(value, f"Row {row} of the dataset") for row, value in enumerate(audio_values)]
        with eval_mode(model):
            return tower_rows(keys, compute, cache_dir=cache_dir, tower=model.audio_model, settings=settings,
                              name="audio", batch_size=batch_size, progress=progress, writer=writer)

    def text_tower_outputs(self, model: nn.Module, tokens: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """``{"text_tower_embeds": (text_hidden,)}`` per caption (pooled by ``config.text_pooling``)."""
        embeds = model.get_tower_outputs(**tokens)["text_tower_embeds"].float().cpu()
        return [{"text_tower_embeds": row} for row in embeds]

    def text_settings(self, model: nn.Module) -> dict[str, Any]:
        return {"text_pooling": model.config.text_pooling}

    def project_items(self, model: nn.Module, rows: list[dict[str, torch.Tensor]], batch_size: int, device) -> Encoded:
        embeds = _project(model, model.project_audio, rows, "audio_tower_embeds", batch_size, device)
        return Encoded({"embeds": embeds}, embeds)

    def project_texts(self, model: nn.Module, rows: list[dict[str, torch.Tensor]], batch_size: int, device) -> Encoded:
        embeds = _project(model, model.project_text, rows, "text_tower_embeds", batch_size, device)
        return Encoded({"embeds": embeds}, embeds)

    def cost_block(self, model: nn.Module, items: Encoded, texts: Encoded, rows: slice) -> torch.Tensor:
        device = model_device(model)
        with torch.no_grad():
            cost = model.pairwise_cost(items.tensors["embeds"][rows].to(device), texts.tensors["embeds"].to(device))
        return cost.float().cpu()  # (rows, T)

    def ranking_settings(self, model: nn.Module) -> dict[str, Any]:
        return {"epsilon": float(model.config.ot_epsilon), "normalization": model.config.cost_normalization}


def _project(model: nn.Module, head, rows, key: str, batch_size: int, device) -> torch.Tensor:
    """The joint embeddings ``(n, d)`` (CPU float32) of cached tower rows through a head, in eval mode."""
    device = model_device(model, device)
    tower = torch.stack([row[key] for row in rows]) if rows else torch.zeros(0, 0)
    out = []
    with eval_mode(model), torch.no_grad():
        for chunk in batch_slices(len(tower), batch_size):
            out.append(head(tower[chunk].to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.projection_dim)


register_adapter(MLTMAdapter())
