"""Loaded as a plugin (``-p tests.testenv`` in pytest.ini) before pytest-django
reads the settings, so everything the code under test writes goes to a
throw-away data directory, never to the developer's ``var/``.

The web tests run a real Celery worker in another process, so the database is
a SQLite *file* in that directory (shared by the test process, the live server
and the worker), and the broker queue is private to this session (Redis is
shared with other sessions on the same machine)."""
import os
import shutil
import tempfile
import uuid

_DATA_DIR = tempfile.mkdtemp(prefix="retrieval-tests-")
os.environ["RETRIEVAL_DATA_DIR"] = _DATA_DIR
os.environ["DATABASE_URL"] = f"sqlite:///{_DATA_DIR}/test-db.sqlite3"
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
os.environ["CELERY_TASK_DEFAULT_QUEUE"] = f"retrieval-tests-{uuid.uuid4().hex[:8]}"
# one private queue for both kinds of work: the tests' single worker takes both
os.environ["CELERY_MAINTENANCE_QUEUE"] = os.environ["CELERY_TASK_DEFAULT_QUEUE"]
# an 'add' run queues no merge unless the test asks for one: the session's tests share one index
os.environ["AUTO_MERGE"] = "false"
os.environ["DJANGO_MEDIA_ROOT"] = os.path.join(_DATA_DIR, "media")
# Playwright's sync API runs an event loop in the test thread; the ORM calls the
# tests make beside it are still synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def pytest_unconfigure(config):
    shutil.rmtree(_DATA_DIR, ignore_errors=True)
