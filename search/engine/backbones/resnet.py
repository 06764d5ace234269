"""ResNet18, the paper's backbone, with torchvision's ImageNet weights.

They are never downloaded at run time: they are read from the torch cache
(where ``torchvision.models.resnet18(weights="DEFAULT")`` leaves them on a
machine with internet) or from a path given in a setting.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torchvision.models import ResNet18_Weights

from ..errors import ModelError
from .base import Backbone


class ResNet18(Backbone):
    name = "resnet18"
    feature_dim = 512
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(self, net, num_classes: int, imagenet_head: bool = False):
        super().__init__(num_classes)
        if imagenet_head:
            self.classifier.load_state_dict(net.fc.state_dict())
        net.fc = torch.nn.Identity()
        self.net = net

    local_dim = 256  # layer3 (conv4), stride 16, as in DELF

    def feature_map(self, images):
        return self.after_local(self.local_map(images))

    def after_local(self, local):
        return self.net.layer4(local)

    def local_map(self, images):
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(images))))
        return n.layer3(n.layer2(n.layer1(x)))

    def conv_batchnorm_pairs(self):
        n = self.net
        pairs = [(n, "conv1", "bn1")]
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            for block in layer:
                pairs += [(block, "conv1", "bn1"), (block, "conv2", "bn2")]
                if block.downsample is not None:
                    pairs.append((block.downsample, "0", "1"))
        return pairs


def cached_weights_path() -> Path:
    filename = Path(ResNet18_Weights.IMAGENET1K_V1.url).name
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def build(num_classes: int, pretrained: bool = True, weights_path: str | None = None,
          imagenet_head: bool = False) -> ResNet18:
    net = torchvision.models.resnet18()
    if pretrained:
        path = Path(weights_path) if weights_path else cached_weights_path()
        if not path.is_file():
            raise ModelError(
                f"ResNet18 ImageNet weights not found at {path}. On a machine with internet run "
                "python -c \"import torchvision; torchvision.models.resnet18(weights='DEFAULT')\" once, "
                "or set RETRIEVAL_RESNET18_WEIGHTS to a saved state dict (.pth).")
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{path} is not a torchvision resnet18 state dict: {exc}") from exc
    return ResNet18(net, num_classes, imagenet_head)
