"""Side-by-side pictures of inlier correspondences: what people look at to trust a match."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def draw_correspondences(image_a: Image.Image, image_b: Image.Image, points_a, points_b,
                         max_height: int = 480, caption: str = "") -> np.ndarray:
    """RGB array: both images scaled to one height, each inlier pair joined by a line."""
    scale_a = max_height / image_a.height
    scale_b = max_height / image_b.height
    a = np.asarray(image_a.resize((round(image_a.width * scale_a), max_height)))
    b = np.asarray(image_b.resize((round(image_b.width * scale_b), max_height)))
    canvas = np.concatenate([a, b], axis=1).copy()
    offset = a.shape[1]
    points_a = np.asarray(points_a, dtype=np.float32).reshape(-1, 2) * scale_a
    points_b = np.asarray(points_b, dtype=np.float32).reshape(-1, 2) * scale_b
    rng = np.random.default_rng(0)
    colours = rng.integers(64, 256, size=(len(points_a), 3))
    for (xa, ya), (xb, yb), colour in zip(points_a, points_b, colours):
        colour = tuple(int(c) for c in colour)
        pa, pb = (int(round(xa)), int(round(ya))), (int(round(xb + offset)), int(round(yb)))
        cv2.line(canvas, pa, pb, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, pa, 3, colour, -1, cv2.LINE_AA)
        cv2.circle(canvas, pb, 3, colour, -1, cv2.LINE_AA)
    if caption:
        cv2.putText(canvas, caption, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, caption, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def save_png(rgb: np.ndarray, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="PNG")
    return path
