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
