"""Tower set-up shared by the composite (two-tower) models: building text towers without an unused pooler, and
restoring the attention implementation of ready-made towers."""

from __future__ import annotations

from typing import Any

from transformers import AutoModel, PreTrainedConfig, PreTrainedModel

__all__ = ["restore_attention_implementation", "text_model_from_config", "text_model_from_pretrained"]


def text_model_from_config(text_config: PreTrainedConfig) -> PreTrainedModel:
    """A text tower without its pooler when it has one: both families pool (or use token states) themselves, an
    unused pooler breaks DDP, and a saved model without it would reload with a "newly initialized" pooler."""
    try:
        return AutoModel.from_config(text_config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(text_config)


def text_model_from_pretrained(path: str, **kwargs: Any) -> PreTrainedModel:
    """`AutoModel.from_pretrained` for a text tower, without its pooler when it has one."""
    try:
        return AutoModel.from_pretrained(path, add_pooling_layer=False, **kwargs)
    except TypeError:
        return AutoModel.from_pretrained(path, **kwargs)


def restore_attention_implementation(*towers: PreTrainedModel | None) -> None:
    """Give ready-made towers their default attention implementation back (SDPA where supported, else eager).

    A composite transformers config resets the attention implementation of its sub-configs to `None` when it is
    built. A tower passed to a composite model shares that sub-config, so it ends up with `None`. BERT-style towers
    then build no padding mask, and padded captions attend to their padding. Towers the composite model builds
    itself (`from_config`, `from_pretrained`) are resolved by transformers and are left as they are.
    """
    for tower in towers:
        if tower is not None and tower.config._attn_implementation is None:
            tower.set_attn_implementation("sdpa" if tower._supports_sdpa else "eager")
