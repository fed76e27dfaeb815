"""UCI Human Activity Recognition Using Smartphones (Anguita et al. 2013, ESANN), read from disk.

Published layout under ``ROOT``::

    ROOT/train/X_train.txt        561 whitespace-separated float features per line
    ROOT/train/y_train.txt        activity label 1..6 per line
    ROOT/train/subject_train.txt  volunteer id 1..30 per line
    ROOT/test/X_test.txt, ROOT/test/y_test.txt, ROOT/test/subject_test.txt

Each subject (volunteer) is one natural client: :func:`load_har` pools a subject's samples
from both original splits and re-splits them into a per-subject train/test pair.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch

from .arrays import ArrayDataset

PathLike = Union[str, Path]
HAR_FEATURES = 561
HAR_CLASSES = 6
HAR_LAYOUT = (
    "ROOT/train/{X_train,y_train,subject_train}.txt and ROOT/test/{X_test,y_test,subject_test}.txt "
    "(UCI HAR Dataset layout: X has 561 whitespace-separated floats per line, y labels 1..6, "
    "subject ids 1..30)"
)


def _read(path: Path, dtype: type) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"UCI HAR file {path} is missing; expected the layout {HAR_LAYOUT}")
    if path.stat().st_size == 0:
        return np.zeros((0,), dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loadtxt warns on blank files
        return np.loadtxt(path, dtype=dtype, ndmin=1 if dtype is not np.float32 else 2)


def _read_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    folder = root / split
    x = _read(folder / f"X_{split}.txt", np.float32)
    y = _read(folder / f"y_{split}.txt", np.int64)
    subj = _read(folder / f"subject_{split}.txt", np.int64)
    if x.size == 0:
        x = np.zeros((0, HAR_FEATURES), dtype=np.float32)
    if not (len(x) == len(y) == len(subj)):
        raise ValueError(
            f"UCI HAR {split} files under {folder} disagree: {len(x)} feature rows, "
            f"{len(y)} labels, {len(subj)} subject ids"
        )
    return x, y, subj


def load_har(
    root: PathLike, *, test_fraction: float = 0.25, seed: int = 0
) -> dict[int, tuple[ArrayDataset, ArrayDataset]]:
    """Map subject id -> (train, test) ArrayDatasets of features ``[n, F]`` float32, labels 0..5.

    Each subject's samples (both original splits pooled) are shuffled with ``seed`` and the
    last ``round(test_fraction * n)`` (at least one, leaving at least one) become its test set.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"UCI HAR root {root} does not exist; expected the layout {HAR_LAYOUT}")
    xtr, ytr, str_ = _read_split(root, "train")
    xte, yte, ste = _read_split(root, "test")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(
            f"UCI HAR train and test feature counts differ ({xtr.shape[1]} vs {xte.shape[1]}) under {root}"
        )
    x = np.concatenate([xtr, xte])
    y = np.concatenate([ytr, yte])
    subjects = np.concatenate([str_, ste])
    if len(y) and (y.min() < 1 or y.max() > HAR_CLASSES):
        raise ValueError(f"UCI HAR labels must be 1..{HAR_CLASSES}, found {y.min()}..{y.max()} under {root}")
    y = y - 1
    rng = np.random.default_rng(seed)
    out: dict[int, tuple[ArrayDataset, ArrayDataset]] = {}
    for sid in np.unique(subjects):
        idx = rng.permutation(np.flatnonzero(subjects == sid))
        if len(idx) < 2:
            raise ValueError(f"UCI HAR subject {sid} has {len(idx)} sample; need at least 2 to split")
        n_test = min(max(1, int(round(test_fraction * len(idx)))), len(idx) - 1)
        parts = (np.sort(idx[: len(idx) - n_test]), np.sort(idx[len(idx) - n_test :]))
        out[int(sid)] = tuple(  # type: ignore[assignment]
            ArrayDataset(
                x=torch.from_numpy(np.ascontiguousarray(x[p])),
                y=torch.from_numpy(np.ascontiguousarray(y[p])),
                num_classes=HAR_CLASSES,
                name=f"har_subject{int(sid)}_{part}",
            )
            for p, part in zip(parts, ("train", "test"))
        )
    return out


def write_tiny_har(
    root: PathLike,
    n_subjects: int = 3,
    n_per_subject: int = 20,
    seed: int = 0,
    n_features: int = HAR_FEATURES,
) -> Path:
    """Write a small fake dataset in the UCI HAR layout (for tests); returns ``root``.

    Subjects are 1..n_subjects; each has ``n_per_subject`` samples with labels cycling over
    1..6, about 70% written to the train files and the rest to the test files. Features are
    class-dependent Gaussian noise clipped to [-1, 1] like the real (normalised) features.
    """
    if n_subjects < 1 or n_per_subject < 2 or n_features < 1:
        raise ValueError("n_subjects >= 1, n_per_subject >= 2 and n_features >= 1 are required")
    root = Path(root)
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-0.5, 0.5, size=(HAR_CLASSES, n_features))
    rows: dict[str, list[tuple[np.ndarray, int, int]]] = {"train": [], "test": []}
    for sid in range(1, n_subjects + 1):
        labels = rng.permutation(np.arange(n_per_subject) % HAR_CLASSES + 1)
        n_train = max(1, int(round(0.7 * n_per_subject)))
        for k, label in enumerate(labels):
            feats = np.clip(centres[label - 1] + 0.2 * rng.standard_normal(n_features), -1.0, 1.0)
            rows["train" if k < n_train else "test"].append((feats, int(label), sid))
    for split, items in rows.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"X_{split}.txt", "w") as fx:
            for feats, _, _ in items:
                fx.write(" " + " ".join(f"{v: .7e}" for v in feats) + "\n")
        (folder / f"y_{split}.txt").write_text("".join(f"{lab}\n" for _, lab, _ in items))
        (folder / f"subject_{split}.txt").write_text("".join(f"{sid}\n" for _, _, sid in items))
    return root
