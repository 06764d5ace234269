#!/usr/bin/env bash
# Build the project's image (image-retrieval:latest) on a machine where no image registry answers:
# a Debian bookworm base made with debootstrap and imported into Docker, then the Dockerfile on
# top, its pip reading this machine's package indexes (its pip configuration and CA bundle copied
# into docker/pip/ for the build; the local file indexes under /opt served over loopback).
# Where python:3.11-slim can be pulled, plain `docker build -t image-retrieval .` does the same.
# Needs a running Docker engine (dockerd) and root for debootstrap.
#   bash scripts/build_image.sh [TAG]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="${1:-image-retrieval:latest}"
BASE="${BASE_IMAGE:-}"
if [ -z "$BASE" ]; then
  if docker pull -q python:3.11-slim >/dev/null 2>&1; then
    BASE=python:3.11-slim
  else
    BASE=retrieval-base:bookworm
    if ! docker image inspect "$BASE" >/dev/null 2>&1; then
      rootfs="$(mktemp -d)"
      echo "build_image: making $BASE with debootstrap (a few minutes)" >&2
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libglib2.0-0 \
        bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
      tar -C "$rootfs" -c . | docker import -c 'ENV LANG=C.UTF-8' - "$BASE" >/dev/null
      rm -rf "$rootfs"
    fi
  fi
fi

PIP_DIR="$ROOT/docker/pip"
cleanup() { rm -f "$PIP_DIR/ca.crt" "$PIP_DIR/pip.conf" "$PIP_DIR/constraints.txt"; [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null || true; }
trap cleanup EXIT
cert="${PIP_CERT:-$(pip config get global.cert 2>/dev/null || echo /etc/ssl/certs/ca-certificates.crt)}"
[ -f "$cert" ] && cp "$cert" "$PIP_DIR/ca.crt"
{
  echo "[global]"
  [ -f "$PIP_DIR/ca.crt" ] && echo "cert = /etc/build-pip/ca.crt"
  constraint="$(pip config get global.constraint 2>/dev/null || true)"
  if [ -n "$constraint" ] && [ -f "$constraint" ]; then
    cp "$constraint" "$PIP_DIR/constraints.txt"; echo "constraint = /etc/build-pip/constraints.txt"
  fi
  # the machine's local file indexes (pip config's file:// extra-index-url), served over loopback
  indexes=""
  for url in $(pip config get global.extra-index-url 2>/dev/null || true); do
    case "$url" in file:///opt/*) indexes="$indexes ${url#file:///opt/}";; esac
  done
  find_links="$(pip config get global.find-links 2>/dev/null || true)"
  if [ -n "$indexes" ] || [ "${find_links#/opt/}" != "$find_links" ]; then
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    python3 -m http.server --bind 127.0.0.1 --directory /opt "$port" >/dev/null 2>&1 &
    SERVER_PID=$!
    echo -n "extra-index-url ="
    for path in $indexes; do echo -n " http://127.0.0.1:$port/$path"; done
    echo
    case "$find_links" in /opt/*) echo "find-links = http://127.0.0.1:$port/${find_links#/opt/}/";; esac
    echo "trusted-host = 127.0.0.1"
  fi
} > "$PIP_DIR/pip.conf"
echo "build_image: building $TAG on $BASE" >&2
docker build --network host --build-arg BASE_IMAGE="$BASE" -t "$TAG" "$ROOT"
echo "build_image: $TAG built ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.1f GB", $1/1e9}'))"
