# One image: the Svelte build and the Python service. Base images are arguments so a build can
# use local copies; the defaults are the official slim images.
ARG NODE_BASE=node:20-bookworm-slim
ARG PYTHON_BASE=python:3.11-slim-bookworm

FROM ${NODE_BASE} AS frontend
WORKDIR /app/frontend
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY frontend/ ./
RUN npm run build

FROM ${PYTHON_BASE} AS python
WORKDIR /app
RUN python -m venv /opt/venv
COPY pyproject.toml alembic.ini ./
COPY service/ service/
COPY migrations/ migrations/
# Editable, so the service finds its migrations and the frontend build beside it in /app.
RUN /opt/venv/bin/pip install --no-cache-dir -e .

FROM ${PYTHON_BASE}
RUN useradd --system --home-dir /app --shell /usr/sbin/nologin app
COPY --from=python /opt/venv /opt/venv
COPY --from=python /app /app
COPY --from=frontend /app/frontend/build /app/frontend/build
WORKDIR /app
USER app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz', timeout=2)"
CMD ["python", "-m", "service", "serve"]
