"""Errors the engine raises where it detects a problem; the edges (commands,
views, tasks) turn them into readable messages."""


class EngineError(Exception):
    """Base class: anything the user can fix by changing an input or a setting."""


class ImageError(EngineError):
    """A file that is not a decodable, acceptable image."""


class CollectionError(EngineError):
    """A collection folder or label file that cannot be used."""


class ModelError(EngineError):
    """Missing or incompatible model weights or checkpoints."""


class SearchIndexError(EngineError):
    """A missing, incomplete or mismatched index directory."""
