"""Backbones behind one small interface (``base.Backbone``), so that adding a third is one module.

Each module exposes ``build(num_classes, pretrained, weights_path) -> Backbone``;
``BACKBONES`` maps the setting's name to the module.
"""
from __future__ import annotations

from ..errors import ModelError
from . import efficientnet_lite, resnet
from .base import Backbone

BACKBONES = {"efficientnet_lite0": efficientnet_lite, "resnet18": resnet}


def backbone_names() -> list[str]:
    return sorted(BACKBONES)


def build_backbone(name: str, num_classes: int, pretrained: bool = True,
                   weights_path: str | None = None) -> Backbone:
    if name not in BACKBONES:
        raise ModelError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name].build(num_classes, pretrained=pretrained, weights_path=weights_path or None)
