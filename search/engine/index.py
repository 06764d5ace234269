"""The coarse index: per global feature variant, its vectors and a coarse backend over them
(the paper's BallTree, or FAISS for large collections: coarse_backends.py), persisted with
the PCA, the image table, the local-feature store and a manifest, in a build folder laid out
by ``layout``. Images added since the build (``additions.py``) sit in small delta segments
beside it: their positions follow the build's, their vectors are scanned exactly, and every
query picks up a new delta (``refresh_deltas``) without reloading the build.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path

import joblib
import numpy as np

from . import layout
from .coarse_backends import BALLTREE, FAISS, Share, backend_class, choose_backend, save_variants, stored_rows
from .collection import Collection, ImageRecord
from .config import CoarseSettings, EngineConfig
from .errors import SearchIndexError
from .features import (GlobalFeatures, extract_global_features, fit_pca, hybrid_parts, predicted_classes,
                       variant_vectors)
from .instance_features import InstanceDescriber
from .local_store import LocalStore, StackedLocalStore, build_local_store, fingerprint
from .methods import VARIANTS
from .model import TrainedModel
from .progress import Progress, no_progress
from .resume import global_key, save_global_rows as save_resume_rows, saved_global_rows as resume_rows
from .stored import RowFile, load_array, load_pickled


@dataclass
class SearchIndex:
    path: Path
    manifest: dict
    image_ids: list[str]
    relpaths: list[str]
    labels: list[str | None]
    collection_root: Path
    vectors: dict[str, RowFile]  # read from disk as needed: float32 (BallTree builds) or float16 (FAISS)
    pca: object | None
    local: LocalStore | None = None
    fingerprints: list[str | None] = field(default_factory=list)  # each image file's when indexed (reuse)
    coarse_settings: CoarseSettings | None = None  # how a FAISS backend searches (lists probed)
    _backends: dict = field(default_factory=dict, repr=False)
    # the delta segments loaded so far: their folders, their vectors stacked (in RAM), the local
    # store of the build alone, and the deltas folder's stamp when last looked at
    deltas: list[Path] = field(default_factory=list)
    delta_vectors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    main_local: LocalStore | None = field(default=None, repr=False)
    _deltas_stamp: int | None = field(default=None, repr=False)

    def __post_init__(self):
        self.main_size = len(self.image_ids)
        self.main_local = self.local
        self.refresh_deltas()

    def refresh_deltas(self) -> int:
        """Load the deltas completed since the last look (one stat when there are none); returns
        how many images they added."""
        stamp = layout.deltas_stamp(self.path)
        if stamp == self._deltas_stamp:
            return 0
        self._deltas_stamp = stamp
        before = len(self)
        for folder in layout.deltas_of(self.path):
            if folder not in self.deltas:
                self._load_delta(folder)
        return len(self) - before

    def _load_delta(self, folder: Path) -> None:
        manifest = layout.read_manifest(folder, layout.INDEX_KEYS)
        if manifest["model_checksum"] != self.manifest["model_checksum"] or manifest["variants"] != self.manifest["variants"]:
            raise SearchIndexError(f"{folder} was made for another model or other variants than {self.path}; reindex")
        table = layout.read_table(folder, manifest)
        vectors = {}
        for variant, dim in manifest["variants"].items():
            vectors[variant] = load_array(layout.vectors_file(folder, variant)).astype(np.float32)
            if vectors[variant].shape != (len(table), dim):
                raise SearchIndexError(f"{folder}: '{variant}' vectors do not match its table; reindex")
        local = None
        if self.main_local is not None:
            local = LocalStore.open(layout.local_dir(folder))
            if len(local) != len(table) or local.meta["extractor"] != self.main_local.meta["extractor"]:
                raise SearchIndexError(f"{folder}: its local-feature store does not match its table; reindex")
        # complete before anything changes: a delta that fails to load leaves the index as it was
        for variant, matrix in vectors.items():
            old = self.delta_vectors.get(variant)
            self.delta_vectors[variant] = matrix if old is None else np.concatenate([old, matrix])
        self.image_ids += [row["id"] for row in table]
        self.relpaths += [row["path"] for row in table]
        self.labels += [row["label"] for row in table]
        self.fingerprints += [row.get("fingerprint") for row in table]
        if local is not None:
            stores = self.local.stores if isinstance(self.local, StackedLocalStore) else [self.local]
            self.local = StackedLocalStore(stores + [local])
        self.deltas.append(folder)
        self.__dict__.pop("positions", None)
        self.__dict__.pop("label_codes", None)

    def row_vectors(self, variant: str, positions) -> np.ndarray:
        """The ``variant`` vectors (float32) of the images at ``positions``, build or delta."""
        positions = np.asarray(positions, dtype=np.int64)
        in_build = positions < self.main_size
        if in_build.all():  # no copy beyond the read itself (float32 stores are not converted)
            return self.vectors[variant][positions].astype(np.float32, copy=False)
        out = np.empty((len(positions), self.vectors[variant].shape[1]), dtype=np.float32)
        out[in_build] = self.vectors[variant][positions[in_build]]
        out[~in_build] = self.delta_vectors[variant][positions[~in_build] - self.main_size]
        return out

    def predicted_classes(self, positions) -> np.ndarray | None:
        """The classifier's class of each image at ``positions``; None where the index keeps no logits."""
        return predicted_classes(self.row_vectors("logits", positions)) if "logits" in self.vectors else None

    def labels_at(self, positions) -> np.ndarray:
        """The labels of the images at ``positions`` as strings ("" for none), thousands at once."""
        names, codes = self.label_codes
        return names[codes[np.asarray(positions, dtype=np.int64)]]

    @cached_property
    def label_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct labels ("" for none) and each image's place among them: thousands of
        candidates' labels at once, in 4 bytes an image. Numbered in order of first sight with a dict,
        one pass: sorting a million Python strings (``np.unique``) made the first search after a load
        wait seconds (RESULTS.md, "The labels' codes at a million images")."""
        places: dict[str, int] = {}
        codes = np.fromiter((places.setdefault(label or "", len(places)) for label in self.labels),
                            dtype=np.int32, count=len(self.labels))
        return np.array(list(places), dtype=str), codes

    @property
    def describer_name(self) -> str | None:
        """What made the instance and hybrid variants' vectors (``InstanceDescriber.name``); None: no such variants."""
        return self.manifest.get("instance_describer")

    @property
    def variants(self) -> list[str]:
        return list(self.vectors)

    def backend_name(self, variant: str) -> str:
        """Which backend serves ``variant`` (builds made before there was a choice: the BallTree)."""
        return self.manifest.get("coarse", {}).get(variant, BALLTREE)

    def backend(self, variant: str):
        """The variant's coarse backend, loaded on first use (a worker holds only what it searches)."""
        if variant not in self._backends:
            name = self.backend_name(variant)
            self._backends[variant] = backend_class(name).load(
                layout.coarse_file(self.path, variant, name), self.vectors[variant],
                self.coarse_settings or EngineConfig().coarse_settings())
        return self._backends[variant]

    def __len__(self) -> int:
        return len(self.image_ids)

    def path_of(self, position: int) -> Path:
        return self.collection_root / self.relpaths[position]

    @cached_property
    def positions(self) -> dict[str, int]:
        """Image id -> position in this index."""
        return {image_id: p for p, image_id in enumerate(self.image_ids)}

    @property
    def removed_ids(self) -> frozenset[str]:
        """Ids removed from search since this build was made (``remove_images``), read afresh; a
        shard's are those of the collection it was split from (``shards.split_build``)."""
        source = (self.manifest.get("shard") or {}).get("index_root")
        return layout.read_removed(Path(source) if source else layout.index_root_of(self.path))

    def hidden(self, exclude_ids=frozenset()) -> np.ndarray | None:
        """A mask of the positions no search may return: removed images and ``exclude_ids``."""
        ids = self.removed_ids | frozenset(exclude_ids)
        positions = [self.positions[i] for i in ids if i in self.positions]
        if not positions:
            return None
        mask = np.zeros(len(self), dtype=bool)
        mask[positions] = True
        return mask

    def nearest(self, vector: np.ndarray, variant: str, n: int,
                exclude_ids=frozenset()) -> tuple[np.ndarray, np.ndarray]:
        """``coarse_candidates`` less ``exclude_ids`` and the images removed from search."""
        return self.nearest_each(np.atleast_2d(vector)[:1], variant, n, exclude_ids)[0]

    def nearest_each(self, vectors: np.ndarray, variant: str, n: int,
                     exclude_ids=frozenset()) -> list[tuple[np.ndarray, np.ndarray]]:
        """``nearest`` for each row of ``vectors`` (a query's crops), in one search of the backend."""
        hidden = self.hidden(exclude_ids)
        extra = 0 if hidden is None else int(hidden.sum())
        found = []
        for positions, distances in self.coarse_candidates_each(vectors, variant, n + extra):
            if hidden is not None:
                keep = ~hidden[positions]
                positions, distances = positions[keep], distances[keep]
            found.append((positions[:n], distances[:n]))
        return found

    def nearest_distance_each(self, vectors: np.ndarray, variant: str, exclude_ids=frozenset()) -> np.ndarray:
        """Each row's distance to its nearest image searched (inf: none), in one search."""
        return np.array([d[0] if len(d) else np.inf
                         for _, d in self.nearest_each(np.atleast_2d(vectors), variant, 1, exclude_ids)],
                        dtype=np.float64)

    def nearest_to_query_or_crops(self, own: tuple[np.ndarray, np.ndarray], crops: np.ndarray, variant: str,
                                  n: int, exclude_ids=frozenset()) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` nearest to the query (``own``: its ``nearest``) or to any of its crops' vectors,
        each at its least distance: how a fine method finds its candidates."""
        return nearest_to_any([own] + self.nearest_each(crops, variant, n, exclude_ids), n)

    def coarse_candidates(self, vector: np.ndarray, variant: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions and distances of the ``n`` nearest images, nearest first."""
        return self.coarse_candidates_each(np.atleast_2d(vector)[:1], variant, n)[0]

    def coarse_candidates_each(self, vectors: np.ndarray, variant: str,
                               n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """``coarse_candidates`` for each row of ``vectors``."""
        if variant not in self.vectors:
            raise SearchIndexError(
                f"index {self.path} has no '{variant}' variant (it has {', '.join(self.vectors)}); "
                "reindex to get every variant")
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        all_distances, all_positions = self.backend(variant).search(vectors, n)
        added = self.delta_vectors.get(variant)
        found = []
        for vector, positions, distances in zip(vectors, all_positions, all_distances):
            if added is not None:
                # the deltas are small beside the build (a merge folds them in): an exact scan
                delta_distances = np.sqrt(((added - vector.reshape(1, -1)) ** 2).sum(1))
                positions = np.concatenate([positions, self.main_size + np.arange(len(added))])
                distances = np.concatenate([distances, delta_distances])
                nearest = np.argsort(distances, kind="stable")[:n]
                positions, distances = positions[nearest], distances[nearest]
            found.append((positions, distances))
        return found

    def collection(self) -> Collection:
        """The collection this index was built from, labels included, as its table recorded it."""
        records = [ImageRecord(i, p, self.collection_root / p, label)
                   for i, p, label in zip(self.image_ids, self.relpaths, self.labels)]
        return Collection(self.collection_root, records)


def _previous_build(index_root: Path) -> SearchIndex | None:
    try:
        return load_index(index_root)
    except SearchIndexError:
        return None


def global_features(records: list[ImageRecord], model: TrainedModel, previous: SearchIndex | None, device,
                    batch_size: int, progress: Progress = no_progress,
                    describer: InstanceDescriber | None = None, resume: Path | None = None,
                    checkpoint_images: int = 500) -> tuple[GlobalFeatures, list[str], int]:
    """Each record's global vectors: reused from ``previous`` (the active build) or from what an
    interrupted run saved in the ``resume`` folder when the image's file, the model and the
    describer are unchanged, extracted otherwise (and saved there, ``checkpoint_images`` at a
    time). Returns the features (in ``records`` order, unreadable images skipped), the kept
    images' fingerprints and how many were reused: a rebuild of an unchanged collection runs no
    network."""
    fingerprints = [fingerprint(r.path) for r in records]
    needed = {"penultimate", "logits"} | ({"instance"} if describer is not None else set())
    sources = []
    if (previous is not None and previous.manifest["model_checksum"] == model.checksum
            and needed <= set(previous.vectors)
            and (describer is None or previous.describer_name == describer.name)):
        sources.append(previous)
    saved = resume_rows(resume, needed) if resume is not None else None
    if saved is not None:
        sources.append(saved)
    source_of = np.full(len(records), -1, dtype=np.int64)  # which source each record is reused from
    old_row = np.full(len(records), -1, dtype=np.int64)
    for k, source in enumerate(sources):
        for i, r in enumerate(records):
            row = source.positions.get(r.image_id)
            if source_of[i] < 0 and row is not None and source.fingerprints[row] == fingerprints[i]:
                source_of[i], old_row[i] = k, row
    reused = int((source_of >= 0).sum())
    progress("global features", reused, len(records))
    to_extract = [r for i, r in enumerate(records) if source_of[i] < 0]
    at = {r.image_id: i for i, r in enumerate(records)}
    parts = []
    for start in range(0, len(to_extract), checkpoint_images):
        chunk = to_extract[start:start + checkpoint_images]
        done = reused + start
        part = extract_global_features(model, chunk, device, batch_size,
                                       lambda stage, n, total: progress(stage, done + n, len(records)), describer)
        parts.append(part)
        if resume is not None:
            vectors = {"penultimate": part.penultimate, "logits": part.logits}
            if describer is not None:
                vectors["instance"] = part.instance
            save_resume_rows(resume, [r.image_id for r in part.records],
                             [fingerprints[at[r.image_id]] for r in part.records], vectors)
    fresh = _joined(parts, model, describer)
    # where each record's vectors come from: a row of a source, a row of the fresh ones, or none
    new_row = np.full(len(records), -1, dtype=np.int64)
    new_row[[at[r.image_id] for r in fresh.records]] = np.arange(len(fresh.records))
    kept = np.flatnonzero((source_of >= 0) | (new_row >= 0))

    def assemble(variant: str, new: np.ndarray) -> np.ndarray:
        out = np.empty((len(kept), new.shape[1]), dtype=np.float32)
        fresh_rows = new_row[kept] >= 0
        out[fresh_rows] = new[new_row[kept][fresh_rows]]
        for k, source in enumerate(sources):
            mine = source_of[kept] == k
            if mine.any():
                out[mine] = source.row_vectors(variant, old_row[kept][mine])
        return out

    features = GlobalFeatures(
        [records[i] for i in kept], assemble("penultimate", fresh.penultimate),
        assemble("logits", fresh.logits), fresh.skipped,
        assemble("instance", fresh.instance) if describer is not None else None)
    return features, [fingerprints[i] for i in kept], reused


def _joined(parts: list[GlobalFeatures], model: TrainedModel, describer) -> GlobalFeatures:
    """Chunks of extracted features as one (empty arrays of the right width when there are none)."""
    def stack(arrays, width):
        return np.concatenate(arrays) if arrays else np.zeros((0, width), np.float32)

    return GlobalFeatures(
        [r for p in parts for r in p.records],
        stack([p.penultimate for p in parts], model.backbone.feature_dim),
        stack([p.logits for p in parts], model.backbone.num_classes),
        [s for p in parts for s in p.skipped],
        stack([p.instance for p in parts], describer.dim) if describer is not None else None)


def build_index(collection: Collection, model: TrainedModel, index_root: Path, config: EngineConfig,
                device, variants: tuple[str, ...] = VARIANTS, activate: bool = True,
                progress: Progress = no_progress, local_extractor=None,
                describer: InstanceDescriber | None = None) -> Path:
    """Extract features for ``collection`` and the images added to the index root with
    ``add_images`` (less the images removed from search), build the coarse backends (the instance
    variant's too when a ``describer`` is given, the local-feature store when ``local_extractor``
    is), and write a complete build directory: the active build's deltas are folded in."""
    with layout.writing(index_root):
        return _build_index(collection, model, Path(index_root), config, device, variants, activate, progress,
                            local_extractor, describer)


def added_records(index_root: Path, collection: Collection) -> list[ImageRecord]:
    """The images ``add_images`` added under ``index_root`` that ``collection`` does not hold and
    whose files are still there."""
    held = {r.image_id for r in collection.records}
    return [ImageRecord(row["id"], row["path"], Path(row["path"]), row["label"])
            for row in layout.read_added(index_root) if row["id"] not in held and Path(row["path"]).is_file()]


def _build_index(collection, model, index_root, config, device, variants, activate, progress, local_extractor,
                 describer) -> Path:
    started = time.monotonic()
    describer = describer if {"instance", "hybrid"} & set(variants) else None
    removed = layout.read_removed(index_root)
    added = added_records(index_root, collection)
    records = [r for r in collection.records + added if r.image_id not in removed]
    previous = _previous_build(index_root)  # whose unchanged images keep their global and local features
    resume = layout.resume_folder(index_root, "global",
                                  global_key(model.checksum, describer.name if describer is not None else None))
    features, fingerprints, reused = global_features(records, model, previous, device, config.batch_size,
                                                     progress, describer, resume, config.checkpoint_images)
    if not features.records:
        raise SearchIndexError(f"no readable images in {collection.root}; nothing to index")
    pca = fit_pca(features.penultimate, config.pca_dim, config.seed) if "pca" in variants else None
    vectors = {k: v for k, v in variant_vectors(features.penultimate, features.logits, pca, features.instance,
                                                config.hybrid_weight).items() if k in variants}

    settings = config.coarse_settings()
    backend = choose_backend(settings, len(features.records))
    partial, final = layout.new_build(index_root)
    try:
        # FAISS serves large collections: float16 halves the disk and page cache, and its ~3
        # significant digits are well within the distance gaps that order neighbours
        for variant in list(vectors):  # one at a time, each float32 copy let go (where nothing else holds it)
            vectors[variant] = vectors[variant].astype(np.float16 if backend == FAISS else np.float32)
        widths = {k: int(v.shape[1]) for k, v in vectors.items()}
        stored_in = save_variants(partial, vectors, backend, settings, variant_shares(widths, config.hybrid_weight),
                                  progress)
        if pca is not None:
            joblib.dump(pca, layout.pca_file(partial))
        local_meta = None
        if local_extractor is not None:
            local_meta = build_local_store(
                layout.local_dir(partial), features.records, local_extractor, config.local_pca_dim,
                previous=previous.local if previous is not None else None, seed=config.seed, progress=progress,
                checkpoint=layout.resume_folder(index_root, "local", local_extractor.checksum),
                checkpoint_images=config.checkpoint_images)
        layout.write_table(partial, [{"id": r.image_id, "path": r.relpath, "label": r.label, "fingerprint": f}
                                     for r, f in zip(features.records, fingerprints)])
        layout.write_manifest(partial, {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_checksum": model.checksum,
            "model_path": str(model.path) if model.path else None,
            "backbone": model.name,
            "classes": model.classes,
            "collection_root": str(collection.root),
            "collection_size": len(features.records),
            "variants": widths,
            "coarse": {k: backend for k in vectors},
            "stored_in": stored_in,
            "global": {"reused": reused, "extracted": len(features.records) - reused},
            "added": len(added),
            "removed": len(collection.records) + len(added) - len(records),
            "pca_dim": int(pca.n_components_) if pca is not None else None,
            "instance_describer": describer.name if describer is not None else None,
            "hybrid_weight": config.hybrid_weight if "hybrid" in vectors else None,
            "normalisation": "L2 on every variant (hybrid: weighted join of unit vectors); Euclidean distance",
            "skipped": features.skipped + collection.skipped,
            "local": None if local_meta is None else {
                k: local_meta[k] for k in ("extractor", "extractor_name", "dim", "raw_dim", "global_level",
                                           "max_keypoints", "scales", "reused", "extracted", "resumed",
                                           "total_keypoints")},
            "build_seconds": round(time.monotonic() - started, 1),
        })
        layout.finish_build(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    layout.clear_resume(index_root)  # what an interrupted run saved is in this build now
    if activate:
        activate_build(index_root, final)
    return final


def variant_shares(widths: dict[str, int], hybrid_weight: float | None) -> dict[str, Share]:
    """The variants a build may store as parts of the hybrid one (``coarse_backends.Share``): the
    penultimate and instance vectors, when the hybrid variant is built beside them. ``widths``:
    variant -> dimensions, as the manifest's ``variants``."""
    if hybrid_weight is None or not {"hybrid", "penultimate", "instance"} <= set(widths):
        return {}
    parts = hybrid_parts(widths["penultimate"], widths["instance"], hybrid_weight)
    return {k: Share("hybrid", start, stop, factor) for k, (start, stop, factor) in parts.items()}


def activate_build(index_root: Path, build: Path) -> None:
    """Make ``build`` the active one, after checking that it loads."""
    with layout.writing(index_root):
        load_index(build)
        layout.point_active(index_root, build)


def load_index(path: Path, expected_checksum: str | None = None,
               coarse_settings: CoarseSettings | None = None) -> SearchIndex:
    """Load a build (or the active build under an index root), checking its manifest and that
    every variant's files are there; the coarse backends load when first searched."""
    build = layout.active_build(path)
    manifest = layout.read_manifest(build, layout.INDEX_KEYS)
    if expected_checksum and manifest["model_checksum"] != expected_checksum:
        raise SearchIndexError(
            f"{build} was built with model {manifest['model_checksum'][:12]}, not the loaded model "
            f"{expected_checksum[:12]}; reindex with the current model")
    table = layout.read_table(build, manifest)
    for variant in manifest["variants"]:
        backend_file = layout.coarse_file(build, variant, manifest.get("coarse", {}).get(variant, BALLTREE))
        if not backend_file.is_file():
            raise SearchIndexError(f"{build}: file missing for variant '{variant}': {backend_file}")
    # read by pread a run of rows at a time (stored.RowFile), not memory-mapped: a file cut short
    # under a running worker is an error for that search, not a SIGBUS that kills the worker
    vectors = stored_rows(build, manifest["variants"], manifest.get("stored_in") or {})
    for variant, dim in manifest["variants"].items():
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
        labels=[row["label"] for row in table], fingerprints=[row.get("fingerprint") for row in table],
        collection_root=Path(manifest["collection_root"]),
        vectors=vectors, pca=load_pickled(pca_file) if pca_file.is_file() else None,
        local=local, coarse_settings=coarse_settings)


def nearest_to_any(found: list[tuple[np.ndarray, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` nearest of several searches' answers ((positions, distances), each its ``n``
    nearest, nearest first), an image at the least of its distances; ties go to the earlier search.
    Exactly the ``n`` nearest to any of the searches' vectors: one of them is among the ``n``
    nearest of the vector it is nearest to."""
    positions = np.concatenate([np.asarray(p, dtype=np.int64) for p, _ in found])
    distances = np.concatenate([np.asarray(d, dtype=np.float32) for _, d in found])
    order = np.argsort(distances, kind="stable")
    positions, distances = positions[order], distances[order]
    _, first = np.unique(positions, return_index=True)
    keep = np.sort(first)[:n]
    return positions[keep], distances[keep]
