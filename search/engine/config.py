"""Every tunable of the engine, in one dataclass (a leaf: it imports no engine module).

Defaults live here and only here; Django settings (and the tests) build an
``EngineConfig`` from environment variables named ``RETRIEVAL_<FIELD>``, so a
deployment changes behaviour without touching code.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LocalSettings:
    """The local-feature extractor's settings, built by ``EngineConfig.local_settings()``."""
    scales: tuple[float, ...]  # image pyramid, relative to the base size
    max_keypoints: int
    score_threshold: float  # attention below this never makes a keypoint
    base_max_side: int  # the image is first shrunk to at most this, then the pyramid applied
    min_side: int = 32  # pyramid levels smaller than this are skipped


@dataclass(frozen=True)
class VerifySettings:
    """Matching and RANSAC settings, built by ``EngineConfig.verify_settings()``."""
    ratio: float  # Lowe's ratio test: best / second-best distance below this
    max_distance: float  # L2 distance between unit descriptors above which no match
    mutual: bool  # keep a match only when it is nearest both ways
    reprojection_px: float  # RANSAC inlier threshold, in original-image pixels
    max_iters: int
    method: str  # ransac | usac_magsac | usac_accurate
    verify_top: int  # more candidates than this: pre-score all, match and fit the best this many (0: all)
    prescore_keypoints: int  # how many of the query's descriptors the pre-score uses
    prescore_grid: int  # taken in turn from the cells of this grid over the query (0: the strongest)
    prescore_dtype: str  # the pre-score's products: auto | bfloat16 | float32
    prescore_candidate_keypoints: int = 0  # the pre-score compares each candidate's this many strongest (0: all)
    min_matches: int = 4  # fewer tentative matches: not worth a RANSAC run (3 fit an affine)
    confidence: float = 0.99
    block_size: int = 64  # candidates per batched matrix product


@dataclass(frozen=True)
class CoarseSettings:
    """Built by ``EngineConfig.coarse_settings()``."""
    backend: str  # auto | balltree | faiss
    faiss_min_images: int  # auto: FAISS from this many images up, the BallTree below
    leaf_size: int  # BallTree
    faiss_lists: int  # IVF lists; 0: about sqrt(images)
    faiss_nprobe: int  # lists scanned per query, at least
    faiss_coverage: float  # and enough lists to hold this many times the short list
    faiss_reduce_dim: int  # larger vectors: lists of a PCA projection to this size, re-scored (0: never)
    faiss_refine: int  # the re-scored short list is this many times the candidates asked
    seed: int = 0
    faiss_train_size: int = 50_000  # vectors the k-means of the lists is trained on
    faiss_map_min_images: int = 100_000  # from this size up the float16 store is memory-mapped
    faiss_parts: int = 2  # one query's re-scored search runs on this many threads, a stretch of every list each


# The values of ``train_augment`` (model.train_transform): here, where the web process's settings
# check can read them without loading torch.
TRAIN_AUGMENTS = ("basic", "trivial")


def _default_data_dir() -> Path:
    return REPO_ROOT / "var"


@dataclass(frozen=True)
class EngineConfig:
    # Where trained models, indexes and reports go.
    data_dir: Path = field(default_factory=_default_data_dir)
    # The shared, read-only image sets (never copied into the repository) and the demo collection.
    datasets_dir: Path = field(default_factory=lambda: REPO_ROOT.parent / "shared" / "datasets")
    collection_dir: Path = field(
        default_factory=lambda: REPO_ROOT.parent / "shared" / "datasets" / "corel1k" / "images")

    # Classifier.
    backbone: str = "efficientnet_lite0"
    resnet18_weights: str = ""  # path to a torchvision resnet18 state dict; empty: torch cache
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    image_size: int = 288  # above the pretrained 224: better validation accuracy (RESULTS.md)
    batch_size: int = 32
    epochs: int = 6
    learning_rate: float = 0.01
    head_lr_multiplier: float = 1.0  # the new last layer may learn faster than the pretrained body
    momentum: float = 0.9
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    # Training (the classifier and the attention head) uses at most this many of the collection's
    # images, a seeded sample keeping each class's share; the index still holds them all (0: every
    # image). Training holds its pictures and the head's maps in memory, and its time grows with
    # them, so a large collection would otherwise be killed for memory or train for days. Why
    # 10,000: RESULTS.md ("Training on a sample").
    train_max_images: int = 10_000
    # Save the mean of the last epochs' weights (those in the second half of the run only),
    # BatchNorm statistics recomputed; 1: the last epoch's own. Why 1: the average classified
    # worse than its last epoch in most trainings, and the default method orders by the
    # classifier's class (RESULTS.md, "The last epoch's weights").
    average_last_epochs: int = 1
    # Fit the new last layer on the frozen ImageNet features (logistic regression) before
    # fine-tuning everything (LP-FT; training.fit_head_on_frozen_features): always when on, and
    # otherwise when the median training picture's class has fewer than PROBE_BELOW_CLASS_SIZE
    # training pictures (0: never), where a random last layer learns them poorly in the recipe's
    # few steps. Why these: RESULTS.md ("Small classes", "Classes of ten and twenty pictures",
    # "Classes of forty pictures").
    probe_first: bool = False
    probe_below_class_size: int = 40
    # How training pictures are varied: "basic" (a random crop of half the picture or more, a mirror
    # image, mild colour jitter) or "trivial" (those, then one of TrivialAugment's changes at a
    # random strength: Mueller and Hutter 2021). Which and why: RESULTS.md ("Stronger augmentation").
    train_augment: str = "basic"  # one of TRAIN_AUGMENTS
    num_threads: int = 0  # torch CPU threads; 0 leaves torch's default
    # Processes that load or train the networks keep freed blocks of up to this many MB for reuse
    # instead of handing them back to the kernel (allocator.py; 0: glibc's defaults). Why 256:
    # RESULTS.md ("Freed memory kept for reuse").
    malloc_threshold_mb: int = 256

    # Global features and the coarse search.
    pca_dim: int = 32
    n_candidates: int = 4000
    # Average query expansion: the query vector is averaged with its nearest
    # images before the search (0: off); why 3 and not more: RESULTS.md.
    query_expansion: int = 3
    # 0: the neighbours are averaged in plainly; > 0: each is weighted by its cosine similarity to
    # the query to this power (alpha-QE, Radenovic et al. 2018), so far-off neighbours count little.
    # Why 3: about the class-level gain of plain averaging at a fraction of its instance loss (RESULTS.md).
    query_expansion_alpha: float = 3.0
    top_k: int = 10
    # A fine method also finds candidates with query_crops x query_crops overlapping crops of the
    # query, each query_crop_share of its width and height, put through the networks as pictures of
    # their own (0: the whole query only). A photo of a painting on a wall or a product on a table
    # is mostly something else; with 2 x 2 crops of 0.7, anything within 40 % of each side lies
    # wholly inside one crop. An image is a candidate by its distance to the nearest of the query
    # and its crops; it is judged and falls back by its distance to the query. Why: RESULTS.md
    # ("Candidates found by crops of the query").
    query_crops: int = 2
    query_crop_share: float = 0.7
    # The coarse backend (coarse_backends.py): the paper's exact BallTree for small collections,
    # a FAISS inverted file from faiss_min_images up ("auto"), or either always. Why these
    # figures: RESULTS.md (benchmark_scale).
    coarse_backend: str = "auto"
    faiss_min_images: int = 50_000
    leaf_size: int = 40
    faiss_lists: int = 0  # 0: about sqrt(images)
    faiss_nprobe: int = 32
    faiss_coverage: float = 16.0
    faiss_reduce_dim: int = 256
    faiss_refine: int = 4
    # From this many images up, a worker maps a FAISS index's float16 store (the vectors its short
    # list is re-scored from) from its file instead of reading it into its own memory: at a million
    # images that is 5 GB per worker process for the hybrid variant, shared in the page cache
    # when mapped. Below it the store is read whole: a file damaged under a running worker then
    # fails a search instead of killing the worker (RESULTS.md, "FAISS store memory-mapped").
    faiss_map_min_images: int = 100_000
    # A re-scored FAISS index answers one query on this many threads, each searching its own stretch
    # of every list and re-scoring its own part of the short list: FAISS alone
    # re-scores a query's short list on one core, about 15 ms of a 4,000-candidate query at a
    # million images. 1: one thread. Why 2: RESULTS.md ("One query on two threads").
    faiss_parts: int = 2
    # The hybrid variant (features.hybrid_vectors): the weight of the fine-tuned penultimate cosine in
    # its similarity, the rest being the ImageNet instance vector's. Read when indexing; an index
    # keeps the weight it was built with. Why 0.5: RESULTS.md ("The hybrid's weight back to 0.5").
    hybrid_weight: float = 0.5
    # A build run saves what it extracts every this many images (index root's resume/ folder):
    # a killed run loses at most that much work, and the next run resumes from there.
    checkpoint_images: int = 500

    # Attention local features (DELF-style) and their store.
    attention_epochs: int = 30
    attention_learning_rate: float = 0.01
    local_scales: str = "0.5,0.7071,1.0"  # image pyramid, relative to base_max_side
    # The strongest this many per image, over all scales. Why 600, not 300: RESULTS.md ("600
    # keypoints per image"); a build made with another number keeps it (local_features.following).
    local_max_keypoints: int = 600
    local_score_threshold: float = 0.0
    local_base_max_side: int = 640
    local_pca_dim: int = 40
    # The pyramid level nearest the global input in size is the global input itself (the picture
    # squashed to image_size square), so a query's global and local features share the network's
    # pass. Read when indexing: a build keeps the kind of local features it was made with, and its
    # queries and additions follow it (local_features.following). Why on: RESULTS.md ("One
    # backbone pass", "The one pass by default").
    local_global_level: bool = True
    # Candidates' local features are read on this many threads (a few thousand reads a query): from
    # disk, as most are when the store is larger than memory, they then wait on the device together.
    # Why 16: RESULTS.md ("Reading candidates from disk"). 1: one read after another.
    local_read_threads: int = 16
    # A query whose longer side is shorter than this is enlarged to it before its pyramid (0: never):
    # a small photo or crop otherwise gives a few dozen keypoints. Collection images never are.
    # Why 256 and not more: RESULTS.md ("Small queries enlarged").
    local_query_min_side: int = 256

    # Verification (matching + RANSAC) and the fine stage.
    match_ratio: float = 0.9
    match_max_distance: float = 0.9
    match_mutual: bool = True
    ransac_reprojection_px: float = 12.0
    ransac_max_iters: int = 1000
    ransac_method: str = "ransac"
    min_inliers: int = 8  # fewer: the candidate does not count as verified
    # A verified result must also be this sure to show the same object (the calibrated probability
    # of confidence.py). Of the candidates with min_inliers and at least rerank_confidence that are
    # not that sure (a true match is often found but not sure), the rerank_unsure with most inliers
    # are ranked right after the verified ones, ahead of the coarse order; the rest keep the coarse
    # order (on a collection of many similar objects they are mostly lookalikes). Why these three:
    # RESULTS.md ("Unsure matches").
    min_confidence: float = 0.5
    rerank_confidence: float = 0.01
    rerank_unsure: int = 1
    # ... and only among the candidates the classifier puts in the query's own class (the argmax of
    # their stored logits and of the query's): a lookalike of another kind with enough inliers is
    # passed over, while a photo of an object is mostly classified as the object. Why: RESULTS.md
    # ("The unsure match of the query's class").
    rerank_same_class: bool = True
    # The fallback (the candidates not re-ranked, in the order of their distance to the expanded
    # query) puts those the classifier puts in the query's class first, each part in that order,
    # when most of its first fallback_class_voters are of that class (the classifier and the
    # nearest images agree). Why: RESULTS.md ("The query's class first in the fallback").
    fallback_same_class: bool = True
    fallback_class_voters: int = 10
    # With class_vote_variant (pca, say), the vote of those first ones is taken in the order of that
    # variant's distances to its own expanded query, where the index has it, while the fallback's
    # order and the candidates stay the method's (empty, off or none: the fallback's own order). Left
    # off: by the classifier's own features the vote trusts the classifier more, which mends a few
    # scene pictures and loses more where the classifier is weak. Why: RESULTS.md ("The class vote in the
    # classifier's own order").
    class_vote_variant: str = ""
    # A candidate's class in these rules is its label where the collection gives it one the
    # classifier knows (else the classifier's): the labels are a person's word, and the classifier
    # gets a few of its own training collection wrong. Why: RESULTS.md ("Labels before guesses").
    class_from_labels: bool = True
    # The query's class in these rules: with query_class_from_crops, the classifier's class for the
    # mean of the (unit) logits of the query and of its query_crops crops, where a fine method has
    # them (else the query's own). Off: it mends a few scene pictures and breaks more object photos,
    # whose crops cut the object. Why: RESULTS.md ("The query's class from its crops").
    query_class_from_crops: bool = False
    # The confidence calibration (calibrate writes <data dir>/models/calibration.json); empty: that
    # file when it exists, else the one fitted on the public instance benchmark.
    calibration_path: str = ""
    # With more coarse candidates than verify_top, each is pre-scored by tentative matches of
    # prescore_keypoints of the query's descriptors, and only the verify_top best are matched in
    # full and fitted with RANSAC (0: verify every candidate). Measured: RESULTS.md.
    verify_top: int = 200
    prescore_keypoints: int = 100
    # ... taken in turn from each cell of a prescore_grid x prescore_grid division of the query
    # (strongest of each cell first), not only the strongest of the whole query (0): a photo's
    # strongest descriptors can all lie on the wall or table around the picture. Why 6: RESULTS.md
    # ("Pre-score descriptors spread over the query").
    prescore_grid: int = 6
    # The pre-score's matrix products in bfloat16 or float32 (verification.prescore_dtype); auto:
    # bfloat16 where the device has instructions for it (AVX512-BF16 or AMX CPUs, CUDA GPUs from
    # Ampere on), float32 elsewhere, where bfloat16 is emulated (five times slower on an AVX2 CPU).
    # Why: RESULTS.md ("The pre-score's products in bfloat16", "bfloat16 only where the CPU has it").
    prescore_dtype: str = "auto"
    # ... against each candidate's prescore_candidate_keypoints strongest descriptors (0: all of
    # them; the full match of the fitted ones always uses all). Why 150: RESULTS.md ("The
    # pre-score on each candidate's strongest descriptors").
    prescore_candidate_keypoints: int = 150
    # Candidates per batched matrix product of the full match; the pre-score takes four times as
    # many. A GPU may prefer larger blocks (scripts/gpu_benchmark.sh measures three sizes).
    verify_block_size: int = 64
    # A fine search fits at least this many candidates (as many as the collection has, when fewer),
    # even when fewer were asked for, and only the ones asked for are ranked: the query's floor of
    # chance inliers (confidence.py) is taken over them, so a candidate's confidence does not
    # depend on how many candidates a search verifies. Why: RESULTS.md ("Confidence that does not
    # depend on the candidate count").
    confidence_pool: int = 200
    # A photo taken sideways or upside down (no EXIF orientation to say so) often verifies nothing:
    # the local features are not made to be rotation-invariant. When a fine method verified nothing,
    # the query is turned by each of these angles (degrees counter-clockwise; empty: never) and
    # searched again, turn_candidates verified, and of the turns that verify something the one whose
    # best match has most inliers is kept.
    query_turns: str = "90,270,180"
    turn_candidates: int = 200
    # With turns_in_doubt, only when the classifier's class for the query is in doubt as well: not
    # the class of most of the fallback's first fallback_class_voters. Cheaper, with most of the
    # turns' class-level cost gone, but it finds fewer photos on their side: a sideways photo is
    # often still classified right. Measured: RESULTS.md ("The quarter turns only in doubt").
    turns_in_doubt: bool = False
    # With turns_if_nearer, only the turns whose nearest image is nearer than the query's as sent
    # (one batch of global vectors decides, before any turn's local features). Measured: RESULTS.md
    # ("Turns that look more like the collection").
    turns_if_nearer: bool = True
    # The global variant that gate compares, where the index has it (else the method's own): the
    # instance one needs one network's pass over the three turns where the hybrid needs two, and
    # a search that verifies nothing pays the gate. Measured: RESULTS.md ("A turn gate of one network").
    turn_gate_variant: str = "instance"
    # A turn that verifies something puts its verified matches first, then the query's own page as
    # sent (pipeline.matches_first); with turned_fallback, the turned query's whole ranking instead.
    # Why: RESULTS.md ("The turned query's matches, the upright query's page").
    turned_fallback: bool = False

    # Sharded search (shards.py): the collection split by image id into this many shard builds
    # (<data dir>/shards/<number>), each served by workers on its own queue; 0 or 1: one index.
    shards: int = 0

    @property
    def turn_angles(self) -> tuple[int, ...]:
        angles = tuple(int(a) for a in self.query_turns.replace(" ", "").split(",") if a)
        if any(a not in (90, 180, 270) for a in angles):
            raise ValueError(f"query_turns takes 90, 180 and 270 only, not {self.query_turns!r}")
        return angles

    @property
    def pretrained_weights(self) -> str | None:
        """The weights file ``build_backbone`` reads for the configured backbone's ImageNet weights."""
        return self.imagenet_weights(self.backbone)

    def imagenet_weights(self, backbone: str) -> str | None:
        """The weights file ``build_backbone`` reads for ``backbone``'s ImageNet weights (ResNet18's
        only; the others' come with their packages)."""
        return self.resnet18_weights if backbone == "resnet18" else None

    @property
    def model_dir(self) -> Path:
        return Path(self.data_dir) / "models"

    @property
    def index_root(self) -> Path:
        return Path(self.data_dir) / "index"

    @property
    def shards_root(self) -> Path:
        return Path(self.data_dir) / "shards"

    def shard_root(self, number: int) -> Path:
        """The index root of shard ``number`` (its builds and active link, as under ``index_root``)."""
        return self.shards_root / str(number)

    @property
    def shard_exchange_dir(self) -> Path:
        """Where a sharded search's stages leave their files for each other (one folder per search)."""
        return Path(self.data_dir) / "shard-searches"

    @property
    def reports_dir(self) -> Path:
        return Path(self.data_dir) / "reports"

    @property
    def default_model_path(self) -> Path:
        return self.model_dir / "classifier.pt"

    @property
    def default_attention_path(self) -> Path:
        return self.model_dir / "attention.pt"

    @property
    def calibration_file(self) -> Path | None:
        """The confidence calibration to use; None: the packaged one (confidence.DEFAULT_CALIBRATION)."""
        if self.calibration_path:
            return Path(self.calibration_path)
        fitted = self.model_dir / "calibration.json"
        return fitted if fitted.is_file() else None

    def local_settings(self) -> "LocalSettings":
        return LocalSettings(scales=tuple(float(s) for s in self.local_scales.split(",") if s.strip()),
                             max_keypoints=self.local_max_keypoints, score_threshold=self.local_score_threshold,
                             base_max_side=self.local_base_max_side)

    @property
    def query_decode_side(self) -> int:
        """The shortest side a query must keep when it is decoded smaller (``open_query_image``): the
        global input's side and the local pyramid's largest level, whichever is larger."""
        top = self.local_base_max_side * max([1.0, *self.local_settings().scales])
        return max(self.image_size, self.local_query_min_side, math.ceil(top))

    def verify_settings(self) -> "VerifySettings":
        if self.prescore_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"prescore_dtype takes auto, float32 or bfloat16, not {self.prescore_dtype!r}")
        if self.verify_block_size < 1:
            raise ValueError(f"verify_block_size takes 1 or more, not {self.verify_block_size}")
        if self.prescore_candidate_keypoints < 0:
            raise ValueError(f"prescore_candidate_keypoints takes 0 (all) or more, not {self.prescore_candidate_keypoints}")
        return VerifySettings(ratio=self.match_ratio, max_distance=self.match_max_distance,
                              mutual=self.match_mutual, reprojection_px=self.ransac_reprojection_px,
                              max_iters=self.ransac_max_iters, method=self.ransac_method,
                              verify_top=self.verify_top, prescore_keypoints=self.prescore_keypoints,
                              prescore_grid=self.prescore_grid, prescore_dtype=self.prescore_dtype,
                              prescore_candidate_keypoints=self.prescore_candidate_keypoints,
                              block_size=self.verify_block_size)

    def coarse_settings(self) -> "CoarseSettings":
        return CoarseSettings(backend=self.coarse_backend, faiss_min_images=self.faiss_min_images,
                              leaf_size=self.leaf_size, faiss_lists=self.faiss_lists,
                              faiss_nprobe=self.faiss_nprobe, faiss_coverage=self.faiss_coverage,
                              faiss_reduce_dim=self.faiss_reduce_dim, faiss_refine=self.faiss_refine,
                              seed=self.seed, faiss_map_min_images=self.faiss_map_min_images,
                              faiss_parts=self.faiss_parts)

    def as_record(self) -> dict:
        """Every setting, as a report records what its figures were measured with (paths as text)."""
        return {f.name: str(v) if isinstance(v := getattr(self, f.name), Path) else v
                for f in dataclasses.fields(self)}

    def replace(self, **changes) -> "EngineConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, prefix: str = "RETRIEVAL_") -> "EngineConfig":
        """Build a config from ``RETRIEVAL_<FIELD>`` variables, cast to each field's type."""
        changes = {}
        defaults = cls()
        for f in dataclasses.fields(cls):
            raw = environ.get(prefix + f.name.upper())
            if raw is None or raw == "":
                continue
            kind = type(getattr(defaults, f.name))
            try:
                if issubclass(kind, Path):
                    changes[f.name] = Path(raw).expanduser()
                elif kind is bool:
                    if raw.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                        raise ValueError(raw)
                    changes[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
                else:
                    changes[f.name] = kind(raw)
            except ValueError as exc:
                raise ValueError(f"{prefix}{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from exc
        return cls(**changes)
