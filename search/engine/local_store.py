"""The local-feature store: every indexed image's keypoints and PCA-reduced descriptors, the
two things verification reads, in flat float16 arrays with an offset table, read a slice at a
time with ``pread`` (an image's rows are a slice; nothing else is loaded). An image's rows are in
the extractor's order, strongest attention first; the attention scores and pyramid scales
themselves are not kept (stores written before kept them; their files are ignored).

Features are cached: a new build reuses the rows (and the PCA) of images
whose file is unchanged, as long as the extractor is the same.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
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
from .stored import RowFile, load_array, load_pickled
from .threads import thread_pool
from .verification import Candidates

META = "meta.json"
PCA_FILE = "pca.joblib"
ARRAYS = ("keypoints", "descriptors")
FLOAT16_MAX = float(np.finfo(np.float16).max)
STAGE = "local features"
READS_PER_THREAD = 64  # fewer candidates per thread are read on one: a thread costs more than they wait


def fingerprint(path: Path) -> str:
    """Size and modification time: cheap, and changes when the file is replaced."""
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


@dataclass
class StoredFeatures:
    """An indexed image's local features as the store keeps them: what verification matches."""
    keypoints: np.ndarray  # (K, 2) float32, x and y in original image pixels
    descriptors: np.ndarray  # (K, D) float32, unit length

    def __len__(self) -> int:
        return len(self.keypoints)


@dataclass
class LocalStore:
    path: Path
    meta: dict
    offsets: np.ndarray
    arrays: dict[str, RowFile]  # read by pread, never memory-mapped (stored.RowFile: no SIGBUS)
    pca: PCA

    @classmethod
    def open(cls, path: Path) -> "LocalStore":
        path = Path(path)
        if not (path / META).is_file():
            raise SearchIndexError(f"{path}: no local-feature store ({META} missing); reindex with local features")
        arrays = {name: RowFile(array_file(path, name)) for name in ARRAYS}
        offsets = load_array(array_file(path, "offsets"))
        meta = layout.read_json(path / META, dict)
        total = int(offsets[-1]) if len(offsets) else -1
        short = [name for name, array in arrays.items() if len(array) != total]
        if offsets.ndim != 1 or total < 0 or (np.diff(offsets) < 0).any() or short:
            raise SearchIndexError(f"{path}: the offsets ({total} keypoints in all) do not match "
                                   f"{', '.join(short) or 'themselves'}: a damaged store; reindex")
        return cls(path, meta, offsets, arrays, load_pickled(path / PCA_FILE))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def features(self, position: int) -> StoredFeatures:
        start, end = int(self.offsets[position]), int(self.offsets[position + 1])
        return StoredFeatures(self.keypoints(position), self.arrays["descriptors"].rows(start, end).astype(np.float32))

    def keypoints(self, position: int) -> np.ndarray:
        return self.arrays["keypoints"].rows(int(self.offsets[position]), int(self.offsets[position + 1])).astype(np.float32)

    def locate(self, positions: np.ndarray) -> tuple[list["LocalStore"], np.ndarray, np.ndarray]:
        """Which store holds each position, and where in it (``StackedLocalStore`` has several)."""
        return [self], np.zeros(len(positions), dtype=np.int64), np.asarray(positions, dtype=np.int64)

    def candidates(self, positions, head_rows: int = 0, threads: int = 1) -> Candidates:
        return read_candidates(self, positions, head_rows, threads)

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

    def features(self, position: int) -> StoredFeatures:
        store = int(np.searchsorted(self.starts, position, side="right")) - 1
        return self.stores[store].features(position - int(self.starts[store]))

    def locate(self, positions: np.ndarray) -> tuple[list[LocalStore], np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=np.int64)
        which = np.searchsorted(self.starts, positions, side="right") - 1
        return self.stores, which, positions - self.starts[which]

    def candidates(self, positions, head_rows: int = 0, threads: int = 1) -> Candidates:
        return read_candidates(self, positions, head_rows, threads)

    def reduce(self, features: LocalFeatures) -> LocalFeatures:
        return reduce_descriptors(self.pca, features)


class LazyRows(Sequence):
    """Candidates' rows of one kind (keypoints, or the whole of their descriptors), each read from
    its store the first time it is asked for: of 4,000 candidates only the few hundred fitted need
    them. ``known``: rows already read."""

    def __init__(self, read, count: int, known: dict[int, np.ndarray] | None = None):
        self._read, self.count = read, count
        self.read: dict[int, np.ndarray] = dict(known or {})

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"candidate {i} of {len(self)}")
        i = int(i) % len(self)
        if i not in self.read:
            self.read[i] = self._read(i)
        return self.read[i]


def read_candidates(store: LocalStore | StackedLocalStore, positions, head_rows: int = 0,
                    threads: int = 1) -> Candidates:
    """The local features of the images at ``positions``, for verification: their descriptors read
    into one float16 buffer (one ``pread`` each, and no array or float32 conversion per image,
    which made reading 4,000 candidates five times dearer: RESULTS.md), their keypoints when asked
    for. ``head_rows`` > 0: only each image's first (strongest) that many descriptors go into the
    buffer, as ``Candidates.heads``, which is all a pre-score compares; the whole of an image's
    descriptors is read when asked for (the few hundred it lets through). ``threads`` > 1: the reads
    the page cache cannot answer at once are spread over that many threads, so that they wait on
    the disk together rather than one after another (a store larger than memory: RESULTS.md,
    "Reading candidates from disk")."""
    stores, which, local = store.locate(np.asarray(positions, dtype=np.int64).ravel())
    starts, ends = np.zeros(len(local), dtype=np.int64), np.zeros(len(local), dtype=np.int64)
    for s, part in enumerate(stores):
        mine = which == s
        starts[mine], ends[mine] = part.offsets[local[mine]], part.offsets[local[mine] + 1]
    lengths = ends - starts
    if head_rows > 0:
        lengths = np.minimum(lengths, head_rows)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    buffer = np.empty((int(bounds[-1]), int(store.pca.n_components_)), dtype=np.float16)

    def read(chunk) -> None:
        for i in chunk:  # one read per candidate
            stores[which[i]].arrays["descriptors"].read_into(int(starts[i]), buffer[bounds[i]:bounds[i + 1]])

    if threads <= 1 or len(local) < 2 * READS_PER_THREAD:
        read(range(len(local)))
    else:
        # what the page cache holds is read at once, here (threads would only contend for the GIL
        # over it); the rest waits on the disk on several threads together, which let go of the GIL
        waiting = [i for i in range(len(local)) if not stores[which[i]].arrays["descriptors"].read_cached_into(
            int(starts[i]), buffer[bounds[i]:bounds[i + 1]])]
        chunks = max(1, min(threads, len(waiting) // READS_PER_THREAD))
        if chunks == 1:
            read(waiting)
        else:
            list(thread_pool("store-read", chunks).map(read, np.array_split(np.asarray(waiting), chunks)))
    read_rows = [buffer[bounds[i]:bounds[i + 1]] for i in range(len(local))]
    keypoints = LazyRows(lambda i: stores[which[i]].keypoints(int(local[i])), len(local))
    if head_rows <= 0:
        return Candidates(read_rows, keypoints)
    whole = np.flatnonzero(ends - starts <= head_rows)  # their heads are all they have
    descriptors = LazyRows(lambda i: stores[which[i]].arrays["descriptors"].rows(int(starts[i]), int(ends[i])),
                           len(local), {int(i): read_rows[i] for i in whole})
    return Candidates(descriptors, keypoints, heads=read_rows)


def _extract(extractor, record: ImageRecord) -> LocalFeatures | str:
    try:
        return extractor.extract(open_image(record.path))
    except ImageError as exc:
        return str(exc)


def build_local_store(path: Path, records: list[ImageRecord], extractor, pca_dim: int = 40,
                      previous: LocalStore | None = None, pca_sample_images: int = 200, seed: int = 0,
                      progress: Progress = no_progress, checkpoint: Path | None = None,
                      checkpoint_images: int = 500) -> dict:
    """Extract (or reuse) local features for ``records`` in order and write the store at ``path``.

    Rows are reused from ``previous`` (the active build's store) and, given a ``checkpoint``
    folder, from what an interrupted run saved there; new rows are saved there every
    ``checkpoint_images`` images, so a killed run loses at most that many."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fingerprints = [fingerprint(r.path) for r in records]
    sources = [s for s in [previous, *_checkpoint_stores(checkpoint)]
               if s is not None and s.meta.get("extractor") == extractor.checksum]
    pca = sources[0].pca if sources else None
    # a checkpoint projected with another PCA (another build's) cannot be mixed in
    sources = [s for s in sources if np.array_equal(s.pca.components_, pca.components_)]
    reusable = {}
    for store in sources:
        old = {image_id: j for j, image_id in enumerate(store.meta["image_ids"])}
        for i, r in enumerate(records):
            j = old.get(r.image_id)
            if i not in reusable and j is not None and store.meta["fingerprints"][j] == fingerprints[i]:
                reusable[i] = (store, j)

    rows: list[LocalFeatures | StoredFeatures | str | None] = [None] * len(records)
    saver = _Checkpoints(checkpoint, checkpoint_images, records, fingerprints, extractor)
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
            saver.add(i, rows[i], pca)
        to_extract = [i for i in to_extract if i not in raw]
    for i, (store, j) in reusable.items():
        rows[i] = store.features(j)
        done += 1
    for i in to_extract:
        result = _extract(extractor, records[i])
        rows[i] = result if isinstance(result, str) else reduce_descriptors(pca, result)
        saver.add(i, rows[i], pca)
        done += 1
        progress(STAGE, done, len(records))
    skipped = [(records[i].relpath, row) for i, row in enumerate(rows) if isinstance(row, str)]
    rows = [empty_features(pca.n_components_) if isinstance(row, str) else row for row in rows]
    return _write_store(path, records, fingerprints, rows, pca, extractor, {
        "reused": len(reusable), "extracted": len(records) - len(reusable), "skipped": skipped,
        "resumed": sum(store is not previous for store, _ in reusable.values())})


def _write_store(path: Path, records: list[ImageRecord], fingerprints: list[str], rows: list, pca,
                 extractor, extra: dict) -> dict:
    return _write_rows(path, rows, pca, {
        "extractor": extractor.checksum, "extractor_name": extractor.name, "dim": int(pca.n_components_),
        "raw_dim": int(extractor.dim), "global_level": bool(getattr(extractor, "global_level", False)),
        **layout.local_settings_record(extractor), "image_ids": [r.image_id for r in records],
        "fingerprints": fingerprints, **extra})


def _write_rows(path: Path, rows: list[LocalFeatures | StoredFeatures], pca, meta: dict) -> dict:
    """Rows (``LocalFeatures`` or ``StoredFeatures``) written as a store: their keypoints and descriptors."""
    counts = np.array([len(r) for r in rows], dtype=np.int64)
    keypoints = _stack([r.keypoints for r in rows], (0, 2), np.float32)
    # float16 keypoints are off by at most 1/2048 of the coordinate, a few hundredths of the stride-16
    # grid they were taken on, whatever the image's size; a store whose keypoints float16 cannot hold
    # (an image wider than 65,504 pixels) keeps them float32
    fits = not len(keypoints) or float(np.abs(keypoints).max()) <= FLOAT16_MAX
    np.save(array_file(path, "keypoints"), keypoints.astype(np.float16) if fits else keypoints)
    np.save(array_file(path, "descriptors"), _stack([r.descriptors for r in rows], (0, pca.n_components_), np.float16))
    return finish_store(path, np.concatenate([[0], np.cumsum(counts)]), pca, meta)


def array_file(path: Path, name: str) -> Path:
    return Path(path) / f"{name}.npy"


def open_store_arrays(path: Path, rows: int, dim: int) -> dict[str, np.memmap]:
    """A store's keypoint and descriptor files of ``rows`` float16 rows each, mapped to be filled in
    place (a store larger than memory: ``local_scale_benchmark``); ``finish_store`` completes it."""
    widths = {"keypoints": 2, "descriptors": dim}
    return {name: np.lib.format.open_memmap(array_file(path, name), mode="w+", dtype=np.float16,
                                            shape=(rows, widths[name])) for name in ARRAYS}


def finish_store(path: Path, offsets: np.ndarray, pca, meta: dict) -> dict:
    """A store's offset table, PCA and meta beside its arrays: written last, so a store is opened
    only once its rows are there."""
    np.save(array_file(path, "offsets"), offsets)
    joblib.dump(pca, Path(path) / PCA_FILE)
    meta = dict(meta, total_keypoints=int(offsets[-1]))
    (Path(path) / META).write_text(json.dumps(meta))
    return meta


def write_subset(store: LocalStore | StackedLocalStore, positions, path: Path) -> dict:
    """A store at ``path`` holding ``store``'s rows at ``positions`` (a shard's share), with the
    same extractor and PCA: nothing is extracted or projected again."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    positions = [int(p) for p in positions]
    meta = {k: v for k, v in store.meta.items() if k not in ("image_ids", "fingerprints", "total_keypoints")}
    meta.update(image_ids=[store.meta["image_ids"][p] for p in positions],
                fingerprints=[store.meta["fingerprints"][p] for p in positions],
                reused=len(positions), extracted=0, resumed=0, skipped=[])
    return _write_rows(path, [store.features(p) for p in positions], store.pca, meta)


def _checkpoint_stores(folder: Path | None) -> list[LocalStore]:
    """The stores an interrupted run saved under ``folder`` (each complete: written aside, then renamed)."""
    if folder is None or not Path(folder).is_dir():
        return []
    stores = []
    for chunk in sorted(Path(folder).iterdir()):
        if chunk.name.endswith(layout.PARTIAL_SUFFIX) or not (chunk / META).is_file():
            continue
        try:
            stores.append(LocalStore.open(chunk))
        except SearchIndexError:
            continue  # damaged: those images are extracted again
    return stores


class _Checkpoints:
    """Saves newly extracted rows as small stores under a checkpoint folder, ``every`` rows at a time."""

    def __init__(self, folder: Path | None, every: int, records, fingerprints, extractor):
        self.folder, self.every = folder, max(1, every)
        self.records, self.fingerprints, self.extractor = records, fingerprints, extractor
        self.pending: list[tuple[int, LocalFeatures]] = []

    def add(self, i: int, row, pca) -> None:
        if self.folder is None or isinstance(row, str):
            return
        self.pending.append((i, row))
        if len(self.pending) >= self.every:
            partial, final = layout.new_folder_pair(Path(self.folder))
            at = [i for i, _ in self.pending]
            _write_store(partial, [self.records[i] for i in at], [self.fingerprints[i] for i in at],
                         [row for _, row in self.pending], pca, self.extractor, {})
            layout.finish_build(partial, final)
            self.pending = []


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
