"""A tiny CNN classifier for fast explainer tests (random weights, 64 x 64 input, 6 classes)."""

from __future__ import annotations

import torch
from torch import nn

from cwox.core.models import Classifier, from_module

N_CLASSES = 6


class TinyNet(nn.Module):
    """A small CNN: 64x64 input, a 16x16 'features' layer and an 8x8 'head' layer."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(32, N_CLASSES)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.3
        self.boom = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.head(self.features(x))
        if self.boom:
            raise RuntimeError("boom after the hooked layers")
        return self.fc(a.mean(dim=(2, 3)))


def tiny_classifier(device: str = "cpu") -> Classifier:
    """:class:`TinyNet` as a classifier: cluster layer ``head`` (8 x 8), class layer ``features`` (16 x 16)."""
    return from_module(TinyNet(), [f"class{i}" for i in range(N_CLASSES)], name="tiny", input_size=64,
                       cluster_layer="head", class_layer="features", device=device)

