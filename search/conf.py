"""The engine configuration as Django settings built it."""
from django.conf import settings

from .engine.config import EngineConfig


def engine_config(**overrides) -> EngineConfig:
    config: EngineConfig = settings.RETRIEVAL
    return config.replace(**overrides) if overrides else config
