"""The interface every backbone implements: where the retrieval method splits the CNN."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


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

    def pooled_and_local(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pooled`` and ``local_map`` of the same images from one forward pass (the stride-16 map
        is taken on the way), for a query whose global input is also a level of its pyramid."""
        local = self.local_map(images)
        return self.after_local(local).mean((2, 3)), local

    def after_local(self, local: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The rest of the network: the stride-16 map in, the last convolutional map out."""
        raise NotImplementedError

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.pooled(images))

    def head_parameters(self):
        return self.classifier.parameters()

    def conv_batchnorm_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """(parent module, convolution's name, BatchNorm's name) for each convolution followed
        directly by a BatchNorm: the pairs ``for_inference`` folds. None by default."""
        return []

    def for_inference(self) -> "Backbone":
        """An eval-mode copy with each BatchNorm folded into the convolution before it and the
        weights in channels-last order (which oneDNN's CPU kernels run fastest): the same outputs
        to float rounding, with less work per image (RESULTS.md, "Faster networks"). For loaded
        models only: the copy cannot be fine-tuned any more."""
        folded = copy.deepcopy(self).eval()
        for parent, conv_name, bn_name in folded.conv_batchnorm_pairs():
            setattr(parent, conv_name, fold_batchnorm(getattr(parent, conv_name), getattr(parent, bn_name)))
            setattr(parent, bn_name, nn.Identity())
        return folded.to(memory_format=torch.channels_last)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution doing the work of ``conv`` then ``bn`` (eval mode). A TensorFlow-style
    "same" convolution whose padding is symmetric becomes a plain ``nn.Conv2d`` with that padding,
    which saves the separate padding copy; an asymmetric one keeps its padding step."""
    fused = fuse_conv_bn_eval(conv.eval(), bn.eval())
    pad = getattr(fused, "static_padding", None)
    if pad is None or conv.padding != (0, 0):
        return fused
    if isinstance(pad, nn.ZeroPad2d):
        left, right, top, bottom = pad.padding
        if left != right or top != bottom:
            return fused
        padding = (top, left)
    elif type(pad).__name__ == "Identity":
        padding = (0, 0)
    else:
        return fused
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding,
                      conv.dilation, conv.groups, bias=True)
    plain.weight, plain.bias = fused.weight, fused.bias
    return plain.eval()
