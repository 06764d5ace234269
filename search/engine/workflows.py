"""The stage chains every caller needs, written once: train the classifier and
then the attention head on a collection; load a trained model with its
attention head and extractor; index a collection; open an engine on a build.
Commands, the site's tasks and the tests call these instead of wiring the
stages themselves."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from . import layout
from .additions import Additions, add_images
from .allocator import keep_freed_memory
from .attention import TrainedAttention, load_attention, train_attention
from .collection import Collection
from .config import EngineConfig
from .errors import SearchIndexError
from .index import SearchIndex, build_index, load_index
from .instance_features import describer_for, instance_describer
from .local_features import AttentionExtractor, following
from .methods import VARIANTS
from .model import TrainedModel, load_classifier, pick_device
from .pipeline import RetrievalEngine
from .progress import Progress, no_progress
from .shards import FanOut, Shard, ShardedEngine, local_fan_out, split_delta
from .training import Split, TrainingResult, imagenet_classifier, label_free_reason, train_classifier


@dataclass
class Models:
    """A classifier, its attention head (None: global features only) and the extractor
    that goes with both."""
    model: TrainedModel
    attention: TrainedAttention | None
    extractor: AttentionExtractor | None
    device: object


@dataclass
class TrainedModels(Models):
    training: TrainingResult | None = None

    @property
    def split(self) -> Split:
        return self.training.split


def _models(model: TrainedModel, attention: TrainedAttention | None, config: EngineConfig, device) -> Models:
    extractor = (AttentionExtractor(model, attention, config.local_settings(), device, config.local_global_level)
                 if attention is not None else None)
    return Models(model, attention, extractor, device)


def train_models(collection: Collection, config: EngineConfig, model_path: Path | None = None,
                 attention_path: Path | None = None, split: Split | None = None, epochs: int | None = None,
                 with_attention: bool = True, progress: Progress = no_progress) -> TrainedModels:
    """Fine-tune the classifier on ``collection`` (saved at ``model_path``), reload it from
    disk, and train the attention head on the same split (saved at ``attention_path``). Without
    labels worth fine-tuning on (``label_free_reason``) the ImageNet classifier is kept, and the
    head learns its predictions."""
    keep_freed_memory(config.malloc_threshold_mb)
    model_path = Path(model_path or config.default_model_path)
    attention_path = Path(attention_path or config.default_attention_path)
    reason = label_free_reason(collection)
    if reason is None:
        training = train_classifier(collection, config, model_path, split=split, epochs=epochs, progress=progress)
    else:
        training = imagenet_classifier(collection, config, model_path, reason)
    device = pick_device(config.device)
    model = load_classifier(model_path, device)
    attention = None
    if with_attention:
        train_attention(model, training.split.train, training.split.val, attention_path, device,
                        epochs=config.attention_epochs, learning_rate=config.attention_learning_rate,
                        seed=config.seed, progress=progress)
        attention = load_attention(attention_path, model, device)
    return TrainedModels(**vars(_models(model, attention, config, device)), training=training)


def load_models(config: EngineConfig, model_path: Path | None = None, attention_path: Path | None = None,
                attention: bool | None = None) -> Models:
    """The trained classifier and attention head from disk. ``attention``: True requires the
    head, False skips it, None loads it when its file is there."""
    keep_freed_memory(config.malloc_threshold_mb)
    device = pick_device(config.device)
    model = load_classifier(Path(model_path or config.default_model_path), device)
    attention_path = Path(attention_path or config.default_attention_path)
    head = None
    if attention or (attention is None and attention_path.is_file()):
        head = load_attention(attention_path, model, device)
    return _models(model, head, config, device)


def following_active_build(models: Models, index_root: Path) -> Models:
    """``models`` extracting local features as the active build's were made (``LOCAL_GLOBAL_LEVEL``
    as it was then): a merge folds deltas in by a rebuild that must reuse every feature."""
    manifest = layout.read_manifest(layout.active_build(index_root))
    return replace(models, extractor=following(models.extractor, manifest.get("local")))


def index_variants(model: TrainedModel) -> tuple[str, ...]:
    """Every variant, less the logits of a starter classifier (``save_starter_classifier``: its
    last layer is untrained, so its logits mean nothing)."""
    return tuple(v for v in VARIANTS if v != "logits") if is_starter(model) else VARIANTS


def is_starter(model: TrainedModel) -> bool:
    """Whether the classifier is the ImageNet starter, not yet fine-tuned on the collection."""
    return bool(model.info.get("starter"))


def model_label(model: TrainedModel) -> str:
    """What evaluation rows call the loaded classifier: neither the starter nor the ImageNet
    classifier of a collection without labels is fine-tuned."""
    if is_starter(model):
        return "starter"
    return "ImageNet, no labels" if model.info.get("label_free") else "fine-tuned"


def index_collection(collection: Collection, models: Models, config: EngineConfig, index_root: Path | None = None,
                     activate: bool = True, progress: Progress = no_progress) -> Path:
    """A new build of ``collection`` (global features, trees, and local features when the
    models have an attention head); active once complete unless ``activate`` is False."""
    describer = instance_describer(config, models.device, models.model.name)
    return build_index(collection, models.model, Path(index_root or config.index_root), config, models.device,
                       variants=index_variants(models.model), activate=activate, progress=progress,
                       local_extractor=models.extractor, describer=describer)


def add_to_index(paths, config: EngineConfig, index_root: Path | None = None, label: str | None = None,
                 models: Models | None = None, progress: Progress = no_progress) -> Additions:
    """Add image files and folders to the active index with the models it was built with (see
    ``additions.add_images``); with ``config.shards``, their delta is handed to the shards too."""
    index_root = Path(index_root or config.index_root)
    result = add_images(index_root, paths, models or load_models(config), config, label, progress)
    if result.delta is not None and config.shards >= 2 and index_root == Path(config.index_root):
        result.shard_deltas = split_delta(result.delta, config.shards_root, config.shards)
    return result


def open_engine(config: EngineConfig, build: Path | None = None, model_path: Path | None = None,
                attention_path: Path | None = None) -> RetrievalEngine:
    """An engine on ``build`` (default: the active build under the index root), with the model
    it was built with and, when the build has local features, the attention head."""
    models = load_models(config, model_path, attention=False)
    index = load_index(build or config.index_root, expected_checksum=models.model.checksum,
                       coarse_settings=config.coarse_settings())
    attention = None
    if index.local is not None:
        attention = load_attention(Path(attention_path or config.default_attention_path), models.model,
                                   models.device)
    engine = RetrievalEngine(models.model, index, models.device, config, attention,
                             describer=describer_for(index, config, models.device, models.model.name))
    if engine.extractor is not None and index.local.meta["extractor"] != engine.extractor.checksum:
        raise SearchIndexError(
            f"{index.path}: local features were extracted with other settings or another attention "
            "head than the loaded ones; reindex")
    return engine


def engine_for(models: Models, build: Path, config: EngineConfig) -> RetrievalEngine:
    """An engine on a build just made with ``models`` (no reload from disk)."""
    index = load_index(build, expected_checksum=models.model.checksum, coarse_settings=config.coarse_settings())
    return RetrievalEngine(models.model, index, models.device, config, models.attention,
                           describer=describer_for(index, config, models.device, models.model.name))


def open_sharded_engine(config: EngineConfig, fan_out: FanOut | None = None,
                        shards: int | None = None) -> ShardedEngine:
    """An engine on the shards under ``config.shards_root``: the query described on shard 0's build,
    the stages sent through ``fan_out`` (default: every shard opened here, run in this process).
    With ``shards``, a split into another number of shards is refused."""
    return as_sharded(open_engine(config, config.shard_root(0)), config, fan_out, shards)


def as_sharded(engine: RetrievalEngine, config: EngineConfig, fan_out: FanOut | None = None,
               shards: int | None = None) -> ShardedEngine:
    """``engine`` (opened on shard 0's build) coordinating its split's shards through ``fan_out``."""
    split = (engine.index.manifest.get("shard") or {}).get("shards")
    if shards is not None and split != shards:
        raise SearchIndexError(f"{engine.index.path} is one of {split or 'no'} shards, not of {shards}; "
                               f"run split_index --shards {shards}")
    if not split:
        raise SearchIndexError(f"{engine.index.path} is not a shard build (split_index makes them)")
    if fan_out is None:
        fan_out = local_fan_out([Shard.open(config.shard_root(n), config) for n in range(split)])
    return ShardedEngine(engine, fan_out, config.shard_exchange_dir)
