#!/usr/bin/env python3
"""Load benchmark for a running site: N searches posted at once to the JSON API, each polled
until done; prints how many became jobs, how many finished, and p50/p95 of the time from post to
done. Measures; asserts nothing. Uses only the standard library.

    python scripts/load_test.py http://127.0.0.1:8000 --posts 50 --image ../shared/datasets/corel1k/images/450.jpg

Run the site with SEARCHES_PER_MINUTE=0 (or above --posts): from one address the per-client
limit would otherwise refuse the rest, which is what it is for.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.cookiejar import CookieJar
from pathlib import Path


def multipart(fields: dict[str, str], name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def one_search(base: str, image: Path, method: str, timeout: float) -> dict:
    """Post, then poll with the same cookie jar (a search is its session's) until done or failed."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    body, content_type = multipart({"method": method, "k": "10"}, image.name, image.read_bytes())
    started = time.perf_counter()
    try:
        with opener.open(urllib.request.Request(base + "/api/searches", data=body,
                                                headers={"Content-Type": content_type}), timeout=60) as response:
            created = json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        return {"posted": False, "error": str(exc)}
    posted_s = time.perf_counter() - started
    deadline = started + timeout
    while time.perf_counter() < deadline:
        with opener.open(created["url"], timeout=30) as response:
            job = json.loads(response.read())
        if job["status"] in ("done", "failed"):
            return {"posted": True, "status": job["status"], "post_s": posted_s,
                    "done_s": time.perf_counter() - started}
        time.sleep(0.25)
    return {"posted": True, "status": "timeout", "post_s": posted_s}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--posts", type=int, default=50)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--method", default="hybrid+attention")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    base = args.url.rstrip("/")
    started = time.perf_counter()
    with ThreadPoolExecutor(args.posts) as pool:
        rows = list(pool.map(lambda _: one_search(base, args.image, args.method, args.timeout), range(args.posts)))
    wall = time.perf_counter() - started
    posted = [r for r in rows if r["posted"]]
    done = [r for r in posted if r["status"] == "done"]
    print(f"{args.posts} searches posted at once: {len(posted)} became jobs, {len(done)} done, "
          f"{sum(r['status'] == 'failed' for r in posted)} failed, {sum(r['status'] == 'timeout' for r in posted)} "
          f"timed out, {args.posts - len(posted)} refused or dropped; all over in {wall:.1f} s")
    if posted:
        post_s = [r["post_s"] for r in posted]
        print(f"post answered: p50 {percentile(post_s, 50):.2f} s, p95 {percentile(post_s, 95):.2f} s")
    if done:
        done_s = [r["done_s"] for r in done]
        print(f"post to done: p50 {percentile(done_s, 50):.1f} s, p95 {percentile(done_s, 95):.1f} s, "
              f"max {max(done_s):.1f} s ({len(done) / wall:.2f} searches/s through the workers)")
    for r in rows:
        if not r["posted"]:
            print("refused or dropped:", r["error"])


if __name__ == "__main__":
    main()
