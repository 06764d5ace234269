from django.shortcuts import render

from .conf import engine_config
from .engine.errors import SearchIndexError
from .engine.index import active_build


def home(request):
    """Until the upload form lands, the home page says which index is serving."""
    config = engine_config()
    try:
        build = active_build(config.index_root)
        status = f"index {build.name} is active"
    except SearchIndexError as exc:
        status = str(exc)
    return render(request, "home.html", {"status": status})
