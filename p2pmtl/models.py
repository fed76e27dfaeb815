"""Neural models with a declared split into a shared representation and a personal head
(the split BR-MTRL and the gossip representation mode use; Li2020 trains the whole model)."""
from __future__ import annotations

import torch
from torch import nn

from .registry import Registry

MODELS: Registry[type[nn.Module]] = Registry("model")


class SplitModel(nn.Module):
    """``forward(x) = head(representation(x))``; ``head_prefix`` names the head's parameters."""

    head_prefix = "head."

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.representation(x))


@MODELS.register("digit_cnn", "Li2020 digits CNN: 3 conv blocks (32, 64, 64), linear 576->128 | head 128->10")
class DigitCNN(SplitModel):
    """Li2020 sec. 7 / reference code: conv(1->32, 3x3, pad 1) relu maxpool2; conv(32->64) relu
    maxpool2; conv(64->64) relu maxpool2; linear(576->128) relu; linear(128->10).
    Representation = everything up to the 128-d features; head = the last linear layer."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2)]

        side = image_size // 8
        self.representation = nn.Sequential(
            *block(in_channels, 32), *block(32, 64), *block(64, 64), nn.Flatten(),
            nn.Linear(64 * side * side, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)
