"""Neural models with a declared split into a shared representation and a personal head
(the split BR-MTRL and the gossip representation mode use; Li2020 trains the whole model)."""
from __future__ import annotations

import torch
from torch import nn

from ..registry import Registry

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
    Representation = everything up to the 128-d features; head = the last linear layer.

    Each block pools before its (in-place) ReLU: maxpool(relu(x)) = relu(maxpool(x)) because
    ReLU is monotonic, so the function is the reference's, with the ReLU on 4x fewer values
    (measured: ReLU was a third of the CNN's forward time on this CPU)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, 1, 1), nn.MaxPool2d(2), nn.ReLU(inplace=True)]

        side = image_size // 8
        self.representation = nn.Sequential(
            *block(in_channels, 32), *block(32, 64), *block(64, 64), nn.Flatten(),
            nn.Linear(64 * side * side, 128), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(128, num_classes)


@MODELS.register("alexnet_split", "BR-MTRL AlexNet-style: 5 conv blocks, linear representation | linear head")
class AlexNetSplit(SplitModel):
    """BR-MTRL sec. V (Le and Moothedath 2025): five conv blocks (3x3 conv, stride 1, pad 1,
    ReLU, maxpool 2) for 32x32 colour images, then a linear layer: the representation; a linear
    head. Channel widths follow AlexNet (64, 192, 384, 256, 256); pooling precedes the in-place
    ReLU in each block (the same function, see :class:`DigitCNN`)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
                 widths: tuple[int, ...] = (64, 192, 384, 256, 256), feature_dim: int = 512) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, side = in_channels, image_size
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, 1, 1), nn.MaxPool2d(2), nn.ReLU(inplace=True)]
            cin, side = w, side // 2
        if side < 1:
            raise ValueError(f"image_size = {image_size}: too small for {len(widths)} pooling blocks")
        self.representation = nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin * side * side, feature_dim),
                                            nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, num_classes)
