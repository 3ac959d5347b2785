"""`hf_mltm.models.winograd`: F(4x4, 3x3) Winograd convolution against `F.conv2d` and hand-checked filters."""

import pytest
import torch
import torch.nn.functional as F

from hf_mltm.models.winograd import conv3x3_winograd, winograd_filters


@pytest.fixture
def uninitialised_memory_is_nan():
    """``torch.empty`` filled with NaN, so that any output or padding the convolution forgets to write shows."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(previous[0])
    torch.utils.deterministic.fill_uninitialized_memory = previous[1]


@pytest.mark.usefixtures("uninitialised_memory_is_nan")
@pytest.mark.parametrize(
    "shape, out_channels, tiles_per_chunk",
    [
        ((3, 5, 7, 5), 4, 1),  # H, W not multiples of 4; one tile per chunk: runs of tile rows within an image
        ((2, 3, 13, 9), 6, 5),  # chunks of two tile rows, the last one shorter
        ((4, 8, 12, 12), 8, 20),  # chunks of two whole images (9 tiles each)
        ((5, 2, 8, 4), 3, 6),  # chunks of three images, the last one of two
        ((1, 2, 1, 1), 3, 256),  # a single pixel: all of the 6 x 6 tile but one entry is padding
        ((2, 1, 16, 20), 5, 10_000),  # one input channel, everything in one chunk
    ],
)
def test_equals_conv2d_in_float64(shape, out_channels, tiles_per_chunk):
    generator = torch.Generator().manual_seed(0)
    hidden_states = torch.randn(shape, generator=generator, dtype=torch.float64)
    weight = torch.randn(out_channels, shape[1], 3, 3, generator=generator, dtype=torch.float64)
    bias = torch.randn(out_channels, generator=generator, dtype=torch.float64)
    expected = F.conv2d(hidden_states, weight, bias, padding=1)
    out = conv3x3_winograd(hidden_states, winograd_filters(weight), bias, tiles_per_chunk=tiles_per_chunk)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    without_bias = conv3x3_winograd(hidden_states, winograd_filters(weight), tiles_per_chunk=tiles_per_chunk)
    torch.testing.assert_close(without_bias, expected - bias[:, None, None], rtol=0, atol=1e-12)


def test_reads_channels_last_input_and_returns_channels_last_output():
    generator = torch.Generator().manual_seed(1)
    hidden_states = torch.randn(2, 6, 8, 12, generator=generator).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(4, 6, 3, 3, generator=generator)
    out = conv3x3_winograd(hidden_states, winograd_filters(weight))
    assert out.is_contiguous(memory_format=torch.channels_last)  # H and W are multiples of 4: no cropped view
    expected = F.conv2d(hidden_states.double(), weight.double(), padding=1)
    assert (out.double() - expected).abs().max() < 1e-5 * expected.abs().max()


def test_float32_error_stays_within_a_few_roundings_on_a_wide_layer():
    """256 -> 256 channels on a 25 x 24 map (an aisfx layer): error against float64 under 2e-5 of the largest output
    (the transforms' constants up to 8 cost a few float32 roundings; a direct convolution gets about 1e-6)."""
    generator = torch.Generator().manual_seed(2)
    hidden_states = torch.randn(2, 256, 25, 24, generator=generator, dtype=torch.float64).relu()
    weight = torch.randn(256, 256, 3, 3, generator=generator, dtype=torch.float64) / 48  # fan-in 2304
    bias = torch.randn(256, generator=generator, dtype=torch.float64)
    expected = F.conv2d(hidden_states, weight, bias, padding=1)
    out = conv3x3_winograd(hidden_states.float(), winograd_filters(weight.float()), bias.float())
    error = (out.double() - expected).abs().max() / expected.abs().max()
    assert 0 < error < 2e-5


def test_filters_of_a_centred_delta_hand_checked():
    """g = e_(1,1) gives U = G[:, 1] G[:, 1]^T with G[:, 1] = (0, -1/6, 1/6, 1/12, -1/12, 0); the convolution is then
    the identity."""
    weight = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    weight[0, 0, 1, 1] = 1.0
    column = torch.tensor([0, -1 / 6, 1 / 6, 1 / 12, -1 / 12, 0], dtype=torch.float64)
    filters = winograd_filters(weight)
    assert filters.shape == (36, 1, 1)
    torch.testing.assert_close(filters.view(6, 6), torch.outer(column, column), rtol=0, atol=1e-15)
    hidden_states = torch.randn(2, 1, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(conv3x3_winograd(hidden_states, filters), hidden_states, rtol=0, atol=1e-13)


def test_filters_not_matching_the_input_are_errors():
    with pytest.raises(ValueError, match=r"3x3 convolution weights \(C_out, C_in, 3, 3\), got \(4, 2, 5, 5\)"):
        winograd_filters(torch.zeros(4, 2, 5, 5))
    with pytest.raises(ValueError, match=r"filters must have shape \(36, C_out, 3\).*got \(36, 4, 2\)"):
        conv3x3_winograd(torch.zeros(1, 3, 4, 4), winograd_filters(torch.zeros(4, 2, 3, 3)))
