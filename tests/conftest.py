"""Shared fixtures: real photos from installed packages, and the default model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def real_photos() -> dict[str, np.ndarray]:
    """Real photographs bundled with scikit-image and scikit-learn (no download)."""
    from skimage import data
    from sklearn.datasets import load_sample_image

    return {
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "astronaut": data.astronaut(),
        "rocket": data.rocket(),
        "china": load_sample_image("china.jpg"),
        "flower": load_sample_image("flower.jpg"),
    }


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """A folder of real photos saved as JPEG/PNG files."""
    d = tmp_path_factory.mktemp("photos")
    for i, (name, arr) in enumerate(real_photos().items()):
        Image.fromarray(arr).save(d / (f"{name}.jpg" if i % 2 == 0 else f"{name}.png"))
    return d


@pytest.fixture(scope="session")
def default_classifier():
    """The embedded default model (EfficientNet-Lite0, packaged ImageNet weights), on CPU."""
    from cwox.core.models import load_model

    return load_model("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="module")
def tiny():
    """A tiny random CNN classifier on the CPU (64 x 64 input, 6 classes; ``tests/tiny_net.py``)."""
    from tiny_net import tiny_classifier

    return tiny_classifier()


@pytest.fixture(scope="module")
def image():
    """A random normalised 3 x 64 x 64 image for :func:`tiny`."""
    import torch

    return torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(1))
