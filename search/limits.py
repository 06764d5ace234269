"""What one client may ask of the site: searches per minute, and what happens when the disk is full."""
from __future__ import annotations

import errno
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from .models import SearchJob


def client_ip(request) -> str | None:
    """The client's address: the first X-Forwarded-For hop behind a trusted proxy, else the socket's."""
    if settings.BEHIND_TLS_PROXY and request.META.get("HTTP_X_FORWARDED_FOR"):
        return request.META["HTTP_X_FORWARDED_FOR"].split(",")[0].strip() or None
    return request.META.get("REMOTE_ADDR") or None


def rate_limited(request) -> str | None:
    """Why this client may not start another search now (None: it may). Counted from the search
    rows of the last minute with its user, or else its address, so it holds across web processes
    and for scripts that keep no cookie; staff are not limited."""
    limit = settings.SEARCHES_PER_MINUTE
    user = request.user
    if limit <= 0 or (user.is_authenticated and user.is_staff):
        return None
    recent = SearchJob.objects.filter(created__gte=timezone.now() - timedelta(seconds=60))
    if user.is_authenticated:
        recent = recent.filter(owner=user)
    else:
        address = client_ip(request)
        if address is None:
            return None
        recent = recent.filter(client_ip=address)
    if recent.count() >= limit:
        return f"Too many searches: at most {limit} a minute from one client. Try again in a minute."
    return None


class DiskFull(Exception):
    """The upload could not be stored: no space (or quota) left on the server."""


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
