"""Django settings, read from environment variables with defaults that work on a laptop.

The retrieval engine's own settings are the fields of
``search.engine.config.EngineConfig``, overridden by ``RETRIEVAL_<FIELD>``
variables (e.g. ``RETRIEVAL_DEVICE=cuda``, ``RETRIEVAL_DATA_DIR=/data``).
"""
import os
import secrets
import time
from pathlib import Path

import dj_database_url
from kombu import Queue
from django.core.exceptions import ImproperlyConfigured

from search.engine.config import EngineConfig

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in ("1", "true", "yes", "on")


RETRIEVAL = EngineConfig.from_env(os.environ)

# Off unless asked for (DJANGO_DEBUG=true, for development only): with DEBUG on, error pages
# show tracebacks, settings and paths, and the 404 page lists every URL pattern.
DEBUG = env_bool("DJANGO_DEBUG", False)
KNOWN_INSECURE_KEYS = {"dev-only-insecure-key-change-me", "change-me-in-production"}


def secret_key(data_dir: Path) -> str:
    """DJANGO_SECRET_KEY when set; otherwise a random key made once and kept in the data
    directory (readable by its owner only), so no deployment runs on a key known to anyone.
    Web processes and workers sharing the data volume share it."""
    given = os.environ.get("DJANGO_SECRET_KEY", "").strip()
    if given:
        if not DEBUG and (given in KNOWN_INSECURE_KEYS or given.startswith("django-insecure") or len(given) < 32):
            raise ImproperlyConfigured(
                "DJANGO_SECRET_KEY is a published or short key (under 32 characters); set a long random "
                "one, or unset it to have one generated in the data directory")
        return given
    path = Path(data_dir) / "secret_key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(50))
    for _ in range(50):  # the process that made it may still be writing
        key = path.read_text().strip()
        if key:
            return key
        time.sleep(0.1)
    raise ImproperlyConfigured(f"{path} is empty; delete it to have a new secret key made")


SECRET_KEY = secret_key(Path(RETRIEVAL.data_dir))
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
    # before anything reads the body: an oversized request is refused from its Content-Length
    "search.middleware.RequestSizeLimitMiddleware",
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

# Security headers and cookies. TLS is the reverse proxy's job: behind one, set
# DJANGO_BEHIND_TLS_PROXY=true (trusts X-Forwarded-Proto, cookies only over HTTPS, redirect to
# HTTPS), DJANGO_HSTS_SECONDS and DJANGO_HSTS_PRELOAD: `python manage.py check --deploy` then
# reports nothing.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
BEHIND_TLS_PROXY = env_bool("DJANGO_BEHIND_TLS_PROXY", False)
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", 0))
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
# Asking browsers' preload lists to include the domain is a commitment for the whole domain.
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)

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
# WhiteNoise serves static files in every mode, from the apps' folders too (so runserver and
# gunicorn work without DEBUG and before collectstatic); it answers 404 to paths outside them.
WHITENOISE_USE_FINDERS = True
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", Path(RETRIEVAL.data_dir) / "static"))
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("DJANGO_MEDIA_ROOT", Path(RETRIEVAL.data_dir) / "media"))

# Celery: Redis as broker by default; the worker app lives in workers/celery.py.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
# Without Redis (scripts/demo.sh when no redis-server is installed): CELERY_BROKER_URL=filesystem://
# uses Kombu's filesystem transport, messages as files under CELERY_FILESYSTEM_DIR.
CELERY_FILESYSTEM_DIR = Path(os.environ.get("CELERY_FILESYSTEM_DIR", Path(RETRIEVAL.data_dir) / "broker"))
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "search")
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

# Two queues, so that searches never wait behind a reindex or retrain: a worker started without
# -Q takes both; `-Q search` and `-Q maintenance` split them over two workers (scripts/demo.sh).
SEARCH_QUEUE = CELERY_TASK_DEFAULT_QUEUE
MAINTENANCE_QUEUE = os.environ.get("CELERY_MAINTENANCE_QUEUE", "maintenance")
CELERY_TASK_QUEUES = [Queue(name) for name in dict.fromkeys([SEARCH_QUEUE, MAINTENANCE_QUEUE])]
# Sharded search (RETRIEVAL_SHARDS >= 2; search/engine/shards.py): the workers of shard n listen
# on SHARD_QUEUE_PREFIX + n (`-Q shard-0`), never on the search queue's worker alone (it waits for
# them); a search fails when a shard has not answered a stage within SHARD_STAGE_TIMEOUT_S.
SHARD_QUEUE_PREFIX = os.environ.get("CELERY_SHARD_QUEUE_PREFIX", "shard-")
SHARD_STAGE_TIMEOUT_S = float(os.environ.get("SHARD_STAGE_TIMEOUT_S", 120))

# The site.
# Jobs whose worker died (search/watchdog.py): the worker running a job stamps it every
# HEARTBEAT_PERIOD_S; every worker checks every WATCHDOG_PERIOD_S (and when it starts) for
# running jobs not stamped for ORPHAN_AFTER_S and queues the searches again (at most
# SEARCH_MAX_ATTEMPTS runs each) or fails the maintenance runs.
HEARTBEAT_PERIOD_S = float(os.environ.get("HEARTBEAT_PERIOD_S", 5))
WATCHDOG_PERIOD_S = float(os.environ.get("WATCHDOG_PERIOD_S", 20))
ORPHAN_AFTER_S = float(os.environ.get("ORPHAN_AFTER_S", 45))
SEARCH_MAX_ATTEMPTS = int(os.environ.get("SEARCH_MAX_ATTEMPTS", 3))
# A search not finished this long after it *started* is marked failed (by the watchdog, and when
# read); one still queued this long after it was made (no worker at all) too.
SEARCH_JOB_TIMEOUT_S = int(os.environ.get("SEARCH_JOB_TIMEOUT_S", 600))
SEARCH_QUEUED_TIMEOUT_S = int(os.environ.get("SEARCH_QUEUED_TIMEOUT_S", 3600))
# Searches one client (a user, or else an address) may start per minute; 0: no limit. Staff are
# not limited.
SEARCHES_PER_MINUTE = int(os.environ.get("SEARCHES_PER_MINUTE", 30))
# Days a search is kept: then its query photo is deleted, and the whole row unless someone rated
# its results (the ratings report keeps those, without the photo); 0 keeps everything.
SEARCH_RETENTION_DAYS = float(os.environ.get("SEARCH_RETENTION_DAYS", 30))
# Uploads over this size are refused before any decoding.
UPLOAD_MAX_BYTES = int(os.environ.get("UPLOAD_MAX_BYTES", 20 * 1024 * 1024))
# Searching by an image's address: the server fetches it, within this time and UPLOAD_MAX_BYTES,
# and never from a private, loopback or link-local address (true: allowed, for tests only).
URL_FETCH_TIMEOUT_S = float(os.environ.get("URL_FETCH_TIMEOUT_S", 10))
URL_FETCH_ALLOW_PRIVATE = env_bool("URL_FETCH_ALLOW_PRIVATE", False)
# Whole request bodies: refused from their declared length before any byte is read
# (search/middleware.py): one photo plus the form's fields; staff may add several images at once.
REQUEST_MAX_BYTES = UPLOAD_MAX_BYTES + 1024 * 1024
STAFF_REQUEST_MAX_BYTES = int(os.environ.get("STAFF_REQUEST_MAX_BYTES", 200 * 1024 * 1024))
# A zip archive staff add (the staff page or the collection API): at most this many pictures,
# unpacking to at most this many bytes in all (each picture within UPLOAD_MAX_BYTES).
ARCHIVE_MAX_IMAGES = int(os.environ.get("ARCHIVE_MAX_IMAGES", 10_000))
ARCHIVE_MAX_BYTES = int(os.environ.get("ARCHIVE_MAX_BYTES", 1024 * 1024 * 1024))
DATA_UPLOAD_MAX_MEMORY_SIZE = REQUEST_MAX_BYTES
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
# The folders (and everything below them) staff may index or read labels from on the staff
# page, comma-separated: by default the collection folder and the data directory.
STAFF_FOLDER_ROOTS = [p.strip() for p in os.environ.get(
    "STAFF_FOLDER_ROOTS", f"{RETRIEVAL.collection_dir},{RETRIEVAL.data_dir}").split(",") if p.strip()]
# Whether staff may add images to the active index's folder from the site (off by default: the
# demo collection is a shared, read-only dataset).
COLLECTION_UPLOADS = env_bool("COLLECTION_UPLOADS", True)
# Images added from the site or the API wait in delta segments, scanned exactly beside the build.
# After an 'add' run, a merge (a reindex that extracts nothing) is queued on the maintenance
# queue once the deltas hold MERGE_DELTA_FRACTION of the build's images or number
# MERGE_MAX_DELTAS; AUTO_MERGE=false leaves them to the next reindex.
AUTO_MERGE = env_bool("AUTO_MERGE", True)
MERGE_DELTA_FRACTION = float(os.environ.get("MERGE_DELTA_FRACTION", 0.05))
MERGE_MAX_DELTAS = int(os.environ.get("MERGE_MAX_DELTAS", 20))
# "search with this image": the collection image is scaled down to this longest side first
QUERY_FROM_COLLECTION_MAX_SIDE = int(os.environ.get("QUERY_FROM_COLLECTION_MAX_SIDE", 1600))
# a collection image in a format browsers do not show (HEIC, TIFF) is served as a JPEG this large
SHOWN_IMAGE_MAX_SIDE = int(os.environ.get("SHOWN_IMAGE_MAX_SIDE", 2048))
BROWSE_PAGE_SIZE = int(os.environ.get("BROWSE_PAGE_SIZE", 48))
MY_SEARCHES_SHOWN = int(os.environ.get("MY_SEARCHES_SHOWN", 50))
# a staff evaluation of a classifier that records no validation images: this many labelled ones
EVALUATE_SAMPLE = int(os.environ.get("EVALUATE_SAMPLE", 200))
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"
