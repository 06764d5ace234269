"""Images added to a live index without a rebuild (``add_images``, the staff page).

The files are copied under the index root (the collection folder may be read-only) and listed
in its ledger, so every later build holds them; their features, extracted with the active
build's model, PCA and extractor, go into a delta segment of that build, which every worker's
next query searches beside it (``SearchIndex.refresh_deltas``). A rebuild folds the deltas in
without extracting anything again.
"""
from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import layout
from .collection import ImageRecord, files_under, stable_id
from .config import EngineConfig
from .errors import ImageError, SearchIndexError
from .features import extract_global_features, variant_vectors
from .images import is_image_name, open_image
from .index import SearchIndex, load_index
from .instance_features import describer_for
from .local_features import following
from .local_store import build_local_store, fingerprint
from .progress import Progress, no_progress


@dataclass
class Additions:
    added: list[ImageRecord] = field(default_factory=list)
    already: list[str] = field(default_factory=list)  # files whose picture the index holds already
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    delta: Path | None = None
    shard_deltas: list[Path] = field(default_factory=list)  # its share in each shard (sharded search)


def image_files(paths) -> list[Path]:
    """The image files named by ``paths``: files, and the images (by name) under folders."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += [p for p in files_under(path) if is_image_name(p) and not p.name.startswith(".")]
        elif path.is_file():
            files.append(path)
        else:
            raise SearchIndexError(f"no such file or folder: {path}")
    return files


def add_images(index_root: Path, paths, models, config: EngineConfig, label: str | None = None,
               progress: Progress = no_progress) -> Additions:
    """Add the images at ``paths`` to the active index: searchable from every worker's next query
    once this returns. Files that are not readable images are skipped with the reason; a picture
    the index already holds (same bytes) is not added twice."""
    index_root = Path(index_root)
    with layout.writing(index_root):
        index = load_index(index_root, expected_checksum=models.model.checksum)
        describer = describer_for(index, config, models.device, models.model.name)
        models = replace(models, extractor=following(models.extractor, index.local.meta if index.local else None))
        _check_extractors(index, models, describer)
        result = Additions()
        seen = set(index.positions)
        for file in image_files(paths):
            try:
                open_image(file)
            except ImageError as exc:
                result.skipped.append((str(file), str(exc)))
                continue
            digest = hashlib.sha1(file.read_bytes()).hexdigest()[:12]
            image_id = stable_id(f"{layout.ADDED_FILES}/{digest}")  # the picture, whatever its name
            if image_id in seen:
                result.already.append(str(file))
                continue
            seen.add(image_id)
            target = layout.added_folder(index_root) / digest / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}")
            shutil.copyfile(file, partial)
            partial.replace(target)
            result.added.append(ImageRecord(image_id, str(target), target, label))
        if result.added:
            # the ledger first: if the delta fails, the next build still picks the images up
            layout.record_added(index_root, [{"id": r.image_id, "path": r.relpath, "label": r.label}
                                             for r in result.added])
            result.delta = write_delta(index, result.added, models, config, describer, progress)
        return result


@dataclass(frozen=True)
class DeltaLoad:
    """How much of a build's collection sits in deltas (scanned exactly at every query)."""
    build_images: int
    delta_images: int
    deltas: int

    def merge_due(self, fraction: float, max_deltas: int) -> bool:
        """Whether a merge (a rebuild that extracts nothing) should fold the deltas in now: they
        hold ``fraction`` of the build's images, or there are ``max_deltas`` of them."""
        if not self.deltas:
            return False
        return self.deltas >= max_deltas or self.delta_images >= fraction * max(1, self.build_images)


def delta_load(index_root: Path) -> DeltaLoad:
    """The active build's deltas, counted from the manifests alone."""
    build = layout.active_build(index_root)
    deltas = layout.deltas_of(build)
    return DeltaLoad(layout.read_manifest(build)["collection_size"],
                     sum(layout.read_manifest(d)["collection_size"] for d in deltas), len(deltas))


def _check_extractors(index: SearchIndex, models, describer) -> None:
    if index.local is not None and (models.extractor is None
                                    or models.extractor.checksum != index.local.meta["extractor"]):
        raise SearchIndexError(f"{index.path}: its local features were made by another attention head or other "
                               "settings than the loaded ones; reindex before adding images")
    if describer is not None and describer.name != index.describer_name:
        raise SearchIndexError(f"{index.path}: its instance vectors were made by {index.describer_name}, "
                               f"not by {describer.name}; reindex before adding images")


def write_delta(index: SearchIndex, records: list[ImageRecord], models, config: EngineConfig, describer=None,
                progress: Progress = no_progress) -> Path:
    """A complete delta of ``index``'s build holding ``records``: the build's variants, projected
    with its PCA, and local features reduced with its store's PCA."""
    features = extract_global_features(models.model, records, models.device, config.batch_size, progress, describer)
    if not features.records:
        raise SearchIndexError("none of the images could be read: " +
                               "; ".join(f"{path}: {why}" for path, why in features.skipped))
    vectors = variant_vectors(features.penultimate, features.logits, index.pca, features.instance,
                              index.manifest.get("hybrid_weight"))
    partial, final = layout.new_delta(index.path)
    try:
        for variant in index.variants:
            np.save(layout.vectors_file(partial, variant), vectors[variant].astype(np.float32))
        local = None
        if index.main_local is not None:
            local = build_local_store(layout.local_dir(partial), features.records, models.extractor,
                                      config.local_pca_dim, previous=index.main_local, seed=config.seed,
                                      progress=progress)
        layout.write_table(partial, [{"id": r.image_id, "path": r.relpath, "label": r.label,
                                      "fingerprint": fingerprint(r.path)} for r in features.records])
        layout.write_manifest(partial, {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build": index.path.name,
            "model_checksum": index.manifest["model_checksum"],
            "collection_root": index.manifest["collection_root"],
            "collection_size": len(features.records),
            "variants": index.manifest["variants"],
            "skipped": features.skipped,
            "local": None if local is None else {"extractor": local["extractor"], "extracted": local["extracted"]},
        })
        layout.finish_build(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final
