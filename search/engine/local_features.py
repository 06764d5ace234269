"""Attentive local features (DELF-style) behind one small interface.

An extractor turns an image into ``LocalFeatures``: keypoints in original
image pixels (x, y), the pyramid scale each came from, its attention score
and its descriptor. Another extractor (ALIKED, DISK, ...) only has to
return the same thing.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .attention import TrainedAttention
from .layout import made_with_global_level, made_with_local_settings
from .config import LocalSettings
from .model import TrainedModel, eval_batch

STRIDE = 16


@dataclass
class LocalFeatures:
    keypoints: np.ndarray  # (K, 2) float32, x and y in original image pixels
    scales: np.ndarray  # (K,) float32
    scores: np.ndarray  # (K,) float32
    descriptors: np.ndarray  # (K, D) float32, unit length

    def __len__(self) -> int:
        return len(self.keypoints)

    def take(self, rows) -> "LocalFeatures":
        return LocalFeatures(self.keypoints[rows], self.scales[rows], self.scores[rows], self.descriptors[rows])


@dataclass
class AttentionExtractor:
    """Keypoints where the attention head scores the stride-16 map highest."""
    model: TrainedModel
    attention: TrainedAttention
    settings: LocalSettings
    device: str | torch.device = "cpu"
    # The pyramid level nearest the global features' input (the whole picture squashed to the
    # model's image size) is that input itself, so that a query's global and local features come
    # from one pass of the network (``shares_global_pass``): RESULTS.md, "One backbone pass".
    global_level: bool = False

    name = "attention"

    @property
    def dim(self) -> int:
        return self.attention.head.dim

    @property
    def checksum(self) -> str:
        """Changes whenever the features would: model, head or extraction settings."""
        text = f"{self.model.checksum}:{self.attention.checksum}:{self.settings}"
        if self.global_level:
            text += f":global-level:{self.model.image_size}"
        return hashlib.sha256(text.encode()).hexdigest()

    def shares_global_pass(self, model: TrainedModel) -> bool:
        """Whether ``model``'s global pass gives one of this extractor's levels (``global_map``)."""
        return self.global_level and model is self.model

    @torch.no_grad()
    def extract(self, image: Image.Image, min_side: int = 0, global_map: torch.Tensor | None = None) -> LocalFeatures:
        """``min_side``: an image whose longer side is shorter is first enlarged to it (a query; the
        index's features never are, so this setting is not part of ``checksum``). ``global_map``:
        the stride-16 map of the global input, taken on the global features' pass (with
        ``global_level``; computed here when not given).

        Without cuDNN: it prepares its convolutions anew for every input size it has not seen, and
        every photo has a size of its own; on an H200 that made a query of a new size take 5.4 s
        against 24 ms without it (RESULTS.md, "A photo of a new size on the GPU")."""
        with torch.backends.cudnn.flags(enabled=False):
            return self._extract(image, min_side, global_map)

    def _extract(self, image: Image.Image, min_side: int, global_map: torch.Tensor | None) -> LocalFeatures:
        backbone, head, s = self.model.backbone, self.attention.head, self.settings
        width, height = image.size
        base = min(1.0, s.base_max_side / max(width, height))
        if max(width, height) * base < min_side:
            base = min_side / max(width, height)
        mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
        std = torch.tensor(backbone.std).view(1, 3, 1, 1)
        pixels = torch.from_numpy(np.asarray(shrink_to_pyramid(image, base, s.scales), dtype=np.float32) / 255.0)
        pixels = pixels.permute(2, 0, 1)[None]
        pixels = ((pixels - mean) / std).to(self.device)
        points, scales, scores, descriptors = [], [], [], []
        levels = [(round(width * base * scale), round(height * base * scale), scale * base) for scale in s.scales]
        levels = [(w, h, scale) for w, h, scale in levels if min(w, h) >= s.min_side]
        shared = nearest_level(levels, self.model.image_size) if self.global_level else None
        for w, h, scale in levels:
            if (w, h) == shared:
                w = h = self.model.image_size
                scale = float(np.sqrt(w * h / (width * height)))  # squashed: the mean of its two scales
                if global_map is None:
                    global_map = backbone.local_map(eval_batch(backbone, self.model.image_size, [image], self.device))
                fmap = global_map
            else:
                level = F.interpolate(pixels, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
                fmap = backbone.local_map(level)
            att = head.scores(fmap)[0, 0]  # (H', W')
            rows, cols = torch.meshgrid(torch.arange(fmap.shape[2]), torch.arange(fmap.shape[3]), indexing="ij")
            # receptive-field centres, mapped back to original pixels
            x = (cols.flatten().float() * STRIDE + (STRIDE - 1) / 2) * (width / w)
            y = (rows.flatten().float() * STRIDE + (STRIDE - 1) / 2) * (height / h)
            points.append(torch.stack([x, y], 1))
            scales.append(torch.full((x.numel(),), scale))
            scores.append(att.flatten().cpu())
            descriptors.append(F.normalize(fmap[0].flatten(1).T, dim=1).cpu())
        if not points:
            return empty_features(self.dim)
        points, scales = torch.cat(points), torch.cat(scales)
        scores, descriptors = torch.cat(scores), torch.cat(descriptors)
        keep = torch.nonzero(scores >= s.score_threshold).flatten()
        keep = keep[scores[keep].argsort(descending=True)[: s.max_keypoints]]
        return LocalFeatures(points[keep].numpy().astype(np.float32), scales[keep].numpy().astype(np.float32),
                             scores[keep].numpy().astype(np.float32), descriptors[keep].numpy().astype(np.float32))


def following(extractor: AttentionExtractor | None, meta: dict | None) -> AttentionExtractor | None:
    """``extractor`` made to extract as the store with ``meta`` was (its ``global_level``, keypoints
    per image and scales): a build keeps the local features it was made with whatever
    ``LOCAL_GLOBAL_LEVEL``, ``LOCAL_MAX_KEYPOINTS`` and ``LOCAL_SCALES`` say now, so that a change
    of a setting (or of its default, by an upgrade) applies to new builds and every existing index
    keeps serving and taking additions."""
    if extractor is None or meta is None:
        return extractor
    followed = replace(extractor, global_level=made_with_global_level(meta))
    if "max_keypoints" not in meta and "extractor" in meta and followed.checksum == meta["extractor"]:
        return followed  # a store from before the record, made with the settings of now
    keypoints, scales = made_with_local_settings(meta)
    return replace(followed, settings=replace(followed.settings, max_keypoints=keypoints, scales=scales))


def nearest_level(levels: list[tuple], side: int) -> tuple[int, int] | None:
    """Of the pyramid's levels (width, height, ...), the size of the one whose area is nearest (by
    ratio) to a square of ``side``: the level the global input stands in for."""
    if not levels:
        return None
    w, h = min(levels, key=lambda level: abs(np.log(level[0] * level[1] / side ** 2)))[:2]
    return w, h


def shrink_to_pyramid(image: Image.Image, base: float, scales) -> Image.Image:
    """The image shrunk by Pillow to the pyramid's largest level, when it is larger: a phone photo
    of 12 megapixels made a float tensor and resampled three times took most of a query's local
    features (RESULTS.md, "Photos from a phone"). Each level is still resampled from this one
    with antialiasing, and keypoints are still mapped to the original pixels."""
    top = base * max(scales, default=1.0)
    if top >= 1.0:
        return image
    size = (max(1, round(image.width * top)), max(1, round(image.height * top)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def empty_features(dim: int) -> LocalFeatures:
    return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros(0, np.float32),
                         np.zeros(0, np.float32), np.zeros((0, dim), np.float32))
