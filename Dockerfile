# One image for the web, the workers and setup; docker-compose.yml gives each its command.
# BASE_IMAGE: python:3.11-slim where a registry answers; where none does, a Debian bookworm
# base made from Debian's packages (scripts/build_image.sh builds one and passes it here).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PATH=/opt/venv/bin:$PATH
# OpenCV (headless) needs GLib; the Debian base made by the script has it already
RUN if ! dpkg -s libglib2.0-0 >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends libglib2.0-0 && rm -rf /var/lib/apt/lists/*; fi
WORKDIR /app
# pip settings of the building machine, when scripts/build_image.sh put them there (docker/pip/README.md)
COPY docker/pip/ /etc/build-pip/
COPY requirements.txt .
# TORCH_INDEX_URL: e.g. https://download.pytorch.org/whl/cpu for an image without the CUDA
# libraries, several GB smaller (not reachable where this project is built, so not tried there)
ARG TORCH_INDEX_URL=""
RUN python3 -m venv /opt/venv \
 && if [ -f /etc/build-pip/pip.conf ]; then export PIP_CONFIG_FILE=/etc/build-pip/pip.conf; fi \
 && if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --index-url "$TORCH_INDEX_URL" $(grep -E '^(torch|torchvision)==' requirements.txt); fi \
 && pip install -r requirements.txt \
 && rm -rf /etc/build-pip
COPY . .
# Not root: the app needs to write only /data (the shared volume); the collection is mounted read-only.
RUN rm -f docker/pip/ca.crt docker/pip/pip.conf docker/pip/constraints.txt \
 && useradd --create-home --uid 10001 retrieval && mkdir -p /data && chown retrieval:retrieval /data
USER retrieval
