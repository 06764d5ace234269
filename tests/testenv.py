"""Loaded as a plugin (``-p tests.testenv`` in pytest.ini) before pytest-django
reads the settings, so everything the code under test writes goes to a
throw-away data directory, never to the developer's ``var/``."""
import os
import shutil
import tempfile

_DATA_DIR = tempfile.mkdtemp(prefix="retrieval-tests-")
os.environ["RETRIEVAL_DATA_DIR"] = _DATA_DIR


def pytest_unconfigure(config):
    shutil.rmtree(_DATA_DIR, ignore_errors=True)
