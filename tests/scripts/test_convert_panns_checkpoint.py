"""The PANNs converter against an independent re-implementation of the official layout and forward pass.

``OfficialPanns`` below mirrors qiuqiangkong/audioset_tagging_cnn ``pytorch/models.py`` (Cnn10, Cnn14, ResNet38):
same attribute names, hence the same state-dict keys, and the same eval-mode forward from the log-mel onwards.
Its random weights (BatchNorm statistics included) are saved as an official checkpoint, converted, and the
converted `PannsModel` must reproduce its embedding: a wrong name mapping (e.g. ``bn1``/``bn2`` or ``conv1``/
``conv2`` swapped, a misplaced shortcut) changes the output.
"""

import functools
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel

from hf_mltm.models.mltm import feature_extraction_mltm as feature_extraction
from hf_mltm.models.panns import PannsModel
from tests.utils import load_script

convert = load_script("convert_panns_checkpoint")


pytestmark = pytest.mark.usefixtures("one_thread")


TINY = {
    "cnn10": [4, 8, 8, 16],
    "cnn14": [4, 4, 8, 8, 16, 16],
    "resnet38": [4, 8, 8, 16, 16, 32],  # stem 4 -> stage 1 of width 8: a stride-1 projection shortcut too
}
NUM_CLASSES = 7


class OfficialConvBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x, pool_size):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool_size)


class OfficialBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(inplanes, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = F.avg_pool2d(x, kernel_size=2) if self.stride == 2 else x
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(out)))))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class OfficialResNet(nn.Module):
    """``_ResNet`` with ``_ResnetBasicBlock``: ``layer1..4``, shortcut ``Sequential([AvgPool2d,] conv1x1, BN)``."""

    def __init__(self, inplanes, widths, layers):
        super().__init__()
        for index, (planes, depth) in enumerate(zip(widths, layers, strict=True)):
            stride = 1 if index == 0 else 2
            downsample = None
            if stride == 2:
                downsample = nn.Sequential(
                    nn.AvgPool2d(2), nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
                )
            elif inplanes != planes:
                downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes))
            blocks = [OfficialBasicBlock(inplanes, planes, stride, downsample)]
            blocks += [OfficialBasicBlock(planes, planes, 1, None) for _ in range(depth - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
            inplanes = planes

    def forward(self, x):
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class OfficialPanns(nn.Module):
    """Official Cnn10 / Cnn14 / ResNet38 from the log-mel on (eval mode, so dropout is left out)."""

    def __init__(self, variant, widths, resnet_layers=(3, 4, 6, 3), mel_bins=64):
        super().__init__()
        self.variant = variant
        self.bn0 = nn.BatchNorm2d(mel_bins)
        if variant == "resnet38":
            self.conv_block1 = OfficialConvBlock(1, widths[0])
            self.resnet = OfficialResNet(widths[0], widths[1:5], resnet_layers)
            self.conv_block_after1 = OfficialConvBlock(widths[4], widths[5])
        else:
            for index, (in_width, out_width) in enumerate(zip([1, *widths[:-1]], widths, strict=True)):
                setattr(self, f"conv_block{index + 1}", OfficialConvBlock(in_width, out_width))
        self.fc1 = nn.Linear(widths[-1], widths[-1])
        self.fc_audioset = nn.Linear(widths[-1], NUM_CLASSES)

    def forward(self, logmel):
        """``logmel`` ``(B, 1, T, M)`` -> (frames ``(B, C, t)``, pooled before fc1, embedding, clipwise output)."""
        x = self.bn0(logmel.transpose(1, 3)).transpose(1, 3)
        if self.variant == "resnet38":
            x = self.conv_block1(x, pool_size=2)
            x = F.avg_pool2d(self.resnet(x), kernel_size=2)
            x = self.conv_block_after1(x, pool_size=1)
        else:
            blocks = [module for name, module in self.named_children() if name.startswith("conv_block")]
            for index, block in enumerate(blocks):
                last = index == len(blocks) - 1
                x = block(x, pool_size=1 if last and self.variant == "cnn14" else 2)
        frames = x.mean(dim=3)
        pooled = frames.amax(dim=2) + frames.mean(dim=2)
        embedding = F.relu(self.fc1(pooled))
        return frames, pooled, embedding, torch.sigmoid(self.fc_audioset(embedding))


def official_model(variant: str, widths: list[int], resnet_layers=(3, 4, 6, 3)) -> OfficialPanns:
    """Random weights with BatchNorm statistics calibrated on random input, so the signal survives the depth.

    Cached: tests only read the model (checkpoint edits act on a copy of the state dict).
    """
    return _official_model(variant, tuple(widths), tuple(resnet_layers))


@functools.cache
def _official_model(variant: str, widths: tuple[int, ...], resnet_layers: tuple[int, ...]) -> OfficialPanns:
    model = OfficialPanns(variant, list(widths), resnet_layers)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith("bias") or name.startswith("bn0"):
                tensor.normal_(0.0, 0.2)
            elif tensor.ndim == 1:  # BatchNorm scales
                tensor.uniform_(0.5, 1.5)
            else:
                tensor.normal_(0.0, (2.0 / tensor[0].numel()) ** 0.5)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(3):
            model(torch.randn(4, 1, 96, 64) * 10.0 - 30.0)  # dB-like log-mel
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.num_batches_tracked.fill_(1234)
    return model.eval()


def official_checkpoint(model: OfficialPanns) -> dict:
    """The official file layout: ``{"model": state_dict, ...}`` with the front-end buffers inside."""
    state_dict = dict(model.state_dict())
    state_dict["spectrogram_extractor.stft.conv_real.weight"] = torch.randn(9, 1, 16)
    state_dict["spectrogram_extractor.stft.conv_imag.weight"] = torch.randn(9, 1, 16)
    state_dict["logmel_extractor.melW"] = torch.rand(9, 64)
    return {"iteration": 10000, "model": state_dict}


def save_checkpoint(path: Path, model: OfficialPanns, edit=None) -> Path:
    checkpoint = official_checkpoint(model)
    if edit is not None:
        edit(checkpoint["model"])
    torch.save(checkpoint, path)
    return path


def tiny_overrides(variant: str) -> dict:
    overrides = {"channels": TINY[variant]}
    if variant == "resnet38":
        overrides["resnet_layers"] = [3, 4, 6, 3]
    return overrides


@pytest.mark.parametrize("variant", ["cnn10", "cnn14", "resnet38"])
def test_converted_model_reproduces_the_official_forward(tmp_path, variant):
    reference = official_model(variant, TINY[variant])
    path = save_checkpoint(tmp_path / "official.pth", reference)
    model = convert.convert_panns_checkpoint(
        path, tmp_path / "hf", variant, config_overrides=tiny_overrides(variant)
    )
    logmel = torch.randn(3, 70, 64) * 10.0 - 30.0
    with torch.no_grad():
        frames, _, embedding, _ = reference(logmel[:, None])
        converted = model(logmel)
        reloaded = AutoModel.from_pretrained(tmp_path / "hf").eval()(logmel)
    frame_error = relative_error(converted.last_hidden_state, frames.transpose(1, 2))
    embedding_error = relative_error(converted.pooler_output, embedding)
    assert frame_error < 1e-5 and embedding_error < 1e-5, (frame_error, embedding_error)
    torch.testing.assert_close(reloaded.pooler_output, converted.pooler_output, rtol=0, atol=0)
    assert not (tmp_path / "hf" / convert.AUDIOSET_HEAD_FILE).exists()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max absolute error over the max magnitude of ``expected`` (which must not be ~0, or nothing is tested)."""
    scale = expected.abs().max().item()
    assert scale > 1e-2
    return (actual - expected).abs().max().item() / scale


def test_spot_checked_tensors_land_in_the_right_modules(tmp_path):
    """A few official names read against the converted modules directly (independent of the key table)."""
    reference = official_model("resnet38", TINY["resnet38"], resnet_layers=(1, 2, 1, 1))
    overrides = {"channels": TINY["resnet38"], "resnet_layers": [1, 2, 1, 1]}
    path = save_checkpoint(tmp_path / "official.pth", reference)
    model = convert.convert_panns_checkpoint(path, tmp_path / "hf", "resnet38", config_overrides=overrides)
    official = reference.state_dict()
    stages = model.encoder.stages
    expected = {
        "bn0.running_mean": model.bn0.running_mean,
        "conv_block1.bn2.weight": model.encoder.stem.bn2.weight,
        "resnet.layer1.0.downsample.0.weight": stages[0][0].shortcut.conv.weight,
        "resnet.layer1.0.downsample.1.running_var": stages[0][0].shortcut.bn.running_var,
        "resnet.layer2.1.conv2.weight": stages[1][1].conv2.weight,
        "resnet.layer3.0.downsample.1.weight": stages[2][0].shortcut.conv.weight,
        "resnet.layer4.0.downsample.2.bias": stages[3][0].shortcut.bn.bias,
        "conv_block_after1.conv1.weight": model.encoder.head.conv1.weight,
        "fc1.weight": model.fc1.weight,
    }
    for name, tensor in expected.items():
        assert torch.equal(official[name], tensor), name
    assert not (tmp_path / "hf" / convert.AUDIOSET_HEAD_FILE).exists()


def test_every_batch_norm_counter_is_copied(tmp_path):
    reference = official_model("cnn10", TINY["cnn10"])
    model = convert.convert_panns_checkpoint(
        save_checkpoint(tmp_path / "official.pth", reference),
        tmp_path / "hf",
        "cnn10",
        config_overrides=tiny_overrides("cnn10"),
    )
    counters = [name for name in model.state_dict() if name.endswith("num_batches_tracked")]
    assert len(counters) == 9  # bn0 + 2 per conv block
    assert all(int(model.state_dict()[name]) == 1234 for name in counters)


def test_without_fc1_the_embedding_is_the_pooled_cnn_output(tmp_path):
    reference = official_model("resnet38", TINY["resnet38"], resnet_layers=(1, 2, 1, 1))
    path = save_checkpoint(tmp_path / "official.pth", reference)
    overrides = {"channels": TINY["resnet38"], "resnet_layers": [1, 2, 1, 1], "use_fc1": False}
    model = convert.convert_panns_checkpoint(path, tmp_path / "hf", "resnet38", config_overrides=overrides)
    assert model.fc1 is None
    logmel = torch.randn(2, 64, 64) * 10.0 - 30.0
    with torch.no_grad():
        _, pooled, _, _ = reference(logmel[:, None])
        assert relative_error(model(logmel).pooler_output, pooled) < 1e-5


def test_kept_audioset_head_reproduces_the_clipwise_output(tmp_path):
    reference = official_model("cnn14", TINY["cnn14"])
    path = save_checkpoint(tmp_path / "official.pth", reference)
    model = convert.convert_panns_checkpoint(
        path, tmp_path / "hf", "cnn14", drop_head=False, config_overrides=tiny_overrides("cnn14")
    )
    head = load_file(tmp_path / "hf" / convert.AUDIOSET_HEAD_FILE)
    logmel = torch.randn(2, 64, 64)
    with torch.no_grad():
        clipwise = reference(logmel[:, None])[3]
        ours = torch.sigmoid(F.linear(model(logmel).pooler_output, head["weight"], head["bias"]))
    torch.testing.assert_close(ours, clipwise, atol=1e-5, rtol=1e-5)


def test_missing_head_is_an_error_only_when_kept(tmp_path):
    reference = official_model("cnn10", TINY["cnn10"])

    def drop_head(state_dict):
        del state_dict["fc_audioset.weight"], state_dict["fc_audioset.bias"]

    path = save_checkpoint(tmp_path / "official.pth", reference, drop_head)
    convert.convert_panns_checkpoint(path, tmp_path / "ok", "cnn10", config_overrides=tiny_overrides("cnn10"))
    with pytest.raises(ValueError, match="fc_audioset.weight"):
        convert.convert_panns_checkpoint(
            path, tmp_path / "bad", "cnn10", drop_head=False, config_overrides=tiny_overrides("cnn10")
        )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda sd: sd.pop("resnet.layer3.0.downsample.2.running_var"),
            r"missing keys \['resnet.layer3.0.downsample.2.running_var'\]",
        ),
        (
            lambda sd: sd.pop("conv_block_after1.conv2.weight"),
            r"missing keys \['conv_block_after1.conv2.weight'\]",
        ),
        (
            lambda sd: sd.update({"resnet.layer1.3.conv1.weight": torch.zeros(1)}),
            r"unexpected keys \['resnet.layer1.3.conv1.weight'\]",
        ),
        (
            lambda sd: sd.update({"spectrogram_extractor.window": torch.zeros(1)}),
            r"unexpected keys \['spectrogram_extractor.window'\]",
        ),
        (lambda sd: sd.update({"fc1.weight": torch.zeros(32, 16)}), r"shapes do not match.*fc1.weight"),
    ],
)
def test_key_errors_are_loud(tmp_path, edit, message):
    reference = official_model("resnet38", TINY["resnet38"])
    path = save_checkpoint(tmp_path / "official.pth", reference, edit)
    with pytest.raises(ValueError, match=message):
        convert.convert_panns_checkpoint(
            path, tmp_path / "hf", "resnet38", config_overrides=tiny_overrides("resnet38")
        )
    assert not (tmp_path / "hf").exists()


def test_rejects_aisfx_variant_and_non_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="variant"):
        convert.convert_panns_checkpoint(tmp_path / "x.pth", tmp_path / "hf", "aisfx9")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="PANNs checkpoint"):
        convert.convert_panns_checkpoint(tmp_path / "list.pth", tmp_path / "hf", "cnn10")


def test_numpy_objects_in_the_checkpoint_load_with_weights_only(tmp_path):
    """Training checkpoints also hold the sampler state (numpy arrays and scalars); weights_only must cope."""
    import numpy as np

    checkpoint = {"model": {"w": torch.zeros(1)}, "sampler": {"indexes": np.arange(4), "seed": np.int64(3)}}
    torch.save(checkpoint, tmp_path / "numpy.pth")
    loaded = convert.load_checkpoint(tmp_path / "numpy.pth")
    assert loaded["sampler"]["indexes"].tolist() == [0, 1, 2, 3]


def test_command_line_converts_a_full_size_cnn10(tmp_path, monkeypatch):
    reference = official_model("cnn10", [64, 128, 256, 512])
    path = save_checkpoint(tmp_path / "Cnn10.pth", reference)
    argv = ["convert", "--checkpoint", str(path), "--variant", "cnn10", "--output_dir", str(tmp_path / "hf")]
    monkeypatch.setattr(sys, "argv", [*argv, "--keep_audioset_head"])
    convert.main()
    model = PannsModel.from_pretrained(tmp_path / "hf").eval()
    assert model.config.hidden_size == 512
    logmel = torch.randn(1, 64, 64) * 10.0 - 30.0
    with torch.no_grad():
        assert relative_error(model(logmel).pooler_output, reference(logmel[:, None])[2]) < 1e-5
    assert (tmp_path / "hf" / convert.AUDIOSET_HEAD_FILE).exists()
    extractor = feature_extraction.MLTMFeatureExtractor.from_pretrained(tmp_path / "hf")
    assert (extractor.sampling_rate, extractor.feature_size, extractor.hop_length) == (32000, 64, 320)
