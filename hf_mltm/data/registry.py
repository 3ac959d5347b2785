"""Builders by name, and the keyword arguments each accepts, so that a config is checked before any work.

A config names a builder (``builder: esc50`` for `build_esc50`) and its keyword arguments (``args: {...}``).
`get_builder` and `check_builder_arguments` turn a typo in either into a `ValueError` that names the closest valid
spelling, instead of a `TypeError` from deep inside the call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from datasets import DatasetDict

from hf_mltm.validation import check_choice, check_known_keys, keyword_names

from .audio_folder import build_audio_folder, build_bigsoundbank, build_tau22_scenes, build_urbansound8k
from .audiocaps import build_audiocaps
from .clotho import build_clotho
from .coco import build_coco, build_coco_captions
from .esc50 import build_esc50
from .flickr import build_flickr8k, build_flickr30k

__all__ = ["BUILDERS", "builder_arguments", "check_builder_arguments", "get_builder"]

# name in configs -> builder; each is called as builder(data_dir, **arguments)
BUILDERS: dict[str, Callable[..., DatasetDict]] = {
    "audio_folder": build_audio_folder,
    "audiocaps": build_audiocaps,
    "bigsoundbank": build_bigsoundbank,
    "clotho": build_clotho,
    "coco": build_coco,
    "coco_captions": build_coco_captions,
    "esc50": build_esc50,
    "flickr30k": build_flickr30k,
    "flickr8k": build_flickr8k,
    "tau22_scenes": build_tau22_scenes,
    "urbansound8k": build_urbansound8k,
}


def get_builder(name: str) -> Callable[..., DatasetDict]:
    """The builder registered as ``name`` (``"esc50"`` -> `build_esc50`; a ``build_`` prefix is accepted).

    Raises:
        ValueError: No such builder; the message names the closest one and all of them.
    """
    key = name[len("build_") :] if isinstance(name, str) and name.startswith("build_") else name
    check_choice("builder", key, sorted(BUILDERS))
    return BUILDERS[key]


def builder_arguments(builder: Callable[..., Any] | str) -> set[str]:
    """The keyword arguments a builder accepts (all but the positional ``data_dir``).

    For `build_urbansound8k`, `build_tau22_scenes` and `build_bigsoundbank` these are `build_audio_folder`'s; for
    `build_audiocaps` its own plus the named arguments of `datasets.load_dataset` (builder-config keywords of
    ``load_dataset`` are not listed). The set includes ``view``, which a caller that passes ``view=`` itself should
    remove before checking a config's ``args``.

    Args:
        builder (`Callable` or `str`): A builder or its registered name.

    Returns:
        `set[str]`: The accepted keyword names.
    """
    builder = get_builder(builder) if isinstance(builder, str) else builder
    return set(keyword_names(builder)) - {"data_dir"}


def check_builder_arguments(
    builder: Callable[..., Any] | str,
    arguments: Mapping[str, Any],
    where: str,
    *,
    reserved: tuple[str, ...] = (),
) -> None:
    """Raise a `ValueError` for each key of ``arguments`` that the builder does not accept.

    Args:
        builder (`Callable` or `str`): A builder or its registered name.
        arguments (`Mapping[str, Any]`): Keyword arguments, e.g. a config source's ``args``.
        where (`str`): Where they come from, e.g. ``"data.train[0].args"``.
        reserved (`tuple[str, ...]`, defaults to ``()``): Accepted names the caller sets itself (e.g.
            ``("view",)``); they count as unknown here.

    Raises:
        ValueError: ``arguments`` is not a mapping, or has an unknown key (named, with the closest valid one).
    """
    if not isinstance(arguments, Mapping):
        raise ValueError(f"{where} must be a mapping of keyword arguments, got {arguments!r}.")
    check_known_keys(arguments, builder_arguments(builder) - set(reserved), where)
