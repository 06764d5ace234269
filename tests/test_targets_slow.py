"""The issue's targets on the whole Corel-1k collection (slow: trains for minutes)."""
import json

import pytest

from search.engine.collection import scan_collection
from search.engine.evaluation import evaluate_coarse
from search.engine.index import build_index, indexed_collection, load_index
from search.engine.model import imagenet_model, load_classifier
from search.engine.pipeline import RetrievalEngine
from search.engine.training import train_classifier

from .conftest import COREL, COREL_CLASSES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corel_engine(tmp_path_factory, engine_config):
    from search.engine.collection import write_labels_csv

    data = tmp_path_factory.mktemp("corel-full")
    config = engine_config.replace(data_dir=data, epochs=6, batch_size=32)
    labels = data / "labels.csv"
    write_labels_csv(labels, {p.name: COREL_CLASSES[int(p.stem) // 100] for p in COREL.glob("*.jpg")})
    collection = scan_collection(COREL, labels)
    result = train_classifier(collection, config, config.default_model_path)
    model = load_classifier(config.default_model_path, "cpu")
    build_index(collection, model, config.index_root, config, "cpu")
    return RetrievalEngine(model, load_index(config.index_root, model.checksum), "cpu", config), result


def test_corel_classifier_reaches_97_percent(corel_engine):
    _, result = corel_engine
    print("history", json.dumps(result.history))
    assert result.val_accuracy >= 0.97


def test_corel_coarse_search_targets_and_baseline(corel_engine, tmp_path):
    engine, _ = corel_engine
    queries = engine.model.info["val_ids"]
    assert len(queries) == 200
    scores = {s.variant: s for s in evaluate_coarse(engine, queries, ["logits", "pca", "penultimate"])}
    best = max(scores.values(), key=lambda s: s.precision_at_10)
    print({v: (s.precision_at_10, s.mean_ap, s.query_ms) for v, s in scores.items()})
    assert best.precision_at_10 >= 0.98
    assert max(s.mean_ap for s in scores.values()) >= 0.95

    baseline = imagenet_model("efficientnet_lite0", 224, "cpu")
    build = build_index(indexed_collection(engine.index), baseline, tmp_path, engine.config, "cpu",
                        variants=("penultimate",))
    base_engine = RetrievalEngine(baseline, load_index(build), "cpu", engine.config)
    base = evaluate_coarse(base_engine, queries, ["penultimate"], "imagenet")[0]
    print("imagenet baseline", base)
    assert scores["penultimate"].precision_at_10 > base.precision_at_10
    assert scores["penultimate"].mean_ap > base.mean_ap
