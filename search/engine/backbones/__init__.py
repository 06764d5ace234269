"""Backbones behind one small interface (``base.Backbone``), so that adding a third is one module.

``BACKBONES`` maps the setting's name to a ``build(num_classes, pretrained, weights_path,
imagenet_head) -> Backbone``.
"""
from __future__ import annotations

from ..errors import ModelError
from . import efficientnet_lite, resnet
from .base import Backbone

BACKBONES = {f"efficientnet_{variant}": efficientnet_lite.builder(variant) for variant in efficientnet_lite.VARIANTS}
BACKBONES["resnet18"] = resnet.build


def backbone_names() -> list[str]:
    return sorted(BACKBONES)


IMAGENET_CLASSES = 1000


def build_backbone(name: str, num_classes: int, pretrained: bool = True,
                   weights_path: str | None = None, imagenet_head: bool = False) -> Backbone:
    """``imagenet_head``: keep the pretrained network's own last layer (its 1,000 ImageNet classes)
    as the classifier instead of a new one, for a collection without labels to fine-tune on."""
    if name not in BACKBONES:
        raise ModelError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}")
    if imagenet_head and (num_classes != IMAGENET_CLASSES or not pretrained):
        raise ModelError("the ImageNet head needs the pretrained weights and its 1,000 classes")
    return BACKBONES[name](num_classes, pretrained=pretrained, weights_path=weights_path or None,
                                 imagenet_head=imagenet_head)
