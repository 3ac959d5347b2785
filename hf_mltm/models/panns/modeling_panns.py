"""PANNs audio encoders (Cnn10, Cnn14, ResNet38) and the aisfx 9-layer CNN as a transformers model.

Letters: ``B`` clips, ``T`` input frames, ``M`` mel bins, ``C`` channels, ``t``/``m`` the time/mel resolution after
the CNN's pooling, ``H`` the embedding size (``config.hidden_size``), ``N`` blocks per clip (block mode).

The log-mel front-end is not part of the model: ``input_features`` come from `PannsFeatureExtractor` (or its alias `MLTMFeatureExtractor`).
"""

# Adapted from qiuqiangkong/audioset_tagging_cnn@542c8c8:pytorch/models.py (ConvBlock, _ResnetBasicBlock, _ResNet,
# Cnn10, Cnn14, ResNet38; torchlibrosa's SpecAugmentation) and from aisfx==0.1.2:aisfx/models/cnn2d.py
# (EmbeddingNet, whose blocks aisfx/inference.py embeds one by one).

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import PreTrainedModel
from transformers.utils.generic import can_return_tuple

from ..winograd import conv3x3_winograd, winograd_filters
from .configuration_panns import PannsConfig

__all__ = ["PannsModel", "PannsPreTrainedModel"]

INFERENCE_BLOCKS_PER_CALL = 8  # block mode without autograd: blocks embedded per CNN call
# Inference convolutions with at least this many input channels run as F(4x4, 3x3) Winograd (`hf_mltm.models.winograd`);
# narrower ones run faster through oneDNN's direct convolution (measured on aisfx's 64-channel layers).
WINOGRAD_MIN_IN_CHANNELS = 128


def _keep_mask(lengths: torch.LongTensor, size: int) -> torch.BoolTensor:
    """``(B, size)`` mask, true at positions ``< lengths``."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def _mask_time(hidden_states: torch.Tensor, lengths: torch.LongTensor | None) -> torch.Tensor:
    """Zero the time steps of ``hidden_states`` ``(B, C, t, m)`` at or beyond ``lengths`` ``(B,)``.

    Uses ``masked_fill`` (not a product) so that NaN or inf in padding cannot leak through.
    """
    if lengths is None:
        return hidden_states
    keep = _keep_mask(lengths, hidden_states.shape[2])  # (B, t)
    return hidden_states.masked_fill(~keep[:, None, :, None], 0.0)


def _divide_lengths(lengths: torch.LongTensor | None, factor: int) -> torch.LongTensor | None:
    """Valid time steps after a pooling of ``factor`` (floor, as ``avg_pool2d``/``max_pool2d``)."""
    return None if lengths is None else torch.div(lengths, factor, rounding_mode="floor")


def _is_inference(module: nn.Module) -> bool:
    """Whether ``module`` runs in eval mode without autograd (under `torch.no_grad` or `torch.inference_mode`)."""
    return not module.training and not torch.is_grad_enabled()


def _fold_batch_norm(conv: nn.Conv2d, batch_norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``(C_out, C_in, k, k)`` and bias ``(C_out,)`` of one convolution equal to ``conv`` then ``batch_norm``
    in eval mode: ``W * s`` and ``beta - mu * s`` (plus ``b * s`` for a conv bias), ``s = gamma / sqrt(var + eps)``.

    Computed on every call (a few milliseconds for aisfx's 4.7 M parameters), so weights loaded or changed later are
    always the ones used; nothing is stored on the module.
    """
    scale = batch_norm.weight * torch.rsqrt(batch_norm.running_var + batch_norm.eps)  # (C_out,)
    bias = batch_norm.bias - batch_norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale[:, None, None, None], bias


def _conv3x3_channels_last(hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """3x3 convolution with zero padding 1 of ``(B, C_in, t, m)``, returned in channels-last memory (same shape).

    oneDNN convolves channels-last tensors without the layout reorders it makes around every NCHW convolution. A
    one-channel input (the first layer) runs at about 1 GFLOP/s through oneDNN, so it is computed as a matrix
    product of its 9 shifted copies instead (``F.unfold``), whose ``(B, t * m, C_out)`` result is the channels-last
    output.
    """
    if hidden_states.shape[1] == 1:
        batch_size, _, num_frames, num_mels = hidden_states.shape
        columns = F.unfold(hidden_states, kernel_size=3, padding=1)  # (B, 9, t * m)
        out = torch.matmul(columns.transpose(1, 2), weight.reshape(weight.shape[0], 9).T)  # (B, t * m, C_out)
        out += bias
        return out.view(batch_size, num_frames, num_mels, -1).permute(0, 3, 1, 2)  # (B, C_out, t, m)
    hidden_states = hidden_states.contiguous(memory_format=torch.channels_last)
    return F.conv2d(hidden_states, weight.contiguous(memory_format=torch.channels_last), bias, padding=1)


@dataclass(frozen=True)
class FoldedConv3x3:
    """A 3x3 convolution (padding 1) with its eval-mode BatchNorm folded in, ready for inference.

    Args:
        weight (`torch.Tensor`): ``(C_out, C_in, 3, 3)`` weights, or their ``(36, C_out, C_in)`` `winograd_filters`.
        bias (`torch.Tensor` of shape ``(C_out,)``): the folded bias.
        winograd (`bool`): whether ``weight`` holds Winograd filters.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    winograd: bool

    @classmethod
    def fold(cls, conv: nn.Conv2d, batch_norm: nn.BatchNorm2d) -> "FoldedConv3x3":
        """Fold ``batch_norm`` into ``conv``; Winograd filters when ``conv`` has `WINOGRAD_MIN_IN_CHANNELS` inputs."""
        weight, bias = _fold_batch_norm(conv, batch_norm)
        if conv.in_channels >= WINOGRAD_MIN_IN_CHANNELS:
            return cls(winograd_filters(weight), bias, winograd=True)
        return cls(weight, bias, winograd=False)

    def __call__(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Convolve ``(B, C_in, t, m)`` into ``(B, C_out, t, m)`` in channels-last memory."""
        if self.winograd:
            return conv3x3_winograd(hidden_states, self.weight, self.bias)
        return _conv3x3_channels_last(hidden_states, self.weight, self.bias)


def _drop_stripes(
    batch_size: int, size: int, drop_width: int, stripes_num: int, device: torch.device
) -> torch.Tensor:
    """Random stripes of SpecAugment along one axis, as torchlibrosa's ``DropStripes``.

    Each of ``stripes_num`` stripes per clip has a width drawn uniformly from ``[0, drop_width)`` (capped at
    ``size - 1``) and a start drawn uniformly from ``[0, size - width)``.

    Returns:
        `torch.BoolTensor` of shape ``(B, size)``: true where the input is zeroed.
    """
    widths = torch.randint(0, drop_width, (batch_size, stripes_num), device=device).clamp(max=size - 1)
    starts = (torch.rand(batch_size, stripes_num, device=device) * (size - widths)).long()  # (B, stripes)
    positions = torch.arange(size, device=device)[None, None, :]  # (1, 1, size)
    ends = (starts + widths)[..., None]  # (B, stripes, 1)
    inside = (positions >= starts[..., None]) & (positions < ends)  # (B, stripes, size)
    return inside.any(dim=1)


class PannsSpecAugment(nn.Module):
    """SpecAugment (Park et al., 2019) as in PANNs: zero random time and mel stripes, in training mode only."""

    def __init__(self, config: PannsConfig):
        super().__init__()
        self.time_drop_width = config.spec_augment_time_drop_width
        self.time_stripes_num = config.spec_augment_time_stripes_num
        self.freq_drop_width = config.spec_augment_freq_drop_width
        self.freq_stripes_num = config.spec_augment_freq_stripes_num

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Zero stripes of ``hidden_states`` ``(B, 1, T, M)``; the identity in eval mode."""
        if not self.training:
            return hidden_states
        batch_size, _, num_frames, num_mels = hidden_states.shape
        device = hidden_states.device
        drop_time = _drop_stripes(batch_size, num_frames, self.time_drop_width, self.time_stripes_num, device)
        drop_freq = _drop_stripes(batch_size, num_mels, self.freq_drop_width, self.freq_stripes_num, device)
        drop = drop_time[:, None, :, None] | drop_freq[:, None, None, :]  # (B, 1, T, M)
        return hidden_states.masked_fill(drop, 0.0)


class PannsConvBlock(GradientCheckpointingLayer):
    """Two 3x3 conv + BatchNorm + ReLU, then 2x2 pooling (or none) and dropout (PANNs ``ConvBlock``).

    With ``lengths`` given, time steps at or beyond them are zeroed before each convolution, so a padded clip
    gives exactly the values of the unpadded clip at its valid positions.

    Inference (eval mode with autograd off): each BatchNorm is folded into its convolution (`fold_convolutions`),
    the convolutions run in channels-last memory, those with `WINOGRAD_MIN_IN_CHANNELS` or more inputs by Winograd's
    F(4x4, 3x3), and the ReLUs in place (`_inference_forward`); the output equals that of the eval-mode modules up to
    float32 rounding (about 1e-6 relative, a few times that after Winograd layers).
    """

    def __init__(
        self, in_channels: int, out_channels: int, pool_size: int, pool_type: str, dropout_prob: float
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.pool_size = pool_size
        self.pool_type = pool_type
        self.dropout = nn.Dropout(dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        lengths: torch.LongTensor | None = None,
        folded: tuple[FoldedConv3x3, FoldedConv3x3] | None = None,
    ) -> torch.Tensor:
        """Map ``(B, C_in, t, m)`` to ``(B, C_out, t // pool, m // pool)``; ``lengths`` ``(B,)`` counts valid t.

        ``folded``: this block's `fold_convolutions`, when the caller runs several batches with one folding
        (inference only; folded here otherwise).
        """
        if _is_inference(self):
            return self._inference_forward(
                hidden_states, lengths, self.fold_convolutions() if folded is None else folded
            )
        hidden_states = F.relu(self.bn1(self.conv1(_mask_time(hidden_states, lengths))))
        hidden_states = F.relu(self.bn2(self.conv2(_mask_time(hidden_states, lengths))))
        return self.dropout(self._pool(hidden_states))

    def _pool(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 1:
            return hidden_states
        pool = F.avg_pool2d if self.pool_type == "avg" else F.max_pool2d
        return pool(hidden_states, kernel_size=self.pool_size)

    def fold_convolutions(self) -> tuple[FoldedConv3x3, FoldedConv3x3]:
        """Both convolutions with their BatchNorms folded in, from the current weights (nothing is cached)."""
        return FoldedConv3x3.fold(self.conv1, self.bn1), FoldedConv3x3.fold(self.conv2, self.bn2)

    def _inference_forward(
        self,
        hidden_states: torch.Tensor,
        lengths: torch.LongTensor | None,
        folded: tuple[FoldedConv3x3, FoldedConv3x3],
    ) -> torch.Tensor:
        """`forward` in eval mode without autograd: folded BatchNorms, channels-last output (dropout is off)."""
        first, second = folded
        hidden_states = first(_mask_time(hidden_states, lengths)).relu_()
        hidden_states = second(_mask_time(hidden_states, lengths))
        if self.pool_type == "max":  # ReLU commutes with max pooling: apply it to the 4x smaller output
            return self._pool(hidden_states).relu_()
        return self._pool(hidden_states.relu_())


FoldedBlocks = dict[PannsConvBlock, tuple[FoldedConv3x3, FoldedConv3x3]]
"""`PannsConvBlock.fold_convolutions` of every conv block of a model, by block."""


def _folded_block(
    folded: FoldedBlocks | None, block: PannsConvBlock
) -> tuple[FoldedConv3x3, FoldedConv3x3] | None:
    return None if folded is None else folded[block]


class PannsResNetShortcut(nn.Module):
    """Projection shortcut of a ResNet block: [2x2 average pool,] 1x1 conv, BatchNorm (PANNs ``downsample``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            hidden_states = F.avg_pool2d(hidden_states, kernel_size=2)
        return self.bn(self.conv(hidden_states))


class PannsResidualBatchNorm(nn.BatchNorm2d):
    """The BatchNorm closing a residual branch: initialised to zero scale, so the branch starts as zero (PANNs)."""


class PannsResNetBasicBlock(GradientCheckpointingLayer):
    """ResNet basic block of PANNs (``_ResnetBasicBlock``): downsampling by 2x2 average pooling, not strides.

    ``out = ReLU(BN(conv3x3(dropout(ReLU(BN(conv3x3(pool(x))))))) + shortcut(x))``; ``bn2`` starts at zero scale.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout_prob: float):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = PannsResidualBatchNorm(out_channels)
        self.dropout = nn.Dropout(dropout_prob)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = PannsResNetShortcut(in_channels, out_channels, stride) if needs_projection else None

    def forward(self, hidden_states: torch.Tensor, lengths: torch.LongTensor | None = None) -> torch.Tensor:
        """Map ``(B, C_in, t, m)`` to ``(B, C_out, t // stride, m // stride)``; ``lengths`` counts valid input t."""
        out = F.avg_pool2d(hidden_states, kernel_size=2) if self.stride == 2 else hidden_states
        out_lengths = _divide_lengths(lengths, self.stride)
        out = self.dropout(F.relu(self.bn1(self.conv1(_mask_time(out, out_lengths)))))
        out = self.bn2(self.conv2(_mask_time(out, out_lengths)))
        identity = hidden_states if self.shortcut is None else self.shortcut(hidden_states)
        return F.relu(out + identity)


class PannsCnnEncoder(nn.Module):
    """Cnn10 / Cnn14 / aisfx9 body: ``len(config.channels)`` conv blocks."""

    def __init__(self, config: PannsConfig):
        super().__init__()
        spec = config.variant_spec
        widths = [1, *config.channels]
        num_blocks = len(config.channels)
        self.blocks = nn.ModuleList(
            PannsConvBlock(
                widths[index],
                widths[index + 1],
                pool_size=2 if index < num_blocks - 1 or spec.pool_last_block else 1,
                pool_type=spec.conv_pool,
                dropout_prob=config.hidden_dropout_prob,
            )
            for index in range(num_blocks)
        )
        self.time_reduction = 2 ** sum(block.pool_size > 1 for block in self.blocks)

    def forward(
        self, hidden_states: torch.Tensor, lengths: torch.LongTensor | None, folded: FoldedBlocks | None = None
    ) -> tuple[torch.Tensor, torch.LongTensor | None]:
        """Map ``(B, 1, T, M)`` to ``(B, C, t, m)`` and valid input frames ``(B,)`` to valid steps ``(B,)``.

        ``folded``: `PannsModel.fold_conv_blocks`, to reuse one folding over several calls (inference only).
        """
        for block in self.blocks:
            hidden_states = block(hidden_states, lengths, _folded_block(folded, block))
            lengths = _divide_lengths(lengths, block.pool_size)
        return hidden_states, lengths


class PannsResNetEncoder(nn.Module):
    """ResNet38 body: stem conv block, four stages of basic blocks, 2x2 average pool, head conv block."""

    def __init__(self, config: PannsConfig):
        super().__init__()
        stem_width, *stage_widths, head_width = config.channels
        self.stem = PannsConvBlock(1, stem_width, 2, "avg", config.hidden_dropout_prob)
        in_widths = [stem_width, *stage_widths[:-1]]
        self.stages = nn.ModuleList(
            nn.ModuleList(
                PannsResNetBasicBlock(
                    in_widths[stage] if block == 0 else width,
                    width,
                    stride=2 if block == 0 and stage > 0 else 1,
                    dropout_prob=config.resnet_block_dropout_prob,
                )
                for block in range(depth)
            )
            for stage, (width, depth) in enumerate(zip(stage_widths, config.resnet_layers, strict=True))
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.head = PannsConvBlock(stage_widths[-1], head_width, 1, "avg", config.hidden_dropout_prob)
        # Pooled by 2 in the stem, in every stage but the first and before the head.
        self.time_reduction = 2 ** (len(stage_widths) + 1)

    def forward(
        self, hidden_states: torch.Tensor, lengths: torch.LongTensor | None, folded: FoldedBlocks | None = None
    ) -> tuple[torch.Tensor, torch.LongTensor | None]:
        """Map ``(B, 1, T, M)`` to ``(B, C, t, m)`` and valid input frames ``(B,)`` to valid steps ``(B,)``.

        ``folded``: `PannsModel.fold_conv_blocks`, to reuse one folding over several calls (inference only).
        """
        hidden_states = self.stem(hidden_states, lengths, _folded_block(folded, self.stem))
        lengths = _divide_lengths(lengths, 2)
        for stage in self.stages:
            for block in stage:
                hidden_states = block(hidden_states, lengths)
                lengths = _divide_lengths(lengths, block.stride)
        hidden_states = self.dropout(F.avg_pool2d(hidden_states, kernel_size=2))
        lengths = _divide_lengths(lengths, 2)
        return self.head(hidden_states, lengths, _folded_block(folded, self.head)), lengths


class PannsPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading for PANNs models."""

    config_class = PannsConfig
    base_model_prefix = "panns"
    main_input_name = "input_features"
    input_modalities = "audio"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PannsConvBlock", "PannsResNetBasicBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """PANNs initialisation: Xavier-uniform conv/linear weights, zero biases, unit BatchNorms.

        As PANNs' ``_ResnetBasicBlock.init_weights``, the second BatchNorm of each basic block
        (`PannsResidualBatchNorm`) starts at zero scale, so every residual block starts as ReLU(shortcut). (aisfx
        used Kaiming-uniform; only the starting point of training differs.) transformers calls this only on modules
        that own parameters, hence the dedicated BatchNorm class rather than a check on the block.
        """
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            (init.zeros_ if isinstance(module, PannsResidualBatchNorm) else init.ones_)(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)


class PannsModel(PannsPreTrainedModel):
    r"""PANNs CNN (Cnn10, Cnn14, ResNet38) or aisfx's 9-layer CNN over log-mel spectrograms.

    Forward pass (PANNs ``Cnn14.forward`` / ``ResNet38.forward`` without the front-end and the AudioSet head):
    ``input_features`` ``(B, T, M)`` -> ``bn0`` (BatchNorm with the mel bins as channels) -> SpecAugment (training)
    -> CNN ``(B, C, t, m)`` -> mean over mel ``(B, t, C)`` = ``last_hidden_state`` -> max over time + mean over time
    (aisfx9: max only) -> [dropout, ``ReLU(fc1)``, dropout if ``config.use_fc1``] -> ``pooler_output`` ``(B, H)``.

    Padding: pass the frame mask as ``attention_mask`` (or ``audio_attention_mask``, the name
    `PannsFeatureExtractor` gives it); padding must be on the right. Padded frames are zeroed before every
    convolution and excluded from the time max and mean, so in eval mode a padded clip gives the embedding of the
    unpadded clip, whatever the padding holds. In training mode BatchNorm batch statistics and SpecAugment
    still see the padded frames. The valid length of ``last_hidden_state`` is `get_output_lengths`.

    Block mode (``config.block_frames``, as set by ``convert_aisfx_checkpoint.py``): frames beyond a clip's length
    are zeroed, the clip is cut into blocks of ``block_frames`` frames every ``block_hop_frames`` frames exactly as
    aisfx's ``blocking`` with ``drop_partial_block=True`` (``1 + max(0, (L - block_frames) // hop)`` blocks for
    ``L`` valid frames; a clip shorter than one block is zero-padded to one block), every block is embedded as a
    clip of its own and the clip embedding is the mean of its block embeddings. ``last_hidden_state`` is then the
    block embeddings ``(B, N, H)``, zero for blocks beyond a clip's count.

    Inference: in eval mode without autograd (`torch.no_grad`, `torch.inference_mode`) the conv blocks fold their
    BatchNorms into the convolutions and run channels-last, and block mode embeds `INFERENCE_BLOCKS_PER_CALL` blocks
    per call; outputs equal the module-by-module path up to float32 rounding (about 1e-6 relative).

    Example:

    ```python
    >>> import torch
    >>> from hf_mltm.models.panns import PannsConfig, PannsModel
    >>> config = PannsConfig(variant="cnn10", channels=[8, 8, 16, 16])
    >>> model = PannsModel(config).eval()
    >>> output = model(torch.randn(2, 64, 64))
    >>> output.last_hidden_state.shape, output.pooler_output.shape
    (torch.Size([2, 4, 16]), torch.Size([2, 16]))

    ```
    """

    def __init__(self, config: PannsConfig):
        super().__init__(config)
        spec = config.variant_spec
        self.bn0 = nn.BatchNorm2d(config.num_mel_bins) if spec.has_bn0 else None
        self.spec_augmenter = PannsSpecAugment(config) if config.spec_augment else None
        self.encoder = (
            PannsResNetEncoder(config) if spec.architecture == "resnet" else PannsCnnEncoder(config)
        )
        self.fc_dropout = nn.Dropout(config.fc_dropout_prob)
        self.fc1 = nn.Linear(config.hidden_size, config.hidden_size) if config.use_fc1 else None
        self.post_init()

    def get_output_lengths(self, frame_lengths: torch.LongTensor) -> torch.LongTensor:
        """Valid length of ``last_hidden_state`` for clips of ``frame_lengths`` ``(B,)`` valid input frames.

        Returns:
            `torch.LongTensor` of shape ``(B,)``: time steps after the CNN's pooling (at least 1), or the number of
            blocks in block mode.
        """
        if self.config.block_frames is not None:
            return self._num_blocks(frame_lengths)
        return _divide_lengths(frame_lengths, self.encoder.time_reduction).clamp(min=1)

    @can_return_tuple
    def forward(
        self,
        input_features: torch.FloatTensor,
        attention_mask: torch.Tensor | None = None,
        audio_attention_mask: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPooling:
        r"""Embed log-mel spectrograms.

        Args:
            input_features (`torch.FloatTensor` of shape ``(B, T, M)``): Log-mel frames, ``M =
                config.num_mel_bins``.
            attention_mask (`torch.Tensor` of shape ``(B, T)``, *optional*): 1 for real frames, 0 for right padding.
            audio_attention_mask (`torch.Tensor` of shape ``(B, T)``, *optional*): Alias of ``attention_mask``.

        Returns:
            `BaseModelOutputWithPooling` with ``last_hidden_state`` ``(B, t, C)`` (frame features after the mel mean,
            zero beyond `get_output_lengths`; ``(B, N, H)`` block embeddings in block mode) and ``pooler_output``
            ``(B, H)``, the clip embedding.
        """
        lengths = self._frame_lengths(input_features, attention_mask, audio_attention_mask)
        input_features = input_features.to(self.dtype)
        if self.config.block_frames is not None:
            return self._forward_blocks(input_features, lengths)
        frame_states, embeddings = self._embed_clips(input_features, lengths)
        return BaseModelOutputWithPooling(last_hidden_state=frame_states, pooler_output=embeddings)

    def _frame_lengths(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None,
        audio_attention_mask: torch.Tensor | None,
    ) -> torch.LongTensor | None:
        """Check the input and return the valid frames per clip ``(B,)``, or `None` without a mask."""
        if input_features.ndim != 3 or input_features.shape[-1] != self.config.num_mel_bins:
            raise ValueError(
                f"input_features must have shape (batch, frames, {self.config.num_mel_bins}), "
                f"got {tuple(input_features.shape)}."
            )
        if attention_mask is not None and audio_attention_mask is not None:
            raise ValueError("Pass the frame mask as attention_mask or audio_attention_mask, not both.")
        mask = attention_mask if attention_mask is not None else audio_attention_mask
        if mask is None:
            return None
        if mask.shape != input_features.shape[:2]:
            raise ValueError(
                f"attention_mask must have shape {tuple(input_features.shape[:2])}, got {tuple(mask.shape)}."
            )
        return mask.to(device=input_features.device, dtype=torch.long).sum(dim=-1)

    @property
    def inference_numerics(self) -> str:
        """How inference computes beyond the weights: BatchNorm folded into the convolutions, and F(4x4, 3x3)
        Winograd for the 3x3 convolutions with at least `WINOGRAD_MIN_IN_CHANNELS` input channels. Feature caches
        (`hf_mltm.feature_cache.tower_manifest`) key on it."""
        return f"folded-bn; winograd-f4x4-3x3 for in_channels >= {WINOGRAD_MIN_IN_CHANNELS}"

    def fold_conv_blocks(self) -> FoldedBlocks:
        """`PannsConvBlock.fold_convolutions` of every conv block, from the current weights (for inference)."""
        return {module: module.fold_convolutions() for module in self.modules() if isinstance(module, PannsConvBlock)}

    def _embed_clips(
        self, input_features: torch.Tensor, lengths: torch.LongTensor | None, folded: FoldedBlocks | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame features ``(B, t, C)`` and embeddings ``(B, H)`` of clips ``(B, T, M)`` with ``lengths`` ``(B,)``;
        ``folded`` as in the encoders' ``forward``."""
        if min(input_features.shape[1:]) < self.encoder.time_reduction:
            raise ValueError(
                f"{self.config.variant} pools time and mel by {self.encoder.time_reduction}: it needs at least that "
                f"many frames (per block in block mode) and mel bins, got {tuple(input_features.shape[1:])}."
            )
        hidden_states = input_features.unsqueeze(1)  # (B, 1, T, M)
        if self.bn0 is not None:
            hidden_states = self.bn0(hidden_states.transpose(1, 3)).transpose(1, 3)  # BatchNorm over mel bins
        if self.spec_augmenter is not None:
            hidden_states = self.spec_augmenter(hidden_states)
        hidden_states, lengths = self.encoder(hidden_states, lengths, folded)  # (B, C, t, m)
        frame_states = hidden_states.mean(dim=3).transpose(1, 2)  # (B, t, C)
        if lengths is not None:
            lengths = lengths.clamp(min=1)
            frame_states = frame_states.masked_fill(
                ~_keep_mask(lengths, frame_states.shape[1])[..., None], 0.0
            )
        embeddings = self._pool_time(frame_states, lengths)  # (B, C)
        if self.fc1 is not None:
            embeddings = self.fc_dropout(F.relu(self.fc1(self.fc_dropout(embeddings))))
        return frame_states, embeddings

    def _pool_time(self, frame_states: torch.Tensor, lengths: torch.LongTensor | None) -> torch.Tensor:
        """Max (+ mean) over the valid time steps of ``frame_states`` ``(B, t, C)`` (zero beyond ``lengths``)."""
        if lengths is None:
            pooled_max = frame_states.amax(dim=1)
            pooled_mean = frame_states.mean(dim=1)
        else:
            keep = _keep_mask(lengths, frame_states.shape[1])[..., None]  # (B, t, 1)
            pooled_max = frame_states.masked_fill(~keep, float("-inf")).amax(dim=1)
            pooled_mean = frame_states.sum(dim=1) / lengths[:, None].to(frame_states.dtype)
        if self.config.variant_spec.time_pooling == "max":
            return pooled_max
        return pooled_max + pooled_mean

    def _num_blocks(self, frame_lengths: torch.LongTensor) -> torch.LongTensor:
        """aisfx's block count with ``drop_partial_block=True``: ``1 + max(0, (L - block) // hop)``."""
        extra = torch.div(
            frame_lengths - self.config.block_frames, self.config.block_hop_frames, rounding_mode="floor"
        )
        return 1 + extra.clamp(min=0)

    def _forward_blocks(
        self, input_features: torch.Tensor, lengths: torch.LongTensor | None
    ) -> BaseModelOutputWithPooling:
        """Block mode: embed every block of every clip and average the block embeddings per clip."""
        batch_size, num_frames, _ = input_features.shape
        block, hop = self.config.block_frames, self.config.block_hop_frames
        if lengths is None:
            lengths = torch.full((batch_size,), num_frames, dtype=torch.long, device=input_features.device)
        else:
            keep = _keep_mask(lengths, num_frames)  # (B, T)
            input_features = input_features.masked_fill(~keep[..., None], 0.0)
        num_blocks = self._num_blocks(lengths)  # (B,)
        max_blocks = int(num_blocks.max())
        padded_frames = max(num_frames, (max_blocks - 1) * hop + block)
        input_features = F.pad(input_features, (0, 0, 0, padded_frames - num_frames))  # zeros, as aisfx
        blocks = input_features.unfold(1, block, hop)[:, :max_blocks].transpose(2, 3)  # (B, N, block, M)
        valid = _keep_mask(num_blocks, max_blocks)  # (B, N)
        blocks = blocks[valid]  # (valid blocks, block, M)
        if _is_inference(self):
            # A few blocks per call keep each layer's activations in cache (7-10 % faster than one call for 48
            # aisfx blocks on one thread); the result is the same, every block is embedded on its own. The BatchNorms
            # are folded (and the Winograd filters computed) once for all calls.
            folded = self.fold_conv_blocks()
            block_embeddings = torch.cat(
                [self._embed_clips(chunk, None, folded)[1] for chunk in blocks.split(INFERENCE_BLOCKS_PER_CALL)]
            )
        else:
            _, block_embeddings = self._embed_clips(blocks, None)  # (valid blocks, H)
        block_states = block_embeddings.new_zeros(batch_size, max_blocks, block_embeddings.shape[-1])
        block_states[valid] = block_embeddings  # (B, N, H)
        pooled = block_states.sum(dim=1) / num_blocks[:, None].to(block_states.dtype)
        return BaseModelOutputWithPooling(last_hidden_state=block_states, pooler_output=pooled)
