"""The logic behind the Gradio Space in ``space/`` (the app itself only lays out components).

- `hf_mltm.space.limits`: input limits and friendly errors (`SpaceInputError`), audio/image/text preparation.
- `hf_mltm.space.audio_text`: the clip gallery (`AudioGallery`: text search by distance or transductive OT),
  zero-shot labels (`classify_clip`) and the clip-caption transport plan (`transport_plan`).
- `hf_mltm.space.gallery_index`: text search over a saved gallery index (`IndexedGallery`, ``HF_MLTM_SPACE_INDEX``),
  checked against the Space's model.
- `hf_mltm.space.image_text`: OMIT caption scores and word-to-grid transport (`FragmentExplorer`).
- `hf_mltm.space.plots`: the plan heatmap and grid overlays as pictures.
- `hf_mltm.space.loading`: settings, default models and gallery.
- `hf_mltm.space.service`: `SpaceService`, one method per control of the UI.

Nothing here imports gradio.
"""

from .audio_text import (
    AudioGallery,
    GalleryClip,
    LabelScore,
    SearchHit,
    TransportView,
    UserClips,
    classify_clip,
    transport_plan,
)
from .gallery_index import IndexedGallery, IndexHit
from .image_text import PARTIAL_MATCHING_RULES, FragmentExplorer, FragmentScores, WordMass
from .limits import (
    DEFAULT_LIMITS,
    InputLimits,
    PreparedAudio,
    SpaceInputError,
    parse_lines,
    prepare_audio,
    prepare_image,
)
from .service import SpaceService

__all__ = [
    "DEFAULT_LIMITS",
    "PARTIAL_MATCHING_RULES",
    "AudioGallery",
    "FragmentExplorer",
    "FragmentScores",
    "GalleryClip",
    "IndexHit",
    "IndexedGallery",
    "InputLimits",
    "LabelScore",
    "PreparedAudio",
    "SearchHit",
    "SpaceInputError",
    "SpaceService",
    "TransportView",
    "UserClips",
    "WordMass",
    "classify_clip",
    "parse_lines",
    "prepare_audio",
    "prepare_image",
    "transport_plan",
]
