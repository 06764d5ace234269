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


def test_every_named_setting_is_checked_at_once_and_named_by_its_variable():
    from search.engine.settings_check import describe_problems, setting_problems

    assert setting_problems(EngineConfig()) == {}
    assert setting_problems(EngineConfig(device="cuda:1", hybrid_weight=0.0, query_turns="", confidence_pool=0,
                                         class_vote_variant="off", coarse_backend="faiss")) == {}
    bad = EngineConfig(backbone="resnet50", device="gpu", coarse_backend="hnsw", ransac_method="lmeds",
                       train_augment="trivia", class_vote_variant="pcaa", turn_gate_variant="colour",
                       query_turns="45", local_scales="0,1", top_k=0, query_expansion=-1, val_fraction=1.0,
                       match_ratio=0.0, prescore_dtype="half")
    problems = setting_problems(bad)
    assert set(problems) == {"backbone", "device", "coarse_backend", "ransac_method", "train_augment",
                             "class_vote_variant", "turn_gate_variant", "query_turns", "local_scales", "top_k",
                             "query_expansion", "val_fraction", "match_ratio", "prescore_dtype"}
    described = describe_problems(bad)
    assert "RETRIEVAL_TRAIN_AUGMENT='trivia' takes one of basic, trivial" in described
    assert "RETRIEVAL_DEVICE='gpu' takes auto, cpu, cuda or cuda:N" in described
    assert "RETRIEVAL_VAL_FRACTION='1.0' takes a value above 0 and below 1" in described
    assert any(p.startswith("RETRIEVAL_CLASS_VOTE_VARIANT='pcaa' takes one of logits") for p in described)


def test_the_checked_names_are_the_ones_the_engine_modules_accept():
    """The check spells the names out so the web process need not load torch or OpenCV for them."""
    from search.engine import settings_check
    from search.engine.backbones import BACKBONES
    from search.engine.coarse_backends import BACKENDS
    from search.engine.verification import PRESCORE_DTYPES, RANSAC_METHODS

    assert sorted(settings_check.BACKBONE_NAMES) == sorted(BACKBONES)
    assert settings_check.COARSE_BACKENDS == ("auto", *BACKENDS)
    assert settings_check.RANSAC_METHOD_NAMES == tuple(RANSAC_METHODS)
    assert settings_check.PRESCORE_DTYPES == ("auto", *PRESCORE_DTYPES)


def test_django_checks_refuse_a_misspelt_engine_setting(settings):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    call_command("check")
    settings.RETRIEVAL = settings.RETRIEVAL.replace(train_augment="trivia", query_turns="45")
    with pytest.raises(SystemCheckError) as caught:
        call_command("check")
    assert "(search.E001) RETRIEVAL_TRAIN_AUGMENT='trivia' takes one of basic, trivial" in str(caught.value)
    assert "RETRIEVAL_QUERY_TURNS='45' takes 90, 180 and 270 only" in str(caught.value)


def test_a_variable_that_names_no_setting_is_named_with_the_likely_one():
    """EngineConfig.from_env reads only the names it knows: a misspelt or retired variable would be
    ignored without a word."""
    from search.engine.settings_check import unknown_variables

    environ = {"RETRIEVAL_EPOCS": "3", "RETRIEVAL_EPOCHS": "2", "RETRIEVAL_VENV": "/venv", "RETRIEVAL_XYZZY": "1",
               "RETRIEVAL_DATASETS": "/data", "PATH": "/bin", "EPOCS": "3"}
    assert unknown_variables(environ) == [
        "RETRIEVAL_EPOCS is not a setting (did you mean RETRIEVAL_EPOCHS?): it is ignored",
        "RETRIEVAL_XYZZY is not a setting: it is ignored"]
    assert EngineConfig.from_env(environ).epochs == 2


def test_django_checks_warn_of_a_variable_that_names_no_setting(monkeypatch, capsys):
    from django.core.management import call_command

    monkeypatch.setenv("RETRIEVAL_TRAIN_MAX_IMAGE", "500")
    call_command("check")  # a warning: the program runs
    assert ("(search.W001) RETRIEVAL_TRAIN_MAX_IMAGE is not a setting (did you mean RETRIEVAL_TRAIN_MAX_IMAGES?): "
            "it is ignored") in capsys.readouterr().err
