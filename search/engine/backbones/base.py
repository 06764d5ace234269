"""The interface every backbone implements: where the retrieval method splits the CNN."""
from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """An ImageNet CNN split where the retrieval method needs it.

    ``pooled`` gives the penultimate vector (global feature), ``classify`` the
    logits of the collection's classes, ``feature_map`` the stride-16 map that
    local features are computed from.
    """

    name: str = ""
    feature_dim: int = 0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    local_dim: int = 0  # channels of the stride-16 map

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The last convolutional map (B, feature_dim, H/32, W/32), before pooling."""
        raise NotImplementedError

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_map(images).mean((2, 3))

    def local_map(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The stride-16 feature map (B, local_dim, H/16, W/16) local descriptors are taken from."""
        raise NotImplementedError

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.pooled(images))

    def head_parameters(self):
        return self.classifier.parameters()
