# One image: the Svelte build and the Python service. Base images are arguments so a build can
# use local copies (tests/test_container.py builds from Debian bookworm debootstrap images); the
# defaults are the official slim images. RUN lines use `python3`, which every base has.
ARG NODE_BASE=node:20-bookworm-slim
ARG PYTHON_BASE=python:3.11-slim-bookworm

# Debian's CA bundle where a base lacks it, for pip and npm over HTTPS (and a proxy's own CA
# added under /usr/local/share/ca-certificates).
FROM ${NODE_BASE} AS frontend
RUN dpkg -s ca-certificates >/dev/null 2>&1 || { apt-get update \
      && apt-get install -y --no-install-recommends ca-certificates \
      && rm -rf /var/lib/apt/lists/*; }
WORKDIR /app/frontend
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY frontend/ ./
RUN npm run build

FROM ${PYTHON_BASE} AS python
RUN dpkg -s ca-certificates >/dev/null 2>&1 || { apt-get update \
      && apt-get install -y --no-install-recommends ca-certificates \
      && rm -rf /var/lib/apt/lists/*; }
# Debian's own python3 needs the python3-venv package for this; the official image has it built in.
RUN python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml alembic.ini ./
COPY service/ service/
COPY migrations/ migrations/
# Editable, so the service finds its migrations and the frontend build beside it in /app
# (service/schema.py ROOT is the package's parent directory).
# With the `otel` extra: traces are then one environment variable away (README).
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -e '.[otel]' \
  && /opt/venv/bin/python -m compileall -q service migrations

FROM ${PYTHON_BASE}
RUN useradd --system --home-dir /app --shell /usr/sbin/nologin app
COPY --from=python /opt/venv /opt/venv
COPY --from=python /app /app
COPY --from=frontend /app/frontend/build /app/frontend/build
WORKDIR /app
USER app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOST=0.0.0.0 PORT=8080
EXPOSE 8080
# `python` here is the venv's. Needs `--format docker` with podman/buildah, whose default OCI
# format drops HEALTHCHECK.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz', timeout=2)"
CMD ["python", "-m", "service", "serve"]
