"""Standard image datasets read from disk: torchvision's MNIST / EMNIST / CIFAR-10, and any
ImageFolder-layout directory (e.g. the published Synthetic Digits set of Ganin & Lempitsky 2015).

Nothing is downloaded unless the caller passes ``download=True``; torchvision is imported
only inside the functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch

from .arrays import ArrayDataset

PathLike = Union[str, Path]
TORCHVISION_SETS = ("mnist", "emnist", "cifar10")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".webp")


def _expected_files(name: str, root: Path, train: bool, split: str) -> tuple[Path, list[str]]:
    """Folder torchvision reads for ``name`` and the file names it needs there."""
    if name == "mnist":
        prefix = "train" if train else "t10k"
        return root / "MNIST" / "raw", [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    if name == "emnist":
        prefix = f"emnist-{split}-{'train' if train else 'test'}"
        return root / "EMNIST" / "raw", [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    batches = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    return root / "cifar-10-batches-py", batches + ["batches.meta"]


def _missing_error(name: str, folder: Path, files: list[str], detail: str = "") -> FileNotFoundError:
    return FileNotFoundError(
        f"{name} data not found at {folder}{detail}: expected the files {', '.join(files)} "
        f"there (torchvision's layout under root); set download = true to fetch it"
    )


def load_torchvision(
    name: str,
    root: PathLike,
    *,
    train: bool,
    download: bool = False,
    split: str = "digits",
) -> ArrayDataset:
    """Load a torchvision dataset fully into memory as an :class:`ArrayDataset`.

    ``name``: ``"mnist"`` (LeCun et al. 1998), ``"emnist"`` (Cohen et al. 2017; ``split`` one of
    byclass, bymerge, balanced, letters, digits, mnist) or ``"cifar10"`` (Krizhevsky 2009).
    Images become float32 ``[N, C, H, W]`` in [0, 1]. Raises :class:`FileNotFoundError` if the
    files are absent and ``download`` is False.
    """
    key = name.lower()
    if key not in TORCHVISION_SETS:
        raise ValueError(f"name must be one of {', '.join(TORCHVISION_SETS)}; got {name!r}")
    emnist_splits = ("byclass", "bymerge", "balanced", "letters", "digits", "mnist")
    if key == "emnist" and split not in emnist_splits:
        raise ValueError(f"split must be one of {', '.join(emnist_splits)}; got {split!r}")
    root = Path(root).expanduser()
    folder, files = _expected_files(key, root, train, split)
    if not download and not all((folder / f).is_file() for f in files):
        missing = [f for f in files if not (folder / f).is_file()]
        raise _missing_error(key, folder, files, f" (missing: {', '.join(missing)})")

    from torchvision import datasets

    try:
        if key == "mnist":
            ds = datasets.MNIST(str(root), train=train, download=download)
        elif key == "emnist":
            ds = datasets.EMNIST(str(root), split=split, train=train, download=download)
        else:
            ds = datasets.CIFAR10(str(root), train=train, download=download)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        raise _missing_error(key, folder, files, f" ({exc})") from exc

    split_name = "train" if train else "test"
    if key == "cifar10":
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
        y = torch.as_tensor(np.asarray(ds.targets, dtype=np.int64))
        num_classes, ds_name = 10, f"cifar10_{split_name}"
    else:
        data = ds.data
        if key == "emnist":
            data = data.transpose(1, 2)  # EMNIST's files store images transposed
        x = data.unsqueeze(1)
        y = torch.as_tensor(ds.targets, dtype=torch.int64).clone()
        num_classes = len(ds.classes)
        if key == "emnist" and split == "letters":  # labels 1..26 ("N/A" is class 0)
            y -= 1
            num_classes = 26
        ds_name = f"{key}_{split}_{split_name}" if key == "emnist" else f"mnist_{split_name}"
    x = x.contiguous().to(torch.float32).div_(255.0)
    return ArrayDataset(x=x, y=y, num_classes=num_classes, name=ds_name)


def load_image_folder(
    path: PathLike, *, image_size: int = 28, grayscale: bool = True
) -> ArrayDataset:
    """Load an ImageFolder-layout directory (``path/<class>/<image>``) into memory.

    Classes are the sub-folder names in sorted order (label = position), as in torchvision's
    ImageFolder. Every image is converted to grayscale (or RGB) and resized to
    ``image_size x image_size``; x is float32 ``[N, 1|3, S, S]`` in [0, 1].
    """
    from PIL import Image

    layout = "PATH/<class name>/<image file>, e.g. PATH/0/img001.png ... PATH/9/img999.png"
    root = Path(path).expanduser()
    if image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; expected the layout {layout}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-folders; expected the layout {layout}")
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append((f, label))
    if not files:
        raise ValueError(
            f"image folder {root} has class sub-folders ({', '.join(classes[:10])}) but no image "
            f"files ({', '.join(IMAGE_EXTENSIONS)}); expected the layout {layout}"
        )
    mode = "L" if grayscale else "RGB"
    channels = 1 if grayscale else 3
    x = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    for i, (f, _) in enumerate(files):
        with Image.open(f) as im:
            im = im.convert(mode)
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BILINEAR)
            x[i] = np.asarray(im).reshape(image_size, image_size, channels)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ArrayDataset(x=xt, y=y, num_classes=len(classes), name=f"image_folder:{root.name}")
