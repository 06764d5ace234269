"""The coarse index: one scikit-learn BallTree per global feature variant,
persisted with the PCA, the id-to-path table and a manifest.

Layout under the index root::

    builds/<stamp>/      a complete build (manifest.json written last)
    builds/<stamp>.partial/  a build in progress, never read
    active -> builds/<stamp>   symlink, switched atomically

A build is made beside the active one and only becomes active when
complete, so a failed build leaves the old index serving.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import joblib
import numpy as np
from sklearn.neighbors import BallTree

from .collection import Collection
from .config import EngineConfig
from .errors import SearchIndexError
from .features import VARIANTS, extract_global_features, fit_pca, variant_vectors
from .local_store import LocalStore, build_local_store
from .model import TrainedModel

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TABLE = "images.json"
ACTIVE = "active"

LOCAL = "local"

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class SearchIndex:
    path: Path
    manifest: dict
    image_ids: list[str]
    relpaths: list[str]
    labels: list[str | None]
    collection_root: Path
    trees: dict[str, BallTree]
    vectors: dict[str, np.ndarray]
    pca: object | None
    local: LocalStore | None = None

    @property
    def variants(self) -> list[str]:
        return list(self.trees)

    def __len__(self) -> int:
        return len(self.image_ids)

    def path_of(self, position: int) -> Path:
        return self.collection_root / self.relpaths[position]

    def coarse_candidates(self, vector: np.ndarray, variant: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions and distances of the ``n`` nearest images, nearest first."""
        if variant not in self.trees:
            raise SearchIndexError(
                f"index {self.path} has no '{variant}' tree (it has {', '.join(self.trees)})")
        n = max(1, min(int(n), len(self)))
        distances, positions = self.trees[variant].query(np.atleast_2d(vector).astype(np.float32), k=n)
        return positions[0], distances[0]


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _previous_local_store(index_root: Path) -> LocalStore | None:
    try:
        return LocalStore.open(active_build(index_root) / LOCAL)
    except SearchIndexError:
        return None


def build_index(collection: Collection, model: TrainedModel, index_root: Path, config: EngineConfig,
                device, variants: tuple[str, ...] = VARIANTS, activate: bool = True,
                progress: Progress | None = None, local_extractor=None) -> Path:
    """Extract features for ``collection``, build the trees (and the local-feature
    store when ``local_extractor`` is given), and write a complete build directory."""
    index_root = Path(index_root)
    builds = index_root / "builds"
    builds.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    features = extract_global_features(
        model, collection.records, device, config.batch_size,
        (lambda done, total: progress("global features", done, total)) if progress else None)
    if not features.records:
        raise SearchIndexError(f"no readable images in {collection.root}; nothing to index")
    pca = fit_pca(features.penultimate, config.pca_dim, config.seed) if "pca" in variants else None
    vectors = {k: v for k, v in variant_vectors(features.penultimate, features.logits, pca).items()
               if k in variants}

    final = builds / _stamp()
    partial = final.with_name(final.name + ".partial")
    partial.mkdir()
    try:
        for variant, matrix in vectors.items():
            np.save(partial / f"vectors_{variant}.npy", matrix)
            joblib.dump(BallTree(matrix, leaf_size=config.leaf_size), partial / f"tree_{variant}.joblib")
        if pca is not None:
            joblib.dump(pca, partial / "pca.joblib")
        local_meta = None
        if local_extractor is not None:
            local_meta = build_local_store(
                partial / LOCAL, features.records, local_extractor, config.local_pca_dim,
                previous=_previous_local_store(index_root), seed=config.seed,
                progress=(lambda done, total: progress("local features", done, total)) if progress else None)
        table = [{"id": r.image_id, "path": r.relpath, "label": r.label} for r in features.records]
        (partial / TABLE).write_text(json.dumps(table))
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_checksum": model.checksum,
            "model_path": str(model.path) if model.path else None,
            "backbone": model.name,
            "classes": model.classes,
            "collection_root": str(collection.root),
            "collection_size": len(features.records),
            "variants": {k: int(v.shape[1]) for k, v in vectors.items()},
            "pca_dim": int(pca.n_components_) if pca is not None else None,
            "normalisation": "L2 on penultimate, PCA output and logits; Euclidean ball tree",
            "skipped": features.skipped + collection.skipped,
            "local": None if local_meta is None else {
                k: local_meta[k] for k in ("extractor", "extractor_name", "dim", "raw_dim", "reused",
                                           "extracted", "total_keypoints")},
            "build_seconds": round(time.monotonic() - started, 1),
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if activate:
        activate_build(index_root, final)
    return final


def activate_build(index_root: Path, build: Path) -> None:
    """Point ``active`` at ``build`` with one atomic rename of a symlink."""
    index_root = Path(index_root)
    load_index(build)  # refuse to activate anything that does not load
    link = index_root / ACTIVE
    tmp = index_root / f".{ACTIVE}.{uuid.uuid4().hex[:6]}"
    os.symlink(Path(build).resolve().relative_to(index_root.resolve()), tmp)
    os.replace(tmp, link)


def active_build(index_root: Path) -> Path:
    """The build the ``active`` link points at, or ``index_root`` itself when it is a build."""
    index_root = Path(index_root)
    if (index_root / MANIFEST).is_file():
        return index_root
    link = index_root / ACTIVE
    if not link.exists():
        raise SearchIndexError(f"no index at {index_root} (run the 'index' command first)")
    return link.resolve()


def load_index(path: Path, expected_checksum: str | None = None) -> SearchIndex:
    """Load a build (or the active build under an index root), checking its manifest."""
    build = active_build(path)
    manifest_file = build / MANIFEST
    if not manifest_file.is_file():
        raise SearchIndexError(f"{build} is not a complete index: {MANIFEST} is missing")
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SearchIndexError(
            f"{build}: index format {manifest.get('format_version')} is not the supported {FORMAT_VERSION}; reindex")
    if expected_checksum and manifest["model_checksum"] != expected_checksum:
        raise SearchIndexError(
            f"{build} was built with model {manifest['model_checksum'][:12]}, not the loaded model "
            f"{expected_checksum[:12]}; reindex with the current model")
    table = json.loads((build / TABLE).read_text())
    if len(table) != manifest["collection_size"]:
        raise SearchIndexError(
            f"{build}: {TABLE} lists {len(table)} images but the manifest says {manifest['collection_size']}")
    trees, vectors = {}, {}
    for variant, dim in manifest["variants"].items():
        try:
            trees[variant] = joblib.load(build / f"tree_{variant}.joblib")
            vectors[variant] = np.load(build / f"vectors_{variant}.npy", mmap_mode="r")
        except FileNotFoundError as exc:
            raise SearchIndexError(f"{build}: file missing for variant '{variant}': {exc.filename}") from exc
        if vectors[variant].shape != (len(table), dim):
            raise SearchIndexError(
                f"{build}: '{variant}' vectors are {vectors[variant].shape}, manifest says ({len(table)}, {dim})")
    pca_file = build / "pca.joblib"
    local = None
    if manifest.get("local"):
        local = LocalStore.open(build / LOCAL)
        if len(local) != len(table) or local.meta["extractor"] != manifest["local"]["extractor"]:
            raise SearchIndexError(f"{build}: the local-feature store does not match the index table")
    return SearchIndex(
        path=build, manifest=manifest,
        image_ids=[row["id"] for row in table], relpaths=[row["path"] for row in table],
        labels=[row["label"] for row in table], collection_root=Path(manifest["collection_root"]),
        trees=trees, vectors=vectors, pca=joblib.load(pca_file) if pca_file.is_file() else None,
        local=local)


def indexed_collection(index: SearchIndex) -> Collection:
    """The collection an index was built from, labels included, as its table recorded it."""
    from .collection import ImageRecord

    records = [ImageRecord(i, p, index.collection_root / p, label)
               for i, p, label in zip(index.image_ids, index.relpaths, index.labels)]
    return Collection(index.collection_root, records)
