"""EfficientNet-Lite as a transformers model: the CNN tower whose last feature map gives OMIT's grid fragments.

Letters: ``B`` images, ``C`` channels, ``H``/``W`` the input size (``config.image_size``), ``h``/``w`` the size of
the last feature map (``config.feature_map_size``, 7 for Lite0 at 224), ``D`` its channels (``hidden_sizes[-1]``,
1280 for Lite0).

Architecture (Tan & Le, "EfficientNet", ICML 2019, with the Lite changes of the TensorFlow model garden: no
squeeze-and-excitation, ReLU6, stem and head not scaled): stem 3x3 stride-2 convolution + BatchNorm + ReLU6 ->
MBConv blocks (optional 1x1 expansion + BN + ReLU6, depthwise kxk + BN + ReLU6, 1x1 projection + BN, identity
shortcut when the shape is kept) -> head 1x1 convolution + BN + ReLU6. Convolutions use TensorFlow's "same"
padding computed once for ``config.image_size``: output size ``ceil(size / stride)``, total padding
``max((out - 1) * stride + k - size, 0)`` split with the smaller half on the top/left (so a stride-2 3x3
convolution on an even size pads only the bottom/right). Module names follow the layout of the
``efficientnet_lite_pytorch`` state dict one to one (see ``scripts/convert_efficientnet_lite_checkpoint.py``).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention
from transformers.modeling_utils import PreTrainedModel
from transformers.utils.generic import can_return_tuple

from .configuration_efficientnet_lite import EfficientNetLiteConfig

__all__ = ["EfficientNetLiteModel", "EfficientNetLitePreTrainedModel", "tf_same_padding"]


def tf_same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """TensorFlow "same" padding of one spatial axis, as ``(before, after)`` pixels.

    Args:
        size (`int`): Input length along the axis, in pixels.
        kernel_size (`int`): Kernel length.
        stride (`int`): Stride.

    Returns:
        `tuple[int, int]`: Zero padding before and after; the output length is then ``ceil(size / stride)``.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


def _drop_connect(hidden_states: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the branch of each sample with probability ``rate``, scale the rest by
    ``1 / (1 - rate)``; the identity in eval mode or at ``rate == 0``."""
    if not training or rate == 0.0:
        return hidden_states
    keep_prob = 1.0 - rate
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)  # (B, 1, 1, 1)
    keep = torch.rand(shape, dtype=hidden_states.dtype, device=hidden_states.device) < keep_prob
    return hidden_states * keep.to(hidden_states.dtype) / keep_prob


def _is_inference(module: nn.Module) -> bool:
    """Whether ``module`` runs in eval mode without autograd (under `torch.no_grad` or `torch.inference_mode`)."""
    return not module.training and not torch.is_grad_enabled()


def _fold_batch_norm(conv: nn.Conv2d, batch_norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``(C_out, C_in / groups, k, k)`` and bias ``(C_out,)`` of one convolution equal to ``conv`` then
    ``batch_norm`` in eval mode: ``W * s`` and ``beta - mu * s`` (plus ``b * s`` for a conv bias), with
    ``s = gamma / sqrt(var + eps)``.

    Computed on every call (about a millisecond for Lite0's 3.4 M parameters), so weights loaded or changed later
    are always the ones used; nothing is stored on the module.
    """
    scale = batch_norm.weight * torch.rsqrt(batch_norm.running_var + batch_norm.eps)  # (C_out,)
    bias = batch_norm.bias - batch_norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale[:, None, None, None], bias


class EfficientNetLiteConvLayer(nn.Module):
    """Convolution with TensorFlow "same" padding for a fixed input size, BatchNorm, then the activation (or none).

    Symmetric padding is given to the convolution itself; an asymmetric one (a strided convolution on an even
    size) is applied with `F.pad` first.

    Inference (eval mode with autograd off): the BatchNorm is folded into the convolution and a ReLU/ReLU6 runs in
    place; the output equals that of the eval-mode modules up to float32 rounding.
    """

    def __init__(
        self,
        config: EfficientNetLiteConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        input_size: int,
        groups: int = 1,
        activation: bool = True,
    ):
        super().__init__()
        before, after = tf_same_padding(input_size, kernel_size, stride)
        symmetric = before == after
        self.convolution = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=before if symmetric else 0,
            groups=groups,
            bias=False,
        )
        self.pad = (
            None if symmetric else (before, after, before, after)
        )  # F.pad order: left, right, top, bottom
        self.normalization = nn.BatchNorm2d(
            out_channels, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum
        )
        self.activation = ACT2FN[config.hidden_act] if activation else nn.Identity()
        self.output_size = math.ceil(input_size / stride)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, s, s)`` to ``(B, C_out, ceil(s / stride), ceil(s / stride))``."""
        if self.pad is not None:
            hidden_states = F.pad(hidden_states, self.pad)
        if not _is_inference(self):
            return self.activation(self.normalization(self.convolution(hidden_states)))
        conv = self.convolution
        weight, bias = _fold_batch_norm(conv, self.normalization)
        out = F.conv2d(hidden_states, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if isinstance(self.activation, nn.ReLU6):
            return F.hardtanh_(out, 0.0, 6.0)
        if isinstance(self.activation, nn.ReLU):
            return out.relu_()
        return self.activation(out)


class EfficientNetLiteBlock(GradientCheckpointingLayer):
    """MBConv block without squeeze-and-excitation (inverted residual, Sandler et al. 2018).

    ``out = BN(project(act(BN(depthwise(act(BN(expand(x))))))))``, plus ``x`` (after stochastic depth on the branch)
    when the block keeps the shape (stride 1 and ``C_in == C_out``). No expansion layer when ``expand_ratio == 1``.

    The reference package stores the stride of a stage's first block as a list and compares it with 1, so it
    never gives that block a shortcut; this only matters for a stage whose first block has stride 1 and keeps the
    width, which no EfficientNet-Lite variant has. Here the TensorFlow rule applies to every block.
    """

    def __init__(
        self,
        config: EfficientNetLiteConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        input_size: int,
        drop_connect_rate: float,
    ):
        super().__init__()
        expanded = in_channels * expand_ratio
        self.expansion = (
            EfficientNetLiteConvLayer(config, in_channels, expanded, 1, 1, input_size)
            if expand_ratio != 1
            else None
        )
        self.depthwise = EfficientNetLiteConvLayer(
            config, expanded, expanded, kernel_size, stride, input_size, groups=expanded
        )
        output_size = self.depthwise.output_size
        self.projection = EfficientNetLiteConvLayer(
            config, expanded, out_channels, 1, 1, output_size, activation=False
        )
        self.use_shortcut = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = drop_connect_rate
        self.output_size = output_size

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, s, s)`` to ``(B, C_out, ceil(s / stride), ceil(s / stride))``."""
        branch = hidden_states if self.expansion is None else self.expansion(hidden_states)
        branch = self.projection(self.depthwise(branch))
        if not self.use_shortcut:
            return branch
        return _drop_connect(branch, self.drop_connect_rate, self.training) + hidden_states


class EfficientNetLiteEncoder(nn.Module):
    """The MBConv blocks of all stages, as one flat list (the reference's ``_blocks``)."""

    def __init__(self, config: EfficientNetLiteConfig, input_size: int):
        super().__init__()
        in_channels = config.scaled_stem_channels
        specs = []
        for stage in range(config.num_stages):
            for repeat in range(config.stage_repeats[stage]):
                stride = config.strides[stage] if repeat == 0 else 1
                specs.append((stage, in_channels if repeat == 0 else config.stage_channels[stage], stride))
            in_channels = config.stage_channels[stage]
        blocks = []
        size = input_size
        for index, (stage, block_in, stride) in enumerate(specs):
            block = EfficientNetLiteBlock(
                config,
                block_in,
                config.stage_channels[stage],
                config.kernel_sizes[stage],
                stride,
                config.expand_ratios[stage],
                size,
                # As the reference: the rate grows linearly with the block index, from 0 for the first block.
                drop_connect_rate=config.drop_connect_rate * index / len(specs),
            )
            size = block.output_size
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        self.stage_of_block = [stage for stage, _, _ in specs]
        self.output_size = size

    def forward(
        self, hidden_states: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Run every block on ``(B, C_stem, s, s)``; also return each stage's output when asked."""
        stage_outputs = ()
        for index, block in enumerate(self.blocks):
            hidden_states = block(hidden_states)
            last_of_stage = (
                index + 1 == len(self.blocks) or self.stage_of_block[index + 1] != self.stage_of_block[index]
            )
            if output_hidden_states and last_of_stage:
                stage_outputs += (hidden_states,)
        return hidden_states, stage_outputs


class EfficientNetLitePreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading for EfficientNet-Lite models."""

    config_class = EfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"
    input_modalities = "image"
    supports_gradient_checkpointing = True
    _no_split_modules = ["EfficientNetLiteBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """He-normal convolutions (fan-out mode, as torchvision's EfficientNet), unit BatchNorms.

        Every parameter and buffer of the model lives in a ``Conv2d`` (no bias) or a ``BatchNorm2d``, so this covers
        all of them, including the BatchNorm running statistics.
        """
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)


class EfficientNetLiteModel(EfficientNetLitePreTrainedModel):
    r"""EfficientNet-Lite without its classifier: ``pixel_values`` ``(B, 3, H, W)`` -> feature map ``(B, D, h, w)``.

    ``last_hidden_state`` is the output of the head (1x1 convolution, BatchNorm, ReLU6), laid out as transformers'
    CNN towers (ResNet, ConvNeXt) return it, so OMIT flattens it row-major into ``h * w`` fragments (fragment
    ``r = w * row + column``); ``pooler_output`` is its spatial mean. With the converted Lite0 weights
    (``scripts/convert_efficientnet_lite_checkpoint.py``) this equals ``efficientnet_lite_pytorch``'s
    ``EfficientNet.extract_features`` and, pooled, the input of its classifier.

    Inputs are normalised as the TensorFlow checkpoints were trained, ``(v - 127) / 128`` for uint8 pixel values
    ``v``: `OMITImageProcessor.for_efficientnet_lite()`. In training mode BatchNorm uses batch statistics and
    stochastic depth is active, as in the reference; call ``.eval()`` (as ``from_pretrained`` does) to use the
    running statistics of a frozen tower. In eval mode without autograd (`torch.no_grad`, `torch.inference_mode`)
    every BatchNorm is folded into its convolution and the network runs channels-last (about 2x faster on CPU); the
    outputs equal the module-by-module path up to float32 rounding and are returned contiguous.

    Example:

    ```python
    >>> import torch
    >>> from hf_mltm.models.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteModel
    >>> config = EfficientNetLiteConfig(
    ...     image_size=32, stem_channels=8, kernel_sizes=[3, 5], strides=[1, 2], out_channels=[8, 16],
    ...     num_block_repeats=[1, 2], expand_ratios=[1, 2], head_channels=32)
    >>> model = EfficientNetLiteModel(config).eval()
    >>> output = model(torch.randn(2, 3, 32, 32))
    >>> output.last_hidden_state.shape, output.pooler_output.shape
    (torch.Size([2, 32, 8, 8]), torch.Size([2, 32]))

    ```
    """

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        self.stem = EfficientNetLiteConvLayer(
            config, config.num_channels, config.scaled_stem_channels, 3, 2, config.image_size
        )
        self.encoder = EfficientNetLiteEncoder(config, self.stem.output_size)
        self.head = EfficientNetLiteConvLayer(
            config, config.stage_channels[-1], config.scaled_head_channels, 1, 1, self.encoder.output_size
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPoolingAndNoAttention:
        r"""Compute the last feature map of a batch of images.

        Args:
            pixel_values (`torch.FloatTensor` of shape ``(B, num_channels, image_size, image_size)``): Normalised
                images (`OMITImageProcessor.for_efficientnet_lite()`).
            output_hidden_states (`bool`, *optional*): Also return the stem output, every stage's output and the
                head output (``len(config.hidden_sizes)`` maps, entry ``i`` with ``hidden_sizes[i]`` channels).

        Returns:
            `BaseModelOutputWithPoolingAndNoAttention` with ``last_hidden_state`` ``(B, D, h, w)`` (float, after
            ReLU6 so in ``[0, 6]``), ``pooler_output`` ``(B, D)`` its mean over the ``h * w`` cells and, when asked,
            ``hidden_states``.

        Raises:
            ValueError: ``pixel_values`` is not a floating-point ``(B, num_channels, image_size, image_size)`` tensor.
        """
        self._check_pixel_values(pixel_values)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        pixel_values = pixel_values.to(self.dtype)
        inference = _is_inference(self)
        if inference:
            # oneDNN convolves channels-last tensors without reordering them around every convolution (for
            # depthwise convolutions this is most of the time); the outputs are made contiguous again below.
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        stem_output = self.stem(pixel_values)  # (B, C_stem, ceil(H/2), ceil(W/2))
        hidden_states, stage_outputs = self.encoder(stem_output, output_hidden_states)
        feature_map = self.head(hidden_states)  # (B, D, h, w)
        all_hidden_states = (stem_output, *stage_outputs, feature_map) if output_hidden_states else None
        if inference:
            feature_map = feature_map.contiguous()
            if all_hidden_states is not None:
                all_hidden_states = tuple(state.contiguous() for state in all_hidden_states[:-1]) + (feature_map,)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=feature_map,
            pooler_output=feature_map.mean(dim=(2, 3)),  # (B, D)
            hidden_states=all_hidden_states,
        )

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        size = self.config.image_size
        expected = (self.config.num_channels, size, size)
        if (
            not isinstance(pixel_values, torch.Tensor)
            or pixel_values.ndim != 4
            or tuple(pixel_values.shape[1:]) != expected
        ):
            shape = (
                tuple(pixel_values.shape)
                if isinstance(pixel_values, torch.Tensor)
                else type(pixel_values).__name__
            )
            raise ValueError(
                f"pixel_values must have shape (batch, {expected[0]}, {size}, {size}), got {shape}: the 'same' padding "
                f"is fixed for config.image_size={size}; resize and crop with OMITImageProcessor.for_efficientnet_lite()."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a floating-point tensor of normalised images, got {pixel_values.dtype}; "
                "normalise with OMITImageProcessor.for_efficientnet_lite() ((v - 127) / 128)."
            )
