"""Shared test settings: small thread count, deterministic seeds, no hub access."""

import os

# Never reach a model hub from the tests (the machines are offline anyway).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
