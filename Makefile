# `make run` and `make test` set everything up on a fresh machine (Python 3.11+, nothing else).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# The frontend build is remade when anything it is built from changes.
FRONTEND := frontend/build/.built
FRONTEND_SOURCES := $(shell find frontend \( -name node_modules -o -name build -o -name .svelte-kit \) -prune -o -type f -print)

# make run: the embedded Postgres, demo data and the dev login, over plain http on loopback.
RUN_ENV := DEV_LOGIN=$${DEV_LOGIN:-1} COOKIE_SECURE=$${COOKIE_SECURE:-false}

.PHONY: install run test lint clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

$(FRONTEND): $(FRONTEND_SOURCES)
	cd frontend && npm ci --no-audit --no-fund && npm run build
	touch $@

# The browser tests drive Debian's Chromium (Playwright never downloads a browser here); the
# PgBouncer tests run Debian's pgbouncer in front of the test database; the metrics tests have
# Debian's Prometheus scrape the service.
CHROMIUM := /usr/bin/chromium
PGBOUNCER := /usr/sbin/pgbouncer
PROMETHEUS := /usr/bin/prometheus
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
$(PGBOUNCER):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer
$(PROMETHEUS):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus

install: $(INSTALLED) $(FRONTEND)

run: install
	$(RUN_ENV) $(BIN)/python -m service migrate
	$(RUN_ENV) $(BIN)/python -m service seed-demo
	$(RUN_ENV) $(BIN)/python -m service serve --no-migrate

lint: $(INSTALLED) $(FRONTEND)
	$(BIN)/ruff check service migrations tests
	$(BIN)/ruff format --check service migrations tests
	$(BIN)/mypy
	cd frontend && npm run --silent check

test: lint $(CHROMIUM) $(PGBOUNCER) $(PROMETHEUS)
	cd frontend && npm test --silent
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .data .mypy_cache .ruff_cache .pytest_cache .schemathesis .hypothesis test-artifacts \
		frontend/node_modules frontend/build frontend/.svelte-kit

# make bench: load-tests the production server (gunicorn, WORKERS) with wrk against the machine's
# Postgres (a fresh database, dropped afterwards); writes bench/results/latest.{md,json,png}.
# Never part of `make test`.
.PHONY: bench
WRK := /usr/bin/wrk
BENCH_INSTALLED := $(VENV)/.bench-installed

$(WRK):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk

$(BENCH_INSTALLED): $(INSTALLED) pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

bench: $(BENCH_INSTALLED) $(FRONTEND) $(WRK)
	$(BIN)/python -m bench.run

# make soak: 1,000 connections of mixed traffic for 10 minutes against the production server,
# sampling every worker's memory; writes bench/results/soak.{md,json,png}. Never part of
# `make test`.
.PHONY: soak
soak: $(BENCH_INSTALLED) $(WRK)
	$(BIN)/python -m bench.soak
