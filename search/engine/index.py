"""The coarse index: one scikit-learn BallTree per global feature variant,
persisted with the PCA, the image table, the local-feature store and a
manifest, in a build folder laid out by ``layout``.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path

import joblib
import numpy as np
from sklearn.neighbors import BallTree

from . import layout
from .collection import Collection, ImageRecord
from .config import EngineConfig
from .errors import SearchIndexError
from .features import extract_global_features, fit_pca, variant_vectors
from .instance_features import InstanceDescriber
from .local_store import LocalStore, build_local_store
from .methods import VARIANTS
from .model import TrainedModel
from .progress import Progress, no_progress


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
    def describer_name(self) -> str | None:
        """What made the instance and hybrid variants' vectors (``InstanceDescriber.name``); None: no such variants."""
        return self.manifest.get("instance_describer")

    @property
    def variants(self) -> list[str]:
        return list(self.trees)

    def __len__(self) -> int:
        return len(self.image_ids)

    def path_of(self, position: int) -> Path:
        return self.collection_root / self.relpaths[position]

    @cached_property
    def positions(self) -> dict[str, int]:
        """Image id -> position in this index."""
        return {image_id: p for p, image_id in enumerate(self.image_ids)}

    def coarse_candidates(self, vector: np.ndarray, variant: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions and distances of the ``n`` nearest images, nearest first."""
        if variant not in self.trees:
            raise SearchIndexError(
                f"index {self.path} has no '{variant}' tree (it has {', '.join(self.trees)}); "
                "reindex to get every variant")
        n = max(1, min(int(n), len(self)))
        distances, positions = self.trees[variant].query(np.atleast_2d(vector).astype(np.float32), k=n)
        return positions[0], distances[0]

    def collection(self) -> Collection:
        """The collection this index was built from, labels included, as its table recorded it."""
        records = [ImageRecord(i, p, self.collection_root / p, label)
                   for i, p, label in zip(self.image_ids, self.relpaths, self.labels)]
        return Collection(self.collection_root, records)


def _previous_local_store(index_root: Path) -> LocalStore | None:
    try:
        return LocalStore.open(layout.local_dir(layout.active_build(index_root)))
    except SearchIndexError:
        return None


def build_index(collection: Collection, model: TrainedModel, index_root: Path, config: EngineConfig,
                device, variants: tuple[str, ...] = VARIANTS, activate: bool = True,
                progress: Progress = no_progress, local_extractor=None,
                describer: InstanceDescriber | None = None) -> Path:
    """Extract features for ``collection``, build the trees (the instance variant's too when a
    ``describer`` is given, the local-feature store when ``local_extractor`` is), and write a
    complete build directory."""
    index_root = Path(index_root)
    started = time.monotonic()
    describer = describer if {"instance", "hybrid"} & set(variants) else None
    features = extract_global_features(model, collection.records, device, config.batch_size, progress, describer)
    if not features.records:
        raise SearchIndexError(f"no readable images in {collection.root}; nothing to index")
    pca = fit_pca(features.penultimate, config.pca_dim, config.seed) if "pca" in variants else None
    vectors = {k: v for k, v in variant_vectors(features.penultimate, features.logits, pca, features.instance,
                                                config.hybrid_weight).items() if k in variants}

    partial, final = layout.new_build(index_root)
    try:
        for variant, matrix in vectors.items():
            np.save(layout.vectors_file(partial, variant), matrix)
            joblib.dump(BallTree(matrix, leaf_size=config.leaf_size), layout.tree_file(partial, variant))
        if pca is not None:
            joblib.dump(pca, layout.pca_file(partial))
        local_meta = None
        if local_extractor is not None:
            local_meta = build_local_store(
                layout.local_dir(partial), features.records, local_extractor, config.local_pca_dim,
                previous=_previous_local_store(index_root), seed=config.seed, progress=progress)
        layout.write_table(partial, [{"id": r.image_id, "path": r.relpath, "label": r.label}
                                     for r in features.records])
        layout.write_manifest(partial, {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_checksum": model.checksum,
            "model_path": str(model.path) if model.path else None,
            "backbone": model.name,
            "classes": model.classes,
            "collection_root": str(collection.root),
            "collection_size": len(features.records),
            "variants": {k: int(v.shape[1]) for k, v in vectors.items()},
            "pca_dim": int(pca.n_components_) if pca is not None else None,
            "instance_describer": describer.name if describer is not None else None,
            "hybrid_weight": config.hybrid_weight if "hybrid" in vectors else None,
            "normalisation": "L2 on every variant (hybrid: weighted join of unit vectors); Euclidean ball tree",
            "skipped": features.skipped + collection.skipped,
            "local": None if local_meta is None else {
                k: local_meta[k] for k in ("extractor", "extractor_name", "dim", "raw_dim", "reused",
                                           "extracted", "total_keypoints")},
            "build_seconds": round(time.monotonic() - started, 1),
        })
        layout.finish_build(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if activate:
        activate_build(index_root, final)
    return final


def activate_build(index_root: Path, build: Path) -> None:
    """Make ``build`` the active one, after checking that it loads."""
    load_index(build)
    layout.point_active(index_root, build)


def load_index(path: Path, expected_checksum: str | None = None) -> SearchIndex:
    """Load a build (or the active build under an index root), checking its manifest."""
    build = layout.active_build(path)
    manifest = layout.read_manifest(build)
    if expected_checksum and manifest["model_checksum"] != expected_checksum:
        raise SearchIndexError(
            f"{build} was built with model {manifest['model_checksum'][:12]}, not the loaded model "
            f"{expected_checksum[:12]}; reindex with the current model")
    table = layout.read_table(build, manifest)
    trees, vectors = {}, {}
    for variant, dim in manifest["variants"].items():
        try:
            trees[variant] = joblib.load(layout.tree_file(build, variant))
            vectors[variant] = np.load(layout.vectors_file(build, variant), mmap_mode="r")
        except FileNotFoundError as exc:
            raise SearchIndexError(f"{build}: file missing for variant '{variant}': {exc.filename}") from exc
        if vectors[variant].shape != (len(table), dim):
            raise SearchIndexError(
                f"{build}: '{variant}' vectors are {vectors[variant].shape}, manifest says ({len(table)}, {dim})")
    pca_file = layout.pca_file(build)
    local = None
    if manifest.get("local"):
        local = LocalStore.open(layout.local_dir(build))
        if len(local) != len(table) or local.meta["extractor"] != manifest["local"]["extractor"]:
            raise SearchIndexError(f"{build}: the local-feature store does not match the index table")
    return SearchIndex(
        path=build, manifest=manifest,
        image_ids=[row["id"] for row in table], relpaths=[row["path"] for row in table],
        labels=[row["label"] for row in table], collection_root=Path(manifest["collection_root"]),
        trees=trees, vectors=vectors, pca=joblib.load(pca_file) if pca_file.is_file() else None,
        local=local)
