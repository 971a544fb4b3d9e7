"""Shared test settings: small thread count, deterministic seeds, no hub access."""

import os

# Never reach a model hub from the tests (the machines are offline anyway).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread per pytest-xdist worker (the workers share the cores), else up to 2.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def write_smooth_images(folder, count: int, seed: int) -> None:
    """``count`` smooth random 80x60 PNGs: structure the teachers' features can respond to."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((80, 60), Image.Resampling.BICUBIC).save(folder / f"{i}.png")
