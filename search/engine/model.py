"""The fine-tuned classifier on disk: checkpoint, metrics JSON, checksum,
device choice and the image transforms that go with a backbone."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import transforms as T

from .backbones import Backbone, build_backbone
from .config import TRAIN_AUGMENTS
from .errors import EngineError, ModelError


def pick_device(setting: str = "auto") -> torch.device:
    """``auto`` takes the GPU when there is one; anything else is passed to torch."""
    if setting in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {setting!r} asked for, but CUDA is not available here")
    return device


def eval_transform(backbone: Backbone, image_size: int) -> T.Compose:
    # The whole image squashed to a square: Corel's 3:2 pictures keep their
    # borders, which a centre crop would cut off.
    return T.Compose([
        T.Resize((image_size, image_size), antialias=True),
        T.ToTensor(),
        T.Normalize(backbone.mean, backbone.std),
    ])


def eval_batch(backbone: Backbone, image_size: int, images: list, device) -> torch.Tensor:
    """PIL images as one network input: each squashed by ``eval_transform``, stacked, on ``device``."""
    transform = eval_transform(backbone, image_size)
    return torch.stack([transform(image) for image in images]).to(device)


def train_transform(backbone: Backbone, image_size: int, augment: str = "basic") -> T.Compose:
    if augment not in TRAIN_AUGMENTS:
        raise EngineError(f"train_augment takes one of {', '.join(TRAIN_AUGMENTS)}, not {augment!r}")
    extra = [T.TrivialAugmentWide()] if augment == "trivial" else []
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.2, 0.2, 0.2),
        *extra,
        T.ToTensor(),
        T.Normalize(backbone.mean, backbone.std),
    ])


def file_checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class TrainedModel:
    backbone: Backbone
    classes: list[str]
    image_size: int
    checksum: str
    path: Path | None
    info: dict

    @property
    def name(self) -> str:
        return self.backbone.name


def metrics_path(checkpoint: Path) -> Path:
    return Path(checkpoint).with_suffix(".json")


def save_checkpoint(path: Path, payload: dict, info: dict) -> str:
    """Write ``payload`` with torch.save through a temporary file (a reader never sees half a
    checkpoint) and ``info`` plus the checksum as JSON beside it; return the checksum."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    checksum = file_checksum(path)
    metrics_path(path).write_text(json.dumps(dict(info, checksum=checksum), indent=2, default=str))
    return checksum


def save_classifier(path: Path, backbone: Backbone, classes: list[str], image_size: int, info: dict) -> str:
    """Write the checkpoint and its JSON (metrics, classes, settings); return the checkpoint checksum."""
    return save_checkpoint(
        path, {"backbone": backbone.name, "classes": classes, "image_size": image_size,
               "state_dict": backbone.state_dict()},
        dict(info, backbone=backbone.name, classes=classes, image_size=image_size))


def load_classifier(path: Path, device: torch.device | str = "cpu") -> TrainedModel:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"classifier checkpoint not found: {path} (run the 'train' command first)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        backbone = build_backbone(checkpoint["backbone"], len(checkpoint["classes"]), pretrained=False)
        backbone.load_state_dict(checkpoint["state_dict"], strict=True)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path} is not a usable classifier checkpoint: {exc}") from exc
    backbone = backbone.for_inference().to(device)
    info_file = metrics_path(path)
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    return TrainedModel(backbone, list(checkpoint["classes"]), int(checkpoint["image_size"]),
                        file_checksum(path), path, info)


def imagenet_model(backbone_name: str, image_size: int, device, weights_path: str | None = None) -> TrainedModel:
    """The backbone with ImageNet weights and no fine-tuning: the baseline to beat."""
    backbone = build_backbone(backbone_name, 1, pretrained=True, weights_path=weights_path)
    backbone = backbone.for_inference().to(device)
    return TrainedModel(backbone, [], image_size, f"imagenet:{backbone_name}", None, {})
