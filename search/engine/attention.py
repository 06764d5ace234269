"""The DELF-style attention head, trained from image-level labels only.

A collection without labels trains it on the ImageNet classifier's own predictions
for its images (``imagenet_classifier``): image-level labels all the same.

A small conv net with a softplus output scores every location of the
backbone's stride-16 map; the attention-weighted mean of the (L2-normalised)
descriptors feeds a linear classifier trained with cross-entropy while the
backbone stays frozen. At search time only the scores are used: they pick
the keypoints.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .collection import ImageRecord
from .errors import ModelError
from .images import load_resized
from .model import TrainedModel, eval_batch, file_checksum, metrics_path, save_checkpoint
from .progress import Progress, no_progress

STAGE = "train attention head"
MAP_BATCH = 32


class AttentionHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, hidden: int = 512):
        super().__init__()
        self.dim, self.num_classes, self.hidden = dim, num_classes, hidden
        self.attention = nn.Sequential(
            nn.Conv2d(dim, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1), nn.Softplus())
        self.classifier = nn.Linear(dim, num_classes)

    def scores(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) non-negative attention scores."""
        return self.attention(feature_map)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        descriptors = F.normalize(feature_map, dim=1)
        pooled = (self.scores(feature_map) * descriptors).mean((2, 3))
        return self.classifier(pooled)


@dataclass
class TrainedAttention:
    head: AttentionHead
    checksum: str
    path: Path | None
    info: dict


@torch.no_grad()
def _feature_maps(model: TrainedModel, records: list[ImageRecord], device, flips: bool, predict: bool):
    """The stride-16 maps of the readable ``records`` (then, with ``flips``, those of their mirror
    images) and, with ``predict``, the classifier's class for each from the same pass. Pictures are
    decoded a batch at a time and dropped once through the network: a collection of large photos
    would not fit in memory decoded. The maps are written into one tensor made for them all, not
    joined from pieces at the end, which held them twice. Returns (positions of the readable
    records, maps, predictions or None, unreadable as (relpath, reason))."""
    kept, skipped, predictions = [], [], []
    maps = None
    for start in tqdm(range(0, len(records), MAP_BATCH), desc="stride-16 maps", unit="batch", leave=False):
        chunk = records[start:start + MAP_BATCH]
        images, bad = load_resized(chunk, model.image_size * 4, bar=False)
        skipped += bad
        readable = [i for i, image in enumerate(images) if image is not None]
        if not readable:
            continue
        batch = eval_batch(model.backbone, model.image_size, [images[i] for i in readable], device)
        if predict:
            pooled, local = model.backbone.pooled_and_local(batch)
            predictions.append(model.backbone.classify(pooled).argmax(1).cpu())
        else:
            local = model.backbone.local_map(batch)
        if maps is None:  # the originals in the first half, their mirror images in the second; laid
            # out in memory as the network gives them (channels last), which the head's sums follow
            layout = (torch.channels_last if local.is_contiguous(memory_format=torch.channels_last)
                      and not local.is_contiguous() else torch.contiguous_format)
            maps = torch.empty((len(records) * (2 if flips else 1),) + tuple(local.shape[1:]), dtype=local.dtype,
                               memory_format=layout)
        done = len(kept)
        maps[done:done + len(readable)] = local.cpu()
        if flips:
            mirror = len(records) + done
            maps[mirror:mirror + len(readable)] = model.backbone.local_map(batch.flip(3)).cpu()
        kept += [start + i for i in readable]
    if not kept:
        return kept, torch.empty(0), (torch.empty(0, dtype=torch.long) if predict else None), skipped
    if flips and len(kept) < len(records):  # unreadable pictures: close the gap between the halves
        maps = torch.cat([maps[:len(kept)], maps[len(records):len(records) + len(kept)]])
    else:
        maps = maps[:len(kept) * (2 if flips else 1)]
    return kept, maps, (torch.cat(predictions) if predict else None), skipped


def train_attention(model: TrainedModel, train: list[ImageRecord], val: list[ImageRecord], out_path: Path,
                    device, epochs: int = 30, learning_rate: float = 0.01, seed: int = 0,
                    progress: Progress = no_progress) -> TrainedAttention:
    """Train the head on frozen stride-16 maps (cached once, with horizontal flips) and save it.
    The targets are the records' labels, or for a label-free classifier its own predictions."""
    torch.manual_seed(seed)
    class_index = {c: i for i, c in enumerate(model.classes)}
    label_free = bool(model.info.get("label_free"))
    model.backbone.eval().to(device)
    if not label_free:
        train = [r for r in train if r.label in class_index]
        val = [r for r in val if r.label in class_index]
    keep, maps, predicted, skipped = _feature_maps(model, train, device, flips=True, predict=label_free)
    val_keep, val_maps, val_predicted, skipped_val = _feature_maps(model, val, device, flips=False,
                                                                   predict=label_free)
    if label_free:
        # only the classes predicted for the training images: a few dozen outputs learn in the
        # steps a small collection gives, where all 1,000 barely move from chance
        occurring = torch.unique(predicted)
        classes = [model.classes[i] for i in occurring.tolist()]
        targets = torch.searchsorted(occurring, predicted)
        known = torch.isin(val_predicted, occurring)
        val_maps, val_targets = val_maps[known], torch.searchsorted(occurring, val_predicted[known])
    else:
        classes = model.classes
        targets = torch.tensor([class_index[train[i].label] for i in keep])
        val_targets = torch.tensor([class_index[val[i].label] for i in val_keep])
    targets = targets.repeat(2)

    head = AttentionHead(model.backbone.local_dim, len(classes)).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=learning_rate, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    generator = torch.Generator().manual_seed(seed)
    history = []
    started = time.monotonic()
    progress(STAGE, 0, epochs)
    for epoch in tqdm(range(1, epochs + 1), desc="attention head", unit="epoch"):
        head.train()
        order = torch.randperm(len(maps), generator=generator)
        total, correct, loss_sum = 0, 0, 0.0
        for start in range(0, len(order), 64):
            idx = order[start:start + 64]
            batch, batch_targets = maps[idx].to(device), targets[idx].to(device)
            logits = head(batch)
            loss = F.cross_entropy(logits, batch_targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == batch_targets).sum())
            total += len(idx)
        scheduler.step()
        val_accuracy = _accuracy(head.eval(), val_maps, val_targets, device)
        row = {"epoch": epoch, "train_loss": loss_sum / total, "train_accuracy": correct / total,
               "val_accuracy": val_accuracy, "elapsed_s": round(time.monotonic() - started, 1)}
        history.append(row)
        progress(STAGE, epoch, epochs)
    info = {"history": history, "classifier_checksum": model.checksum, "backbone": model.name,
            "local_dim": head.dim, "classes": classes, "skipped": skipped + skipped_val,
            "targets": "the classifier's predictions" if label_free else "labels"}
    return save_attention(out_path, head.cpu(), info)


@torch.no_grad()
def _accuracy(head: AttentionHead, maps: torch.Tensor, targets: torch.Tensor, device,
              batch: int = 256) -> float | None:
    """A batch at a time: the hidden layer of 2,000 validation maps at once is over a gigabyte.
    None: no validation maps."""
    if not len(targets):
        return None
    correct = sum(int((head(maps[start:start + batch].to(device)).argmax(1).cpu() == targets[start:start + batch])
                      .sum()) for start in range(0, len(targets), batch))
    return correct / len(targets)


def save_attention(path: Path, head: AttentionHead, info: dict) -> TrainedAttention:
    checksum = save_checkpoint(
        path, {"dim": head.dim, "num_classes": head.num_classes, "hidden": head.hidden,
               "state_dict": head.state_dict(), "classifier_checksum": info["classifier_checksum"]}, info)
    return TrainedAttention(head.eval(), checksum, Path(path), info)


def load_attention(path: Path, model: TrainedModel, device="cpu") -> TrainedAttention:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"attention head not found: {path} (run the 'train' command first)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint["classifier_checksum"] != model.checksum:
        raise ModelError(f"{path} was trained on another classifier; retrain the attention head")
    head = AttentionHead(checkpoint["dim"], checkpoint["num_classes"], checkpoint["hidden"])
    head.load_state_dict(checkpoint["state_dict"], strict=True)
    info_file = metrics_path(path)
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    return TrainedAttention(head.to(device).eval(), file_checksum(path), path, info)
