"""Request-size limits enforced before the body is read.

Django spools file uploads to a temporary file and the forms check sizes only after the whole
body has arrived, so without this a 512 MiB post was written to disk before being refused. The
declared Content-Length is checked here, first; Django never reads past it, and a body sent
without one (chunked) reaches the views as empty."""
from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import render


def body_limit(path: str) -> int:
    """Staff adding images (the staff pages, the collection API) may send several at once, or an
    archive; everyone else one photo and a few fields."""
    if path.startswith(("/staff/", "/api/collection/")):
        return settings.STAFF_REQUEST_MAX_BYTES
    return settings.REQUEST_MAX_BYTES


class RequestSizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method in ("POST", "PUT", "PATCH"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return refuse(request, 400, "The request's Content-Length is not a number.")
            limit = body_limit(request.path)
            if length > limit:
                return refuse(request, 413, f"The upload is {length / 2**20:.1f} MB; the limit is "
                                            f"{limit / 2**20:.1f} MB. Send a smaller image.")
        return self.get_response(request)


def wants_json(request) -> bool:
    """A script's request (the API, or a client asking for JSON) is answered in JSON, not HTML."""
    return request.path.startswith("/api/") or request.headers.get("accept", "").startswith("application/json")


def refuse(request, status: int, message: str):
    if wants_json(request):
        response = JsonResponse({"errors": {"image": [message]}}, status=status)
    else:
        response = render(request, "refused.html", {"message": message}, status=status)
    # a client still sending can tell where the answer ends without waiting for the connection to close
    response["Content-Length"] = str(len(response.content))
    return response
