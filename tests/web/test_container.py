"""The image itself, built (scripts/build_image.sh: from Debian's packages where no registry
answers) and run: docker-compose.yml's setup, web and worker services as containers of it,
on the host's network (the compose file's Redis and PostgreSQL images cannot be pulled here, so
the host's stand in), not as root, with the collection mounted read-only. Setup trains and
indexes a small collection from nothing, a search through the JSON API is answered by the
containerised worker. Slow: the first build on a machine takes minutes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

from ..conftest import corel_image
from .conftest import ARTIFACTS, REPO, wait_for
from .test_compose import PG_ADMIN, compose_service, free_port, http, multipart, postgres_database  # noqa: F401

IMAGE = "image-retrieval:test"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image():
    if not shutil.which("docker") or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine answers (scripts/test.sh starts dockerd where it is installed)")
    ARTIFACTS.mkdir(exist_ok=True)
    build = subprocess.run(["bash", str(REPO / "scripts" / "build_image.sh"), IMAGE], cwd=REPO,
                           capture_output=True, text=True, timeout=1800)
    (ARTIFACTS / "container-build.log").write_text(build.stdout + build.stderr)
    assert build.returncode == 0, build.stderr[-3000:]
    return IMAGE


def run_container(name, command, env, mounts, detach=False, timeout=900):
    args = ["docker", "run", "--network", "host", "--name", name] + (["-d"] if detach else ["--rm"])
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    for source, target in mounts:
        args += ["-v", f"{source}:{target}"]
    return subprocess.run(args + [IMAGE] + command, capture_output=True, text=True, timeout=timeout)


def test_the_image_runs_the_services_setup_web_and_worker(image, postgres_database, tiny_collection_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)  # the containers' user (uid 10001) writes the volume
    collection = tmp_path / "collection"
    shutil.copytree(tiny_collection_dir, collection, symlinks=False)  # real files: links would point outside
    for path in [collection, *collection.rglob("*")]:  # readable by the containers' user (pytest's are 0700)
        path.chmod(0o755 if path.is_dir() else 0o644)
    queue = f"retrieval-container-{uuid.uuid4().hex[:8]}"
    variables = {"PREPARE_ARGS": "--labels folders", "COLLECTION_LABELS": "folders"}
    mounts = [(data, "/data"), (collection, "/collection:ro")]

    def service(name):
        command, environment = compose_service(name, variables)
        environment = {k: v.replace("@postgres:5432/retrieval", f"@{PG_ADMIN['host']}:{PG_ADMIN['port']}/{postgres_database}")
                       .replace("redis://redis:6379/0", "redis://127.0.0.1:6379/13") for k, v in environment.items()}
        environment.update(CELERY_TASK_DEFAULT_QUEUE=queue, CELERY_MAINTENANCE_QUEUE=queue + "-maintenance",
                           DJANGO_MEDIA_ROOT="/data/media", DJANGO_STATIC_ROOT="/data/static", OMP_NUM_THREADS="1",
                           RETRIEVAL_EPOCHS="1", RETRIEVAL_ATTENTION_EPOCHS="3", RETRIEVAL_BATCH_SIZE="16")
        return command, environment

    names = {role: f"retrieval-test-{role}-{uuid.uuid4().hex[:6]}" for role in ("setup", "web", "worker")}
    try:
        command, env = service("setup")
        setup = run_container(names["setup"], command, env, mounts)
        (ARTIFACTS / "container-setup.log").write_text(setup.stdout + setup.stderr)
        assert setup.returncode == 0, setup.stderr[-3000:]
        assert "ready to search" in setup.stdout and (data / "index" / "active").exists()
        assert (data / "models" / "classifier.pt").stat().st_uid == 10001  # not root

        port = free_port()
        command, env = service("web")
        command = [part.replace("0.0.0.0:8000", f"127.0.0.1:{port}") for part in command]
        web = run_container(names["web"], command, env, mounts, detach=True)
        assert web.returncode == 0, web.stderr
        command, env = service("worker")
        worker = run_container(names["worker"], command, env, mounts, detach=True)
        assert worker.returncode == 0, worker.stderr
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: http(base + "/")[0] == 200, timeout=120, what="gunicorn in its container")

        body, content_type = multipart({"method": "hybrid+attention", "k": "5"}, {"image": corel_image(450)})
        status, _, created = http(base + "/api/searches", body, {"Content-Type": content_type})
        assert status == 201, created

        def finished():
            code, _, payload = http(json.loads(created)["url"])
            job = json.loads(payload) if code == 200 else {}
            return job if job.get("status") in ("done", "failed") else None

        job = wait_for(finished, timeout=240, what="the containerised worker to finish the search")
        assert job["status"] == "done", job
        assert len(job["results"]) == 5 and job["results"][0]["label"] == "dinosaurs"
        assert http(base + job["results"][0]["thumbnail_url"])[0] == 200

        import psycopg2

        with psycopg2.connect(**dict(PG_ADMIN, dbname=postgres_database)) as connection:
            with connection.cursor() as cursor:  # the containers wrote the job to PostgreSQL
                cursor.execute("SELECT status, worker FROM search_searchjob WHERE key = %s", (json.loads(created)["id"],))
                status, worker = cursor.fetchone()
                assert status == "done" and worker
    finally:
        for role, name in names.items():
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
            if logs.returncode == 0:
                (ARTIFACTS / f"container-{role}.log").write_text(logs.stdout + logs.stderr)
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
