"""Sharded search: one collection split by image id into shard builds, each served by its own
workers, and a search that runs every stage on all shards and merges between stages, so that
it gives the answer one index would.

A shard build (``split_build``) is an ordinary build holding a share of the rows of a source
build, chosen by a hash of each image id: the same model, PCA, instance describer and
local-feature PCA, so the query is described once (by the coordinating worker, on shard 0's
build) and every shard compares it in the same space. A search (``ShardedEngine.rank``) has up
to four stages, each fanned out to every shard (``fan_out``: a Celery group on the site, a
plain loop in-process) and merged by the coordinator:

1. ``expand`` (query expansion on): each shard's e nearest images with their vectors; the e
   nearest of all are averaged into the query, as one index would (asked with ``each``: every
   row's nearest distance, for the turn gate, ``RetrievalEngine.nearer_turns``);
2. ``candidates``: each shard's n nearest to that query (a fine method's: to the query as it is,
   each with its distance to the expanded one); the n nearest of all are the candidates;
3. ``details``: each shard's members of them with their paths and labels, pre-scored when
   verification will pick among more than ``verify_top`` (each candidate once, as one index would);
   the coordinator picks the best pre-scores of all;
4. ``verify``: each shard matches and fits the picked candidates it holds and judges what it can
   alone (``confidence.candidate_evidence``); the coordinator completes the evidence over all
   candidates (the query's floor of chance inliers spans every shard), then judges and ranks.

The stages exchange files in one folder per search on the shared volume (the query's features,
each shard's answer): the messages carry a shard number, a stage name and a folder. Every request
names the split the query was described on (the build the shards were split from), and a shard
answers on its build of that split (``shard_build_for``): a search running while the shards
switch to a new split, one after the other, still meets one split.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from . import layout
from .coarse_backends import FAISS, choose_backend, save_variants
from .config import EngineConfig
from .confidence import EVIDENCE, candidate_evidence, query_evidence
from .errors import SearchIndexError
from .index import SearchIndex, load_index, variant_shares
from .local_features import LocalFeatures
from .local_store import LocalStore, write_subset
from .pipeline import (QueryFeatures, Ranking, RetrievalEngine, SearchResult, expand_query,
                       fitted_count, stored_distances)
from .progress import Progress, elapsed_ms, no_progress
from .stored import load_array
from .verification import Verification, prescore, verify_candidates

STAGES = ("expand", "candidates", "details", "verify")
QUERY_FILE = "query.npz"
EXPANDED_FILE = "expanded.npy"
VOTE_FILE = "vote.npy"  # the query's vector in class_vote_variant, expanded in that variant

# (stage, exchange folder) -> each shard's answer file, in shard order
FanOut = Callable[[str, Path], list[Path]]


def shard_of(image_ids: list[str], shards: int) -> np.ndarray:
    """Which shard each image belongs to: a hash of its id, so an image keeps its shard whatever
    else the collection holds."""
    return np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "big") % shards
                     for i in image_ids], dtype=np.int64)


def split_build(source: Path, shards_root: Path, shards: int, config: EngineConfig,
                progress: Progress = no_progress) -> list[Path]:
    """Write ``shards`` shard builds of the build at ``source`` (an index root or a build; its
    deltas included) under ``shards_root/<number>``, and make each one active there. Vectors,
    the PCA and local features are copied, never extracted again; each shard gets its own
    coarse backends. Every shard build is complete before the first is made active, so a search
    that meets a new shard finds the new builds of all (``shard_build_for``); the previous build
    of each is kept for the searches begun before, older ones are deleted."""
    if shards < 2:
        raise SearchIndexError(f"a collection is split into 2 shards or more, not {shards}")
    index = load_index(source, coarse_settings=config.coarse_settings())
    owner = shard_of(index.image_ids, shards)
    settings = config.coarse_settings()
    builds = []
    try:
        for number in range(shards):
            rows = np.flatnonzero(owner == number)
            progress("splitting into shards", number, shards)
            root = Path(shards_root) / str(number)
            with layout.writing(root):
                partial, final = layout.new_build(root)
                try:
                    _write_shard(index, rows, partial, number, shards, settings)
                    layout.finish_build(partial, final)
                except BaseException:
                    shutil.rmtree(partial, ignore_errors=True)
                    raise
                builds.append(final)
                load_index(final)  # it loads before it serves
    except BaseException:
        for build in builds:  # a split is whole or absent: no shard switches to a part of one
            shutil.rmtree(build, ignore_errors=True)
        raise
    for number, build in enumerate(builds):
        root = Path(shards_root) / str(number)
        with layout.writing(root):
            layout.point_active(root, build)
            _delete_superseded(root, keep=2)
    progress("splitting into shards", shards, shards)
    return builds


def split_name(manifest: dict) -> str:
    """Which split a shard build belongs to: the build it was split from (every shard of one split
    holds a share of the same rows, whichever worker answers)."""
    return str((manifest.get("shard") or {}).get("source_build"))


def shard_build_for(root: Path, split: str) -> Path:
    """The complete build under a shard's ``root`` that belongs to ``split``: the active one when it
    does, else the other kept beside it. A search whose coordinator described the query on one
    split gets every stage answered on that split, while the shards switch to a new one one by
    one (``split_build``)."""
    root = Path(root)
    active = layout.active_build(root)
    if split_name(layout.read_manifest(active)) == split:
        return active
    for build in reversed(layout.builds_of(root)):
        try:
            if split_name(layout.read_manifest(build)) == split:
                return build
        except SearchIndexError:  # deleted while we looked: an older split
            continue
    raise SearchIndexError(f"shard {root.name} holds no build of split {split} any more (the index was split "
                           f"again since this search began): search again")


def split_delta(delta: Path, shards_root: Path, shards: int) -> list[Path]:
    """A delta of the source build (``add_images``) handed to the shards: each shard's share of its
    images becomes a delta of that shard's active build, which the shard's next stage searches.
    Nothing is extracted again and no shard is rebuilt. Refused when the shards were split from
    another build than the delta's (split again first)."""
    delta = Path(delta)
    manifest = layout.read_manifest(delta, layout.INDEX_KEYS)
    table = layout.read_table(delta, manifest)
    owner = shard_of([row["id"] for row in table], shards)
    vectors = {v: load_array(layout.vectors_file(delta, v)) for v in manifest["variants"]}
    local = LocalStore.open(layout.local_dir(delta)) if manifest.get("local") else None
    made = []
    for number in range(shards):
        rows = np.flatnonzero(owner == number)
        if not len(rows):
            continue
        root = Path(shards_root) / str(number)
        with layout.writing(root):
            build = layout.active_build(root)
            shard = layout.read_manifest(build).get("shard") or {}
            if shard.get("shards") != shards or shard.get("source_build") != manifest.get("build"):
                raise SearchIndexError(
                    f"{build} is not one of {shards} shards of build {manifest.get('build')}, which the new images "
                    f"were added to; split the index again (split_index --shards {shards})")
            partial, final = layout.new_delta(build)
            try:
                for variant, matrix in vectors.items():
                    np.save(layout.vectors_file(partial, variant), matrix[rows])
                if local is not None:
                    write_subset(local, rows, layout.local_dir(partial))
                layout.write_table(partial, [table[i] for i in rows])
                layout.write_manifest(partial, dict(manifest, collection_size=int(len(rows)), build=build.name))
                layout.finish_build(partial, final)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
        made.append(final)
    return made


class ShardVectors(Mapping):
    """A shard's rows of each variant, read from the source when ``save_variants`` asks for that
    variant: a split holds one variant's share in memory at a time, not all of them."""

    def __init__(self, index: SearchIndex, rows: np.ndarray, dtype):
        self.index, self.rows, self.dtype = index, rows, dtype

    def __getitem__(self, variant: str) -> np.ndarray:
        if variant not in self.index.variants:
            raise KeyError(variant)
        return self.index.row_vectors(variant, self.rows).astype(self.dtype, copy=False)

    def __iter__(self):
        return iter(self.index.variants)

    def __len__(self) -> int:
        return len(self.index.variants)


def _write_shard(index: SearchIndex, rows: np.ndarray, build: Path, number: int, shards: int, settings) -> None:
    if not len(rows):
        raise SearchIndexError(f"shard {number} of {shards} would hold no image: fewer shards for {len(index)} images")
    backend = choose_backend(settings, len(rows))
    vectors = ShardVectors(index, rows, np.float16 if backend == FAISS else np.float32)
    stored_in = save_variants(build, vectors, backend, settings,
                              variant_shares(index.manifest["variants"], index.manifest.get("hybrid_weight")))
    source_build = index.path
    if layout.pca_file(source_build).is_file():
        shutil.copy2(layout.pca_file(source_build), layout.pca_file(build))
    local = None
    if index.local is not None:
        local = write_subset(index.local, rows, layout.local_dir(build))
    # added images keep their absolute paths, collection images their paths under the root
    layout.write_table(build, [{"id": index.image_ids[p], "path": index.relpaths[p], "label": index.labels[p],
                                "fingerprint": index.fingerprints[p]} for p in rows])
    manifest = dict(index.manifest)
    manifest.update(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        collection_size=int(len(rows)),
        coarse={v: backend for v in index.variants},
        stored_in=stored_in,
        local=None if local is None else dict(manifest["local"], reused=len(rows), extracted=0, resumed=0,
                                              total_keypoints=local["total_keypoints"]),
        shard={"number": number, "shards": shards, "index_root": str(layout.index_root_of(source_build)),
               "source_build": source_build.name, "deltas": [d.name for d in index.deltas]})
    layout.write_manifest(build, manifest)


def _delete_superseded(root: Path, keep: int) -> None:
    """All but the ``keep`` newest complete builds under a shard's root (a worker may still be
    finishing a search on the one just replaced)."""
    active = layout.active_build(root)
    for old in layout.builds_of(root)[:-keep]:
        if old.resolve() != active:
            shutil.rmtree(old, ignore_errors=True)


# --- the exchange folder ------------------------------------------------------------------------

def save_query(folder: Path, query: QueryFeatures) -> None:
    arrays = {f"vector_{variant}": np.asarray(v, dtype=np.float32) for variant, v in query.vectors.items()}
    arrays.update({f"crops_{variant}": np.asarray(v, dtype=np.float32) for variant, v in (query.crops or {}).items()})
    if query.local is not None:
        arrays.update(keypoints=query.local.keypoints, scales=query.local.scales, scores=query.local.scores,
                      descriptors=query.local.descriptors)
    np.savez(folder / QUERY_FILE, **arrays)


def load_query(folder: Path) -> QueryFeatures:
    with np.load(folder / QUERY_FILE) as saved:
        vectors = {k[len("vector_"):]: saved[k] for k in saved.files if k.startswith("vector_")}
        crops = {k[len("crops_"):]: saved[k] for k in saved.files if k.startswith("crops_")} or None
        local = None
        if "descriptors" in saved.files:
            local = LocalFeatures(saved["keypoints"], saved["scales"], saved["scores"], saved["descriptors"])
    return QueryFeatures(vectors, local, crops)


def _request(folder: Path, stage: str) -> dict:
    return json.loads((folder / f"{stage}.json").read_text())


def requested_split(folder: Path, stage: str) -> str | None:
    """The split a stage's request was made on (None: a request that names none)."""
    return _request(Path(folder), stage).get("split")


def _answer_file(folder: Path, stage: str, number: int) -> Path:
    return folder / f"{stage}-{number}.npz"


# --- a shard's side -----------------------------------------------------------------------------

class Shard:
    """What a shard's workers do: one stage of a search on their own shard build."""

    def __init__(self, index: SearchIndex, config: EngineConfig):
        shard = index.manifest.get("shard")
        if not shard:
            raise SearchIndexError(f"{index.path} is not a shard build (split_index makes them)")
        self.index, self.config, self.number = index, config, int(shard["number"])
        self.split = split_name(index.manifest)
        # the coordinator picks what is verified: a shard verifies every candidate it is sent
        self.verify_settings = dataclasses.replace(config.verify_settings(), verify_top=0)

    @classmethod
    def open(cls, root: Path, config: EngineConfig) -> "Shard":
        return cls(load_index(root, coarse_settings=config.coarse_settings()), config)

    def run(self, stage: str, folder: Path) -> Path:
        """Answer ``stage`` of the search whose files are in ``folder``; returns the answer's file."""
        folder = Path(folder)
        request, query = _request(folder, stage), load_query(folder)
        if request.get("split", self.split) != self.split:
            raise SearchIndexError(f"shard {self.number} ({self.index.path.name}) is of split {self.split}, not of "
                                   f"{request['split']} that the search began on: search again")
        exclude = frozenset(request.get("exclude_ids", ()))
        variant = request.get("variant")
        index = self.index
        index.refresh_deltas()
        out = _answer_file(folder, stage, self.number)
        if stage == "expand" and request.get("each"):
            # the turn gate (RetrievalEngine.nearer_turns): each row's distance to its nearest here
            _save(out, nearest=index.nearest_distance_each(query.vectors[variant], variant, exclude))
        elif stage == "expand":
            positions, distances = index.nearest(query.vectors[variant], variant, request["n"], exclude)
            _save(out, ids=self._ids(positions), distances=distances,
                  vectors=index.row_vectors(variant, positions))
        elif stage == "candidates":
            # a coarse method searches with the expanded query; a fine one finds its candidates with
            # the query as it is and its crops, and is told their distances to the expanded query, or
            # to the query as it is (RetrievalEngine.rank)
            file = folder / EXPANDED_FILE
            expanded = np.load(file) if file.is_file() else None
            search_expanded = expanded is not None and request.get("search_expanded", True)
            positions, distances = index.nearest(expanded if search_expanded else query.vectors[variant],
                                                 variant, request["n"], exclude)
            shown = distances
            crops = query.crops is not None and not request.get("search_expanded", True)
            if crops:
                positions, distances = index.nearest_to_query_or_crops(
                    (positions, distances), query.crops[variant], variant, request["n"], exclude)
            if crops or (expanded is not None and not search_expanded):
                shown = stored_distances(index, variant, positions,
                                         query.vectors[variant] if expanded is None else expanded)
            _save(out, ids=self._ids(positions), distances=distances, shown=shown)
        elif stage == "details":
            # this shard's members of the candidates of all, in their order; the first few pre-scored
            positions = self._positions(request["ids"].get(str(self.number), []))
            scored = positions[:request.get("prescore", {}).get(str(self.number), 0)]
            scores = np.zeros(0, dtype=np.int64)
            if len(scored):
                heads = index.local.candidates(scored, self.verify_settings.prescore_candidate_keypoints,
                                               self.config.local_read_threads).prescored
                scores = prescore(query.local.keypoints, query.local.descriptors, heads, self.verify_settings)
            # the classifier's class of each (RetrievalEngine.of_query_class); -1: the index keeps no logits
            classes = index.predicted_classes(positions)
            classes = np.full(len(positions), -1) if classes is None else classes
            # their distances to the expanded query of the class vote's variant (class_vote_variant)
            vote = np.zeros(0)
            if request.get("vote_variant"):
                vote = stored_distances(index, request["vote_variant"], positions, np.load(folder / VOTE_FILE))
            _save(out, ids=self._ids(positions), prescores=scores, classes=classes, vote=vote,
                  relpaths=np.array([index.relpaths[int(p)] for p in positions], dtype=str),
                  labels=np.array([index.labels[int(p)] or "" for p in positions], dtype=str),
                  labelled=np.array([index.labels[int(p)] is not None for p in positions], dtype=bool))
        elif stage == "verify":
            positions = self._positions(request["ids"].get(str(self.number), []))
            candidates = index.local.candidates(positions)
            found = verify_candidates(query.local.keypoints, query.local.descriptors, candidates, self.verify_settings)
            counts = np.array([len(v.query_points) for v in found], dtype=np.int64)
            _save(out, ids=self._ids(positions),
                  inliers=np.array([v.inliers if v.affine is not None else 0 for v in found], dtype=np.int64),
                  matches=np.array([v.matches for v in found], dtype=np.int64),
                  evidence=candidate_evidence(found, query.local.keypoints, candidates.keypoints),
                  point_counts=counts,
                  query_points=_stack_points([v.query_points for v in found]),
                  candidate_points=_stack_points([v.candidate_points for v in found]))
        else:
            raise SearchIndexError(f"unknown stage {stage!r} of a sharded search; one of {', '.join(STAGES)}")
        return out

    def _ids(self, positions) -> np.ndarray:
        return np.array([self.index.image_ids[int(p)] for p in positions], dtype=str)

    def _positions(self, ids: list[str]) -> np.ndarray:
        """Where the images named by ``ids`` sit in this shard (ids, not positions, cross between
        stages: a shard may have switched to a newer build since the last one)."""
        at = self.index.positions
        missing = [i for i in ids if i not in at]
        if missing:
            raise SearchIndexError(f"shard {self.number} ({self.index.path.name}) no longer holds {len(missing)} "
                                   "of the candidates it gave; it switched builds during the search: search again")
        return np.array([at[i] for i in ids], dtype=np.int64)


def _save(file: Path, **arrays) -> None:
    tmp = file.with_name(f".{file.stem}.{uuid.uuid4().hex[:6]}.npz")
    np.savez(tmp, **arrays)
    tmp.replace(file)  # a stage's answer is whole or absent


def _stack_points(parts: list[np.ndarray]) -> np.ndarray:
    parts = [np.asarray(p, dtype=np.float32).reshape(-1, 2) for p in parts]
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.float32)


def local_fan_out(shards: list[Shard]) -> FanOut:
    """Every stage run on ``shards`` in this process, one after the other (the commands and tests)."""
    return lambda stage, folder: [shard.run(stage, folder) for shard in shards]


# --- the coordinator ----------------------------------------------------------------------------

class ShardedEngine(RetrievalEngine):
    """An engine whose index is split into shards: the query is described here (with the model,
    PCA and local PCA that every shard shares, from shard 0's build), and ``rank`` runs its stages
    on the shards through ``fan_out``. Everything else (``search``, ``rank_turning``, methods) is
    the one-index engine's."""

    def __init__(self, engine: RetrievalEngine, fan_out: FanOut, exchange_dir: Path):
        super().__init__(engine.model, engine.index, engine.device, engine.config, engine.attention,
                         engine.calibration, engine.describer, engine.extractor)
        self.shards = int(engine.index.manifest["shard"]["shards"])
        self.split = split_name(engine.index.manifest)  # every stage answered on this split's shard builds
        self.fan_out, self.exchange_dir = fan_out, Path(exchange_dir)

    def rank(self, query: QueryFeatures, method: str, n_candidates: int | None = None, depth: int | None = None,
             exclude_ids=frozenset(), progress: Progress = no_progress) -> Ranking:
        variant, fine = self._parse(method)
        n_candidates = n_candidates or self.config.n_candidates
        depth = self._depth(depth, n_candidates, fine)
        if fine and query.local is None:
            raise SearchIndexError(f"method {method} needs the query's local features")
        with self._exchange() as folder:
            return self._rank(folder, query, method, variant, fine, n_candidates, depth, sorted(exclude_ids), progress)

    @contextmanager
    def _exchange(self):
        """A fresh folder for one request's stage files, removed afterwards."""
        folder = self.exchange_dir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def nearest_distances(self, vectors: np.ndarray, variant: str, exclude_ids=frozenset()) -> np.ndarray:
        """Each row's distance to its nearest image on any shard: the ``expand`` stage asked for
        every row's nearest at once (one fan-out for the query and all its turns)."""
        with self._exchange() as folder:
            save_query(folder, QueryFeatures({variant: np.atleast_2d(vectors)}))
            answers = self._stage(folder, "expand", {"variant": variant, "exclude_ids": sorted(exclude_ids),
                                                     "each": True})
        return np.min([answer["nearest"] for answer in answers], axis=0)

    def _stage(self, folder: Path, stage: str, request: dict) -> list[dict]:
        (folder / f"{stage}.json").write_text(json.dumps(dict(request, split=self.split)))
        answers = []
        for file in self.fan_out(stage, folder):
            with np.load(file) as saved:
                answers.append({k: saved[k] for k in saved.files})
        if len(answers) != self.shards:
            raise SearchIndexError(f"{len(answers)} shards answered '{stage}', not {self.shards}")
        return answers

    def _rank(self, folder, query, method, variant, fine, n_candidates, depth, exclude, progress) -> Ranking:
        timings = {}
        save_query(folder, query)
        started = time.perf_counter()
        base = {"variant": variant, "exclude_ids": exclude}
        if self.config.query_expansion > 0:
            np.save(folder / EXPANDED_FILE, self._expanded(folder, query, variant, exclude))
        merged = _merged(self._stage(folder, "candidates", dict(base, n=depth, search_expanded=not fine)), depth)
        distances, ids, owner = merged["shown"], merged["ids"], merged["shard"]
        timings["coarse"] = elapsed_ms(started)
        progress("coarse", len(ids), len(ids))
        started = time.perf_counter()  # the details stage pre-scores: verification's time, as in one index
        n_verify = min(n_candidates, len(ids)) if fine else 0
        n_fit = fitted_count(n_verify, len(ids), self.config.confidence_pool) if fine else 0
        settings = self.verify_settings
        prescoring = fine and bool(settings.verify_top) and n_fit > settings.verify_top
        # each shard's members of the candidates of all, and how many of them are pre-scored
        members = {str(n): ids[owner == n].tolist() for n in range(self.shards)}
        scored = {str(n): int((owner[:n_fit] == n).sum()) for n in range(self.shards)} if prescoring else {}
        voting = self.vote_variant(variant, fine and self.class_rules_on, self.index.variants)
        if voting is not None:
            np.save(folder / VOTE_FILE, self._expanded(folder, query, voting, exclude))
        details = self._stage(folder, "details", {"ids": members, "prescore": scored, "vote_variant": voting})
        catalog, scores, classes = _catalog(details, ids)
        positions = np.arange(len(catalog))
        order = positions.copy()
        evidence = np.zeros((n_verify, len(EVIDENCE)))
        confidence, verified = np.zeros(n_verify), np.zeros(n_verify, dtype=bool)
        verifications: list[Verification] = []
        agreed = False
        if not fine:
            timings["coarse"] += elapsed_ms(started)
        else:
            chosen = np.arange(n_fit)
            if prescoring:
                chosen = np.sort(np.argsort(-scores[:n_fit], kind="stable")[:settings.verify_top])
            progress("verifying", 0, len(chosen))
            picked = {str(n): ids[chosen][owner[chosen] == n].tolist() for n in range(self.shards)}
            answers = self._stage(folder, "verify", {"ids": picked})
            verifications, evidence = self._gathered(answers, ids[:n_fit])
            inliers = np.array([v.inliers for v in verifications], dtype=np.int64)
            evidence = query_evidence(evidence[:n_verify], inliers, distances[:n_fit])
            verifications, inliers = verifications[:n_verify], inliers[:n_verify]
            labels = np.array([label or "" for _, _, label in catalog], dtype=str)
            same_class = self.of_query_class(
                query, self.candidate_classes(None if (classes < 0).any() else classes, labels))
            confidence, reranked, verified = self.judge(evidence, inliers, same_class)
            vote_distances = None if voting is None or same_class is None else _by_id(details, "vote", ids)
            order, agreed = self.final_order(inliers, reranked, verified, distances, same_class, vote_distances)
            timings["verification"] = elapsed_ms(started)
            progress("verifying", len(chosen), len(chosen))
        return Ranking(method, positions, distances, order, n_verify, verifications, evidence, confidence,
                       verified, timings, catalog=catalog, class_agreed=agreed)

    def _expanded(self, folder: Path, query: QueryFeatures, variant: str, exclude: list[str]) -> np.ndarray:
        """The query's ``variant`` vector expanded with its nearest images in that variant on any shard."""
        vector = query.vectors[variant]
        if self.config.query_expansion <= 0:
            return np.atleast_2d(vector)
        answers = self._stage(folder, "expand", {"variant": variant, "exclude_ids": exclude,
                                                 "n": self.config.query_expansion})
        nearest = _merged(answers, self.config.query_expansion)
        return expand_query(vector, nearest["distances"], nearest["vectors"], self.config.query_expansion_alpha)

    @staticmethod
    def _gathered(answers: list[dict], ids: np.ndarray) -> tuple[list[Verification], np.ndarray]:
        """The shards' verifications of ``ids`` (in that order; those not picked: none), and their evidence."""
        where = {str(i): k for k, i in enumerate(ids)}
        verifications = [Verification() for _ in ids]
        evidence = np.zeros((len(ids), len(EVIDENCE)))
        for answer in answers:
            ends = np.cumsum(answer["point_counts"])
            for j, image_id in enumerate(answer["ids"]):  # one small step per verified candidate
                k = where[str(image_id)]
                points = slice(int(ends[j] - answer["point_counts"][j]), int(ends[j]))
                verifications[k] = Verification(int(answer["inliers"][j]), int(answer["matches"][j]), None,
                                                answer["query_points"][points], answer["candidate_points"][points])
                evidence[k] = answer["evidence"][j]
        return verifications, evidence

    def _result(self, rank: int, ranking: Ranking, i: int) -> SearchResult:
        image_id, relpath, label = ranking.catalog[ranking.positions[i]]
        # every shard's table is relative to the one collection root (added images: absolute paths)
        return SearchResult(rank, image_id, relpath, str(self.index.collection_root / relpath),
                            float(ranking.distances[i]), label)


def _merged(answers: list[dict], n: int) -> dict:
    """The shards' answers joined and cut to the ``n`` nearest (ties: lower shard, then its own order),
    with a ``shard`` column saying whose each row is."""
    joined = {key: np.concatenate([a[key] for a in answers]) for key in answers[0]}
    joined["shard"] = np.concatenate([np.full(len(a["ids"]), s, dtype=np.int64) for s, a in enumerate(answers)])
    order = np.lexsort((np.arange(len(joined["ids"])), joined["distances"]))[:n]
    return {key: value[order] for key, value in joined.items()}


def _by_id(answers: list[dict], key: str, ids: np.ndarray) -> np.ndarray:
    """The shards' ``key`` column of their answers, in the order of ``ids``."""
    found = {}
    for answer in answers:
        found.update(zip(answer["ids"].tolist(), answer[key].tolist()))
    return np.array([found[i] for i in ids.tolist()])


def _catalog(details: list[dict], ids: np.ndarray) -> tuple[list[tuple], np.ndarray, np.ndarray]:
    """(id, relpath, label) of each of ``ids`` from the shards' details, their pre-scores (zero
    for those not pre-scored: each shard pre-scored the first of its members) and classes."""
    rows, scores = {}, {}
    for answer in details:
        labels = [str(label) if labelled else None for label, labelled in zip(answer["labels"], answer["labelled"])]
        rows.update(zip(answer["ids"].tolist(), zip(answer["ids"].tolist(), answer["relpaths"].tolist(), labels)))
        scores.update(zip(answer["ids"][:len(answer["prescores"])].tolist(), answer["prescores"].tolist()))
    return ([rows[i] for i in ids.tolist()], np.array([scores.get(i, 0) for i in ids.tolist()], dtype=np.int64),
            _by_id(details, "classes", ids).astype(np.int64))

