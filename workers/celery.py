"""The Celery app; the tasks live in each Django app's ``tasks.py`` (``search/tasks.py``),
found by autodiscovery."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "retrieval_site.settings")

app = Celery("retrieval")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
