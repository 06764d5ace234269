"""The local-feature store: every indexed image's keypoints, scales, scores
and PCA-reduced descriptors, in flat arrays with an offset table, read
through memory maps (an image's rows are a slice; nothing else is loaded).

Features are cached: a new build reuses the rows (and the PCA) of images
whose file is unchanged, as long as the extractor is the same.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

from . import layout
from .collection import ImageRecord
from .errors import ImageError, SearchIndexError
from .images import open_image
from .local_features import LocalFeatures, empty_features
from .progress import Progress, no_progress
from .stored import load_array, load_pickled

META = "meta.json"
ARRAYS = ("keypoints", "scales", "scores", "descriptors")
STAGE = "local features"


def fingerprint(path: Path) -> str:
    """Size and modification time: cheap, and changes when the file is replaced."""
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


@dataclass
class LocalStore:
    path: Path
    meta: dict
    offsets: np.ndarray
    arrays: dict[str, np.ndarray]
    pca: PCA

    @classmethod
    def open(cls, path: Path) -> "LocalStore":
        path = Path(path)
        if not (path / META).is_file():
            raise SearchIndexError(f"{path}: no local-feature store ({META} missing); reindex with local features")
        arrays = {name: load_array(path / f"{name}.npy") for name in ARRAYS}
        offsets = load_array(path / "offsets.npy", mmap=False)
        meta = layout.read_json(path / META, dict)
        total = int(offsets[-1]) if len(offsets) else -1
        short = [name for name, array in arrays.items() if len(array) != total]
        if offsets.ndim != 1 or total < 0 or (np.diff(offsets) < 0).any() or short:
            raise SearchIndexError(f"{path}: the offsets ({total} keypoints in all) do not match "
                                   f"{', '.join(short) or 'themselves'}: a damaged store; reindex")
        return cls(path, meta, offsets, arrays, load_pickled(path / "pca.joblib"))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def features(self, position: int) -> LocalFeatures:
        start, end = int(self.offsets[position]), int(self.offsets[position + 1])
        a = self.arrays
        return LocalFeatures(np.asarray(a["keypoints"][start:end]), np.asarray(a["scales"][start:end]),
                             np.asarray(a["scores"][start:end]),
                             np.asarray(a["descriptors"][start:end], dtype=np.float32))

    def reduce(self, features: LocalFeatures) -> LocalFeatures:
        """Project raw descriptors (e.g. a query's) with this store's PCA."""
        return reduce_descriptors(self.pca, features)


class StackedLocalStore:
    """A build's store and its deltas' read as one, positions running on from one store to the
    next; the deltas were projected with the build's PCA."""

    def __init__(self, stores: list[LocalStore]):
        self.stores = stores
        self.starts = np.cumsum([0] + [len(s) for s in stores])
        first = stores[0]
        self.path, self.pca = first.path, first.pca
        self.meta = dict(first.meta, image_ids=[i for s in stores for i in s.meta["image_ids"]],
                         fingerprints=[f for s in stores for f in s.meta["fingerprints"]],
                         total_keypoints=sum(s.meta["total_keypoints"] for s in stores))

    def __len__(self) -> int:
        return int(self.starts[-1])

    def features(self, position: int) -> LocalFeatures:
        store = int(np.searchsorted(self.starts, position, side="right")) - 1
        return self.stores[store].features(position - int(self.starts[store]))

    def reduce(self, features: LocalFeatures) -> LocalFeatures:
        return reduce_descriptors(self.pca, features)


def _extract(extractor, record: ImageRecord) -> LocalFeatures | str:
    try:
        return extractor.extract(open_image(record.path))
    except ImageError as exc:
        return str(exc)


def build_local_store(path: Path, records: list[ImageRecord], extractor, pca_dim: int = 40,
                      previous: LocalStore | None = None, pca_sample_images: int = 200, seed: int = 0,
                      progress: Progress = no_progress) -> dict:
    """Extract (or reuse) local features for ``records`` in order and write the store at ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fingerprints = [fingerprint(r.path) for r in records]
    reusable = {}
    pca = None
    if previous is not None and previous.meta.get("extractor") == extractor.checksum:
        pca = previous.pca
        old = {image_id: i for i, image_id in enumerate(previous.meta["image_ids"])}
        reusable = {i: old[r.image_id] for i, r in enumerate(records)
                    if r.image_id in old and previous.meta["fingerprints"][old[r.image_id]] == fingerprints[i]}

    rows: list[LocalFeatures | None] = [None] * len(records)
    skipped: list[tuple[str, str]] = []
    done = 0
    to_extract = [i for i in range(len(records)) if i not in reusable]
    if pca is None:
        # Fit the PCA on a seeded sample first, so every image can be projected as soon as it is read.
        rng = np.random.default_rng(seed)
        sample = sorted(rng.permutation(to_extract)[:pca_sample_images].tolist())
        raw = {}
        for i in sample:
            result = _extract(extractor, records[i])
            raw[i] = result
            done += 1
            progress(STAGE, done, len(records))
        descriptors = [r.descriptors for r in raw.values() if isinstance(r, LocalFeatures) and len(r)]
        if not descriptors:
            raise SearchIndexError("no local features could be extracted to fit the PCA")
        stacked = np.concatenate(descriptors)
        pca = PCA(n_components=min(pca_dim, stacked.shape[1], len(stacked)), random_state=seed).fit(stacked)
        for i, result in raw.items():
            rows[i] = result if isinstance(result, str) else reduce_descriptors(pca, result)
        to_extract = [i for i in to_extract if i not in raw]
    for i, j in reusable.items():
        rows[i] = previous.features(j)
        done += 1
    for i in to_extract:
        result = _extract(extractor, records[i])
        rows[i] = result if isinstance(result, str) else reduce_descriptors(pca, result)
        done += 1
        progress(STAGE, done, len(records))
    for i, row in enumerate(rows):
        if isinstance(row, str):
            skipped.append((records[i].relpath, row))
            rows[i] = empty_features(pca.n_components_)

    counts = np.array([len(r) for r in rows], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    np.save(path / "offsets.npy", offsets)
    np.save(path / "keypoints.npy", _stack([r.keypoints for r in rows], (0, 2), np.float32))
    np.save(path / "scales.npy", _stack([r.scales for r in rows], (0,), np.float32))
    np.save(path / "scores.npy", _stack([r.scores for r in rows], (0,), np.float32))
    np.save(path / "descriptors.npy", _stack([r.descriptors for r in rows], (0, pca.n_components_), np.float16))
    joblib.dump(pca, path / "pca.joblib")
    meta = {"extractor": extractor.checksum, "extractor_name": extractor.name, "dim": int(pca.n_components_),
            "raw_dim": int(extractor.dim), "image_ids": [r.image_id for r in records],
            "fingerprints": fingerprints, "reused": len(reusable), "extracted": len(records) - len(reusable),
            "skipped": skipped, "total_keypoints": int(offsets[-1])}
    (path / META).write_text(json.dumps(meta))
    return meta


def reduce_descriptors(pca: PCA, features: LocalFeatures) -> LocalFeatures:
    """Raw descriptors projected with ``pca`` and made unit length again.

    The projection is done by torch, not by ``pca.transform``: NumPy's OpenBLAS keeps its
    threads spinning for a while after each call, and on two cores that starved the next
    image's convolutions, interleaved with it image by image (local features at 8 images/s
    instead of 44: RESULTS.md, "Faster networks")."""
    if len(features) == 0:
        return empty_features(pca.n_components_)
    descriptors = torch.from_numpy(np.ascontiguousarray(features.descriptors, dtype=np.float32))
    mean = torch.from_numpy(np.asarray(pca.mean_, dtype=np.float32))
    components = torch.from_numpy(np.asarray(pca.components_, dtype=np.float32))
    projected = F.normalize((descriptors - mean) @ components.T, dim=1)
    return LocalFeatures(features.keypoints, features.scales, features.scores, projected.numpy())


def _stack(parts: list[np.ndarray], empty_shape: tuple, dtype) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty_shape, dtype)
