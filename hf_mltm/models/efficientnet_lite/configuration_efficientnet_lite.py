"""EfficientNet-Lite configuration (Tan & Le, 2019; the "Lite" variants of the TensorFlow model garden).

The architecture is data: a stem convolution, ``S`` stages of MBConv blocks described by per-stage lists (kernel
size, stride, output channels, repeats, expansion ratio), and a 1x1 head convolution. The defaults are
EfficientNet-Lite0 exactly as the ``efficientnet_lite_pytorch`` package builds ``"efficientnet-lite0"``.
"""

import math

from huggingface_hub.dataclasses import strict
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig

__all__ = ["EfficientNetLiteConfig"]

STAGE_FIELDS = ("kernel_sizes", "strides", "out_channels", "num_block_repeats", "expand_ratios")


@strict
class EfficientNetLiteConfig(PreTrainedConfig):
    r"""Configuration of an `EfficientNetLiteModel`: an EfficientNet-Lite CNN returning its last feature map.

    EfficientNet-Lite differs from EfficientNet-B* by having no squeeze-and-excitation, ReLU6 instead of swish, and
    a stem and head that are not width-scaled (``fix_head_stem``). Per-stage lists give the *unscaled* block
    arguments of the TensorFlow builder (``efficientnet_lite_builder.py``); the width and depth coefficients scale
    them exactly as that builder does (see `round_channels` and `stage_repeats`).

    ``hidden_sizes`` is derived, not chosen: the channels of the stem, of every stage and of the head,
    ``[stem, stage_1, ..., stage_S, head]``, i.e. of each entry of the model's ``hidden_states``. Its last entry
    is the width of ``last_hidden_state`` (1280 for Lite0), which is what
    `hf_mltm.models.omit.configuration_omit.vision_hidden_size` reads as the fragment width.

    Args:
        num_channels (`int`, defaults to 3): Channels of ``pixel_values``.
        image_size (`int`, defaults to 224): Height and width of ``pixel_values`` in pixels. The TensorFlow "same"
            padding of every strided convolution is fixed from it, as in the reference, so the model only accepts
            this size.
        width_coefficient (`float`, defaults to 1.0): Channel multiplier of the stages (Lite0: 1.0, Lite2: 1.1).
        depth_coefficient (`float`, defaults to 1.0): Repeat multiplier of the stages (Lite0: 1.0, Lite2: 1.2).
        depth_divisor (`int`, defaults to 8): Scaled channel counts are rounded to a multiple of this (the name of
            the TensorFlow builder; it is a channel quantum, not a depth). Also applies at width 1.0, so
            channels that are not multiples of it are rounded too.
        min_depth (`int`, *optional*): Smallest scaled channel count; defaults to ``depth_divisor``.
        stem_channels (`int`, defaults to 32): Output channels of the stride-2 3x3 stem convolution.
        kernel_sizes (`list[int]`, defaults to ``[3, 3, 5, 3, 5, 5, 3]``): Depthwise kernel size of each stage (odd).
        strides (`list[int]`, defaults to ``[1, 2, 2, 2, 1, 2, 1]``): Stride (1 or 2) of the first block of each
            stage; the other blocks of a stage have stride 1.
        out_channels (`list[int]`, defaults to ``[16, 24, 40, 80, 112, 192, 320]``): Unscaled output channels of
            each stage. The input channels of a stage are the output channels of the previous one (the stem's for
            the first stage).
        num_block_repeats (`list[int]`, defaults to ``[1, 2, 2, 3, 3, 4, 1]``): Unscaled MBConv blocks per stage.
        expand_ratios (`list[int]`, defaults to ``[1, 6, 6, 6, 6, 6, 6]``): Inverted-bottleneck expansion of each
            stage; 1 means no expansion convolution.
        head_channels (`int`, defaults to 1280): Output channels of the 1x1 head convolution, the width of
            ``last_hidden_state``.
        fix_head_stem (`bool`, defaults to `True`): Lite rule: the stem and head widths and the repeats of the
            first and last stage are not scaled by the coefficients.
        hidden_act (`str`, defaults to ``"relu6"``): Activation after every convolution but the projections (a key
            of ``transformers.activations.ACT2FN``).
        batch_norm_eps (`float`, defaults to 1e-3): BatchNorm epsilon.
        batch_norm_momentum (`float`, defaults to 0.01): BatchNorm momentum in PyTorch's convention (the weight of
            the new batch); TensorFlow's decay 0.99 is PyTorch's 0.01.
        drop_connect_rate (`float`, defaults to 0.2): Stochastic depth in training mode: the residual branch of
            block ``i`` of ``N`` is dropped per sample with probability ``drop_connect_rate * i / N``. No effect in
            eval mode.
        hidden_sizes (`list[int]`, *optional*): Derived (see above); a value that differs from the derived one
            raises.

    Raises:
        ValueError: A per-stage list has a different length from the others or a bad entry, or a scalar is out of
            range; the message names the field.

    Example:

    ```python
    >>> from hf_mltm.models.efficientnet_lite import EfficientNetLiteConfig
    >>> config = EfficientNetLiteConfig()  # EfficientNet-Lite0
    >>> config.hidden_sizes
    [32, 16, 24, 40, 80, 112, 192, 320, 1280]
    >>> config.stage_repeats, config.feature_map_size
    ([1, 2, 2, 3, 3, 4, 1], 7)

    ```
    """

    model_type = "efficientnet_lite"

    num_channels: int = 3
    image_size: int = 224
    width_coefficient: float | int = 1.0
    depth_coefficient: float | int = 1.0
    depth_divisor: int = 8
    min_depth: int | None = None
    stem_channels: int = 32
    kernel_sizes: list[int] | tuple[int, ...] = (3, 3, 5, 3, 5, 5, 3)
    strides: list[int] | tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1)
    out_channels: list[int] | tuple[int, ...] = (16, 24, 40, 80, 112, 192, 320)
    num_block_repeats: list[int] | tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
    expand_ratios: list[int] | tuple[int, ...] = (1, 6, 6, 6, 6, 6, 6)
    head_channels: int = 1280
    fix_head_stem: bool = True
    hidden_act: str = "relu6"
    batch_norm_eps: float = 1e-3
    batch_norm_momentum: float = 0.01
    drop_connect_rate: float | int = 0.2
    hidden_sizes: list[int] | tuple[int, ...] | None = None

    def __post_init__(self, **kwargs):
        for name in STAGE_FIELDS:
            setattr(self, name, list(getattr(self, name)))
        self._check_scalars()
        self._check_stages()
        derived = [self.scaled_stem_channels, *self.stage_channels, self.scaled_head_channels]
        if self.hidden_sizes is not None and list(self.hidden_sizes) != derived:
            raise ValueError(
                f"hidden_sizes={list(self.hidden_sizes)} does not match the architecture, which gives {derived} "
                "(stem, stages, head); leave hidden_sizes unset."
            )
        self.hidden_sizes = derived
        super().__post_init__(**kwargs)

    def _check_scalars(self) -> None:
        for name in ("num_channels", "image_size", "depth_divisor", "stem_channels", "head_channels"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        if self.min_depth is not None and self.min_depth < 1:
            raise ValueError(f"min_depth must be a positive integer or None, got {self.min_depth}.")
        for name in ("width_coefficient", "depth_coefficient", "batch_norm_eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}.")
        if not 0.0 < self.batch_norm_momentum <= 1.0:
            raise ValueError(
                f"batch_norm_momentum must be in (0, 1] (PyTorch convention: TensorFlow's 0.99 is 0.01), got "
                f"{self.batch_norm_momentum}."
            )
        if not 0.0 <= self.drop_connect_rate < 1.0:
            raise ValueError(f"drop_connect_rate must be in [0, 1), got {self.drop_connect_rate}.")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act={self.hidden_act!r} is unknown; use one of {sorted(ACT2FN)}.")

    def _check_stages(self) -> None:
        lengths = {name: len(getattr(self, name)) for name in STAGE_FIELDS}
        if len(set(lengths.values())) != 1 or lengths["kernel_sizes"] == 0:
            raise ValueError(
                f"the per-stage lists must be non-empty and of one length, got lengths {lengths}."
            )
        for name in STAGE_FIELDS:
            values = getattr(self, name)
            if any(isinstance(value, bool) or not isinstance(value, int) or value < 1 for value in values):
                raise ValueError(f"{name} must hold positive integers, got {values}.")
        if any(kernel % 2 == 0 for kernel in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd, got {self.kernel_sizes}.")
        if any(stride not in (1, 2) for stride in self.strides):
            raise ValueError(f"strides must be 1 or 2, got {self.strides}.")

    def round_channels(self, channels: int, fixed: bool = False) -> int:
        """Width-scale a channel count as the TensorFlow builder's ``round_filters``.

        ``c * width_coefficient`` is rounded to the nearest multiple of ``depth_divisor`` (halves up), at least
        ``min_depth`` (default ``depth_divisor``), plus one ``depth_divisor`` if rounding lost more than 10 %.

        Args:
            channels (`int`): Unscaled channel count.
            fixed (`bool`, defaults to `False`): Return ``channels`` unchanged (the stem and head under
                ``fix_head_stem``).

        Returns:
            `int`: The scaled channel count.
        """
        if fixed:
            return channels
        divisor = self.depth_divisor
        scaled = channels * self.width_coefficient
        rounded = max(self.min_depth or divisor, int(scaled + divisor / 2) // divisor * divisor)
        if rounded < 0.9 * scaled:
            rounded += divisor
        return int(rounded)

    @property
    def num_stages(self) -> int:
        """`int`: Number of MBConv stages ``S``."""
        return len(self.kernel_sizes)

    @property
    def scaled_stem_channels(self) -> int:
        """`int`: Output channels of the stem."""
        return self.round_channels(self.stem_channels, fixed=self.fix_head_stem)

    @property
    def scaled_head_channels(self) -> int:
        """`int`: Output channels of the head, the width of ``last_hidden_state``."""
        return self.round_channels(self.head_channels, fixed=self.fix_head_stem)

    @property
    def stage_channels(self) -> list[int]:
        """`list[int]`: Scaled output channels of each stage."""
        return [self.round_channels(channels) for channels in self.out_channels]

    @property
    def stage_repeats(self) -> list[int]:
        """`list[int]`: Blocks per stage: ``ceil(depth_coefficient * repeats)``, except the first and last stage
        under ``fix_head_stem``."""
        repeats = []
        for index, count in enumerate(self.num_block_repeats):
            fixed = self.fix_head_stem and index in (0, self.num_stages - 1)
            repeats.append(count if fixed else int(math.ceil(self.depth_coefficient * count)))
        return repeats

    @property
    def feature_map_size(self) -> int:
        """`int`: Height and width of ``last_hidden_state``: ``image_size`` halved (rounding up) by the stem and
        by every stride-2 stage."""
        size = math.ceil(self.image_size / 2)
        for stride in self.strides:
            size = math.ceil(size / stride)
        return size
