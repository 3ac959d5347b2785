"""``benchmarks/towers.py`` end to end on 2 clips / 2 images, and the towers' inference path it measures.

Without autograd and in eval mode, `PannsConvBlock` and `EfficientNetLiteConvLayer` fold each BatchNorm into its
convolution and run channels-last (PANNs block mode also embeds blocks a few at a time). These tests pin that path to
the module-by-module eval path (the same models with autograd on) and to hand-checked numbers.
"""

import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hf_mltm.models.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteModel
from hf_mltm.models.panns import PannsConfig, PannsModel, modeling_panns
from tests.utils import randomise_batch_norms

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "towers.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def load_benchmark():
    spec = importlib.util.spec_from_file_location("towers_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the benchmark --------------------------------------------------------------------------------------------------


@pytest.mark.slow  # converts both checkpoints and loads both packages' networks: about 10-20 s on one thread
def test_quick_run_checks_parity_and_prints_finite_speedups(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_MLTM_DATA", str(shared_data))
    towers = load_benchmark()
    threads = torch.get_num_threads()
    output = tmp_path / "towers.json"
    try:
        result = towers.main(["--quick", "--clips", "2", "--images", "2", "--repeats", "1", "--output", str(output)])
    finally:
        torch.set_num_threads(threads)
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"towers_audio_speedup=(\S+) towers_image_speedup=(\S+)", last_line)
    assert match, last_line
    audio, image = (float(value) for value in match.groups())
    assert math.isfinite(audio) and audio > 0 and math.isfinite(image) and image > 0
    assert abs(audio - result["summary"]["towers_audio_speedup"]) < 0.006
    assert result["audio"]["ours"]["items"] == result["image"]["theirs"]["items"] == 2
    # The parity checks ran before timing, on the real inputs, within the stated tolerances.
    assert result["audio_parity"]["max_abs_diff_clip_embeddings"] <= towers.AUDIO_ATOL == 1e-4
    assert result["audio_parity"]["max_abs_embedding"] > 0.5
    assert result["image_parity"]["max_abs_diff_feature_maps"] <= towers.IMAGE_ATOL == 1e-4
    assert result["image_parity"]["max_abs_feature"] > 1.0
    assert output.is_file() and result["environment"]["threads"] == 1


def test_benchmark_rejects_more_clips_than_the_data_has(shared_data, monkeypatch):
    monkeypatch.setenv("HF_MLTM_DATA", str(shared_data))
    with pytest.raises(ValueError, match=r"--clips 100000: only 398 ESC-50 clips"):
        load_benchmark().load_clips(100_000)


def test_aisfx_mel_filters_match_the_hand_computed_htk_triangle():
    """Filter 0 of librosa's HTK mel bank (norm=1): a triangle on [0, f_1] Hz peaking at f_0, divided by its sum."""
    filters = load_benchmark().aisfx_mel_filters()
    assert filters.shape == (96, 1025) and filters.dtype.name == "float32"
    torch.testing.assert_close(torch.from_numpy(filters.sum(axis=1)), torch.ones(96), rtol=0, atol=1e-6)
    mel_max = 2595.0 * math.log10(1.0 + 22050.0 / 700.0)
    edges = [700.0 * (10.0 ** (mel_max * index / 97 / 2595.0) - 1.0) for index in range(3)]  # 0, f_0, f_1 Hz
    bins = [bin_index * 44100 / 2048 for bin_index in range(3)]
    triangle = [max(0.0, min(hz / edges[1], (edges[2] - hz) / (edges[2] - edges[1]))) for hz in bins]
    assert triangle[0] == 0.0 and triangle[1] > 0.0
    nonzero = [value for value in filters[0] if value > 0]
    torch.testing.assert_close(torch.tensor(nonzero, dtype=torch.float64),
                               torch.tensor([value / sum(triangle) for value in triangle if value > 0],
                                            dtype=torch.float64),
                               rtol=1e-6, atol=0)


# --- PANNs inference path -------------------------------------------------------------------------------------------


def test_fold_batch_norm_hand_checked():
    """conv weight 2, BN gamma 3, beta 1, mean 0.5, var 3, eps 1: scale 3 / sqrt(4) = 1.5, so w = 3, b = 0.25."""
    conv = torch.nn.Conv2d(1, 1, kernel_size=1, bias=False)
    batch_norm = torch.nn.BatchNorm2d(1, eps=1.0).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0)
        batch_norm.weight.fill_(3.0)
        batch_norm.bias.fill_(1.0)
        batch_norm.running_mean.fill_(0.5)
        batch_norm.running_var.fill_(3.0)
        weight, bias = modeling_panns._fold_batch_norm(conv, batch_norm)
        x = torch.tensor([[[[1.0, -2.0]]]])
        assert weight.item() == 3.0 and bias.item() == 0.25
        torch.testing.assert_close(F.conv2d(x, weight, bias), batch_norm(conv(x)), rtol=0, atol=0)


def test_one_channel_matrix_product_equals_conv2d_with_channels_last_output():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 7, 5, generator=generator, dtype=torch.float64)
    weight = torch.randn(4, 1, 3, 3, generator=generator, dtype=torch.float64)
    bias = torch.randn(4, generator=generator, dtype=torch.float64)
    out = modeling_panns._conv3x3_channels_last(x, weight, bias)
    assert out.shape == (3, 4, 7, 5) and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, padding=1), rtol=1e-12, atol=1e-12)


TINY_PANNS = {
    "cnn10": {"channels": [4, 8, 8, 16]},
    "cnn14": {"channels": [4, 4, 8, 8, 16, 16]},
    "resnet38": {"channels": [4, 4, 8, 8, 16, 32], "resnet_layers": [1, 2, 1, 1]},
    "aisfx9": {"channels": [4, 8, 8, 16], "block_frames": 24, "block_hop_frames": 12},
}


@pytest.mark.parametrize("winograd_min_in_channels", [modeling_panns.WINOGRAD_MIN_IN_CHANNELS, 1])
@pytest.mark.parametrize("variant", sorted(TINY_PANNS))
def test_panns_inference_path_equals_the_autograd_path_on_padded_batches(variant, winograd_min_in_channels,
                                                                         monkeypatch):
    """The tiny models are narrower than the Winograd threshold; with it at 1, every convolution runs by Winograd."""
    monkeypatch.setattr(modeling_panns, "WINOGRAD_MIN_IN_CHANNELS", winograd_min_in_channels)
    model = randomise_batch_norms(PannsModel(PannsConfig(variant=variant, num_mel_bins=64, **TINY_PANNS[variant])))
    lengths = [97, 64, 30]  # odd lengths exercise every pooling's floor; 30 frames is under 3 aisfx blocks
    features = torch.full((3, 97, 64), float("nan"))  # padding must not leak, whatever it holds
    mask = torch.zeros(3, 97, dtype=torch.long)
    for row, length in enumerate(lengths):
        features[row, :length] = torch.randn(length, 64)
        mask[row, :length] = 1
    with torch.no_grad():
        fast = model(features, attention_mask=mask)
    with torch.enable_grad():
        reference = model(features, attention_mask=mask)
    assert reference.pooler_output.requires_grad and not fast.pooler_output.requires_grad
    torch.testing.assert_close(fast.pooler_output, reference.pooler_output.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.last_hidden_state, reference.last_hidden_state.detach(), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(fast.pooler_output).all()


def test_aisfx_blocks_embedded_in_chunks_equal_one_call():
    """More blocks than one inference call takes: chunking must not reorder or mix blocks of different clips."""
    config = PannsConfig(variant="aisfx9", num_mel_bins=64, channels=[4, 8, 8, 16], block_frames=24,
                         block_hop_frames=12)
    model = randomise_batch_norms(PannsModel(config))
    features = torch.randn(3, 130, 64)  # 9 blocks per clip: 27 blocks, 4 calls
    mask = torch.ones(3, 130)
    mask[1, 61:] = 0  # 4 blocks
    counts = model.get_output_lengths(mask.sum(-1))
    assert counts.tolist() == [9, 4, 9] and counts.sum() > 2 * modeling_panns.INFERENCE_BLOCKS_PER_CALL
    with torch.inference_mode():
        chunked = model(features, attention_mask=mask)
        blocks = features.unfold(1, 24, 12).transpose(2, 3)  # (3, 10, 24, 64)
        single = model._embed_clips(blocks[1, :4], None)[1]  # clip 1's blocks in one call
    torch.testing.assert_close(chunked.last_hidden_state[1, :4], single, rtol=1e-5, atol=1e-6)
    assert (chunked.last_hidden_state[1, 4:] == 0).all()
    torch.testing.assert_close(chunked.pooler_output[1], single.mean(0), rtol=1e-5, atol=1e-6)


def test_aisfx9_runs_its_convolutions_from_128_input_channels_by_winograd():
    model = PannsModel(PannsConfig(variant="aisfx9", block_frames=100, block_hop_frames=50)).eval()
    with torch.no_grad():
        folded = model.fold_conv_blocks()
    flags = [conv.winograd for block in model.encoder.blocks for conv in folded[block]]
    assert flags == [False, False, False, True, True, True, True, True]  # inputs 1, 64, 64, 128, 128, 256, 256, 512
    assert folded[model.encoder.blocks[3]][1].weight.shape == (36, 512, 512)


def test_block_mode_folds_every_conv_block_once_per_forward(monkeypatch):
    """27 blocks in 4 inference calls: the BatchNorm folding and Winograd filters are computed once, not per call."""
    monkeypatch.setattr(modeling_panns, "WINOGRAD_MIN_IN_CHANNELS", 8)
    config = PannsConfig(variant="aisfx9", num_mel_bins=64, channels=[4, 8, 8, 16], block_frames=24,
                         block_hop_frames=12)
    model = randomise_batch_norms(PannsModel(config))
    calls = []
    original = modeling_panns.PannsConvBlock.fold_convolutions
    monkeypatch.setattr(modeling_panns.PannsConvBlock, "fold_convolutions",
                        lambda block: calls.append(block) or original(block))
    features = torch.randn(3, 130, 64)
    with torch.inference_mode():
        fast = model(features)
    assert sorted(map(id, calls)) == sorted(map(id, model.encoder.blocks))
    torch.testing.assert_close(fast.pooler_output, model(features).pooler_output.detach(), rtol=1e-5, atol=1e-5)


def test_direct_convolutions_turns_winograd_off_and_restores_it():
    towers = load_benchmark()
    model = PannsModel(PannsConfig(variant="aisfx9")).eval()
    threshold = modeling_panns.WINOGRAD_MIN_IN_CHANNELS
    with pytest.raises(RuntimeError, match="inside"), towers.direct_convolutions(), torch.no_grad():
        assert not any(conv.winograd for pair in model.fold_conv_blocks().values() for conv in pair)
        raise RuntimeError("inside")
    assert modeling_panns.WINOGRAD_MIN_IN_CHANNELS == threshold


# --- EfficientNet-Lite inference path -------------------------------------------------------------------------------


def test_efficientnet_lite_inference_path_equals_the_autograd_path_with_contiguous_outputs():
    config = EfficientNetLiteConfig(image_size=32, stem_channels=8, kernel_sizes=[3, 5], strides=[1, 2],
                                    out_channels=[8, 16], num_block_repeats=[1, 2], expand_ratios=[1, 2],
                                    head_channels=32)
    model = randomise_batch_norms(EfficientNetLiteModel(config))
    pixel_values = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        fast = model(pixel_values, output_hidden_states=True)
    reference = model(pixel_values, output_hidden_states=True)
    assert reference.last_hidden_state.requires_grad
    for mine, expected in zip(fast.hidden_states, reference.hidden_states, strict=True):
        assert mine.is_contiguous()  # channels-last inside, the usual layout outside
        torch.testing.assert_close(mine, expected.detach(), rtol=1e-5, atol=1e-5)
    assert fast.hidden_states[-1] is fast.last_hidden_state
    torch.testing.assert_close(fast.pooler_output, reference.pooler_output.detach(), rtol=1e-5, atol=1e-5)
    assert 0 <= fast.last_hidden_state.min() and fast.last_hidden_state.max() <= 6  # ReLU6 in place


def test_training_mode_under_no_grad_keeps_batch_statistics():
    """Folding uses the running statistics, so it must not run in training mode (batch statistics), grad or not."""
    config = EfficientNetLiteConfig(image_size=32, stem_channels=8, kernel_sizes=[3], strides=[2], out_channels=[8],
                                    num_block_repeats=[1], expand_ratios=[1], head_channels=16, drop_connect_rate=0.0)
    model = randomise_batch_norms(EfficientNetLiteModel(config)).train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.0  # keep the running statistics fixed across the two calls
    pixel_values = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        training = model(pixel_values).last_hidden_state
        evaluation = model.eval()(pixel_values).last_hidden_state
    assert (training - evaluation).abs().max() > 1e-2
    model.train()
    torch.testing.assert_close(model(pixel_values).last_hidden_state.detach(), training)
