"""Configuration of `OMITImageTextModel`: image and word fragments matched by entropic (partial) optimal transport."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

from hf_mltm.models.vocabulary import canonical_loss_type, pop_config_aliases
from hf_mltm.validation import check_choice

__all__ = ["OMITImageTextConfig"]

PARTIAL_MATCHING_MODES = ("none", "relevance_threshold", "top_fraction", "mass")
LOSS_TYPES = ("triplet", "infonce", "mltm")  # the subset of hf_mltm.models.vocabulary.LOSS_TYPES OMIT offers


def _check_fraction(name: str, value, *, closed_low: bool = False) -> None:
    if not (0 <= value <= 1 if closed_low else 0 < value <= 1):
        raise ValueError(f"{name} must be in {'[0' if closed_low else '(0'}, 1], got {value}.")


@strict
class OMITImageTextConfig(PreTrainedConfig):
    r"""Configuration of an [`OMITImageTextModel`] (Pan et al., "Learning Image-Text Matching with Optimal Partial
    Transport", ICASSP 2025).

    Image fragments are the patch tokens of a vision tower (ViT, CLIP vision, ...), the cells of its last feature map
    (ResNet, ConvNeXt, ...), or precomputed region/grid features passed as ``image_fragments`` when there is no
    vision tower (``vision_config=None``). Word fragments are the text tower's token states. Each side is projected
    to ``embed_dim`` and L2-normalised per fragment; every image-caption pair is scored by the entropic OT plan ``P``
    between its fragments: ``score = sum(P * S) / mass`` with ``S`` the fragment cosine similarities.

    Args:
        vision_config (`PreTrainedConfig` or `dict`, *optional*): the vision tower (any transformers vision
            `AutoConfig`), or `None` for precomputed fragments of size ``image_fragment_dim``.
        text_config (`PreTrainedConfig` or `dict`, *optional*): the text tower; default `BertConfig()`.
        image_fragment_dim (`int`, defaults to 2048): size of precomputed fragments (2048 for Faster R-CNN regions,
            1280 for EfficientNet-Lite0 grids); ignored with a vision tower.
        drop_vision_cls_token (`bool`, defaults to `True`): a ViT-style tower's first token is its [CLS]/class token,
            not a patch: leave it out of the fragments.
        include_special_tokens (`bool`, defaults to `False`): keep the first ([CLS]) and last valid ([SEP]) token of
            each caption as word fragments (BERT-style tokenizers).
        embed_dim (`int`, defaults to 1024): joint fragment dimension.
        image_projection_hidden_size (`int`, defaults to 512): hidden size of the image fragments' MLP branch; the
            image projection is ``Linear(x) + MLP(x)`` as in the paper's precomputed-feature encoder.
        fragment_keep_ratio (`float`, defaults to 0.8): in training, each image keeps this random fraction of its
            valid fragments (the paper drops 20 %); 1 disables it.
        ot_epsilon (`float`, defaults to 0.05): entropic regularisation (the paper's lambda) in units of the cost
            ``1 - S``, which lies in ``[0, 2]``.
        ot_max_iter (`int`, defaults to 100), ot_tol (`float`, defaults to 1e-3): Sinkhorn settings; ``ot_tol`` bounds
            the L1 marginal error of every pair (the reference code runs 3 iterations with no check).
        score_chunk_size (`int`, *optional*, defaults to 65536): at most about this many image-caption pairs are
            solved at once, which bounds the scoring memory to ``O(score_chunk_size * R * L)``.
        partial_matching (`str`, defaults to `"none"`): how fragments irrelevant to the other side are excluded
            (``docs/omit.md``): ``"none"`` (balanced OT over all fragments), ``"relevance_threshold"`` (drop a
            fragment whose cosine with the other side's pooled embedding is below ``relevance_threshold``),
            ``"top_fraction"`` (keep the ``relevance_top_fraction`` most relevant fragments of each side per pair) or
            ``"mass"`` (partial OT: transport only ``partial_ot_mass`` of the mass, so poorly matched fragments are
            left out by the transport itself).
        relevance_threshold (`float`, defaults to 0.0), relevance_top_fraction (`float`, defaults to 0.5),
            partial_ot_mass (`float`, defaults to 0.8): the parameter of each partial-matching mode.
        loss_type (`str`, defaults to `"triplet"`): ``"triplet"`` (VSE++ hinge on the batch score matrix; formerly
            ``"vse_hinge"``), ``"infonce"`` (symmetric InfoNCE with ``temperature``) or ``"mltm"`` (KL to the
            entropic OT plan of the batch cost ``1 - score`` with ``batch_ot_epsilon``). The loss is computed by
            `OMITLoss` (``loss_omit.py``); the names shared with m-LTM are listed in `hf_mltm.models.vocabulary`.
        triplet_margin (`float`, defaults to 0.05): hinge margin (the paper; 0.2 is the common VSE default;
            formerly ``vse_margin``).
        triplet_hardest_negative (`bool`, defaults to `True`): after the warm-up only the hardest negative counts
            (VSE++); `False` sums the hinge over all negatives throughout.
        triplet_warmup_steps (`int`, defaults to 0): the first this many *optimizer* steps sum the hinge over all
            negatives (the paper's first-epoch warm-up: set it to the optimizer steps of one epoch; formerly
            ``vse_warmup_steps``). The trainer passes its optimizer step to the loss; a plain
            ``model(..., return_loss=True)`` call without ``loss_step`` counts as after the warm-up.
        temperature (`float`, defaults to 0.05): scale of the logits (``score / temperature``) and the InfoNCE
            temperature.
        batch_ot_epsilon (`float`, defaults to 0.05): entropic regularisation of the ``"mltm"`` loss.
        initializer_range (`float`, defaults to 0.02): std of the projection weights' initialisation.

    Example:

    ```python
    >>> from hf_mltm.models.omit import OMITImageTextConfig
    >>> config = OMITImageTextConfig(image_fragment_dim=1280, partial_matching="mass", partial_ot_mass=0.7)
    >>> config.vision_config is None, config.text_config.model_type
    (True, 'bert')

    ```
    """

    model_type = "omit_image_text"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit", optional=True),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
    }

    vision_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    image_fragment_dim: int = 2048
    drop_vision_cls_token: bool = True
    include_special_tokens: bool = False
    embed_dim: int = 1024
    image_projection_hidden_size: int = 512
    fragment_keep_ratio: float | int = 0.8
    ot_epsilon: float | int = 0.05
    ot_max_iter: int = 100
    ot_tol: float | int = 1e-3
    score_chunk_size: int | None = 65536
    partial_matching: str = "none"
    relevance_threshold: float | int = 0.0
    relevance_top_fraction: float | int = 0.5
    partial_ot_mass: float | int = 0.8
    loss_type: str = "triplet"
    triplet_margin: float | int = 0.05
    triplet_hardest_negative: bool = True
    triplet_warmup_steps: int = 0
    temperature: float | int = 0.05
    batch_ot_epsilon: float | int = 0.05
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        pop_config_aliases(self, kwargs)
        self.loss_type = canonical_loss_type(self.loss_type)
        check_choice("partial_matching", self.partial_matching, PARTIAL_MATCHING_MODES)
        check_choice("loss_type", self.loss_type, LOSS_TYPES)
        _check_fraction("fragment_keep_ratio", self.fragment_keep_ratio)
        _check_fraction("relevance_top_fraction", self.relevance_top_fraction)
        _check_fraction("partial_ot_mass", self.partial_ot_mass)
        if not -1 <= self.relevance_threshold <= 1:
            raise ValueError(f"relevance_threshold is a cosine similarity in [-1, 1], got {self.relevance_threshold}.")
        for name in ("ot_epsilon", "temperature", "batch_ot_epsilon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        if self.ot_max_iter < 1 or self.ot_tol < 0:
            raise ValueError(f"ot_max_iter must be >= 1 and ot_tol >= 0, got {self.ot_max_iter} and {self.ot_tol}.")
        if self.score_chunk_size is not None and self.score_chunk_size < 1:
            raise ValueError(f"score_chunk_size must be >= 1 or None, got {self.score_chunk_size}.")
        if self.triplet_margin < 0 or self.triplet_warmup_steps < 0:
            raise ValueError("triplet_margin and triplet_warmup_steps must be >= 0.")
        if min(self.embed_dim, self.image_projection_hidden_size, self.image_fragment_dim) < 1:
            raise ValueError("embed_dim, image_projection_hidden_size and image_fragment_dim must be >= 1.")
        super().__post_init__(**kwargs)
        if self.text_config is not None and getattr(self.text_config, "hidden_size", None) is None:
            raise ValueError(f"text_config ({type(self.text_config).__name__}) has no hidden_size to project from.")
        if self.vision_config is not None and vision_hidden_size(self.vision_config) is None:
            raise ValueError(
                f"vision_config ({type(self.vision_config).__name__}) has neither hidden_size nor hidden_sizes; "
                "give a vision tower whose last hidden state holds patch tokens or a feature map."
            )

    @property
    def image_fragment_input_dim(self) -> int:
        """Size of the fragments entering the image projection: the vision tower's width, else
        ``image_fragment_dim``."""
        return self.image_fragment_dim if self.vision_config is None else vision_hidden_size(self.vision_config)


def vision_hidden_size(vision_config: PreTrainedConfig) -> int | None:
    """Channels of a vision tower's last hidden state: ``hidden_sizes[-1]`` for CNNs (ResNet, ConvNeXt), else
    ``hidden_size`` (ViT, CLIP vision)."""
    sizes = getattr(vision_config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    size = getattr(vision_config, "hidden_size", None)
    return None if size is None else int(size)
