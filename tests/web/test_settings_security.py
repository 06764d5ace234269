"""Production-safe settings: DEBUG off unless asked for, no known secret key, error pages in the
site's style that show nothing of the server, security headers, and `check --deploy` clean
apart from what the TLS proxy provides."""
import os
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.django_db


def run_django(code: str, data_dir, **env) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python with Django set up from these settings and ``env`` (the
    settings module reads the environment once, at start)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    environment.update(RETRIEVAL_DATA_DIR=str(data_dir), DATABASE_URL=f"sqlite:///{data_dir}/db.sqlite3",
                       DJANGO_SETTINGS_MODULE="retrieval_site.settings", **env)
    script = "import django\ndjango.setup()\nfrom django.conf import settings\n" + code
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_debug_is_off_and_a_secret_key_is_made_once_when_none_is_given(tmp_path):
    first = run_django("print(settings.DEBUG, settings.SECRET_KEY)", tmp_path)
    assert first.returncode == 0, first.stderr
    debug, key = first.stdout.split()
    assert debug == "False" and len(key) >= 50
    key_file = tmp_path / "secret_key"
    assert key_file.read_text().strip() == key and oct(key_file.stat().st_mode & 0o777) == "0o600"
    again = run_django("print(settings.SECRET_KEY)", tmp_path)
    assert again.stdout.strip() == key  # the same key next start (sessions survive restarts)
    other = run_django("print(settings.SECRET_KEY)", tmp_path / "elsewhere")
    assert other.stdout.strip() != key


@pytest.mark.parametrize("key", ["change-me-in-production", "dev-only-insecure-key-change-me", "short-key"])
def test_a_published_or_short_secret_key_is_refused_unless_debugging(tmp_path, key):
    refused = run_django("print('started')", tmp_path, DJANGO_SECRET_KEY=key)
    assert refused.returncode != 0 and "started" not in refused.stdout
    assert "DJANGO_SECRET_KEY is a published or short key" in refused.stderr
    debugging = run_django("print('started')", tmp_path, DJANGO_SECRET_KEY=key, DJANGO_DEBUG="true")
    assert debugging.returncode == 0 and "started" in debugging.stdout


def test_check_deploy_reports_only_what_the_tls_proxy_provides(tmp_path):
    plain = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "ERROR"], cwd=REPO,
                           env={k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
                           | {"RETRIEVAL_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/db"},
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    warnings = set(__import__("re").findall(r"\(security\.(W\d+)\)", plain.stdout + plain.stderr))
    # HSTS, HTTPS redirect, secure session and CSRF cookies: all about TLS, which the proxy terminates
    assert warnings == {"W004", "W008", "W012", "W016"}, plain.stdout + plain.stderr
    behind_proxy = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"], cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
        | {"RETRIEVAL_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/db",
           "DJANGO_BEHIND_TLS_PROXY": "true", "DJANGO_HSTS_SECONDS": "31536000",
           "DJANGO_HSTS_PRELOAD": "true"},
        capture_output=True, text=True, timeout=120)
    assert behind_proxy.returncode == 0 and "System check identified no issues" in behind_proxy.stdout, \
        behind_proxy.stdout + behind_proxy.stderr


def test_error_pages_show_nothing_of_the_server_and_responses_carry_security_headers(client, rf):
    from django.conf import settings
    from django.views.defaults import server_error

    assert settings.DEBUG is False
    missing = client.get("/no/such/page")
    body = missing.content.decode()
    assert missing.status_code == 404 and 'id="not-found"' in body
    # no list of the site's URL patterns, no traceback, no settings
    assert "URLconf" not in body and "uuid:key" not in body and "Traceback" not in body and "SECRET" not in body
    assert client.get("/static/../../etc/passwd").status_code == 404
    assert client.get("/static/%2e%2e/%2e%2e/etc/passwd").status_code == 404
    error = server_error(rf.get("/"))
    assert error.status_code == 500 and b'id="server-error"' in error.content
    home = client.get("/")
    assert home["X-Content-Type-Options"] == "nosniff" and home["X-Frame-Options"] == "DENY"
    assert home["Referrer-Policy"] == "same-origin" and home["Cross-Origin-Opener-Policy"] == "same-origin"


def test_a_worker_with_a_misspelt_engine_setting_stops_at_its_start_saying_which():
    """A real Celery worker: it would otherwise fail each search or training it took."""
    from .conftest import ARTIFACTS, start_worker

    with pytest.raises(RuntimeError, match="the Celery worker exited with 1"):
        start_worker("refused-settings", "celery-refused-settings.log", RETRIEVAL_TRAIN_AUGMENT="trivia",
                     RETRIEVAL_COARSE_BACKEND="hnsw")
    log = (ARTIFACTS / "celery-refused-settings.log").read_text()
    assert "the worker's settings cannot work" in log
    assert "RETRIEVAL_TRAIN_AUGMENT='trivia' takes one of basic, trivial" in log
    assert "RETRIEVAL_COARSE_BACKEND='hnsw' takes one of auto, balltree, faiss" in log


def test_a_worker_with_a_variable_that_names_no_setting_runs_and_logs_the_likely_one():
    """A real Celery worker given a misspelt variable name: it is ignored, so the worker starts
    (answers a ping) and logs which name was meant, as Django's check W001 says for the site."""
    from .conftest import ARTIFACTS, start_worker, stop_process

    worker = start_worker("unknown-variable", "celery-unknown-variable.log", RETRIEVAL_EPOCS="12")
    try:
        assert worker.poll() is None
    finally:
        stop_process(worker)
    log = (ARTIFACTS / "celery-unknown-variable.log").read_text()
    assert "RETRIEVAL_EPOCS is not a setting (did you mean RETRIEVAL_EPOCHS?): it is ignored" in log
