"""PANNs audio encoder configuration (Cnn10, Cnn14, ResNet38 and the aisfx 9-layer CNN)."""

from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

__all__ = ["PANNS_VARIANTS", "PannsConfig", "PannsVariantSpec"]


@dataclass(frozen=True)
class PannsVariantSpec:
    """The fixed architecture of one variant; everything a user may change lives in `PannsConfig`.

    Attributes:
        architecture (`str`): ``"cnn"`` (a stack of conv blocks) or ``"resnet"`` (stem conv block, four stages of
            basic blocks, head conv block).
        channels (`tuple[int, ...]`): Default output channels of each block (``"cnn"``) or of
            ``(stem, stage 1, ..., stage 4, head)`` (``"resnet"``).
        resnet_layers (`tuple[int, ...]` or `None`): Default basic blocks per stage (``"resnet"`` only).
        conv_pool (`str`): 2x2 pooling after each conv block: ``"avg"`` (PANNs) or ``"max"`` (aisfx).
        pool_last_block (`bool`): Whether the last conv block pools too (Cnn10) or keeps its resolution.
        time_pooling (`str`): ``"max+mean"`` (PANNs: max over time plus mean over time) or ``"max"`` (aisfx).
        has_bn0 (`bool`): Whether a BatchNorm over the mel bins precedes the CNN (PANNs yes, aisfx no).
        use_fc1 (`bool`): Default of `PannsConfig.use_fc1`.
        num_mel_bins (`int`): Default number of mel bins of the input.
    """

    architecture: str
    channels: tuple[int, ...]
    resnet_layers: tuple[int, ...] | None = None
    conv_pool: str = "avg"
    pool_last_block: bool = False
    time_pooling: str = "max+mean"
    has_bn0: bool = True
    use_fc1: bool = True
    num_mel_bins: int = 64


PANNS_VARIANTS: dict[str, PannsVariantSpec] = {
    "cnn10": PannsVariantSpec("cnn", (64, 128, 256, 512), pool_last_block=True),
    "cnn14": PannsVariantSpec("cnn", (64, 128, 256, 512, 1024, 2048)),
    "resnet38": PannsVariantSpec("resnet", (64, 64, 128, 256, 512, 2048), resnet_layers=(3, 4, 6, 3)),
    "aisfx9": PannsVariantSpec(
        "cnn",
        (64, 128, 256, 512),
        conv_pool="max",
        time_pooling="max",
        has_bn0=False,
        use_fc1=False,
        num_mel_bins=96,
    ),
}
"""Architectures by variant name: PANNs (Kong et al., 2020) Cnn10/Cnn14/ResNet38 and aisfx's ``EmbeddingNet``."""


@strict
class PannsConfig(PreTrainedConfig):
    r"""Configuration of a `PannsModel`: a PANNs CNN over log-mel spectrograms pooled into one clip embedding.

    Fields left at `None` take the variant's default (see `PANNS_VARIANTS`) in ``__post_init__``, so a saved
    config always holds explicit values. Invalid settings raise `ValueError` at construction.

    Args:
        variant (`str`, defaults to `"resnet38"`): ``"cnn10"``, ``"cnn14"``, ``"resnet38"`` (PANNs) or ``"aisfx9"``
            (the 9-layer CNN of the aisfx package: max pooling, no ``bn0``, no ``fc1``, max over time only; add
            ``block_frames=100, block_hop_frames=50`` for aisfx's inference, as ``convert_aisfx_checkpoint.py``
            does).
        num_mel_bins (`int`, *optional*): Mel bins of ``input_features`` (64 for PANNs, 96 for aisfx9); the size of
            ``bn0``.
        channels (`list[int]`, *optional*): Output channels of each conv block, or of (stem, 4 stages, head) for
            ResNet38. Defaults: 64..512 (Cnn10, aisfx9), 64..2048 (Cnn14), ``[64, 64, 128, 256, 512, 2048]``
            (ResNet38). Smaller widths make tiny test models.
        resnet_layers (`list[int]`, *optional*): Basic blocks in each of the 4 ResNet stages (ResNet38 only;
            default ``[3, 4, 6, 3]``).
        use_fc1 (`bool`, *optional*): Whether the embedding is ``ReLU(fc1(pooled))`` as in PANNs' ``embedding``
            output (default for PANNs variants) or the pooled features themselves, as the audio-retrieval code
            that m-LTM builds on (Mei et al.'s ``ResNet38`` drops ``fc1``) and aisfx do. Both give the same size.
        hidden_size (`int`, *optional*): Embedding size; always ``channels[-1]`` (``fc1`` is square in PANNs):
            2048 (Cnn14, ResNet38) or 512 (Cnn10, aisfx9).
        hidden_dropout_prob (`float`, defaults to 0.2): Dropout after every conv block / ResNet section (training).
        resnet_block_dropout_prob (`float`, defaults to 0.1): Dropout inside each ResNet basic block.
        fc_dropout_prob (`float`, defaults to 0.5): Dropout before ``fc1`` and on the embedding (when
            ``use_fc1``), as in PANNs.
        spec_augment (`bool`, defaults to `True`): Apply SpecAugment stripes in training mode (never in eval).
        spec_augment_time_drop_width (`int`, defaults to 64): Time stripes are ``[0, width)`` frames wide.
        spec_augment_time_stripes_num (`int`, defaults to 2): Time stripes per clip.
        spec_augment_freq_drop_width (`int`, defaults to 8): Frequency stripes are ``[0, width)`` mel bins wide.
        spec_augment_freq_stripes_num (`int`, defaults to 2): Frequency stripes per clip.
        block_frames (`int`, *optional*): When set, the frame axis is cut into blocks of this many frames, each
            block is embedded on its own and the clip embedding is the mean over blocks (aisfx's inference uses
            100). `None` (default): the whole clip at once, as PANNs.
        block_hop_frames (`int`, *optional*): Hop between blocks in frames (default ``block_frames``; aisfx uses
            50, its ``emb_hop_size=0.5``).

    Example:

    ```python
    >>> from hf_mltm.models.panns import PannsConfig
    >>> config = PannsConfig(variant="cnn14")
    >>> config.hidden_size, config.channels[-1]
    (2048, 2048)

    ```
    """

    model_type = "panns"

    variant: str = "resnet38"
    num_mel_bins: int | None = None
    channels: list[int] | tuple[int, ...] | None = None
    resnet_layers: list[int] | tuple[int, ...] | None = None
    use_fc1: bool | None = None
    hidden_size: int | None = None
    hidden_dropout_prob: float | int = 0.2
    resnet_block_dropout_prob: float | int = 0.1
    fc_dropout_prob: float | int = 0.5
    spec_augment: bool = True
    spec_augment_time_drop_width: int = 64
    spec_augment_time_stripes_num: int = 2
    spec_augment_freq_drop_width: int = 8
    spec_augment_freq_stripes_num: int = 2
    block_frames: int | None = None
    block_hop_frames: int | None = None

    def __post_init__(self, **kwargs):
        if self.variant not in PANNS_VARIANTS:
            raise ValueError(
                f"Unknown PANNs variant {self.variant!r}; expected one of {sorted(PANNS_VARIANTS)}."
            )
        self._fill_variant_defaults()
        self._check_architecture()
        self._check_regularisation()
        super().__post_init__(**kwargs)

    @property
    def variant_spec(self) -> PannsVariantSpec:
        """The fixed architecture of ``self.variant``."""
        return PANNS_VARIANTS[self.variant]

    def _fill_variant_defaults(self) -> None:
        spec = self.variant_spec
        if self.num_mel_bins is None:
            self.num_mel_bins = spec.num_mel_bins
        self.channels = list(spec.channels if self.channels is None else self.channels)
        if spec.resnet_layers is not None:
            self.resnet_layers = list(
                spec.resnet_layers if self.resnet_layers is None else self.resnet_layers
            )
        if self.use_fc1 is None:
            self.use_fc1 = spec.use_fc1
        if self.hidden_size is None:
            self.hidden_size = self.channels[-1]
        if self.block_hop_frames is None:
            self.block_hop_frames = self.block_frames

    def _check_architecture(self) -> None:
        spec = self.variant_spec
        if len(self.channels) != len(spec.channels) or min(self.channels) < 1:
            raise ValueError(
                f"{self.variant} needs {len(spec.channels)} positive channel widths, got channels={self.channels}."
            )
        if spec.resnet_layers is None and self.resnet_layers is not None:
            raise ValueError(f"resnet_layers only applies to ResNet variants, not {self.variant}.")
        if self.resnet_layers is not None and (len(self.resnet_layers) != 4 or min(self.resnet_layers) < 1):
            raise ValueError(f"resnet_layers must be 4 positive block counts, got {self.resnet_layers}.")
        if self.num_mel_bins < 1:
            raise ValueError(f"num_mel_bins must be positive, got {self.num_mel_bins}.")
        if self.hidden_size != self.channels[-1]:
            raise ValueError(
                f"hidden_size must equal the last channel width {self.channels[-1]} (fc1 is square), "
                f"got {self.hidden_size}."
            )
        if self.block_frames is None and self.block_hop_frames is not None:
            raise ValueError("block_hop_frames needs block_frames.")
        if self.block_frames is not None and (self.block_frames < 1 or self.block_hop_frames < 1):
            raise ValueError(
                f"block_frames and block_hop_frames must be positive, got {self.block_frames} and "
                f"{self.block_hop_frames}."
            )

    def _check_regularisation(self) -> None:
        for name in ("hidden_dropout_prob", "resnet_block_dropout_prob", "fc_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        for name in ("spec_augment_time_drop_width", "spec_augment_freq_drop_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("spec_augment_time_stripes_num", "spec_augment_freq_stripes_num"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
