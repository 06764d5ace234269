"""Fast tier: method names, the configuration and the progress helpers (no model, no services)."""
import os
from pathlib import Path

import pytest

from search.engine.collection import seeded_sample
from search.engine.config import EngineConfig
from search.engine.errors import EngineError
from search.engine.methods import DEFAULT_METHOD, METHODS, is_fine, method_label, parse_method, parse_vote_variant
from search.engine.progress import Throttle


def test_the_six_methods_of_table_1_and_the_instance_level_four():
    assert METHODS == ("logits", "pca", "penultimate", "instance", "hybrid", "logits+attention", "pca+attention",
                       "penultimate+attention", "instance+attention", "hybrid+attention")
    assert parse_method("pca+attention") == ("pca", True) and parse_method("logits") == ("logits", False)
    assert DEFAULT_METHOD == "hybrid+attention" and is_fine(DEFAULT_METHOD)
    with pytest.raises(EngineError, match="unknown method 'colour'"):
        parse_method("colour")


def test_the_class_vote_takes_a_variant_or_off_and_refuses_other_names():
    assert parse_vote_variant(EngineConfig().class_vote_variant) is None  # off by default
    for off in ("off", "None"):
        assert parse_vote_variant(EngineConfig.from_env({"RETRIEVAL_CLASS_VOTE_VARIANT": off}).class_vote_variant) is None
    assert parse_vote_variant(EngineConfig.from_env({"RETRIEVAL_CLASS_VOTE_VARIANT": "pca"}).class_vote_variant) == "pca"
    assert parse_vote_variant("") is None
    assert parse_vote_variant(" Logits ") == "logits"
    with pytest.raises(EngineError, match="not 'pcaa'"):
        parse_vote_variant("pcaa")


def test_method_labels_follow_the_pca_setting():
    assert method_label("pca", 32) == ("Finds the same kind of picture, compact (32 numbers per image); "
                                       "overall look only, not checked point by point [pca]")
    assert method_label("pca+attention", 64).endswith("(64 numbers per image); checked point by point [pca+attention]")
    assert method_label(DEFAULT_METHOD, 32).startswith("Recommended. Finds the same object")
    assert sum(method_label(m, 32).startswith("Recommended") for m in METHODS) == 1


def test_environment_overrides_with_types():
    config = EngineConfig.from_env({"RETRIEVAL_EPOCHS": "3", "RETRIEVAL_LEARNING_RATE": "0.5",
                                    "RETRIEVAL_DATA_DIR": "/tmp/x", "RETRIEVAL_BACKBONE": "resnet18",
                                    "RETRIEVAL_MATCH_MUTUAL": "off"})
    assert config.epochs == 3 and config.learning_rate == 0.5
    assert config.data_dir == Path("/tmp/x") and config.index_root == Path("/tmp/x/index")
    assert config.backbone == "resnet18" and config.match_mutual is False
    assert EngineConfig.from_env({}).backbone == "efficientnet_lite0"


def test_bad_value_names_the_variable():
    with pytest.raises(ValueError, match="RETRIEVAL_EPOCHS='many'"):
        EngineConfig.from_env({"RETRIEVAL_EPOCHS": "many"})
    with pytest.raises(ValueError, match="RETRIEVAL_MATCH_MUTUAL='maybe'"):
        EngineConfig.from_env({"RETRIEVAL_MATCH_MUTUAL": "maybe"})


def test_django_settings_use_the_environment(settings):
    assert isinstance(settings.RETRIEVAL, EngineConfig)
    assert settings.RETRIEVAL.data_dir == Path(os.environ["RETRIEVAL_DATA_DIR"])  # set by tests/testenv.py


def test_settings_objects_carry_the_config_values():
    config = EngineConfig(local_scales="0.5, 1.0", local_max_keypoints=120, match_ratio=0.8, min_inliers=9)
    local, verify = config.local_settings(), config.verify_settings()
    assert local.scales == (0.5, 1.0) and local.max_keypoints == 120
    assert verify.ratio == 0.8 and verify.method == "ransac"


def test_throttle_passes_new_stages_and_ends_and_drops_the_rest():
    calls = []
    throttle = Throttle(lambda *a: calls.append(a), interval=3600)
    for done in range(5):
        throttle("verifying", done, 4)
    throttle("coarse", 1, 1)
    assert calls == [("verifying", 0, 4), ("verifying", 4, 4), ("coarse", 1, 1)]


def test_evaluate_limit_takes_a_seeded_sample_that_scripts_can_repeat():
    ids = [f"id{i}" for i in range(50)]
    assert seeded_sample(ids, 0) == ids and seeded_sample(iter(ids), None) == ids  # no limit: all, in order
    picked = seeded_sample(ids, 10)
    assert len(picked) == 10 and set(picked) <= set(ids) and picked != ids[:10]
    assert seeded_sample(list(ids), 10) == picked  # the same ten on every call (seed 0)
    assert seeded_sample(ids, 100) == seeded_sample(ids, 50) and sorted(seeded_sample(ids, 100)) == sorted(ids)
