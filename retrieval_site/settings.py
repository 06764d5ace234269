"""Django settings, read from environment variables with defaults that work on a laptop.

The retrieval engine's own settings are the fields of
``search.engine.config.EngineConfig``, overridden by ``RETRIEVAL_<FIELD>``
variables (e.g. ``RETRIEVAL_DEVICE=cuda``, ``RETRIEVAL_DATA_DIR=/data``).
"""
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from search.engine.config import EngineConfig

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in ("1", "true", "yes", "on")


RETRIEVAL = EngineConfig.from_env(os.environ)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-insecure-key-change-me")
DEBUG = env_bool("DJANGO_DEBUG", True)
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "search",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's CSS/JS when DEBUG is off (gunicorn in docker compose), from STATIC_ROOT
    # after `collectstatic`; with DEBUG on it finds them in the apps, as runserver does.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "retrieval_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "search.context_processors.site",
            ],
        },
    },
]

WSGI_APPLICATION = "retrieval_site.wsgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{Path(RETRIEVAL.data_dir) / 'db.sqlite3'}"),
        conn_max_age=60,
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The web process and the workers share one SQLite file: wait for a lock rather than fail.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 30

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", Path(RETRIEVAL.data_dir) / "static"))
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("DJANGO_MEDIA_ROOT", Path(RETRIEVAL.data_dir) / "media"))

# Celery: Redis as broker by default; the worker app lives in workers/celery.py.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
# Without Redis (scripts/demo.sh when no redis-server is installed): CELERY_BROKER_URL=filesystem://
# uses Kombu's filesystem transport, messages as files under CELERY_FILESYSTEM_DIR.
CELERY_FILESYSTEM_DIR = Path(os.environ.get("CELERY_FILESYSTEM_DIR", Path(RETRIEVAL.data_dir) / "broker"))
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", 3600))}
if CELERY_BROKER_URL.startswith("filesystem://"):
    for _folder in ("queue", "processed", "control"):  # Kombu expects them to exist
        (CELERY_FILESYSTEM_DIR / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        data_folder_in=str(CELERY_FILESYSTEM_DIR / "queue"), data_folder_out=str(CELERY_FILESYSTEM_DIR / "queue"),
        processed_folder=str(CELERY_FILESYSTEM_DIR / "processed"), store_processed=False,
        control_folder=str(CELERY_FILESYSTEM_DIR / "control"))
    if CELERY_RESULT_BACKEND.startswith("filesystem://"):  # Celery's file backend beside the messages
        (CELERY_FILESYSTEM_DIR / "results").mkdir(parents=True, exist_ok=True)
        CELERY_RESULT_BACKEND = f"file://{CELERY_FILESYSTEM_DIR.resolve() / 'results'}"
CELERY_TASK_TRACK_STARTED = True

# The site.
# A search job not finished this long after it started is marked failed when read.
SEARCH_JOB_TIMEOUT_S = int(os.environ.get("SEARCH_JOB_TIMEOUT_S", 600))
# Uploads over this size are refused before any decoding.
UPLOAD_MAX_BYTES = int(os.environ.get("UPLOAD_MAX_BYTES", 20 * 1024 * 1024))
DATA_UPLOAD_MAX_MEMORY_SIZE = UPLOAD_MAX_BYTES + 1024 * 1024
# Whether visitors who are not logged in may search and rate (staff pages always need staff).
ANONYMOUS_CAN_SEARCH = env_bool("ANONYMOUS_CAN_SEARCH", True)
# Who sees /report/: 'staff' (default: every rated search, with links) or 'aggregate' (anyone
# who may search sees the per-method figures, never another person's search).
REPORT_ACCESS = os.environ.get("REPORT_ACCESS", "staff")
if REPORT_ACCESS not in ("staff", "aggregate"):
    raise ImproperlyConfigured(f"REPORT_ACCESS must be 'staff' or 'aggregate', not {REPORT_ACCESS!r}")
# Labels for a reindex/retrain from the site: 'folders', a path,label CSV, or empty to keep the
# labels the active index recorded.
COLLECTION_LABELS = os.environ.get("COLLECTION_LABELS", "")
# Whether staff may add images to the active index's folder from the site (off by default: the
# demo collection is a shared, read-only dataset).
COLLECTION_UPLOADS = env_bool("COLLECTION_UPLOADS", False)
LOGIN_URL = "/admin/login/"
