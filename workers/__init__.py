"""Celery workers: ``celery -A workers worker``."""
from .celery import app

__all__ = ["app"]
