"""Models of the evidence suite: the package's model families with *cached-feature towers* in place of the towers.

With frozen towers, a run only ever feeds the model its towers' cached outputs (``audio_tower_embeds`` /
``text_tower_embeds`` for `MLTMAudioTextModel`, ``image_fragments`` / ``text_hidden_states`` for
`OMITImageTextModel`), so the towers' weights are never needed after the feature cache is filled. Each run builds
the family's model around `CachedFeatureTower` placeholders that only declare the width of the cached features;
the heads, the learned metric, the temperature and the loss module are the family's own. Building a model is then
a few milliseconds, and no run can touch (or re-initialise) the real towers.

The same placeholder lets the m-LTM family train on pooled image vectors (EfficientNet-Lite0's mean grid fragment,
1280-d) in its item slot: the family's maths does not depend on the modality, only on the vector width.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

__all__ = ["CachedFeatureConfig", "CachedFeatureTower", "build_mltm_model", "build_omit_model", "head_parameters"]

TOWER_PREFIXES = ("audio_model.", "text_model.", "vision_model.")


@strict
class CachedFeatureConfig(PreTrainedConfig):
    r"""Configuration of a `CachedFeatureTower`.

    Args:
        hidden_size (`int`, defaults to 8): width of the cached tower output the model's head projects from
            (512 for aisfx, 384 for MiniLM, 1280 for EfficientNet-Lite0).
        source (`str`, defaults to `""`): what produced the cached features (documentation only).
    """

    model_type = "hf_mltm_cached_features"
    hidden_size: int = 8
    source: str = ""

    def __post_init__(self, **kwargs):
        if isinstance(self.hidden_size, bool) or self.hidden_size < 1:
            raise ValueError(f"hidden_size must be an integer >= 1 (the cached feature width), got {self.hidden_size}.")
        super().__post_init__(**kwargs)


class CachedFeatureTower(PreTrainedModel):
    """A tower without weights standing in for a frozen tower whose outputs are cached.

    ``forward(input_features)`` returns the given ``(n, hidden_size)`` features as ``pooler_output``, so even a
    call through the tower path gives the cached vector unchanged.
    """

    config_class = CachedFeatureConfig
    _supports_sdpa = True

    def __init__(self, config: CachedFeatureConfig) -> None:
        super().__init__(config)
        self.post_init()

    def forward(self, input_features: torch.Tensor | None = None, **kwargs: Any) -> BaseModelOutputWithPooling:
        if input_features is None or input_features.shape[-1] != self.config.hidden_size:
            raise ValueError(f"CachedFeatureTower expects input_features (n, {self.config.hidden_size}), got "
                             f"{None if input_features is None else tuple(input_features.shape)}.")
        return BaseModelOutputWithPooling(pooler_output=input_features)


def _tower(hidden_size: int, source: str) -> CachedFeatureTower:
    return CachedFeatureTower(CachedFeatureConfig(hidden_size=int(hidden_size), source=source))


def build_mltm_model(config: Mapping[str, Any], item_hidden: int, text_hidden: int, *, item_source: str = "",
                     text_source: str = "") -> torch.nn.Module:
    """An `MLTMAudioTextModel` with ``config`` (`MLTMAudioTextConfig` fields) on cached tower outputs.

    Args:
        config (`Mapping`): `MLTMAudioTextConfig` fields (``loss_type``, ``metric_type``, ``ot_epsilon``, ...).
        item_hidden (`int`), text_hidden (`int`): widths of the cached item (audio or pooled image) and text tower
            outputs.
        item_source, text_source (`str`): what produced them (kept in the tower configs).

    Raises:
        ValueError: an unknown config key (named, with the closest valid one) or a value the config rejects.
    """
    from hf_mltm.models.mltm import MLTMAudioTextConfig, MLTMAudioTextModel
    from hf_mltm.training.model_factory import check_config_keys

    config = dict(config)
    check_config_keys(MLTMAudioTextConfig, config)
    audio, text = _tower(item_hidden, item_source), _tower(text_hidden, text_source)
    model_config = MLTMAudioTextConfig(audio_config=audio.config, text_config=text.config, **config)
    return MLTMAudioTextModel(model_config, audio_model=audio, text_model=text)


def build_omit_model(config: Mapping[str, Any], fragment_dim: int, text_hidden: int, *,
                     text_source: str = "") -> torch.nn.Module:
    """An `OMITImageTextModel` (no vision tower) on precomputed image fragments of width ``fragment_dim`` and
    cached text-tower token states of width ``text_hidden``; ``config`` holds `OMITImageTextConfig` fields."""
    from hf_mltm.models.omit import OMITImageTextConfig, OMITImageTextModel
    from hf_mltm.training.model_factory import check_config_keys

    config = dict(config)
    check_config_keys(OMITImageTextConfig, config)
    text = _tower(text_hidden, text_source)
    model_config = OMITImageTextConfig(vision_config=None, text_config=text.config, image_fragment_dim=fragment_dim,
                                       **config)
    return OMITImageTextModel(model_config, text_model=text)


def head_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable parameters outside the towers: projection heads, metric, and the temperature when it is
    learnable (a fixed temperature has ``requires_grad=False`` and is left out)."""
    return [parameter for name, parameter in model.named_parameters()
            if parameter.requires_grad and not name.startswith(TOWER_PREFIXES)]
