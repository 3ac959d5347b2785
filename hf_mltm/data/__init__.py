"""Dataset builders, view helpers, noise injection and collators for audio-text and image-text retrieval.

Builders (``build_<name>(data_dir, *, view="captions", splits=None, on_missing="error", ...)``) read each
dataset's official layout into a `datasets.DatasetDict` with the shared schema (``item_id``, ``item_index``,
``audio`` or ``image`` as a path, ``caption``/``caption_index`` or ``captions``); decoding happens in the
collators. See :mod:`hf_mltm.data._common` for the two views and the missing-file policy.
"""

from ._common import (
    CorruptDataFileError,
    MissingDataFileError,
    SkippedFile,
    captions_to_items,
    get_skipped_files,
    items_to_captions,
)
from .audio_folder import build_audio_folder, build_bigsoundbank, build_tau22_scenes, build_urbansound8k
from .audiocaps import build_audiocaps
from .clotho import build_clotho
from .coco import build_coco
from .collators import AudioTextCollator, ImageTextCollator, UniqueItemBatchSampler
from .esc50 import build_esc50, class_prompts
from .flickr import build_flickr8k, build_flickr30k
from .grid_features import (
    EfficientNetLite0GridEncoder,
    extract_grid_features,
    find_images,
    load_grid_features,
)
from .noise import inject_noisy_correspondence

__all__ = [
    "AudioTextCollator",
    "CorruptDataFileError",
    "EfficientNetLite0GridEncoder",
    "ImageTextCollator",
    "MissingDataFileError",
    "SkippedFile",
    "UniqueItemBatchSampler",
    "build_audio_folder",
    "build_audiocaps",
    "build_bigsoundbank",
    "build_clotho",
    "build_coco",
    "build_esc50",
    "build_flickr30k",
    "build_flickr8k",
    "build_tau22_scenes",
    "build_urbansound8k",
    "captions_to_items",
    "class_prompts",
    "extract_grid_features",
    "find_images",
    "get_skipped_files",
    "inject_noisy_correspondence",
    "items_to_captions",
    "load_grid_features",
]
