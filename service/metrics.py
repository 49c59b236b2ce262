"""Prometheus metrics: what each worker counts, how the counts reach a scrape, and its listener.

Counting costs a request a dict increment: each worker keeps plain tallies, and once a second
(and as it stops) moves them into prometheus-client's multiprocess files. Calling the library
per request cost 5-9 us, a tenth of a session check (docs/metrics.md has the measurements).
A worker's files are named by its slot, which the gunicorn master hands out (the lowest one no
live worker holds), not by its pid: a replacement worker goes on counting in the files of the
one it replaces, and the directory holds a set of files per worker alive at once (twice
WORKERS across a reload), however often workers are replaced.

The master binds METRICS_PORT before it forks; every worker serves scrapes on that socket, and
whichever one accepts a scrape answers with every worker's counts, the dead ones' included.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, Histogram, multiprocess, values
from prometheus_client import Counter as PCounter
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from service import stats
from service.auth import VERIFIER
from service.config import CONFIG, ConfigError
from service.db import DATABASE_UNAVAILABLE, POOL
from service.session_cache import FROM_DATABASE, FROM_MEMORY, NO_SESSION, SESSION_CACHE

log = logging.getLogger(__name__)

FLUSH_EVERY = 1.0  # seconds a count may wait in a worker (a SIGKILL loses at most that much)
SCRAPE_REUSE = 1.0  # seconds a scrape's answer serves other scrapes
LIVE_COUNTS_EVERY = 60.0  # seconds between two counts of live sessions and users
# Seconds: from an answer from memory (about 0.1 ms) to a sign-in waiting on Google's certs.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
PREFIX = "session_service_"

# How the service ends sessions. Those ended outside it (an operator's SQL, the CLI) are
# counted by Postgres: session_service_sessions_ended_outside.
END_CAUSES = ("logout", "revoked_by_user", "revoked_by_admin", "replaced", "expired")


@dataclass
class Tallies:
    """Counts since the last flush; everything the hot path touches."""

    requests: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    signins: Counter[tuple[str, str]] = field(default_factory=Counter)
    sessions_created: int = 0
    sessions_ended: Counter[str] = field(default_factory=Counter)


class Metrics:
    """A worker's counts. Always there, so that callers never ask whether metrics are on; only
    with METRICS_PORT do they go anywhere (and cost more than a dict increment)."""

    def __init__(self) -> None:
        self.tallies = Tallies()
        self._buckets = len(DURATION_BUCKETS) + 1

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        status_class = STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]
        key = (route, method if method in METHODS else "other", status_class)
        counts = self.tallies.requests.get(key)
        if counts is None:
            counts = self.tallies.requests[key] = [0] * self._buckets + [0.0]
        counts[bisect_left(DURATION_BUCKETS, seconds)] += 1
        counts[-1] += seconds

    def signin(self, outcome: str, reason: str) -> None:
        self.tallies.signins[outcome, reason] += 1

    def session_created(self) -> None:
        self.tallies.sessions_created += 1

    def sessions_ended(self, cause: str, count: int = 1) -> None:
        if count:
            self.tallies.sessions_ended[cause] += count

    def take(self) -> Tallies:
        taken, self.tallies = self.tallies, Tallies()
        return taken


METRICS = web.AppKey("metrics", Metrics)


@dataclass(frozen=True)
class Listener:
    """The master's METRICS_PORT socket, and the slot of the worker serving on it."""

    sock: socket.socket
    slot: int


LISTENER = web.AppKey("metrics_listener", Listener)


# --- the gunicorn master: no event loop, only these hooks ----------------------------------


class Master:
    """The multiprocess directory, the listening socket and the workers' slots."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.directory = ""
        self.sock: socket.socket | None = None

    def on_starting(self, server: Any) -> None:
        # A directory of this run's own: files left by an earlier run would be counted again.
        try:
            self.directory = tempfile.mkdtemp(prefix="service-metrics-")
        except OSError as error:
            why = f"METRICS_PORT: cannot make a directory for the counts: {error}"
            raise ConfigError(why) from None
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.directory
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            self.sock = socket.create_server((self.host, self.port), family=family, backlog=128)
        except OSError as error:
            shutil.rmtree(self.directory, ignore_errors=True)
            where = f"{self.host}:{self.port}"
            raise ConfigError(f"METRICS_PORT: cannot listen on {where}: {error.strerror}") from None
        self.sock.setblocking(False)
        server.log.info("metrics at http://%s:%d/metrics", self.host, self.port)

    def pre_fork(self, server: Any, worker: Any) -> None:
        taken = {getattr(w, "metrics_slot", None) for w in server.WORKERS.values()}
        worker.metrics_slot = next(slot for slot in range(len(taken) + 1) if slot not in taken)

    def child_exit(self, server: Any, worker: Any) -> None:
        # Its live gauges go; its counters stay, and its successor adds to them.
        multiprocess.mark_process_dead(str(worker.metrics_slot))  # type: ignore[no-untyped-call]

    def on_exit(self, server: Any) -> None:
        if self.sock is not None:
            self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


# --- a worker: the library's metrics, the flush and the scrape handler --------------------


class Exported:
    """The prometheus-client metrics of one worker, written from its tallies."""

    def __init__(self, slot: int) -> None:
        # Files named by slot rather than pid, whatever was imported before.
        values.ValueClass = values.MultiProcessValue(lambda: str(slot))  # type: ignore[no-untyped-call]
        p = PREFIX
        http = ["route", "method", "status_class"]
        self.requests = PCounter(f"{p}http_requests", "Requests answered.", http, registry=None)
        self.duration = Histogram(
            f"{p}http_request_duration_seconds",
            "Time from a request's arrival to its answer.",
            http,
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.signins = PCounter(
            f"{p}signins",
            "Sign-in attempts by outcome and reason.",
            ["outcome", "reason"],
            registry=None,
        )
        self.created = PCounter(f"{p}sessions_created", "Sessions created.", registry=None)
        self.ended = PCounter(f"{p}sessions_ended", "Sessions ended.", ["cause"], registry=None)
        self.checks = PCounter(
            f"{p}session_checks",
            "Session checks by where the answer came from (memory, database) and result.",
            ["source", "result"],
            registry=None,
        )
        self.coherent = Gauge(
            f"{p}session_cache_coherent",
            "1 while this worker's session cache may answer from memory, else 0.",
            multiprocess_mode="liveall",
            registry=None,
        )
        self.pass_seconds = Histogram(
            f"{p}session_cache_pass_seconds",
            "Time a pass over the session change log took: how far behind a cache may be.",
            buckets=PASS_BUCKETS,
            registry=None,
        )
        self.pool_size = Gauge(
            f"{p}db_pool_connections",
            "Postgres connections open.",
            multiprocess_mode="liveall",
            registry=None,
        )
        self.pool_idle = Gauge(
            f"{p}db_pool_idle_connections",
            "Postgres connections idle.",
            multiprocess_mode="liveall",
            registry=None,
        )
        self.pool_waiting = Gauge(
            f"{p}db_pool_waiting_requests",
            "Requests waiting for a Postgres connection.",
            multiprocess_mode="liveall",
            registry=None,
        )
        self.certs_fetches = PCounter(
            f"{p}certs_fetches",
            "Fetches of Google's certs by result.",
            ["result"],
            registry=None,
        )
        self.certs_age = Gauge(
            f"{p}certs_age_seconds",
            "Age of the certs in use (-1: none yet).",
            multiprocess_mode="livemax",
            registry=None,
        )
        self.live_sessions = Gauge(
            f"{p}live_sessions",
            "Live sessions, counted now and then.",
            multiprocess_mode="livemostrecent",
            registry=None,
        )
        self.users = Gauge(
            f"{p}users",
            "Users, counted now and then.",
            multiprocess_mode="livemostrecent",
            registry=None,
        )
        self._ended_outside: Gauge | None = None
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._checks_seen: Counter[tuple[str, str]] = Counter()
        self._fetches_seen: Counter[str] = Counter()
        # Shown at 0 until they happen: a rate over a series that appears late starts wrong.
        for cause in END_CAUSES:
            self.ended.labels(cause)
        self.signins.labels("ok", "ok")
        for source, result in (FROM_MEMORY, FROM_DATABASE, NO_SESSION):
            self.checks.labels(source, result)
        for result in ("ok", "failed"):
            self.certs_fetches.labels(result)

    def set_ended_outside(self, sessions: int) -> None:
        # Made at the first count: a gauge reads 0 until set, which rate() would take for a
        # reset after every restart.
        if self._ended_outside is None:
            self._ended_outside = Gauge(
                f"{PREFIX}sessions_ended_outside",
                "Sessions ended by anyone but the service (plain SQL, the operator CLI), as "
                "counted by Postgres for the whole database; it only grows.",
                multiprocess_mode="livemax",
                registry=None,
            )
        self._ended_outside.set(sessions)

    def write(self, tallies: Tallies) -> None:
        for key, counts in tallies.requests.items():
            requests, duration = self._http(key)
            requests.inc(sum(counts[:-1]))
            # No public call observes many values at once: its buckets are written as
            # observe() writes them (tests/test_metrics.py holds the two equal).
            for bucket, count in zip(duration._buckets, counts, strict=False):
                if count:
                    bucket.inc(count)
            duration._sum.inc(counts[-1])
        for (outcome, reason), count in tallies.signins.items():
            self.signins.labels(outcome, reason).inc(count)
        if tallies.sessions_created:
            self.created.inc(tallies.sessions_created)
        for cause, count in tallies.sessions_ended.items():
            self.ended.labels(cause).inc(count)

    def sample(self, app: web.Application) -> None:
        """Gauges, and the counts other parts keep themselves, read from them."""
        cache = app[SESSION_CACHE]
        self.coherent.set(1 if cache.coherent else 0)
        self._add_new(self.checks, cache.checks, self._checks_seen)
        for seconds in cache.take_pass_durations():
            self.pass_seconds.observe(seconds)
        pool = app[POOL]
        self.pool_size.set(pool.get_size())
        self.pool_idle.set(pool.get_idle_size())
        self.pool_waiting.set(pool.waiting)
        certs = app[VERIFIER].google_certs
        self._add_new(self.certs_fetches, certs.fetches, self._fetches_seen)
        age = certs.age()
        self.certs_age.set(-1 if age is None else age)

    def _http(self, key: tuple[str, str, str]) -> tuple[Any, Any]:
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(*key),
                self.duration.labels(*key),
            )
        return children

    @staticmethod
    def _add_new(metric: Any, totals: Counter[Any], seen: Counter[Any]) -> None:
        for key, total in totals.items():
            if total > seen[key]:
                labels = key if isinstance(key, tuple) else (key,)
                metric.labels(*labels).inc(total - seen[key])
                seen[key] = total


class Scrapes:
    """Answers scrapes: the merge of every worker's files and its text, built in a thread (with
    many workers' files it takes tens of milliseconds, which on the event loop would stall this
    worker's requests), once at a time, and kept for SCRAPE_REUSE seconds for any scrape that
    comes meanwhile. prometheus-client's own aiohttp handler builds it on the event loop."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        self._lock = asyncio.Lock()
        self._built: dict[str, tuple[float, bytes, str]] = {}  # Accept's choice: (when, body, type)

    async def handle(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        async with self._lock:
            built = self._built.get(content_type)
            if built is None or time.monotonic() - built[0] > SCRAPE_REUSE:
                body = await asyncio.to_thread(encoder, self.registry)
                built = self._built[content_type] = (time.monotonic(), body, content_type)
        response = web.Response(body=built[1], headers={"Content-Type": built[2]})
        response.enable_compression()  # when the scraper accepts it, as Prometheus does
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.handle)
        return app


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: with a listener (METRICS_PORT), the flush, the live counts and the scrapes.

    Listed last in `create_app`, so it starts after the parts it reads and stops before them:
    its last flush still sees them.
    """
    listener = app.get(LISTENER)
    if listener is None:
        yield
        return
    try:
        exported = Exported(listener.slot)
    except OSError as error:  # the directory is unwritable or full: serve, without metrics
        log.error("metrics are off in this worker: %s", error)
        yield
        return
    metrics = app[METRICS]

    def flush() -> None:
        exported.write(metrics.take())
        exported.sample(app)

    async def flush_forever() -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            try:
                flush()
            except Exception:  # the counts wait for the next flush
                log.exception("flushing metrics failed")

    async def count_live() -> None:
        live = await stats.live_counts(app[POOL], idle_timeout=app[CONFIG].session_idle_timeout)
        exported.live_sessions.set(live.sessions.value)
        exported.users.set(live.users.value)

    async def count_ended() -> None:
        exported.set_ended_outside(await stats.sessions_ended_outside(app[POOL]))

    async def count_live_forever() -> None:
        while True:
            for what, count in (("live sessions", count_live), ("ended sessions", count_ended)):
                try:
                    await count()
                except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as error:
                    log.warning("counting %s failed, will retry: %s", what, type(error).__name__)
                except Exception:
                    log.exception("counting %s failed, will retry", what)
            await asyncio.sleep(LIVE_COUNTS_EVERY)

    # A scrape that will not finish must not hold up the worker's stop.
    runner = web.AppRunner(Scrapes().app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, listener.sock).start()
    tasks = [asyncio.create_task(flush_forever()), asyncio.create_task(count_live_forever())]
    try:
        yield
    finally:
        await runner.cleanup()  # this worker takes no more scrapes; the master keeps the socket
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            flush()  # the last second's counts
            exported.coherent.set(0)
        except Exception:
            log.exception("flushing metrics failed")
