"""Fixtures of the web tests: the tiny trained model and its fine index copied to
the site's data directory, the migrated SQLite file database, and a real Celery
worker process on the real Redis broker (a private queue per session)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker):
    """Use the configured SQLite *file* (see tests/testenv.py) as the test database, so the
    worker process sees what the tests write; migrate it once."""
    from django.core.management import call_command

    with django_db_blocker.unblock():
        call_command("migrate", verbosity=0)


@pytest.fixture(scope="session")
def site_index(tiny_fine_engine, engine_config):
    """The site's data directory (RETRIEVAL_DATA_DIR) holding the tiny model, attention head
    and fine index, as `train` and `index` would have left them."""
    from django.conf import settings

    from search.engine.layout import active_build

    data_dir = Path(settings.RETRIEVAL.data_dir)
    shutil.copytree(engine_config.model_dir, data_dir / "models", dirs_exist_ok=True)
    fine_root = tiny_fine_engine.index.path.parent.parent
    if (data_dir / "index").exists():
        shutil.rmtree(data_dir / "index")
    shutil.copytree(fine_root, data_dir / "index", symlinks=True)
    return active_build(data_dir / "index")


def start_worker(queue: str, log_name: str, **extra_env) -> subprocess.Popen:
    """A real `celery -A workers worker --pool=solo` process on the test database and ``queue``;
    returns once it answers a ping."""
    from workers.celery import app

    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=2)
    except Exception as exc:
        raise RuntimeError(f"no broker at {app.conf.broker_url} ({exc}); scripts/bootstrap.sh starts "
                           "a local Redis when redis-server is installed") from exc
    ARTIFACTS.mkdir(exist_ok=True)
    name = f"tests-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    env = dict(os.environ, OMP_NUM_THREADS="1", RETRIEVAL_DEVICE="cpu", PYTHONUNBUFFERED="1",
               CELERY_TASK_DEFAULT_QUEUE=queue, **extra_env)
    log = (ARTIFACTS / log_name).open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool=solo", "--concurrency=1",
         "-Q", queue, "-n", name, "--loglevel=INFO", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Celery worker exited with {process.returncode}; see {ARTIFACTS / log_name}")
        if app.control.ping(destination=[name], timeout=1.0):
            return process
    process.kill()
    raise RuntimeError(f"the Celery worker did not answer within 90 s; see {ARTIFACTS / log_name}")


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM to the process group a ``start_new_session`` process leads (a worker's or
    gunicorn's children included), SIGKILL after 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        process.wait()
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="session")
def celery_worker_process(site_index, django_db_setup):
    """The session's worker, on the session's private queue. Its watchdog checks once, at start:
    the tests that build rows for the watchdog call it themselves, and a periodic check from
    this worker could take their rows first."""
    process = start_worker(os.environ["CELERY_TASK_DEFAULT_QUEUE"], "celery-worker.log",
                           WATCHDOG_PERIOD_S="86400")
    yield process
    stop_process(process)


def wait_for(predicate, timeout=120.0, interval=0.3, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def image_server():
    """A local web server: a photo, a text file, a redirect to the photo, a redirect loop, and a
    redirect to a file:// address."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.conftest import corel_image

    photo = corel_image(450).read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            routes = {"/photo.jpg": (200, "image/jpeg", photo), "/notes.txt": (200, "text/plain", b"hello"),
                      "/gone.jpg": (404, "text/plain", b"no")}
            if self.path in ("/redirect", "/loop", "/to-file"):
                target = {"/redirect": "/photo.jpg", "/loop": "/loop", "/to-file": "file:///etc/passwd"}[self.path]
                self.send_response(302)
                self.send_header("Location", target)
                self.end_headers()
                return
            code, kind, body = routes.get(self.path, (404, "text/plain", b"no"))
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def scratch_build(site_index, django_db_setup):
    """A build of the site's collection of the test's own (a rebuild reusing everything), for
    tests that add images: afterwards the session's build is active again and the ledger of added
    images gone, so the other tests index and search the 40 images they expect."""
    from django.conf import settings

    from search.engine.index import activate_build
    from search.engine.layout import active_build
    from search.maintenance import run_maintenance
    from search.models import MaintenanceRun, Status

    index_root = Path(settings.RETRIEVAL.data_dir) / "index"
    before = active_build(index_root)
    assert run_maintenance(MaintenanceRun.objects.create(kind=MaintenanceRun.REINDEX).pk) == Status.DONE
    try:
        yield active_build(index_root)
    finally:
        activate_build(index_root, before)
        (index_root / "added.json").unlink(missing_ok=True)
