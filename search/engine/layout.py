"""The index's on-disk layout, and the only module that knows it::

    <index root>/builds/<stamp>/           a complete build (manifest.json written last)
    <index root>/builds/<stamp>.partial/   a build in progress, never read
    <index root>/active -> builds/<stamp>  symlink, switched atomically
    <index root>/removed.json              ids removed from search (remove_images), for every build
    <index root>/added.json                images added with add_images ({id, path, label}): part of
                                           the collection for every later build
    <index root>/added/<digest>/<name>     their files, copied in
    <index root>/.lock                     held by whatever writes builds or deltas (one at a time)
    <index root>/resume/global-<key>/<stamp>/  what a build run extracted so far, saved as it goes
    <index root>/resume/local-<key>/<stamp>/   (vectors, local stores), reused if it was interrupted;
                                           removed when a build completes
    <build>/manifest.json  images.json  vectors_<variant>.npy  tree_<variant>.joblib | faiss_<variant>.index
            pca.joblib  local/ (the local-feature store); a FAISS build's variants whose short list is
            re-scored keep their vectors in vectors_<variant>.faiss instead (a FAISS float16 store,
            read by FAISS and by stored.RowFile alike: the vectors are on disk once)
    <build>/deltas/<stamp>/                images added since the build (a delta segment, searched
                                           beside it): manifest.json images.json vectors_<variant>.npy local/

A build is made beside the active one and only becomes active when complete,
so a failed build leaves the old index serving; a delta likewise counts only
once renamed from ``<stamp>.partial``, and the next build folds the deltas in. This module reads and writes
paths and JSON only (no NumPy, no models): the web process looks up an image's
path and label through ``catalog`` without loading an index.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from contextlib import contextmanager
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
ADDED = "added.json"
ADDED_FILES = "added"
DELTAS = "deltas"
LOCK = ".lock"
RESUME = "resume"
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


def vector_store_file(build: Path, variant: str) -> Path:
    """A variant's vectors as the float16 store its FAISS backend re-scores from (coarse_backends)."""
    return Path(build) / f"vectors_{variant}.faiss"


def stored_vectors_file(build: Path, variant: str) -> Path:
    """Whichever file holds a build's ``variant`` vectors: its FAISS store, else its ``.npy``."""
    store = vector_store_file(build, variant)
    return store if store.is_file() else vectors_file(build, variant)


def pca_file(build: Path) -> Path:
    return Path(build) / "pca.joblib"


def local_dir(build: Path) -> Path:
    return Path(build) / LOCAL


def new_build(index_root: Path) -> tuple[Path, Path]:
    """A fresh ``(partial, final)`` pair of build folders; the partial one is created."""
    return new_folder_pair(Path(index_root) / BUILDS)


def new_delta(build: Path) -> tuple[Path, Path]:
    """A fresh ``(partial, final)`` pair of delta folders of ``build``; the partial one is created."""
    return new_folder_pair(Path(build) / DELTAS)


def new_folder_pair(parent: Path) -> tuple[Path, Path]:
    """A fresh ``(partial, final)`` pair of stamped folders under ``parent``; the partial one is created."""
    parent.mkdir(parents=True, exist_ok=True)
    # microseconds: folders made in one second still sort in the order they were made
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f") + "-" + uuid.uuid4().hex[:6]
    final = parent / stamp
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    partial.mkdir()
    return partial, final


def resume_folder(index_root: Path, kind: str, key: str) -> Path:
    """Where a build run saves its ``kind`` ("global" or "local") features as it goes, under ``key``
    (what made them: the model and describer, or the extractor)."""
    return Path(index_root) / RESUME / f"{kind}-{key[:16]}"


def clear_resume(index_root: Path) -> None:
    """Forget what interrupted runs saved: a build has completed."""
    shutil.rmtree(Path(index_root) / RESUME, ignore_errors=True)


def deltas_stamp(build: Path) -> int | None:
    """Changes whenever a delta of ``build`` is completed: one stat, cheap enough for every query."""
    try:
        return (Path(build) / DELTAS).stat().st_mtime_ns
    except FileNotFoundError:
        return None


def deltas_of(build: Path) -> list[Path]:
    """The complete deltas of ``build``, oldest first."""
    return _complete_folders(Path(build) / DELTAS)


def builds_of(index_root: Path) -> list[Path]:
    """The complete builds under ``index_root``, oldest first."""
    return _complete_folders(Path(index_root) / BUILDS)


def _complete_folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.endswith(PARTIAL_SUFFIX) and (p / MANIFEST).is_file())


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


def shard_summary(shards_root: Path, shards: int, index_root: Path) -> list[dict]:
    """What each of ``shards`` shards serves, from manifests alone (the staff page): its active
    build, the build it was split from, whether that is ``index_root``'s active build (else the
    shards answer for an older index until split again), and its images, deltas included."""
    try:
        source = active_build(index_root).name
    except SearchIndexError:
        source = None
    rows = []
    for number in range(shards):
        row = {"number": number, "build": None, "split": None, "images": 0, "current": False, "error": ""}
        try:
            build = active_build(Path(shards_root) / str(number))
            manifest = read_manifest(build)
            shard = manifest.get("shard") or {}
            row.update(build=build.name, split=shard.get("source_build"),
                       images=int(manifest.get("collection_size", 0))
                       + sum(int(read_manifest(d).get("collection_size", 0)) for d in deltas_of(build)),
                       current=shard.get("source_build") == source and shard.get("shards") == shards)
            if shard.get("shards") != shards:
                row["error"] = f"one of {shard.get('shards') or 'no'} shards, not {shards}"
        except SearchIndexError as exc:
            row["error"] = str(exc)
        rows.append(row)
    return rows


def has_active(index_root: Path) -> bool:
    return (Path(index_root) / ACTIVE).exists()


def index_root_of(build: Path) -> Path:
    """The index root a build lives under (a bare build folder is its own root)."""
    build = Path(build)
    return build.parent.parent if build.parent.name == BUILDS else build


_json_files: dict[Path, tuple[tuple, object]] = {}


def read_json_when_changed(file: Path, convert=lambda content: content):
    """``convert`` of the JSON in ``file``, read and converted again only when the file changes
    (its size, modification time or inode): a worker or a page that asks on every search or view
    then costs a stat. FileNotFoundError when there is none; ValueError or TypeError when its
    content cannot be read or converted (nothing is cached then)."""
    file = Path(file)
    stat = file.stat()
    key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    cached = _json_files.get(file)
    if cached is None or cached[0] != key:
        cached = _json_files[file] = (key, convert(json.loads(file.read_text())))
    return cached[1]


def read_removed(index_root: Path) -> frozenset[str]:
    """The ids removed from search under ``index_root``; re-read only when the file changes (a
    search stats it, so a removal counts from the next query of every worker)."""
    file = Path(index_root) / REMOVED
    try:
        return read_json_when_changed(file, frozenset)
    except FileNotFoundError:
        return frozenset()
    except (ValueError, TypeError) as exc:
        raise SearchIndexError(f"{file} is not a JSON list of image ids ({exc})") from exc


def write_removed(index_root: Path, ids) -> None:
    """Replace the removed ids in one atomic rename."""
    _replace_json(Path(index_root) / REMOVED, sorted(ids))


def _replace_json(file: Path, content) -> None:
    tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex[:6]}")
    tmp.write_text(json.dumps(content))
    os.replace(tmp, file)


def added_folder(index_root: Path) -> Path:
    """Where ``add_images`` keeps the files it adds (the collection folder may be read-only)."""
    return Path(index_root) / ADDED_FILES


def read_added(index_root: Path) -> list[dict]:
    """The images added with ``add_images`` (``id``, absolute ``path``, ``label``), oldest first."""
    file = Path(index_root) / ADDED
    if not file.is_file():
        return []
    rows = read_json(file, list)
    if not all(isinstance(row, dict) and {"id", "path", "label"} <= set(row) for row in rows):
        raise SearchIndexError(f"{file}: a row lacks its id, path or label")
    return rows


def record_added(index_root: Path, rows: list[dict]) -> None:
    """Append ``rows`` (those not listed already) to the added images, in one atomic rename."""
    listed = read_added(index_root)
    held = {row["id"] for row in listed}
    _replace_json(Path(index_root) / ADDED, listed + [row for row in rows if row["id"] not in held])


_held: dict[Path, tuple[int, int]] = {}  # index root -> (file descriptor, depth): the lock is re-entrant


@contextmanager
def writing(index_root: Path):
    """Hold the index root's lock while writing a build or a delta: two writers at once (two staff
    runs, add_images during a rebuild) would each miss the other's images. A lock file, not a
    database row: it is released by the kernel when its holder dies."""
    root = Path(index_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    fd, depth = _held.get(root, (None, 0))
    if fd is None:
        fd = os.open(root / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
    _held[root] = (fd, depth + 1)
    try:
        yield
    finally:
        fd, depth = _held.pop(root)
        if depth > 1:
            _held[root] = (fd, depth - 1)
        else:
            os.close(fd)  # releases the lock


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
    """A build's images and its deltas'."""
    manifest = read_manifest(build)
    rows = {row["id"]: row for row in read_table(build, manifest)}
    for delta in deltas_of(build):
        rows.update((row["id"], row) for row in read_table(delta, read_manifest(delta)))
    return Catalog(Path(build), Path(manifest["collection_root"]), rows)


_catalogs: dict[Path, tuple[int | None, Catalog]] = {}


def catalog(index_root: Path) -> Catalog:
    """The active build's catalog, read once per build and delta (re-read when ``active`` moves
    or a delta is added)."""
    build = active_build(index_root)
    stamp = deltas_stamp(build)
    cached = _catalogs.get(Path(index_root))
    if cached is None or cached[1].build != build or cached[0] != stamp:
        cached = _catalogs[Path(index_root)] = (stamp, read_catalog(build))
    return cached[1]


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
        path = ref if ref in by_path else relative_to_collection(ref, active.collection_root)
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


def made_with_global_level(local_meta: dict) -> bool:
    """Whether a local-feature store (its meta, or a manifest's "local") was extracted with
    LOCAL_GLOBAL_LEVEL; a store from before the setting was recorded was made without it."""
    return bool(local_meta.get("global_level", False))


# LOCAL_MAX_KEYPOINTS and LOCAL_SCALES of every build made before a store recorded them
UNRECORDED_MAX_KEYPOINTS = 300
UNRECORDED_SCALES = (0.5, 0.7071, 1.0)


def made_with_local_settings(local_meta: dict) -> tuple[int, tuple[float, ...]]:
    """The keypoints per image and the pyramid's scales a local-feature store (its meta, or a
    manifest's "local") was extracted with; a store from before they were recorded: the defaults
    of its time (``following`` first tries the settings of now on it)."""
    keypoints = local_meta.get("max_keypoints") or UNRECORDED_MAX_KEYPOINTS
    scales = local_meta.get("scales") or UNRECORDED_SCALES
    return int(keypoints), tuple(float(s) for s in scales)


def local_settings_record(extractor) -> dict:
    """What a store records of ``extractor``'s settings, so that searches of it and additions to it
    follow them whatever the settings say later (``made_with_local_settings``)."""
    return {"max_keypoints": int(extractor.settings.max_keypoints), "scales": list(extractor.settings.scales)}


def settings_behind(manifest: dict, config) -> list[str]:
    """What a build keeps from the settings it was made with that the current ones change: its
    searches follow the build, so a changed setting applies only from the next reindex (the staff
    page says so). ``config``: an ``EngineConfig``."""
    behind = []
    local = manifest.get("local")
    if local and made_with_global_level(local) != config.local_global_level:
        made = "with" if made_with_global_level(local) else "without"
        behind.append(f"its local features were made {made} the one backbone pass "
                      f"(LOCAL_GLOBAL_LEVEL is now {'on' if config.local_global_level else 'off'})")
    if local:
        keypoints, scales = made_with_local_settings(local)
        now = config.local_settings()
        # a store from before the record: ``following`` keeps the settings of now where they made it,
        # which only the models' checksums tell, so the page says what it assumes
        assumed = ("" if "max_keypoints" in local
                   else ", the default before builds recorded it, unless set otherwise then")
        if keypoints != now.max_keypoints:
            behind.append(f"its local features were made with at most {keypoints} keypoints per image{assumed} "
                          f"(LOCAL_MAX_KEYPOINTS is now {now.max_keypoints})")
        if scales != now.scales:
            behind.append(f"its local features were made at scales {','.join(f'{s:g}' for s in scales)}{assumed} "
                          f"(LOCAL_SCALES is now {','.join(f'{s:g}' for s in now.scales)})")
    weight = manifest.get("hybrid_weight")
    if weight is not None and weight != config.hybrid_weight:
        behind.append(f"its hybrid variant joins the two vectors with weight {weight:g} "
                      f"(HYBRID_WEIGHT is now {config.hybrid_weight:g})")
    return behind
