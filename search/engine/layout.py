"""The index's on-disk layout, and the only module that knows it::

    <index root>/builds/<stamp>/           a complete build (manifest.json written last)
    <index root>/builds/<stamp>.partial/   a build in progress, never read
    <index root>/active -> builds/<stamp>  symlink, switched atomically
    <index root>/removed.json              ids removed from search (remove_images), for every build
    <build>/manifest.json  images.json  vectors_<variant>.npy  tree_<variant>.joblib | faiss_<variant>.index
            pca.joblib  local/ (the local-feature store)

A build is made beside the active one and only becomes active when complete,
so a failed build leaves the old index serving. This module reads and writes
paths and JSON only (no NumPy, no models): the web process looks up an image's
path and label through ``catalog`` without loading an index.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import SearchIndexError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TABLE = "images.json"
ACTIVE = "active"
BUILDS = "builds"
REMOVED = "removed.json"  # ids taken out of search at once, and left out of later builds
# What a manifest must hold for the catalog (INDEX_KEYS: for loading the index too); without, refused.
CATALOG_KEYS = ("collection_root", "collection_size")
INDEX_KEYS = CATALOG_KEYS + ("model_checksum", "variants")
LOCAL = "local"
PARTIAL_SUFFIX = ".partial"


def coarse_file(build: Path, variant: str, backend: str) -> Path:
    """The file of a variant's coarse backend (coarse_backends.py)."""
    if backend == "faiss":
        return Path(build) / f"faiss_{variant}.index"
    return Path(build) / f"tree_{variant}.joblib"


def vectors_file(build: Path, variant: str) -> Path:
    return Path(build) / f"vectors_{variant}.npy"


def pca_file(build: Path) -> Path:
    return Path(build) / "pca.joblib"


def local_dir(build: Path) -> Path:
    return Path(build) / LOCAL


def new_build(index_root: Path) -> tuple[Path, Path]:
    """A fresh ``(partial, final)`` pair of build folders; the partial one is created."""
    builds = Path(index_root) / BUILDS
    builds.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    final = builds / stamp
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    partial.mkdir()
    return partial, final


def finish_build(partial: Path, final: Path) -> Path:
    """A partial build becomes a complete one (readers never see it half written)."""
    Path(partial).rename(final)
    return Path(final)


def point_active(index_root: Path, build: Path) -> None:
    """Point ``active`` at ``build`` with one atomic rename of a symlink."""
    index_root = Path(index_root)
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


def has_active(index_root: Path) -> bool:
    return (Path(index_root) / ACTIVE).exists()


def index_root_of(build: Path) -> Path:
    """The index root a build lives under (a bare build folder is its own root)."""
    build = Path(build)
    return build.parent.parent if build.parent.name == BUILDS else build


_removed: dict[Path, tuple[tuple, frozenset]] = {}


def read_removed(index_root: Path) -> frozenset[str]:
    """The ids removed from search under ``index_root``; re-read only when the file changes (a
    search stats it, so a removal counts from the next query of every worker)."""
    file = Path(index_root) / REMOVED
    try:
        stat = file.stat()
    except FileNotFoundError:
        return frozenset()
    key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    cached = _removed.get(file)
    if cached is None or cached[0] != key:
        try:
            ids = frozenset(json.loads(file.read_text()))
        except (ValueError, TypeError) as exc:
            raise SearchIndexError(f"{file} is not a JSON list of image ids ({exc})") from exc
        cached = _removed[file] = (key, ids)
    return cached[1]


def write_removed(index_root: Path, ids) -> None:
    """Replace the removed ids in one atomic rename."""
    file = Path(index_root) / REMOVED
    tmp = file.with_name(f".{REMOVED}.{uuid.uuid4().hex[:6]}")
    tmp.write_text(json.dumps(sorted(ids)))
    os.replace(tmp, file)


def read_manifest(build: Path, required: tuple[str, ...] = CATALOG_KEYS) -> dict:
    """The manifest of a complete build of the supported format, holding the ``required`` keys."""
    manifest_file = Path(build) / MANIFEST
    if not manifest_file.is_file():
        raise SearchIndexError(f"{build} is not a complete index: {MANIFEST} is missing")
    manifest = read_json(manifest_file, dict)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SearchIndexError(
            f"{build}: index format {manifest.get('format_version')} is not the supported {FORMAT_VERSION}; reindex")
    missing = [key for key in required if key not in manifest]
    if missing:
        raise SearchIndexError(f"{manifest_file} lacks {', '.join(missing)}: a damaged index; reindex")
    return manifest


def read_json(file: Path, kind: type):
    """A JSON file's content of the expected kind, or a clear error naming the file."""
    try:
        content = json.loads(Path(file).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SearchIndexError(f"{file} is not valid JSON ({exc}): a damaged index; reindex") from exc
    if not isinstance(content, kind):
        raise SearchIndexError(f"{file} holds a JSON {type(content).__name__}, not a {kind.__name__}: "
                               "a damaged index; reindex")
    return content


def write_manifest(build: Path, manifest: dict) -> None:
    (Path(build) / MANIFEST).write_text(json.dumps({"format_version": FORMAT_VERSION, **manifest}, indent=2))


def read_table(build: Path, manifest: dict) -> list[dict]:
    """The image table (``id``, ``path`` relative to the collection root, ``label``), checked
    against the manifest's size."""
    table = read_json(Path(build) / TABLE, list)
    if not all(isinstance(row, dict) and {"id", "path", "label"} <= set(row) for row in table):
        raise SearchIndexError(f"{Path(build) / TABLE}: a row lacks its id, path or label; reindex")
    if len(table) != manifest["collection_size"]:
        raise SearchIndexError(
            f"{build}: {TABLE} lists {len(table)} images but the manifest says {manifest['collection_size']}")
    return table


def write_table(build: Path, rows: list[dict]) -> None:
    (Path(build) / TABLE).write_text(json.dumps(rows))


@dataclass(frozen=True)
class Catalog:
    """One build's images by id: what the site needs to serve and label them."""
    build: Path
    collection_root: Path
    rows: dict[str, dict]  # image id -> {"id", "path", "label"}

    def __len__(self) -> int:
        return len(self.rows)

    def path_of(self, image_id: str) -> Path | None:
        row = self.rows.get(image_id)
        return None if row is None else self.collection_root / row["path"]

    def label_of(self, image_id: str) -> str | None:
        row = self.rows.get(image_id)
        return None if row is None else row["label"]

    @property
    def labels(self) -> list[str]:
        return sorted({row["label"] for row in self.rows.values() if row["label"]})


def read_catalog(build: Path) -> Catalog:
    manifest = read_manifest(build)
    rows = {row["id"]: row for row in read_table(build, manifest)}
    return Catalog(Path(build), Path(manifest["collection_root"]), rows)


_catalogs: dict[Path, Catalog] = {}


def catalog(index_root: Path) -> Catalog:
    """The active build's catalog, read once per build (re-read when ``active`` moves)."""
    build = active_build(index_root)
    cached = _catalogs.get(Path(index_root))
    if cached is None or cached.build != build:
        cached = _catalogs[Path(index_root)] = read_catalog(build)
    return cached


def relative_to_collection(ref: str, collection_root: Path) -> str | None:
    """``ref`` as a path relative to ``collection_root`` (None: an absolute path outside it). Links
    inside the collection are not followed: a collection of symlinks names its images by the links."""
    path = Path(ref)
    if not path.is_absolute():
        return path.as_posix()
    path = Path(os.path.abspath(path))
    for root in (Path(os.path.abspath(collection_root)), Path(collection_root).resolve()):
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            continue
    return None


def resolve_images(index_root: Path, refs: list[str]) -> list[str]:
    """Image ids of the active build named by id, by path relative to its collection root, or by
    absolute path; refuses (naming them) refs it does not hold."""
    active = catalog(index_root)
    by_path = {row["path"]: image_id for image_id, row in active.rows.items()}
    ids, unknown = [], []
    for ref in refs:
        if ref in active.rows:
            ids.append(ref)
            continue
        path = relative_to_collection(ref, active.collection_root)
        image_id = None if path is None else by_path.get(path)
        if image_id is None:
            unknown.append(ref)
        else:
            ids.append(image_id)
    if unknown:
        raise SearchIndexError(f"not in the active index ({active.build.name}): {', '.join(unknown)}")
    return ids


def remove_images(index_root: Path, refs: list[str]) -> tuple[int, int]:
    """Take the images ``refs`` name (see ``resolve_images``) out of search; returns how many
    were not removed already and how many are removed in all. Nothing changes when a ref is
    unknown (``SearchIndexError``)."""
    removed = read_removed(index_root)
    ids = set(resolve_images(index_root, refs))
    write_removed(index_root, removed | ids)
    return len(ids - removed), len(removed | ids)


def restore_images(index_root: Path, image_ids) -> int:
    """Put removed images back into search; returns how many of ``image_ids`` were removed."""
    removed = read_removed(index_root)
    back = removed & set(image_ids)
    write_removed(index_root, removed - back)
    return len(back)
