"""Dataset builders, view helpers, noise injection and collators for audio-text and image-text retrieval.

Builders (``build_<name>(data_dir, *, view="captions", splits=None, on_missing="error", ...)``) read each
dataset's official layout into a `datasets.DatasetDict` with the shared schema (``item_id``, ``item_index``,
``audio`` or ``image`` as a path, ``caption``/``caption_index`` or ``captions``); decoding happens in the
collators. See :mod:`hf_mltm.data.views` for the two views and :mod:`hf_mltm.data.errors` for the missing-file
policy; :mod:`hf_mltm.data.registry` finds builders by name and checks their keyword arguments.

Modules: public ``views``, ``errors``, ``labels``, ``karpathy``, ``registry``, one per dataset family, ``noise``,
``collators``, ``grid_features``; private ``_readers`` (CSV/JSON reading and field checks), ``_arguments``
(``view``/``on_missing``/``splits``), ``_file_checks`` (missing/corrupt media) and ``_assemble`` (items to a
`DatasetDict`).
"""

from .audio_folder import build_audio_folder, build_bigsoundbank, build_tau22_scenes, build_urbansound8k
from .audiocaps import build_audiocaps
from .clotho import build_clotho
from .coco import build_coco, build_coco_captions
from .collators import AudioTextCollator, ImageTextCollator, UniqueItemBatchSampler
from .errors import CorruptDataFileError, MissingDataFileError, SkippedFile, get_skipped_files
from .esc50 import ESC50_CATEGORIES, build_esc50, class_prompts
from .flickr import build_flickr8k, build_flickr30k
from .grid_features import (
    EfficientNetLite0GridEncoder,
    extract_grid_features,
    find_images,
    load_grid_features,
)
from .karpathy import KarpathyImage, read_karpathy_json
from .labels import label_text
from .noise import inject_noisy_correspondence
from .registry import BUILDERS, builder_arguments, check_builder_arguments, get_builder
from .views import captions_to_items, items_to_captions

__all__ = [
    "BUILDERS",
    "ESC50_CATEGORIES",
    "AudioTextCollator",
    "CorruptDataFileError",
    "EfficientNetLite0GridEncoder",
    "ImageTextCollator",
    "KarpathyImage",
    "MissingDataFileError",
    "SkippedFile",
    "UniqueItemBatchSampler",
    "build_audio_folder",
    "build_audiocaps",
    "build_bigsoundbank",
    "build_clotho",
    "build_coco",
    "build_coco_captions",
    "build_esc50",
    "build_flickr30k",
    "build_flickr8k",
    "build_tau22_scenes",
    "build_urbansound8k",
    "builder_arguments",
    "captions_to_items",
    "check_builder_arguments",
    "class_prompts",
    "extract_grid_features",
    "find_images",
    "get_builder",
    "get_skipped_files",
    "inject_noisy_correspondence",
    "items_to_captions",
    "label_text",
    "load_grid_features",
    "read_karpathy_json",
]
