# syntax=docker/dockerfile:1
#
# opengrove image: `docker build -t opengrove .`
#   docker run -p 8000:8000 -v opengrove-data:/data opengrove
# Dependencies come only from uv.lock (`uv sync --frozen`: the lockfile is used
# as it is, never re-resolved, and every download is checked against its hashes).
# tests/test_compose.py checks this file against docker-compose.yml and app.config.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: a virtualenv at /app/.venv from the lockfile -------------------
FROM ${PYTHON_IMAGE} AS builder

ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install "uv==${UV_VERSION}"

WORKDIR /app

# Third-party dependencies first (own layer: rebuilt only when the lock changes).
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project

# Then the project itself (the `opengrove` console script, app/, migrations/).
COPY . .
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev

# ---- runtime: no uv, no build tools, non-root ---------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH="/app/.venv/bin:${PATH}" \
    OPENGROVE_DATA_DIR=/data \
    OPENGROVE_HOST=0.0.0.0 \
    OPENGROVE_PORT=8000

RUN groupadd --system --gid 10001 opengrove \
    && useradd --system --uid 10001 --gid opengrove --no-create-home \
       --home-dir /app --shell /usr/sbin/nologin opengrove \
    && mkdir -p /data \
    && chown opengrove:opengrove /data

# Code and venv stay root-owned (read-only for the server); only /data is writable.
COPY --from=builder /app /app
WORKDIR /app

USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

CMD ["opengrove", "serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data"]
