"""Fetch a query image from an address a visitor gives, as a careful client: http(s) only, never
to a private, loopback or link-local address (checked on the connected socket, so a name that
resolves elsewhere later, or a redirect, cannot reach inside), few redirects, a time limit and
the upload size limit."""
from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.error
import urllib.request
from urllib.parse import urljoin, urlsplit

from django.conf import settings


class FetchError(Exception):
    """Why the address gave no image, in words for the visitor."""


def _check_peer(sock) -> None:
    address = ipaddress.ip_address(sock.getpeername()[0])
    if not address.is_global and not settings.URL_FETCH_ALLOW_PRIVATE:
        sock.close()
        raise FetchError("that address is on a private network; the server fetches public addresses only")


class _HTTPConnection(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        _check_peer(self.sock)


class _HTTPSConnection(http.client.HTTPSConnection):
    def connect(self):
        super().connect()
        _check_peer(self.sock)


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_HTTPSConnection, req, context=self._context)


class _Redirects(urllib.request.HTTPRedirectHandler):
    max_redirections = 3

    def http_error_302(self, req, fp, code, msg, headers):
        target = urljoin(req.full_url, headers.get("location") or headers.get("uri") or "")
        if urlsplit(target).scheme not in ("http", "https"):
            raise FetchError("the address redirects to something that is not a web address")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def fetch_image_bytes(url: str) -> bytes:
    """The body at ``url`` (at most UPLOAD_MAX_BYTES), or a ``FetchError`` saying why not."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise FetchError("give an http:// or https:// address")
    limit = settings.UPLOAD_MAX_BYTES
    opener = urllib.request.build_opener(_HTTPHandler, _HTTPSHandler, _Redirects)
    request = urllib.request.Request(url, headers={"User-Agent": "image-retrieval/1 (query image fetch)",
                                                   "Accept": "image/*"})
    try:
        with opener.open(request, timeout=settings.URL_FETCH_TIMEOUT_S) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise FetchError(f"the image there is {int(declared) / 2**20:.1f} MB; the limit is {limit / 2**20:.1f} MB")
            body = response.read(limit + 1)
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            raise FetchError("the address redirects too many times") from exc
        raise FetchError(f"the server there answered {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, FetchError):
            raise reason
        raise FetchError(f"the address could not be fetched ({reason})") from exc
    if len(body) > limit:
        raise FetchError(f"the image there is over the limit of {limit / 2**20:.1f} MB")
    return body
