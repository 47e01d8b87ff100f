"""The PyTorch models of ``benchmarks/gpu.py``, written out: no torchvision or timm needed.

``resnet50()`` has torchvision's ResNet-50 architecture (v1.5: the stride on the 3x3 conv of the
first bottleneck of a stage; 25,557,032 parameters at 1000 classes) and its module names
(``conv1``, ``layer1`` ... ``layer4``, ``fc``); ``vision_transformer()`` is a ViT-B/16-style
model (a patch-embedding conv, a class token, learned position embeddings, pre-norm blocks with
``nn.MultiheadAttention``, the head on the class token; about 86.6M parameters at 224 px).
Both take ``(N, 3, H, W)`` images and return ``(N, classes)`` logits; weights are PyTorch's
default random initialization: the cost of a pass does not depend on them.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResNet", "VisionTransformer", "resnet50", "vision_transformer"]


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to ``4 * planes``, plus the (projected) input."""

    expansion = 4

    def __init__(self, channels: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)  # one module called three times, as in torchvision
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
            if stride != 1 or channels != out
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNet(nn.Module):
    """A bottleneck ResNet: stem (7x7/2 conv, 3x3/2 max pool), four stages of ``blocks[i]``
    bottlenecks of ``width * 2**i`` planes (stride 2 from the second stage on), global average
    pool, linear head. The output of ``layer4`` is ``(N, 32 * width, H / 32, W / 32)``."""

    def __init__(
        self, blocks: tuple[int, int, int, int], width: int = 64, classes: int = 1000
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages: list[nn.Sequential] = []
        channels = width
        for index, count in enumerate(blocks):
            planes = width * 2**index
            stride = 1 if index == 0 else 2
            stage = []
            for block in range(count):
                stage.append(Bottleneck(channels, planes, stride if block == 0 else 1))
                channels = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(classes: int = 1000) -> ResNet:
    """ResNet-50: blocks ``(3, 4, 6, 3)``, width 64 (``layer4``: 2048 channels)."""
    return ResNet((3, 4, 6, 3), 64, classes)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attention(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Tokens ``(N, 1 + (size / patch)**2, dim)``: the class token, then the patches row by row;
    ``blocks.{i}.norm1`` is the input norm of block ``i``, the layer Grad-CAM explains."""

    def __init__(
        self, size: int, patch: int, dim: int, depth: int, heads: int, classes: int = 1000
    ) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.position = nn.Parameter(0.02 * torch.randn(1, 1 + (size // patch) ** 2, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1) + self.position
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def vision_transformer(size: int = 224, small: bool = False) -> VisionTransformer:
    """ViT-B/16 (patch 16, dim 768, 12 blocks of 12 heads), or with ``small`` a 2-block,
    dim-64 one on 8-pixel patches."""
    if small:
        return VisionTransformer(size, patch=8, dim=64, depth=2, heads=4)
    return VisionTransformer(size, patch=16, dim=768, depth=12, heads=12)
