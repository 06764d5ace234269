"""The Celery app; tasks live in ``workers/tasks.py`` and are autodiscovered from the Django apps."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "retrieval_site.settings")

app = Celery("retrieval")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.include = ["workers.tasks"]
app.autodiscover_tasks()
