import os
from pathlib import Path

import pytest

from search.engine.config import EngineConfig


def test_environment_overrides_with_types():
    config = EngineConfig.from_env({"RETRIEVAL_EPOCHS": "3", "RETRIEVAL_LEARNING_RATE": "0.5",
                                    "RETRIEVAL_DATA_DIR": "/tmp/x", "RETRIEVAL_BACKBONE": "resnet18"})
    assert config.epochs == 3 and config.learning_rate == 0.5
    assert config.data_dir == Path("/tmp/x") and config.index_root == Path("/tmp/x/index")
    assert config.backbone == "resnet18"
    assert EngineConfig.from_env({}).backbone == "efficientnet_lite0"


def test_bad_value_names_the_variable():
    with pytest.raises(ValueError, match="RETRIEVAL_EPOCHS='many'"):
        EngineConfig.from_env({"RETRIEVAL_EPOCHS": "many"})


def test_django_settings_use_the_environment(settings):
    assert isinstance(settings.RETRIEVAL, EngineConfig)
    assert settings.RETRIEVAL.data_dir == Path(os.environ["RETRIEVAL_DATA_DIR"])  # set by tests/conftest.py
