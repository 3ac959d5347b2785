"""Converting a tower on first use must leave torch's random stream alone.

The conversion scripts build a randomly initialised model before loading the checkpoint. Before the fix, a training
run that converted aisfx on first use (a fresh ``$HF_MLTM_CACHE``) drew those numbers after its seed was set, so
its projection initialisation and dropout differed from every later run of the same command: `make demo` printed
31.25 % zero-shot accuracy on a fresh machine and 27.50 % once the cache existed.
"""

import pytest
import torch

from hf_mltm.training.model_factory import cached_aisfx_dir, cached_efficientnet_lite0_dir


@pytest.mark.parametrize("convert", [cached_aisfx_dir, cached_efficientnet_lite0_dir])
def test_first_use_conversion_does_not_draw_from_the_seeded_stream(convert, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_MLTM_CACHE", str(tmp_path))
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    folder = convert()  # converts: the cache is empty
    assert (folder / "config.json").is_file()
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)
