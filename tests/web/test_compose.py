"""docker-compose.yml's services, run as compose would run them but without a Docker engine
(none runs on these machines): the same commands and environment, read from the file, with the
service host names pointed at this machine's PostgreSQL and Redis and the volumes at temporary
folders. Setup trains and indexes the tiny collection from nothing, gunicorn serves with DEBUG
off, a prefork Celery worker answers a search made through the JSON API, and the job lands in
PostgreSQL. What this cannot check: the image build and the container network."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from http.cookiejar import CookieJar
from pathlib import Path

import pytest

from ..conftest import corel_image
from .conftest import ARTIFACTS, REPO, stop_process, wait_for

COMPOSE = REPO / "docker-compose.yml"
PG_ADMIN = dict(host=os.environ.get("PGHOST", "127.0.0.1"), port=int(os.environ.get("PGPORT", 5432)),
                user=os.environ.get("PGUSER", "postgres"), dbname="postgres")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` / ``$$`` substitution."""
    def substitute(match):
        name, default = match.group(1), match.group(3) or ""
        return variables.get(name) or default
    value = re.sub(r"\$\{(\w+)(:-([^}]*))?\}", substitute, value)
    return value.replace("$$", "$")


def compose_service(name: str, variables: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The service's command (split as compose splits a string) and its environment."""
    import yaml

    service = yaml.safe_load(COMPOSE.read_text())["services"][name]
    environment = {k: interpolate(str(v), variables) for k, v in service.get("environment", {}).items()}
    return shlex.split(interpolate(service["command"], variables)), environment


def on_this_machine(environment: dict[str, str], data_dir: Path, collection: Path, database: str,
                    queue: str) -> dict[str, str]:
    """Compose's host names and volumes, mapped to this machine."""
    mapped = {}
    for key, value in environment.items():
        value = value.replace("@postgres:5432/retrieval", f"@{PG_ADMIN['host']}:{PG_ADMIN['port']}/{database}")
        value = value.replace("redis://redis:6379/0", "redis://127.0.0.1:6379/14")
        if value == "/collection" or value.startswith("/collection/"):
            value = str(collection) + value[len("/collection"):]
        if value == "/data" or value.startswith("/data/"):
            value = str(data_dir) + value[len("/data"):]
        mapped[key] = value
    venv_bin = str(Path(sys.executable).parent)
    # this test's own queue, for the search and the maintenance messages alike (the file names both)
    return {**os.environ, **mapped, "PATH": f"{venv_bin}:{os.environ['PATH']}", "CELERY_TASK_DEFAULT_QUEUE": queue,
            "CELERY_MAINTENANCE_QUEUE": queue, "DJANGO_MEDIA_ROOT": str(data_dir / "media"),
            "DJANGO_STATIC_ROOT": str(data_dir / "static"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            # a short training run: this checks the wiring, not the accuracy
            "RETRIEVAL_EPOCHS": "1", "RETRIEVAL_ATTENTION_EPOCHS": "3", "RETRIEVAL_BATCH_SIZE": "16"}


@pytest.fixture
def postgres_database():
    """A fresh database owned by compose's `retrieval` role on this machine's PostgreSQL."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(**PG_ADMIN, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at {PG_ADMIN['host']}:{PG_ADMIN['port']} ({exc})")
    admin.autocommit = True
    name = f"retrieval_compose_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = 'retrieval'")
        if not cursor.fetchone():
            cursor.execute("CREATE ROLE retrieval LOGIN PASSWORD 'retrieval'")
        cursor.execute(f'CREATE DATABASE "{name}" OWNER retrieval')
    yield name
    with admin.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen:
    log = (ARTIFACTS / log_name).open("w")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    log.close()
    return process


# One cookie jar for every request, as a script using the API keeps its session: a search is
# visible only to the session that made it.
BROWSER = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))


def http(url: str, data: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with BROWSER.open(request, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()
    except OSError:
        return None, "", b""


def multipart(fields: dict[str, str], files: dict[str, Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, path in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
                     f"Content-Type: image/jpeg\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="no docker-compose (Debian package docker-compose)")
def test_compose_file_is_valid_for_docker_compose():
    """docker-compose checks the file against the Compose schema without an engine."""
    result = subprocess.run(["docker-compose", "--profile", "cpu", "--profile", "gpu", "config"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    import yaml

    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == {"setup", "web", "worker", "maintenance", "worker-gpu", "redis", "postgres"}
    gpu = resolved["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    # searches never wait behind a reindex: each kind of work has its own queue and worker
    commands = {name: resolved["services"][name]["command"] for name in ("worker", "maintenance")}
    assert re.search(r'-Q "\$+CELERY_TASK_DEFAULT_QUEUE"', commands["worker"]), commands
    assert re.search(r'-Q "\$+CELERY_MAINTENANCE_QUEUE"', commands["maintenance"]), commands
    environment = resolved["services"]["worker"]["environment"]
    assert (environment["CELERY_TASK_DEFAULT_QUEUE"], environment["CELERY_MAINTENANCE_QUEUE"]) == ("search", "maintenance")
    for name in ("web", "worker", "maintenance", "worker-gpu"):
        depends = resolved["services"][name]["depends_on"]
        assert depends["setup"]["condition"] == "service_completed_successfully"
        assert "retrieval-data:/data:rw" in resolved["services"][name]["volumes"]


@pytest.mark.slow
def test_compose_services_run_the_demo_on_postgres_and_redis(postgres_database, tiny_collection_dir, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    queue = f"retrieval-compose-{uuid.uuid4().hex[:8]}"
    variables = {"PREPARE_ARGS": "--labels folders", "COLLECTION_LABELS": "folders"}

    def service(name):
        command, environment = compose_service(name, variables)
        return command, on_this_machine(environment, data_dir, tiny_collection_dir, postgres_database, queue)

    # setup: migrations on PostgreSQL, training and indexing from nothing; a second run skips both
    command, env = service("setup")
    assert env["DATABASE_URL"].startswith("postgres://") and env["DJANGO_DEBUG"] == "false"
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    (ARTIFACTS / "compose-setup.log").write_text(first.stdout + first.stderr)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "ready to search" in first.stdout
    assert (data_dir / "models" / "classifier.pt").is_file() and (data_dir / "index" / "active").exists()
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "exists (delete it to retrain)" in again.stdout and "is active" in again.stdout

    worker_command, worker_env = service("worker")
    assert worker_env["RETRIEVAL_DEVICE"] == "cpu"
    web_command, web_env = service("web")
    port = free_port()
    web_command = [part.replace("0.0.0.0:8000", f"127.0.0.1:{port}") for part in web_command]
    assert any(f"127.0.0.1:{port}" in part for part in web_command), web_command
    worker = start(worker_command, worker_env, "compose-worker.log")
    web = start(web_command, web_env, "compose-web.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http(base + "/")[0] == 200 or web.poll() is not None, timeout=120, what="gunicorn")
        assert web.poll() is None, (ARTIFACTS / "compose-web.log").read_text()[-3000:]

        # DEBUG is off: the admin's static files come from collectstatic + WhiteNoise
        status, kind, _ = http(base + "/static/admin/css/base.css")
        assert status == 200 and kind.startswith("text/css")
        assert http(base + "/no-such-page")[0] == 404

        body, content_type = multipart({"method": "penultimate+attention", "k": "5"},
                                       {"image": corel_image(450)})  # a dinosaur not in the index
        status, _, created = http(base + "/api/searches", body, {"Content-Type": content_type})
        assert status == 201, created
        job_url = json.loads(created)["url"]

        def finished():
            code, _, payload = http(job_url)
            job = json.loads(payload) if code == 200 else {}
            return job if job.get("status") in ("done", "failed") else None

        job = wait_for(finished, timeout=180, what="the compose worker to finish the search")
        assert job["status"] == "done", job
        assert len(job["results"]) == 5 and job["results"][0]["label"] == "dinosaurs"
        status, kind, image = http(base + job["results"][0]["image_url"])
        assert status == 200 and kind.startswith("image/") and len(image) > 1000

        import psycopg2

        with psycopg2.connect(**dict(PG_ADMIN, dbname=postgres_database)) as connection:
            with connection.cursor() as cursor:
                cursor.execute("SELECT status FROM search_searchjob WHERE key = %s", (json.loads(created)["id"],))
                assert cursor.fetchone() == ("done",)
    finally:
        stop_process(web)
        stop_process(worker)
