"""The in-memory dataset container shared by every data loader in :mod:`p2pmtl.data`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch

IndexLike = Union[np.ndarray, torch.Tensor, Sequence[int]]


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A labelled dataset held as two tensors.

    ``x`` is float32, either images ``[N, C, H, W]`` with values in [0, 1] or feature
    vectors ``[N, F]``; ``y`` is int64 ``[N]`` with labels in ``0 .. num_classes - 1``.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or self.x.dtype != torch.float32:
            raise TypeError(f"ArrayDataset {self.name!r}: x must be a float32 tensor")
        if self.x.ndim not in (2, 4):
            raise ValueError(
                f"ArrayDataset {self.name!r}: x must be [N, C, H, W] or [N, F], "
                f"got shape {tuple(self.x.shape)}"
            )
        if not isinstance(self.y, torch.Tensor) or self.y.dtype != torch.int64 or self.y.ndim != 1:
            raise TypeError(f"ArrayDataset {self.name!r}: y must be an int64 tensor of shape [N]")
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"ArrayDataset {self.name!r}: x has {self.x.shape[0]} rows but y has {self.y.shape[0]}"
            )
        if self.num_classes < 1:
            raise ValueError(f"ArrayDataset {self.name!r}: num_classes must be >= 1")
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= self.num_classes):
            raise ValueError(
                f"ArrayDataset {self.name!r}: labels must lie in 0..{self.num_classes - 1}, "
                f"got {int(self.y.min())}..{int(self.y.max())}"
            )

    def __len__(self) -> int:
        """Number of samples."""
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(1, 28, 28)`` or ``(561,)``."""
        return tuple(self.x.shape[1:])

    def subset(self, indices: IndexLike) -> "ArrayDataset":
        """The samples at ``indices`` (in that order), as a new dataset with the same metadata."""
        if isinstance(indices, torch.Tensor):
            idx = indices.to(dtype=torch.int64, device=self.x.device)
        else:
            idx = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=self.x.device)
        return ArrayDataset(x=self.x[idx], y=self.y[idx], num_classes=self.num_classes, name=self.name)

    def classes_present(self) -> list[int]:
        """Sorted list of the labels that occur at least once."""
        return [int(c) for c in torch.unique(self.y).tolist()]
