"""Attention set-up shared by the composite (two-tower) models."""

from __future__ import annotations

from transformers import PreTrainedModel

__all__ = ["restore_attention_implementation"]


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
