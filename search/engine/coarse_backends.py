"""Coarse search backends over one variant's unit vectors: positions and Euclidean distances
of the n nearest, nearest first.

- ``balltree``: the paper's scikit-learn BallTree, exact. Right for small collections; in
  1,000+ dimensions it scans nearly every vector, so it grows linearly and slowly.
- ``faiss``: a FAISS inverted file that scans only the lists (around k-means centroids) nearest
  the query. Vectors of more than ``faiss_reduce_dim`` dimensions are listed as int8 codes of
  their PCA projection, and the short list (``faiss_refine`` x n) re-scored from the full
  vectors in float16, a FAISS store that is also the build's vectors file (``save_variant``);
  smaller ones are listed as float16 (``IVF<lists>,SQfp16``). Approximate
  in which vectors it finds, not in their distances (computed from the very float16 values the
  build stores); how much of the exact answer it returns is measured by ``benchmark_scale``
  (recall at 4,000 candidates).

A re-scored index answers one query on ``faiss_parts`` threads: each searches the same lists for
its own part of every list and re-scores its own short list (FAISS re-scores one query's short list
on one core, and scanning and re-scoring are most of a query's time at a million images;
``FaissBackend.search_in_parts``). Its lists are filled in a seeded random order of the collection,
so that the parts (a stretch of every list each) do not follow the collection's own order, in which
look-alikes often sit together.

At FAISS scale a variant whose vectors are a block of another variant's (the penultimate and
instance vectors are the two halves of the hybrid ones, each scaled: ``Share``) keeps no float16
copy of its own: its lists are built over those columns of the other variant's vectors and its
short list is re-scored from that variant's store (``save_variants``).

A request as deep as a large part of the collection (``evaluate``'s whole ranking, or a
collection smaller than the short list) is answered by an exact scan instead, so every caller
can ask "as deep as it needs" whatever the backend.

FAISS is imported by the functions that use it: a collection served by BallTrees never loads it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import joblib
import numpy as np
from sklearn.neighbors import BallTree

from . import layout
from .config import CoarseSettings
from .errors import SearchIndexError
from .progress import Progress, no_progress
from .stored import RowFile, Rows, load_pickled
from .threads import thread_pool

BALLTREE, FAISS = "balltree", "faiss"
BACKENDS = (BALLTREE, FAISS)
SCAN_BLOCK = 65536  # rows per block of an exact scan (a few hundred MB of float32 at 2,560-d)
# A part of a split search (FaissBackend.search_in_parts) is searched again only when its short list
# was under this share of faiss_refine x what it gave: parts give a little more or less than an even
# share by chance, and a short list of 3 x instead of 4 x for them costs little recall (RESULTS.md)
PART_SLACK = 0.75


def choose_backend(settings: CoarseSettings, n_images: int) -> str:
    if settings.backend == "auto":
        return FAISS if n_images >= settings.faiss_min_images else BALLTREE
    if settings.backend not in BACKENDS:
        raise SearchIndexError(f"unknown coarse backend {settings.backend!r}; choose auto, {' or '.join(BACKENDS)}")
    return settings.backend


def exact_nearest(vectors: np.ndarray, queries: np.ndarray, n: int,
                  rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The exact n nearest of ``vectors`` (all of them, or those at ``rows``) to each query, by
    blocks of ``SCAN_BLOCK`` rows: (distances, positions), each (queries, n)."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    query_norms = np.einsum("ij,ij->i", queries, queries)[:, None]
    total = len(vectors) if rows is None else len(rows)
    n = max(1, min(int(n), total))
    best_d = np.full((len(queries), 0), np.inf, dtype=np.float32)
    best_p = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, total, SCAN_BLOCK):
        stop = min(start + SCAN_BLOCK, total)
        where = np.arange(start, stop) if rows is None else rows[start:stop]
        block = np.asarray(vectors[start:stop] if rows is None else vectors[where], dtype=np.float32)
        # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, with the stored rows' own norms (float16 rounding leaves
        # them 1 +- 1e-4, which near 0 would otherwise move a distance by a hundredth)
        squared = query_norms + np.einsum("ij,ij->i", block, block)[None, :] - 2.0 * queries @ block.T
        distances = np.concatenate([best_d, squared], axis=1)
        positions = np.concatenate([best_p, np.broadcast_to(where, (len(queries), len(where)))], axis=1)
        if distances.shape[1] > n:
            keep = np.argpartition(distances, n - 1, axis=1)[:, :n]
            distances = np.take_along_axis(distances, keep, axis=1)
            positions = np.take_along_axis(positions, keep, axis=1)
        best_d, best_p = distances, positions
    order = np.argsort(best_d, axis=1, kind="stable")
    distances = np.sqrt(np.clip(np.take_along_axis(best_d, order, axis=1), 0.0, None))
    return distances, np.take_along_axis(best_p, order, axis=1)


@dataclass(frozen=True)
class Share:
    """A variant stored as columns ``start:stop`` of the ``source`` variant's unit vectors, times
    ``factor`` (its own vectors being unit too, the rest of a source row has squared length
    1 - factor^2)."""
    source: str
    start: int
    stop: int
    factor: float

    @property
    def width(self) -> int:
        return self.stop - self.start

    def lift(self, queries: np.ndarray, source_dim: int) -> np.ndarray:
        """Queries of this variant as source-sized ones: their squared distance to a source row is
        factor^2 times the distance to this variant's row, plus the rest's 1 - factor^2."""
        lifted = np.zeros((len(queries), source_dim), dtype=np.float32)
        lifted[:, self.start:self.stop] = self.factor * queries
        return lifted

    def own_distances(self, lifted_squared: np.ndarray) -> np.ndarray:
        """This variant's distances from squared distances to lifted queries."""
        return np.sqrt(np.clip((lifted_squared - (1.0 - self.factor ** 2)) / self.factor ** 2, 0.0, None))


class SharedColumns(Rows):
    """A shared variant's rows (``Share``), read through its source's rows (a ``stored.RowFile``
    or an array) as ``RowFile`` reads its own: by row number, slice or array of row numbers."""

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, source, share: Share):
        self.source, self.share = source, share
        self.shape = (len(source), share.width)

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def faiss_store(self) -> bool:
        return getattr(self.source, "faiss_store", False)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        rows = np.asarray(self.source[key], dtype=np.float32)
        return rows[..., self.share.start:self.share.stop] / np.float32(self.share.factor)


class BallTreeBackend:
    name = BALLTREE

    def __init__(self, tree):
        self.tree = tree

    @classmethod
    def build(cls, vectors: np.ndarray, settings: CoarseSettings) -> "BallTreeBackend":
        return cls(BallTree(np.asarray(vectors, dtype=np.float32), leaf_size=settings.leaf_size))

    def save(self, path: Path, store: Path | None = None) -> bool:
        """Write the tree to ``path``; it keeps no vectors in a ``store`` (False)."""
        joblib.dump(self.tree, path)
        return False

    @classmethod
    def load(cls, path: Path, vectors: np.ndarray, settings: CoarseSettings) -> "BallTreeBackend":
        return cls(load_pickled(path))

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact either way; several queries (a query's crops) are walked down the tree together
        (``dualtree``), faster than one by one (RESULTS.md, "Candidates found by crops of the query")."""
        queries = np.atleast_2d(queries).astype(np.float32)
        distances, positions = self.tree.query(queries, k=max(1, min(int(n), self.tree.data.shape[0])),
                                               dualtree=len(queries) > 1)
        return distances, positions


class FaissBackend:
    name = FAISS

    def __init__(self, index, vectors: np.ndarray, settings: CoarseSettings, mapped: bool = False):
        import faiss
        self.index, self.vectors, self.settings = index, vectors, settings
        self.lists = faiss.extract_index_ivf(index)  # the inverted file inside (behind a PCA, a refinement)
        self.refined = isinstance(index, faiss.IndexRefine)
        self.mapped = mapped and self.refined  # only the re-scoring store can be mapped (lists are read)
        self.share = getattr(vectors, "share", None)  # searched with lifted queries (Share)
        # a re-scored index's lists are behind a PCA (and a shared variant's column choice)
        self.transformed = self.refined and isinstance(faiss.downcast_index(index.base_index), faiss.IndexPreTransform)
        self._parts = {}  # part_selectors by number of parts, read off the lists when first needed

    @property
    def parts(self) -> int:
        return max(1, self.settings.faiss_parts)

    def probes_for(self, n: int) -> int:
        """Lists to scan for the n nearest: at least ``faiss_nprobe``, and enough that the scanned
        lists hold ``faiss_coverage`` times the short list (a deep request, such as the paper's
        4,000 candidates, needs many lists however good each one is)."""
        short = n * (self.settings.faiss_refine if self.refined else 1)
        mean_list = self.lists.ntotal / self.lists.nlist
        wanted = max(self.settings.faiss_nprobe, int(np.ceil(self.settings.faiss_coverage * short / mean_list)))
        return int(min(wanted, self.lists.nlist))

    @staticmethod
    def lists_for(n_images: int, settings: CoarseSettings) -> int:
        lists = settings.faiss_lists or int(np.sqrt(n_images))
        return int(max(1, min(lists, n_images // 39)))  # k-means wants >= 39 points per list

    @staticmethod
    def reduces(n: int, dim: int, settings: CoarseSettings) -> bool:
        """Whether vectors this wide are listed by a PCA projection and re-scored (enough rows to fit it)."""
        return 0 < settings.faiss_reduce_dim < dim and n >= 10 * settings.faiss_reduce_dim

    @classmethod
    def build(cls, vectors: np.ndarray, settings: CoarseSettings) -> "FaissBackend":
        import faiss
        n, dim = vectors.shape
        lists = cls.lists_for(n, settings)
        if cls.reduces(n, dim, settings):
            # lists of int8 codes of a PCA projection, scanned cheaply; their short list re-scored
            # from float16 copies of the full vectors, which give the distances returned
            base = faiss.index_factory(dim, f"PCA{settings.faiss_reduce_dim},IVF{lists},SQ8", faiss.METRIC_L2)
            _train(base, vectors, settings)
            _fill_shuffled(base, vectors, settings)
            store = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
            for start in range(0, n, SCAN_BLOCK):  # row i is position i: the build's vectors file
                store.add(np.ascontiguousarray(vectors[start:start + SCAN_BLOCK], dtype=np.float32))
            index = faiss.IndexRefine(base, store)
            index.referenced_objects = [base, store]  # the joined index owns neither
        else:
            index = faiss.index_factory(dim, f"IVF{lists},SQfp16", faiss.METRIC_L2)
            _train(index, vectors, settings)
            for start in range(0, n, SCAN_BLOCK):
                index.add(np.ascontiguousarray(vectors[start:start + SCAN_BLOCK], dtype=np.float32))
        return cls(index, vectors, settings)

    @classmethod
    def build_shared(cls, source: "FaissBackend", share: Share, settings: CoarseSettings) -> "FaissBackend":
        """A shared variant's index (``Share``): int8 lists of a PCA projection of its columns of
        ``source``'s vectors (a re-scored backend, just built), re-scored from ``source``'s store."""
        import faiss
        n, dim = source.vectors.shape
        base = faiss.index_factory(share.width, f"PCA{settings.faiss_reduce_dim},IVF{cls.lists_for(n, settings)},SQ8",
                                   faiss.METRIC_L2)
        columns = np.arange(share.start, share.stop, dtype=np.int32)
        remap = faiss.RemapDimensionsTransform(dim, share.width, faiss.swig_ptr(columns))
        remap.this.disown()  # the chain owns it
        base.prepend_transform(remap)
        _train(base, source.vectors, settings)  # the lists are over factor x the variant's vectors
        _fill_shuffled(base, source.vectors, settings)
        index = faiss.IndexRefine(base, source.index.refine_index)
        index.referenced_objects = [base, source.index]  # the joined index owns neither
        return cls(index, SharedColumns(source.vectors, share), settings)

    def save(self, path: Path, store: Path | None = None) -> bool:
        """Write the index to ``path``; with ``store``, a re-scored index's float16 store goes to that
        file instead (the build's vectors file: ``save_variants``; a shared variant writes none, its
        source's store being its own). Whether its store is in a file of its own or its source's."""
        import faiss
        if store is not None and self.refined:
            faiss.write_index(self.index.base_index, str(path))
            if self.share is None:  # a shared variant's store is its source's
                faiss.write_index(self.index.refine_index, str(store))
            return True
        faiss.write_index(self.index, str(path))
        return False

    @classmethod
    def load(cls, path: Path, vectors, settings: CoarseSettings) -> "FaissBackend":
        """The index at ``path``; when its float16 store is the build's vectors file (``vectors``, a
        ``stored.RowFile`` of a FAISS store), that file is joined to it. A large collection's store
        stays in its file, paged in as queries touch it and shared by every worker on the machine
        (``settings.faiss_map_min_images``)."""
        import faiss
        mapped = len(vectors) >= settings.faiss_map_min_images
        flags = faiss.IO_FLAG_MMAP_IFC if mapped else 0
        index = _read_faiss(path, flags)
        if not isinstance(index, faiss.IndexRefine) and getattr(vectors, "faiss_store", False):
            store = _read_faiss(vectors.path, flags)
            if store.ntotal != index.ntotal:
                raise SearchIndexError(f"{vectors.path} holds {store.ntotal} vectors, {path} {index.ntotal}; reindex")
            refined = faiss.IndexRefine(index, store)
            refined.referenced_objects = [index, store]  # the joined index owns neither
            index = refined
        if index.ntotal != len(vectors):
            raise SearchIndexError(f"{path} holds {index.ntotal} vectors, the index table {len(vectors)}")
        return cls(index, vectors, settings, mapped)

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        total = self.index.ntotal
        n = max(1, min(int(n), total))
        if n * 2 >= total:  # as deep as much of the collection: one exact scan is as cheap, and exact
            return exact_nearest(self.vectors, queries, n)
        nprobe = self.probes_for(n)
        lifted = queries if self.share is None else self.share.lift(queries, self.index.d)
        if self.refined and self.parts > 1 and len(lifted) == 1:
            squared, positions = self.search_in_parts(lifted, n, nprobe)
        else:  # several queries: FAISS spreads them over its threads itself
            refine = float(self.settings.faiss_refine) if self.refined else None
            squared, positions = self.index.search(lifted, n, params=self._params(nprobe, refine))
        if (positions < 0).any():  # the probed lists held fewer than asked: scan everything
            return exact_nearest(self.vectors, queries, n)
        # computed from the same float16 values as the stored vectors: their exact distances (a
        # shared variant's up to the float16 rounding of the rest of its source rows)
        if self.share is not None:
            return self.share.own_distances(squared), positions
        return np.sqrt(np.clip(squared, 0.0, None)), positions

    def search_in_parts(self, query: np.ndarray, n: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """One query's n nearest (squared distances, positions), searched in ``faiss_parts`` parts
        at once, one thread each (``part_selectors``). Every part scans the same lists for its own
        positions and re-scores its own short list of ``faiss_refine`` x n / parts, so the
        re-scoring is shared among the threads rather than repeated. Where one part gives more
        than its share of the answer by chance (or in an index whose lists were filled in the
        collection's order, before the fill was shuffled), its short list was shorter than
        ``faiss_refine`` times what it gave, and it is searched again with one that long: as deep
        as a single search would have gone for those candidates (``PART_SLACK``)."""
        refine, parts = self.settings.faiss_refine, self.parts
        selectors, part_of = self.part_selectors()
        pool = thread_pool("faiss-part", parts)  # FAISS lets go of the GIL while it searches

        def search_part(part: int, short: int):
            params = self._params(nprobe, (short + 0.5) / n, selectors[part])  # FAISS truncates k x factor
            return self.index.search(query, n, params=params)

        shorts = [max(n, int(np.ceil(refine * n / parts)))] * parts  # FAISS re-scores at least the n asked
        found = list(pool.map(search_part, range(parts), shorts))
        squared, positions = _merge_nearest(found, n)
        given = np.bincount(part_of[positions[0][positions[0] >= 0]], minlength=parts)
        again = [part for part in range(parts) if shorts[part] < PART_SLACK * refine * given[part]]
        if again:
            deeper = list(pool.map(search_part, again, [max(n, int(refine * given[part])) for part in again]))
            for part, result in zip(again, deeper):
                found[part] = result
            squared, positions = _merge_nearest(found, n)
        return squared, positions

    def part_selectors(self) -> tuple[list, np.ndarray]:
        """The parts of a split search, as FAISS selectors of positions, and each position's part.
        Part p is the p-th stretch of every list, so each thread scans a contiguous share of
        the lists' memory (interleaved shares were a third slower: RESULTS.md), and the parts are
        about equally large everywhere in the vector space."""
        import faiss
        if self.parts not in self._parts:
            part_of = np.zeros(self.index.ntotal, dtype=np.int64)
            invlists = self.lists.invlists
            for number in range(self.lists.nlist):
                size = invlists.list_size(number)
                if size:
                    ids = faiss.rev_swig_ptr(invlists.get_ids(number), size)
                    part_of[ids] = np.arange(size) * self.parts // size
            bitmaps = [np.packbits(part_of == part, bitorder="little") for part in range(self.parts)]
            selectors = [faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)) for bits in bitmaps]
            for selector, bits in zip(selectors, bitmaps):
                selector.bitmap_array = bits  # FAISS holds a plain pointer to it
            self._parts[self.parts] = (selectors, part_of)
        return self._parts[self.parts]

    def _params(self, nprobe: int, k_factor: float | None, selector=None):
        """Search parameters for one call: the lists to probe, the short list (``k_factor`` x n,
        re-scored indexes) and the positions searched (``selector``). Passed per call instead of
        set on the shared index, so the parts' threads do not race on them."""
        import faiss
        params = faiss.SearchParametersIVF(nprobe=int(nprobe))
        if selector is not None:
            params.sel = selector
        keep = [params]
        if self.refined:
            base = params
            if self.transformed:
                base = faiss.SearchParametersPreTransform(index_params=params)
                keep.append(base)
            params = faiss.IndexRefineSearchParameters(k_factor=float(k_factor), base_index_params=base)
        params.referenced = keep + [selector]  # FAISS holds plain pointers to the nested parameters
        return params


def _merge_nearest(found: list[tuple[np.ndarray, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n nearest of several searches' results for one query (missing ones as position -1)."""
    squared = np.concatenate([part[0][0] for part in found])
    positions = np.concatenate([part[1][0] for part in found])
    squared = np.where(positions >= 0, squared, np.inf)
    order = np.argsort(squared, kind="stable")[:n]
    return squared[order][None], positions[order][None]


def _train(index, vectors, settings: CoarseSettings) -> None:
    """Train ``index`` on a seeded sample of ``vectors``."""
    n = len(vectors)
    rng = np.random.default_rng(settings.seed)
    sample = np.sort(rng.choice(n, size=min(n, settings.faiss_train_size), replace=False))
    index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))


def _fill_shuffled(lists, vectors, settings: CoarseSettings) -> None:
    """Add every row of ``vectors`` to the lists under its position, in a seeded random order, a
    block at a time (each block's rows read in ascending order, then shuffled): a split search's
    parts are stretches of every list (``FaissBackend.part_selectors``), and this keeps them from
    being stretches of the collection's own order."""
    n = len(vectors)
    order = np.random.default_rng(settings.seed + 1).permutation(n)
    for start in range(0, n, SCAN_BLOCK):
        block = order[start:start + SCAN_BLOCK]
        ascending = np.sort(block)
        rows = np.asarray(vectors[ascending], dtype=np.float32)[np.searchsorted(ascending, block)]
        lists.add_with_ids(np.ascontiguousarray(rows), block.astype(np.int64))


def _read_faiss(path: Path, flags: int):
    import faiss
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise SearchIndexError(f"{path}: not a readable FAISS index ({str(exc).splitlines()[0]})") from exc


_BACKENDS = {BALLTREE: BallTreeBackend, FAISS: FaissBackend}


def save_variants(build: Path, vectors: dict[str, np.ndarray], backend: str, settings: CoarseSettings,
                  shares: dict[str, Share] | None = None, progress: Progress = no_progress) -> dict[str, dict]:
    """Variants' vectors and their coarse backends, written into a build. A FAISS index that
    re-scores its short list keeps its float16 store in the vectors file itself
    (``layout.vector_store_file``), so the vectors are on disk, and in the page cache, once; and
    a variant that is a block of another's (``shares``) keeps no store at all, where both are
    re-scored FAISS indexes. Returns the shares used, as the manifest records them."""
    shares = shares or {}
    source_names = {share.source for share in shares.values()}
    used, sources = {}, {}  # the shares used; the source variants' backends, built first
    for done, variant in enumerate(sorted(vectors, key=lambda v: v not in source_names)):
        progress(f"coarse index ({backend})", done, len(vectors))
        matrix = vectors[variant]
        share = shares.get(variant)
        source = sources.get(share.source) if share is not None else None
        if source is not None and source.refined and FaissBackend.reduces(len(matrix), share.width, settings):
            built = FaissBackend.build_shared(source, share, settings)
            used[variant] = asdict(share)
        else:
            built = backend_class(backend).build(matrix, settings)
        if not built.save(layout.coarse_file(build, variant, backend), store=layout.vector_store_file(build, variant)):
            np.save(layout.vectors_file(build, variant), matrix)
        if isinstance(built, FaissBackend) and variant in source_names:
            sources[variant] = built
    return used


def stored_rows(build: Path, variants: dict[str, int], used: dict[str, dict]) -> dict:
    """Each variant's rows in ``build`` (``stored.RowFile``, or ``SharedColumns`` of its source's)."""
    own = {v: RowFile(layout.stored_vectors_file(build, v)) for v in variants if v not in used}
    shared = {}
    for variant, share in used.items():
        share = Share(**share)
        if share.source not in own:
            raise SearchIndexError(f"{build}: '{variant}' is stored in '{share.source}', which it lacks; reindex")
        shared[variant] = SharedColumns(own[share.source], share)
    return {v: own.get(v, shared.get(v)) for v in variants}


def backend_class(name: str):
    try:
        return _BACKENDS[name]
    except KeyError:
        raise SearchIndexError(f"unknown coarse backend {name!r}; choose {' or '.join(BACKENDS)}") from None

