import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from hf_mltm.models.panns import PannsConfig, PannsModel
from hf_mltm.models.panns.modeling_panns import PannsSpecAugment
from tests.utils import randomise_batch_norms

TINY_CHANNELS = {
    "cnn10": [4, 8, 8, 16],
    "cnn14": [4, 4, 8, 8, 16, 16],
    "resnet38": [4, 4, 8, 8, 16, 32],
    "aisfx9": [4, 8, 8, 16],
}
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "resnet_block_dropout_prob": 0.0, "fc_dropout_prob": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(variant: str, **overrides) -> PannsConfig:
    settings = {"variant": variant, "channels": TINY_CHANNELS[variant], "num_mel_bins": 64}
    if variant == "resnet38":
        settings["resnet_layers"] = [1, 2, 1, 1]
    if variant == "aisfx9" and "block_frames" not in overrides:
        settings.update(block_frames=24, block_hop_frames=12)  # aisfx's 100/50 scaled down
    return PannsConfig(**{**settings, **overrides})


def eval_model(config: PannsConfig) -> PannsModel:
    model = PannsModel(config).eval()
    randomise_batch_norms(model)
    return model


# --- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "hidden_size", "has_fc1"),
    [("cnn10", 512, True), ("cnn14", 2048, True), ("resnet38", 2048, True), ("aisfx9", 512, False)],
)
def test_config_variant_defaults(variant, hidden_size, has_fc1):
    config = PannsConfig(variant=variant)
    assert config.hidden_size == config.channels[-1] == hidden_size
    assert config.use_fc1 is has_fc1
    assert config.block_frames is None and config.block_hop_frames is None
    assert (config.resnet_layers == [3, 4, 6, 3]) if variant == "resnet38" else config.resnet_layers is None


@pytest.mark.parametrize(
    "settings",
    [
        {"variant": "resnet50"},
        {"variant": "cnn14", "channels": [64, 128]},
        {"variant": "cnn14", "hidden_size": 512},
        {"variant": "cnn10", "resnet_layers": [1, 1, 1, 1]},
        {"variant": "resnet38", "resnet_layers": [1, 1, 1]},
        {"variant": "cnn10", "block_hop_frames": 10},
        {"variant": "aisfx9", "block_frames": 0},
        {"variant": "cnn10", "fc_dropout_prob": 1.0},
        {"variant": "cnn10", "spec_augment_time_drop_width": 0},
    ],
)
def test_config_rejects_invalid_settings(settings):
    with pytest.raises(ValueError):
        PannsConfig(**settings)


def test_config_round_trips_through_auto_config(tmp_path):
    config = tiny_config("resnet38", use_fc1=False)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, PannsConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert (
        loaded.channels == config.channels
        and loaded.resnet_layers == [1, 2, 1, 1]
        and loaded.use_fc1 is False
    )


# --- forward --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "expected_time"),
    [("cnn10", 64 // 16), ("cnn14", 64 // 32), ("resnet38", 64 // 32), ("aisfx9", 1 + (64 - 24) // 12)],
)
def test_forward_shapes(variant, expected_time):
    config = tiny_config(variant)
    output = eval_model(config)(torch.randn(2, 64, 64))
    hidden = config.hidden_size
    channels = config.channels[-1]
    assert output.pooler_output.shape == (2, hidden)
    assert output.last_hidden_state.shape == (2, expected_time, hidden if variant == "aisfx9" else channels)
    assert torch.isfinite(output.pooler_output).all()


def test_full_size_hidden_sizes_match_pooled_output():
    """Real widths, tiny input: the embedding size is config.hidden_size (the composite model relies on it)."""
    for variant in ("cnn10", "aisfx9"):
        config = PannsConfig(variant=variant)
        with torch.no_grad():
            output = PannsModel(config).eval()(torch.randn(1, 100, config.num_mel_bins))
        assert output.pooler_output.shape == (1, config.hidden_size)


def test_eval_forward_is_deterministic():
    model = eval_model(tiny_config("resnet38"))
    features = torch.randn(3, 64, 64)
    torch.testing.assert_close(model(features).pooler_output, model(features).pooler_output, rtol=0, atol=0)


def test_return_dict_false_gives_a_tuple():
    model = eval_model(tiny_config("cnn10"))
    features = torch.randn(2, 64, 64)
    last_hidden_state, pooled = model(features, return_dict=False)
    torch.testing.assert_close(pooled, model(features).pooler_output)


def test_pooling_is_max_plus_mean_over_time_then_fc1():
    model = eval_model(tiny_config("cnn14"))
    output = model(torch.randn(2, 64, 64))
    frames = output.last_hidden_state  # (B, t, C)
    pooled = frames.amax(dim=1) + frames.mean(dim=1)
    torch.testing.assert_close(output.pooler_output, torch.relu(model.fc1(pooled)))
    without_fc1 = eval_model(tiny_config("cnn14", use_fc1=False))
    assert without_fc1.fc1 is None
    frames = without_fc1(torch.randn(2, 64, 64))
    torch.testing.assert_close(
        frames.pooler_output, frames.last_hidden_state.amax(1) + frames.last_hidden_state.mean(1)
    )


def test_rejects_wrong_mel_count_and_too_short_input():
    model = eval_model(tiny_config("cnn14"))
    with pytest.raises(ValueError, match="input_features must have shape"):
        model(torch.randn(2, 64, 32))
    with pytest.raises(ValueError, match="at least"):
        model(torch.randn(2, 16, 64))
    with pytest.raises(ValueError, match="not both"):
        model(
            torch.randn(1, 64, 64), attention_mask=torch.ones(1, 64), audio_attention_mask=torch.ones(1, 64)
        )


# --- SpecAugment ------------------------------------------------------------------------------------------------


def test_spec_augment_zeroes_narrow_stripes_in_training_only():
    augment = PannsSpecAugment(PannsConfig(variant="cnn10"))
    ones = torch.ones(16, 1, 500, 64)
    assert torch.equal(augment.eval()(ones), ones)
    augmented = augment.train()(ones)
    dropped_frames = (augmented == 0).all(dim=3).sum(dim=(1, 2))  # (B,) whole frames zeroed
    dropped_bins = (augmented == 0).all(dim=2).sum(dim=(1, 2))  # (B,) whole mel bins zeroed
    assert (dropped_frames <= 2 * 63).all() and (dropped_bins <= 2 * 7).all()
    assert dropped_frames.sum() > 0 and dropped_bins.sum() > 0
    assert torch.equal(
        (augmented == 0), (augmented == 0).all(dim=3, keepdim=True) | (augmented == 0).all(2, True)
    )


def test_spec_augment_is_the_only_randomness_in_training_without_dropout():
    features = torch.randn(2, 64, 64)
    augmented = PannsModel(tiny_config("cnn10", **NO_DROPOUT)).train()
    assert not torch.equal(augmented(features).pooler_output, augmented(features).pooler_output)
    plain = PannsModel(tiny_config("cnn10", spec_augment=False, **NO_DROPOUT)).train()
    assert plain.spec_augmenter is None
    torch.testing.assert_close(plain(features).pooler_output, plain(features).pooler_output, rtol=0, atol=0)


# --- padding ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["cnn10", "cnn14", "resnet38"])
def test_padded_frames_do_not_change_the_output(variant):
    """A padded clip gives the unpadded clip's embedding, whatever (even NaN) the padding holds."""
    model = eval_model(tiny_config(variant))
    lengths = [97, 64, 45]  # odd lengths exercise the floor of every 2x2 pooling
    clips = [torch.randn(length, 64) for length in lengths]
    mask = torch.zeros(3, 97, dtype=torch.long)
    batch = torch.full((3, 97, 64), float("nan"))
    for row, clip in enumerate(clips):
        batch[row, : len(clip)] = clip
        mask[row, : len(clip)] = 1
    output = model(batch, attention_mask=mask)
    assert torch.isfinite(output.pooler_output).all()
    output_lengths = model.get_output_lengths(mask.sum(-1))
    for row, clip in enumerate(clips):
        alone = model(clip[None])
        torch.testing.assert_close(output.pooler_output[row], alone.pooler_output[0], atol=1e-5, rtol=1e-5)
        valid = int(output_lengths[row])
        assert valid == alone.last_hidden_state.shape[1]
        torch.testing.assert_close(
            output.last_hidden_state[row, :valid], alone.last_hidden_state[0], atol=1e-5, rtol=1e-5
        )
        assert (output.last_hidden_state[row, valid:] == 0).all()
    garbage = batch.nan_to_num(nan=1e3)
    torch.testing.assert_close(model(garbage, audio_attention_mask=mask).pooler_output, output.pooler_output)


# --- block mode (aisfx) -----------------------------------------------------------------------------------------


def aisfx_num_blocks(num_frames: int, block: int, hop: int) -> int:
    """aisfx.preprocessing.blocking's block count with drop_partial_block=True, transcribed."""
    count = math.ceil((num_frames - block) / hop + 1)
    if (num_frames - block) % hop != 0:
        count -= 1
    return max(count, 1)


def test_block_count_follows_aisfx_blocking():
    model = eval_model(tiny_config("aisfx9"))  # blocks of 24 frames every 12
    frame_lengths = torch.arange(1, 120)
    expected = [aisfx_num_blocks(int(length), 24, 12) for length in frame_lengths]
    assert model.get_output_lengths(frame_lengths).tolist() == expected
    import aisfx.preprocessing as aisfx_preprocessing
    for length in (5, 24, 30, 36, 61):
        blocks = aisfx_preprocessing.blocking(np.zeros((length, 2)), 24, 12, True)
        assert len(blocks) == int(model.get_output_lengths(torch.tensor([length])))


def test_block_mode_averages_zero_padded_blocks():
    """Each block is embedded alone (zero-padded past the clip, as aisfx) and the clip embedding is their mean."""
    model = eval_model(tiny_config("aisfx9"))
    clips = [torch.rand(61, 64), torch.rand(10, 64), torch.rand(40, 64)]
    batch = torch.full((3, 61, 64), 7.0)
    mask = torch.zeros(3, 61)
    for row, clip in enumerate(clips):
        batch[row, : len(clip)] = clip
        mask[row, : len(clip)] = 1
    output = model(batch, attention_mask=mask)
    whole_clips = eval_model(tiny_config("aisfx9", block_frames=None))
    whole_clips.load_state_dict(model.state_dict())
    for row, clip in enumerate(clips):
        count = aisfx_num_blocks(len(clip), 24, 12)
        padded = torch.cat([clip, torch.zeros(24, 64)])
        blocks = torch.stack([padded[12 * index : 12 * index + 24] for index in range(count)])
        block_embeddings = whole_clips(blocks).pooler_output  # (count, H)
        torch.testing.assert_close(
            output.last_hidden_state[row, :count], block_embeddings, atol=1e-5, rtol=1e-5
        )
        assert (output.last_hidden_state[row, count:] == 0).all()
        torch.testing.assert_close(output.pooler_output[row], block_embeddings.mean(0), atol=1e-5, rtol=1e-5)


def test_aisfx9_time_pooling_is_max_only():
    model = eval_model(tiny_config("aisfx9", block_frames=None))
    output = model(torch.randn(2, 32, 64))
    assert model.bn0 is None and model.fc1 is None
    torch.testing.assert_close(output.pooler_output, output.last_hidden_state.amax(dim=1))


# --- weights: init, save/load, meta device ----------------------------------------------------------------------


def test_init_weights_follows_panns():
    model = PannsModel(tiny_config("resnet38"))
    for block in model.encoder.stages[0]:
        assert torch.equal(block.bn2.weight, torch.zeros_like(block.bn2.weight))
    assert torch.equal(model.encoder.stages[1][0].bn1.weight, torch.ones(8))
    assert torch.equal(model.fc1.bias, torch.zeros_like(model.fc1.bias))
    assert model.encoder.stem.conv1.weight.abs().sum() > 0


@pytest.mark.parametrize("variant", ["resnet38", "aisfx9"])
def test_save_pretrained_auto_model_round_trip(tmp_path, variant):
    model = eval_model(tiny_config(variant))
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, PannsModel)
    features = torch.randn(2, 64, 64)
    torch.testing.assert_close(loaded(features).pooler_output, model(features).pooler_output, rtol=0, atol=0)


def test_missing_parameters_are_initialised_by_init_weights(tmp_path):
    """from_pretrained builds on the meta device: a parameter absent from the file must get _init_weights' value."""
    model = eval_model(tiny_config("resnet38"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)  # every saved value differs from its initial value
    model.save_pretrained(tmp_path)
    weights_file = tmp_path / "model.safetensors"
    state = load_file(weights_file)
    dropped = ["fc1.bias", "bn0.running_var", "encoder.stages.1.0.bn2.weight", "encoder.stem.bn1.weight"]
    save_file(
        {name: tensor for name, tensor in state.items() if name not in dropped},
        weights_file,
        {"format": "pt"},
    )
    loaded = PannsModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.fc1.bias, torch.zeros_like(loaded.fc1.bias))
    assert torch.equal(loaded.bn0.running_var, torch.ones_like(loaded.bn0.running_var))
    assert torch.equal(loaded.encoder.stages[1][0].bn2.weight, torch.zeros(8))
    assert torch.equal(loaded.encoder.stem.bn1.weight, torch.ones(4))
    loaded_state = loaded.state_dict()
    for name, tensor in state.items():
        if name not in dropped:
            assert torch.equal(loaded_state[name], tensor), name


# --- gradient checkpointing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["cnn14", "resnet38", "aisfx9"])
def test_gradient_checkpointing_gives_the_same_gradients(variant):
    config = tiny_config(variant, spec_augment=False, **NO_DROPOUT)
    features = torch.randn(2, 64, 64)
    mask = torch.ones(2, 64)
    mask[1, 50:] = 0
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = PannsModel(config).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(
                block.gradient_checkpointing for block in model.encoder.modules() if hasattr(block, "conv1")
            )
        model(features, attention_mask=mask).pooler_output.square().sum().backward()
        gradients.append({name: parameter.grad for name, parameter in model.named_parameters()})
    assert gradients[0].keys() == gradients[1].keys()
    for name, gradient in gradients[0].items():
        assert gradient is not None, name
        torch.testing.assert_close(gradients[1][name], gradient, atol=1e-5, rtol=1e-4)
