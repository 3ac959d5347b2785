"""The one vocabulary both model families share for losses and their options, with the old names as aliases.

Both `MLTMAudioTextConfig` and `OMITImageTextConfig` name their training losses and loss options with the words
below. The names used before version 0.2 are accepted on load (a saved ``config.json`` keeps working) and mapped to
the new ones with a `FutureWarning` that names the replacement:

=========================  ============================  =========================================================
old name                   new name                      meaning
=========================  ============================  =========================================================
``contrastive``            ``infonce``                   symmetric InfoNCE (CLIP) loss
``contrastive_entropy``    ``infonce_entropy``           InfoNCE minus an entropy bonus
``vse_hinge``              ``triplet``                   VSE / VSE++ hinge (hardest negative after a warm-up)
``contrastive_temperature``  ``temperature``             InfoNCE temperature and logit scale
``vse_margin``             ``triplet_margin``            hinge margin
``vse_warmup_steps``       ``triplet_warmup_steps``      optimizer steps that sum the hinge over all negatives
``transport_plans``        ``transport_plan``            output field (and ``output_transport_plan`` argument)
=========================  ============================  =========================================================
"""

from __future__ import annotations

import warnings
from collections.abc import MutableMapping
from typing import Any

__all__ = [
    "CONFIG_KEY_ALIASES",
    "LOSS_TYPES",
    "LOSS_TYPE_ALIASES",
    "OT_LOSS_TYPES",
    "canonical_loss_type",
    "pop_config_aliases",
    "REMOVED_MODEL_MEMBERS",
    "reject_removed_arguments",
    "removed_member_error",
]

LOSS_TYPES = ("mltm", "mltm_partial", "infonce", "infonce_entropy", "triplet")
"""Every training loss either family offers (a family may support a subset)."""
OT_LOSS_TYPES = ("mltm", "mltm_partial")
LOSS_TYPE_ALIASES = {"contrastive": "infonce", "contrastive_entropy": "infonce_entropy", "vse_hinge": "triplet"}
CONFIG_KEY_ALIASES = {
    "contrastive_temperature": "temperature",
    "vse_margin": "triplet_margin",
    "vse_warmup_steps": "triplet_warmup_steps",
}


def canonical_loss_type(value: Any) -> Any:
    """The current name of a loss type: an old name is mapped (with a `FutureWarning`), others are returned as they
    are (the config validates them)."""
    if isinstance(value, str) and value in LOSS_TYPE_ALIASES:
        new = LOSS_TYPE_ALIASES[value]
        warnings.warn(f"loss_type={value!r} is deprecated; use loss_type={new!r} (same loss).", FutureWarning,
                      stacklevel=4)
        return new
    return value


def pop_config_aliases(config: Any, kwargs: MutableMapping[str, Any]) -> None:
    """Move old config keys found in a config's extra ``kwargs`` to their new fields (with a `FutureWarning`)."""
    for old, new in CONFIG_KEY_ALIASES.items():
        if old not in kwargs:
            continue
        value = kwargs.pop(old)
        if not hasattr(config, new):
            raise ValueError(f"{type(config).__name__} has no {new!r} (the new name of {old!r}).")
        warnings.warn(f"{old!r} is deprecated; use {new!r} (same meaning).", FutureWarning, stacklevel=4)
        setattr(config, new, value)


_LOSS_MODULES = "MLTMLoss.from_model(model) / OMITLoss.from_model(model)"
REMOVED_MODEL_MEMBERS = {
    "loss_from_inputs": f"call model(**batch) and compute the loss with {_LOSS_MODULES}: loss_fn(outputs, item_ids, step)",
    "matching_loss": f"use {_LOSS_MODULES}: loss_fn(outputs, item_ids, step), or loss_fn.loss_from_cost / "
                     "loss_from_scores on a (b, b) matrix",
    "project_metric_": "MLTMLoss.from_model(model).on_optimizer_step() (after each optimizer step)",
    "loss_steps": "the trainer's optimizer step, passed to the loss module as step= (or model(..., loss_step=))",
    "score_retrieval": "hf_mltm.evaluation.score_retrieval(model, images, captions) (or evaluate_retrieval)",
}
"""Model members removed in version 0.2, each with what replaces it."""
REMOVED_FORWARD_ARGUMENTS = {
    "output_loss_inputs": f"call model(**batch) and pass its outputs to {_LOSS_MODULES} (gather=True across "
                          "processes)",
}


def removed_member_error(owner: type, name: str) -> AttributeError | None:
    """The `AttributeError` for a removed model member, naming its replacement (`None` if ``name`` was not
    removed)."""
    if name not in REMOVED_MODEL_MEMBERS:
        return None
    return AttributeError(f"{owner.__name__}.{name} was removed in hf_mltm 0.2; instead: {REMOVED_MODEL_MEMBERS[name]}.")


def reject_removed_arguments(kwargs: MutableMapping[str, Any]) -> None:
    """Raise a `ValueError` naming the replacement when a forward receives a removed argument."""
    for name, replacement in REMOVED_FORWARD_ARGUMENTS.items():
        if name in kwargs:
            raise ValueError(f"forward(..., {name}=...) was removed in hf_mltm 0.2; {replacement}.")
