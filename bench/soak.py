"""`python -m bench.soak`: a soak test, 10 minutes of mixed traffic, watching errors and memory.

1,000 connections (wrk, bench/lua/soak.lua) for 10 minutes against the service as production
runs it (gunicorn, WORKERS=2, session cache on) on a fresh database: per request ~93% session
checks, 3% admin reads, 2% sign-ins and 2% logouts. Every 30 s it samples the RSS of each
worker and of the master, and the requests per second of the interval (the service's access
lines). Passes with no errors and less than 10% RSS growth after the warm-up; writes
bench/results/soak.{md,json,png} and exits 1 when it does not pass. Everything it starts (the
issuer, the database, the instance, wrk) is removed at the end, whatever happens. Not part of
`make test`; the machinery (Service, Database, Issuer, run_wrk) is bench/run.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import multiprocessing
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench import cpu, report, run
from bench.issuer import CLIENT_ID, Issuer
from bench.run import REAPER, Database, Service, expect, log, memory_of, sign_in
from bench.wrk import WrkRun, run_wrk

# Shares of requests; the rest are session checks. Passed to soak.lua, which draws one per request.
SHARES = {"login": 0.02, "logout": 0.02, "admin": 0.03}
KINDS = ("check", "admin", "login", "logout")
CHECKED_USERS = 500  # the sessions checks spread over, one user each
SIGN_IN_USERS = 500  # who the sign-ins (and the sessions logouts end) are, in turn
ADMIN_EMAIL = "soak-admin@gmail.com"
# The sign-ins and logouts come from files, one per WINDOW seconds, made LEAD windows ahead and
# sized from the last measured rate with some MARGIN: a nonce cookie is refused 10 minutes after
# its stamp, so a 10-minute run cannot mint all its pairs beforehand.
WINDOW = 60.0
LEAD = 2
MARGIN = 1.25
# The harness's own sign-ins (the sessions logouts end) in flight at once, beside wrk's
# connections: under the soak's load a sign-in takes about a second.
SIGN_IN_CONCURRENCY = 64
GROWTH_LIMIT = 0.10
END_SAMPLES = 3  # the last samples, averaged, are compared with the first after the warm-up
AFTER_PAUSE = 5.0  # seconds between wrk's end and the last sample, the service idle
# Variables the service reads that bench.run's SERVICE_VARIABLES does not list: none leaks in
# from the caller's environment either.
EXTRA_SERVICE_VARIABLES = (
    *("SESSION_CACHE", "AUDIT_RETENTION_DAYS", "LOGIN_RATE_LIMIT_IPV6_PREFIX"),
    *("DB_ACQUIRE_TIMEOUT", "DB_STATEMENT_TIMEOUT"),
)
SOAK_LINE = re.compile(r"^BENCH_SOAK (\{.*\})$", re.MULTILINE)


@dataclass
class Settings:
    duration: float
    interval: float
    warmup: float
    connections: int
    threads: int
    workers: int
    expected_rps: float
    output: str
    service_dir: Path

    def for_bench(self) -> run.Settings:
        """bench.run's settings, for its Service and Bench (which read `service_dir` only)."""
        return run.Settings(
            duration=self.duration,
            warmup=self.warmup,
            runs=1,
            threads=self.threads,
            connections=self.connections,
            login_connections=self.connections,
            trials=0,
            workers=self.workers,
            big_sessions=0,
            service_dir=self.service_dir,
            output=self.output,
        )


def parse_settings(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds before the baseline sample (default: 10%% of --duration, at most 60)",
    )
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--expected-rps",
        type=float,
        default=2000.0,
        help="the rate the first two windows' sign-ins and logouts are sized for",
    )
    parser.add_argument("--output", default="soak", help="results/NAME.{md,json,png}")
    parser.add_argument("--service-dir", type=Path, default=run.ROOT)
    args = parser.parse_args(argv)
    if args.duration < 2 * args.interval:
        parser.error("--duration must hold at least two --interval")
    return Settings(
        duration=args.duration,
        interval=args.interval,
        warmup=args.warmup if args.warmup is not None else min(60.0, args.duration / 10),
        connections=args.connections,
        threads=args.threads,
        workers=int(os.environ.get("WORKERS", "2")),
        expected_rps=args.expected_rps,
        output=args.output,
        service_dir=args.service_dir.resolve(),
    )


def service_env(database_url: str, certs_url: str, workers: int) -> dict[str, str]:
    """Production's configuration, as bench.run sets it, with the session cache on."""
    ours = (*run.SERVICE_VARIABLES, *EXTRA_SERVICE_VARIABLES)
    env = {name: value for name, value in os.environ.items() if name not in ours}
    env.update({name: os.environ[name] for name in run.PASSED_THROUGH if name in os.environ})
    env.update(
        {
            "HOST": "127.0.0.1",
            "DATABASE_URL": database_url,
            "GOOGLE_CLIENT_ID": CLIENT_ID,
            "GOOGLE_CERTS_URL": certs_url,
            "COOKIE_SECURE": "false",
            "DEV_LOGIN": "0",
            "SESSION_CACHE": "true",
            # All the sign-ins come from 127.0.0.1: far more than a person's budget.
            "LOGIN_RATE_LIMIT": "1000000/minute",
            "LOG_FORMAT": "text",  # the access lines the sampler counts
            "WORKERS": str(workers),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


def write_whole(path: Path, lines: list[str]) -> None:
    """Write, then rename: soak.lua either finds the whole file or none."""
    partial = path.with_suffix(".partial")
    partial.write_text("".join(f"{line}\n" for line in lines))
    partial.replace(path)


# -- the sessions made before the run ----------------------------------------------------------


async def make_sessions(
    client: aiohttp.ClientSession, base: str, issuer: Issuer, pool: asyncpg.Pool, feed: Path
) -> None:
    """The admin's session and CHECKED_USERS users', each through the real sign-in, for
    soak.lua (feed/admin.txt, feed/sessions.txt)."""
    started = time.monotonic()
    tokens = []
    for email in [ADMIN_EMAIL, *(f"soak-user-{i:03d}@gmail.com" for i in range(CHECKED_USERS))]:
        # A sign-in ends the session the browser brings: each person is a browser of their own.
        client.cookie_jar.clear()
        tokens.append(await sign_in(client, base, issuer, email))
    client.cookie_jar.clear()
    await pool.execute("UPDATE users SET admin = true WHERE email = $1", ADMIN_EMAIL)
    write_whole(feed / "admin.txt", tokens[:1])
    write_whole(feed / "sessions.txt", tokens[1:])
    elapsed = time.monotonic() - started
    log(f"signed in {len(tokens)} people ({ADMIN_EMAIL} made admin) in {elapsed:.1f} s")


async def probe(client: aiohttp.ClientSession, base: str, feed: Path) -> None:
    """Each GET soak.lua sends answers 200 once before wrk starts."""
    cookie = run.SESSION_COOKIE
    admin = (feed / "admin.txt").read_text().strip()
    user = (feed / "sessions.txt").read_text().split()[0]
    await expect(client, f"{base}/api/user", {"Cookie": f"{cookie}={user}"})
    await expect(client, f"{base}/api/admin/users?limit=20", {"Cookie": f"{cookie}={admin}"})


# -- the sign-ins and logouts, fed to soak.lua window by window --------------------------------


class Feeder:
    """Writes each window's sign-in pairs (feed/pairs-K.txt) and sessions to log out
    (feed/revoke-K.txt) before the window starts.

    wrk cannot capture a session from a sign-in's answer (see soak.lua), so the sessions that
    logouts end are signed in here, through the real POST /api/login, while the soak runs. Pairs
    only need minting and keep to the schedule; sessions come as fast as the service signs them
    in, which under the soak's load may be later than their window (soak.lua then sends checks).
    """

    def __init__(
        self, bench: run.Bench, client: aiohttp.ClientSession, feed: Path, base: str
    ) -> None:
        self.bench = bench
        self.client = client  # no cookie jar: every sign-in is a browser of its own
        self.feed = feed
        self.base = base
        self.emails = [f"soak-login-{i:03d}@gmail.com" for i in range(SIGN_IN_USERS)]
        self.windows: dict[int, dict[str, Any]] = {}  # what each window got, and when
        self.statuses: Counter[str] = Counter()  # of the harness's sign-ins
        # Sign-ins wait here rather than in the client's connection queue, whose wait would
        # count against the client's timeout: only a sign-in sent can fail.
        self.in_flight = asyncio.Semaphore(SIGN_IN_CONCURRENCY)
        self.started: float | None = None  # the run's start, once it has one

    @staticmethod
    def wanted(rps: float, kind: str) -> int:
        return math.ceil(rps * SHARES[kind] * WINDOW * MARGIN) + 10

    async def write_pairs(self, window: int, rps: float) -> None:
        pairs = await self.mint(window, "pairs", self.wanted(rps, "login"))
        await asyncio.to_thread(write_whole, self.feed / f"pairs-{window}.txt", pairs)
        self.record(window, "pairs", len(pairs), rps)

    async def write_sessions(self, window: int, rps: float) -> None:
        minted = await self.mint(window, "sign-ins", self.wanted(rps, "logout"))
        tokens = [token for token in await asyncio.gather(*map(self.open_session, minted)) if token]
        await asyncio.to_thread(write_whole, self.feed / f"revoke-{window}.txt", tokens)
        self.record(window, "sessions", len(tokens), rps)

    def record(self, window: int, kind: str, count: int, rps: float) -> None:
        entry = self.windows.setdefault(window, {"window": window})
        entry[kind] = count
        entry[f"{kind}_rps_assumed"] = round(rps)
        if self.started is not None:  # negative: ready before the window began
            entry[f"{kind}_late_s"] = round(time.time() - self.started - window * WINDOW, 1)
        log(f"feed: window {window}: {count} {kind} for {rps:,.0f} rps")

    async def mint(self, window: int, name: str, count: int) -> list[str]:
        """`count` "cookie token" pairs, minted now by bench.run's minter processes."""
        path = await self.bench.mint(self.feed / f"{name}-{window}.minted", count, self.emails)
        lines = (await asyncio.to_thread(path.read_text)).splitlines()
        path.unlink()
        return lines

    async def open_session(self, pair: str) -> str | None:
        """Sign in with one pre-minted pair, as soak.lua does; the new session's token."""
        cookie, credential = pair.split(" ", 1)
        headers = {"Origin": self.base, "Cookie": cookie}
        url = f"{self.base}/api/login"
        try:
            async with (
                self.in_flight,
                self.client.post(url, json={"credential": credential}, headers=headers) as response,
            ):
                await response.read()
                self.statuses[str(response.status)] += 1
                morsel = response.cookies.get(run.SESSION_COOKIE)
                return morsel.value if response.status == 200 and morsel else None
        except (aiohttp.ClientError, TimeoutError) as error:
            self.statuses[type(error).__name__] += 1
            return None

    async def before(self, rps: float) -> None:
        """The first LEAD windows, before wrk starts."""
        for window in range(LEAD):
            await self.write_pairs(window, rps)
            await self.write_sessions(window, rps)

    async def during(
        self,
        started: float,
        duration: float,
        peak: Callable[[], float],
        recent: Callable[[], float],
    ) -> None:
        """The later windows: pairs for the peak rate so far (they are cheap), sessions for
        the recent one; each kind LEAD windows ahead of its window, or as soon as it can."""
        self.started = started
        windows = range(LEAD, math.ceil(duration / WINDOW))

        async def each_window(make: Callable[[int, float], Any], rate: Callable[[], float]) -> None:
            for window in windows:
                await sleep_until(started + (window - LEAD) * WINDOW)
                await make(window, rate())

        await asyncio.gather(
            each_window(self.write_pairs, peak), each_window(self.write_sessions, recent)
        )

    def failures(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != "200")


# -- sampling ----------------------------------------------------------------------------------


class ServiceLog:
    """The service's log, read as it grows: access lines counted by request and status, and
    warnings and errors by message (numbers masked, so repeats of one problem add up)."""

    ACCESS = re.compile(rb" service\.access: (\S+) (\S+) (\d{3}) ")
    PROBLEM = re.compile(rb" (WARNING|ERROR|CRITICAL) (\S+) (.{0,120})")
    NUMBER = re.compile(r"\d+")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read_new(self) -> tuple[Counter[str], Counter[str]]:
        with self.path.open("rb") as log_file:
            log_file.seek(self.offset)
            data = log_file.read()
        complete = data.rfind(b"\n") + 1  # a line still being written is read next time
        self.offset += complete
        requests: Counter[str] = Counter()
        problems: Counter[str] = Counter()
        for line in data[:complete].splitlines():
            if access := self.ACCESS.search(line):
                requests[b" ".join(access.groups()).decode(errors="replace")] += 1
            elif problem := self.PROBLEM.search(line):
                text = b" ".join(problem.groups()).decode(errors="replace")
                problems[self.NUMBER.sub("N", text)] += 1
        return requests, problems


def rss_kib(pid: int) -> int | None:
    try:
        return memory_of(pid)["VmRSS"]
    except (OSError, KeyError):  # the process is gone
        return None


class Sampler:
    """Each service process's RSS and the requests answered since the previous sample."""

    def __init__(self, service: Service, pool: asyncpg.Pool) -> None:
        assert service.process is not None
        self.service = service
        self.pool = pool
        self.master = service.process.pid
        self.workers = service.workers()  # as the soak starts; a replaced worker shows
        self.log = ServiceLog(service.log_path)
        self.samples: list[dict[str, Any]] = []
        self.last_at = time.time()

    async def take(self, t: float, phase: str) -> dict[str, Any]:
        requests, problems = await asyncio.to_thread(self.log.read_new)
        now = time.time()
        elapsed, self.last_at = now - self.last_at, now
        workers = self.service.workers()
        memory = {pid: rss_kib(pid) for pid in (self.master, *workers)}
        total = sum(requests.values())
        sample = {
            "t_s": round(t, 1),
            "phase": phase,  # before (after the setup), load, after (wrk done, service idle)
            "rss_kib": {str(pid): kib for pid, kib in memory.items() if kib is not None},
            "workers": workers,
            "requests": total,
            # The setup's requests are no rate: the "before" sample has none.
            "rps": round(total / elapsed, 1) if phase != "before" else None,
            "non_2xx": sum(n for key, n in requests.items() if not key.endswith(("200", "204"))),
            "5xx": sum(n for key, n in requests.items() if key.rsplit(" ", 1)[1][0] == "5"),
            "by_request": dict(sorted(requests.items())),
            "log_problems": dict(problems.most_common()),
            "sessions_rows": await self.pool.fetchval("SELECT count(*) FROM sessions"),
        }
        self.samples.append(sample)
        rss = ", ".join(f"{kib / 1024:.1f}" for kib in sample["rss_kib"].values())
        log(
            f"sample t={t:.0f} s ({phase}): {sample['rps'] or 0:,.0f} rps, non-2xx "
            f"{sample['non_2xx']}, RSS MiB (master, workers) {rss}, "
            f"sessions {sample['sessions_rows']:,}, log problems {dict(problems.most_common(3))}"
        )
        return sample

    async def during(self, started: float, duration: float, interval: float) -> None:
        """One sample every `interval` seconds, and one a second before wrk's end."""
        last = duration - 1
        moments = [k * interval for k in range(1, math.ceil(duration / interval))]
        for t in [*(moment for moment in moments if moment < last), last]:
            await sleep_until(started + t)
            await self.take(t, "load")

    def rates(self, default: float) -> tuple[Callable[[], float], Callable[[], float]]:
        """The highest requests per second under load so far, and the higher of the last two
        samples (a dip in one interval should not starve the next window); `default` before
        the first sample."""

        def measured() -> list[float]:
            rates = [s["rps"] for s in self.samples if s["phase"] == "load" and s["rps"]]
            return rates or [default]

        def peak() -> float:
            return max(measured())

        def recent() -> float:
            return max(measured()[-2:])

        return peak, recent


# -- the soak ----------------------------------------------------------------------------------


async def soak(
    settings: Settings, service: Service, sampler: Sampler, feeder: Feeder, feed: Path
) -> tuple[WrkRun, float]:
    """The wrk run, with the sampler and the feeder alongside; the run and its start (epoch s)."""
    await feeder.before(settings.expected_rps)
    await sampler.take(0.0, "before")
    # Whole seconds, as soak.lua's os.time(): a window starts on the second for both.
    started = float(int(time.time()))
    script_args = [
        *(str(feed), str(settings.threads), service.base, run.SESSION_COOKIE),
        *(f"{WINDOW:g}", f"{started:.0f}"),
        *(str(SHARES[kind]) for kind in ("login", "logout", "admin")),
    ]
    log(
        f"wrk -t{settings.threads} -c{settings.connections} for {settings.duration:g} s: "
        f"samples every {settings.interval:g} s"
    )
    async with asyncio.TaskGroup() as group:
        load = group.create_task(
            run_wrk(
                f"{service.base}/api/user",
                threads=settings.threads,
                connections=settings.connections,
                duration=settings.duration,
                script="soak.lua",
                script_args=script_args,
                processes=REAPER.pids,
                groups=REAPER.groups,
            )
        )
        group.create_task(sampler.during(started, settings.duration, settings.interval))
        peak, recent = sampler.rates(settings.expected_rps)
        feeding = group.create_task(feeder.during(started, settings.duration, peak, recent))
        # Sessions still being signed in when wrk stops are for nobody: stop, so that the last
        # sample sees the service idle.
        load.add_done_callback(lambda _: feeding.cancel())
    await asyncio.sleep(AFTER_PAUSE)
    await sampler.take(time.time() - started, "after")
    return load.result(), started


def traffic(wrk_run: WrkRun) -> dict[str, Any]:
    """What soak.lua counted: requests sent and answered per kind, statuses, failures."""
    match = SOAK_LINE.search(wrk_run.output)
    if match is None:
        raise RuntimeError(f"no BENCH_SOAK line in wrk's output:\n{wrk_run.output}")
    counts: dict[str, Any] = json.loads(match[1])
    sent = counts["sent"]
    counts["shares_sent"] = {
        kind: round(sent.get(kind, 0) / max(1, sum(sent.values())), 4) for kind in KINDS
    }
    return counts


def errors_of(wrk_run: WrkRun, counts: dict[str, Any], feeder: Feeder) -> dict[str, Any]:
    """Socket errors and timeouts; answers that are not the expected one of any request kind
    (5xx, 4xx, a 200 with another body); more answers of a kind than requests of it (a status
    expected for another kind); failed sign-ins of the harness's own."""
    unmatched = {
        kind: counts["answered"].get(kind, 0) - counts["sent"].get(kind, 0)
        for kind in KINDS
        if counts["answered"].get(kind, 0) > counts["sent"].get(kind, 0)
    }
    errors = {
        "socket": wrk_run.socket_errors,
        "socket_detail": wrk_run.socket_detail,
        "unexpected_answers": sum(counts["failures"].values()),
        "unexpected_by_status": counts["failures"],
        "unmatched_kinds": unmatched,
        "harness_sign_ins_failed": feeder.failures(),
    }
    errors["total"] = (
        errors["socket"]
        + errors["unexpected_answers"]
        + sum(unmatched.values())
        + errors["harness_sign_ins_failed"]
    )
    return errors


def memory_growth(samples: list[dict[str, Any]], warmup: float, master: int) -> dict[str, Any]:
    """Each process's RSS: the first sample after the warm-up against the mean of the last."""
    load = [sample for sample in samples if sample["phase"] == "load"]
    after_warmup = [sample for sample in load if sample["t_s"] >= warmup]
    if len(after_warmup) < 2:
        return {"worst_growth": None, "note": "too few samples after the warm-up"}
    baseline, end = after_warmup[0], after_warmup[1:][-END_SAMPLES:]
    processes = {}
    for pid, start_kib in baseline["rss_kib"].items():
        values = [sample["rss_kib"].get(pid) for sample in end]
        if None in values:
            continue  # gone before the end: the worker check reports it
        end_kib = statistics.mean(value for value in values if value is not None)
        processes[pid] = {
            "role": "master" if int(pid) == master else "worker",
            "baseline_kib": start_kib,
            "end_kib": round(end_kib),
            "growth": round(end_kib / start_kib - 1, 4),
        }
    total_start = sum(entry["baseline_kib"] for entry in processes.values())
    total_end = sum(entry["end_kib"] for entry in processes.values())
    worst = max(processes, key=lambda pid: processes[pid]["growth"]) if processes else None
    return {
        "baseline_t_s": baseline["t_s"],
        "end_t_s": [sample["t_s"] for sample in end],
        "processes": processes,
        "total_growth": round(total_end / total_start - 1, 4) if total_start else None,
        "worst_growth": processes[worst]["growth"] if worst else None,
        "worst_pid": worst,
    }


def verdict(errors: int, memory: dict[str, Any], replaced: list[int]) -> dict[str, Any]:
    worst = memory["worst_growth"]
    checks = [
        {
            "check": "no errors (socket errors, timeouts, 5xx, unexpected statuses)",
            "value": errors,
            "limit": "0",
            "met": errors == 0,
        },
        {
            "check": "RSS growth after the warm-up, worst process",
            "value": worst,
            "limit": f"< {GROWTH_LIMIT:.0%}",
            "met": worst is not None and worst < GROWTH_LIMIT,
        },
        {
            # A replaced worker starts small again: its growth would say nothing.
            "check": "no worker replaced during the soak",
            "value": replaced,
            "limit": "none",
            "met": not replaced,
        },
    ]
    return {"passed": all(check["met"] for check in checks), "checks": checks}


async def database_facts(pool: asyncpg.Pool) -> dict[str, Any]:
    """What the soak left: were the checked sessions kept, did the logouts revoke?"""
    return {
        "sessions_rows": await pool.fetchval("SELECT count(*) FROM sessions"),
        "checked_sessions_alive": await pool.fetchval(
            "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id "
            "WHERE u.email LIKE 'soak-user-%' AND s.expires_at > now()"
        ),
        "users": await pool.fetchval("SELECT count(*) FROM users"),
        "auth_events": dict(
            await pool.fetch("SELECT kind, count(*) FROM auth_events GROUP BY kind ORDER BY kind")
        ),
    }


async def soak_main(settings: Settings) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    began = time.time()
    machine = report.machine_info(settings.service_dir)
    async with contextlib.AsyncExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        feed = scratch / "feed"
        feed.mkdir()
        minter = stack.enter_context(
            # Minting (RSA signatures, thousands a minute) runs beside the load on the same
            # cores: at the lowest priority, so that it takes no CPU the service could use.
            ProcessPoolExecutor(
                max_workers=os.cpu_count() or 2,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=os.nice,
                initargs=(19,),
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
        env = service_env(database.url, certs_url, settings.workers)
        service = Service("soak", env, settings.for_bench(), scratch)
        stack.push_async_callback(service.stop)
        await service.start(client)  # applies the migrations first, as production does
        pool = await stack.enter_async_context(
            asyncpg.create_pool(database.url, min_size=1, max_size=2)
        )
        machine["postgres"] = await pool.fetchval("SHOW server_version")
        cpu.POSTMASTER = cpu.parent_of(await pool.fetchval("SELECT pg_backend_pid()"))

        await make_sessions(client, service.base, issuer, pool, feed)
        harness = await stack.enter_async_context(
            aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                # Idle connections are dropped before the server's keep-alive (gunicorn's 2 s)
                # closes them: reusing one the server is closing fails the request in flight.
                connector=aiohttp.TCPConnector(limit=SIGN_IN_CONCURRENCY, keepalive_timeout=1),
                timeout=aiohttp.ClientTimeout(total=60),
            )
        )
        await probe(harness, service.base, feed)
        bench = run.Bench(settings.for_bench(), scratch, issuer, database, client, pool, minter)
        feeder = Feeder(bench, harness, feed, service.base)
        sampler = Sampler(service, pool)
        wrk_run, started = await soak(settings, service, sampler, feeder, feed)

        exit_code = await service.stop()
        ended = started + settings.duration
        windows = {
            "setup": [began, started],
            "soak": [started, ended],
            "after": [ended, time.time()],
        }
        service_log = await asyncio.to_thread(run.log_problems, service.log_path, windows)
        facts = await database_facts(pool)
    counts = traffic(wrk_run)
    errors = errors_of(wrk_run, counts, feeder)
    memory = memory_growth(sampler.samples, settings.warmup, sampler.master)
    seen = {pid for sample in sampler.samples for pid in sample["workers"]}
    replaced = sorted(seen - set(sampler.workers))
    wrk_summary = wrk_run.summary()
    wrk_summary.pop("login")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "verdict": verdict(errors["total"], memory, replaced),
        "settings": {
            "duration_s": settings.duration,
            "interval_s": settings.interval,
            "warmup_s": settings.warmup,
            "connections": settings.connections,
            "threads": settings.threads,
            "workers": settings.workers,
            "shares": {"check": round(1 - sum(SHARES.values()), 4), **SHARES},
            "checked_sessions": CHECKED_USERS,
            "sign_in_users": SIGN_IN_USERS,
            "feed_window_s": WINDOW,
            "harness_sign_ins_in_flight": SIGN_IN_CONCURRENCY,
            "wrk_timeout_s": 2,  # wrk's default: a slower answer counts as a timeout
            "service_dir": str(settings.service_dir),
            "passed_through": {k: os.environ[k] for k in run.PASSED_THROUGH if k in os.environ},
        },
        "errors": errors,
        "traffic": counts,
        "wrk": wrk_summary,
        "harness_sign_ins": dict(feeder.statuses),
        "feed_windows": list(feeder.windows.values()),
        "memory": memory,
        "processes": {"master": sampler.master, "workers": sampler.workers},
        "samples": sampler.samples,
        "database": facts,
        "service": {"exit_code": exit_code, "log": service_log},
        "machine": machine,
        "elapsed_s": round(time.time() - began, 1),
    }


# -- the results -------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _mib(kib: float | None) -> str:
    return "" if kib is None else f"{kib / 1024:.1f}"


def _label(results: dict[str, Any], pid: str) -> str:
    return f"master {pid}" if int(pid) == results["processes"]["master"] else f"worker {pid}"


def as_markdown(results: dict[str, Any]) -> str:
    settings, counts, errors = results["settings"], results["traffic"], results["errors"]
    wrk, memory, facts = results["wrk"], results["memory"], results["database"]
    passed = results["verdict"]["passed"]
    lines = [
        f"# Soak: {'passed' if passed else '**failed**'}",
        "",
        f"{results['date']}, `python -m bench.soak`: wrk `-t{settings['threads']} "
        f"-c{settings['connections']}` (and up to {settings['harness_sign_ins_in_flight']} "
        "sign-ins of the harness's own at once) for "
        f"{settings['duration_s']:g} s of mixed traffic against "
        f"`python -m service serve` (gunicorn, WORKERS={settings['workers']}, session cache on) "
        "on a fresh database; RSS and throughput sampled every "
        f"{settings['interval_s']:g} s. wrk, the service, Postgres and the harness share the "
        f"machine's {results['machine']['cores']} cores, so the rates are modest.",
        "",
        "| check | value | limit | met |",
        "|---|---|---|---|",
    ]
    for check in results["verdict"]["checks"]:
        value = check["value"]
        if check["check"].startswith("RSS"):
            worst = memory.get("worst_pid")
            value = _percent(value) + (f" ({_label(results, worst)})" if worst else "")
        lines.append(
            f"| {check['check']} | {value} | {check['limit']} | "
            f"{'yes' if check['met'] else '**no**'} |"
        )
    sent = counts["sent"]
    lines += [
        "",
        "## Traffic",
        "",
        f"- {wrk['requests']:,} requests in {wrk['duration_s']:.0f} s: **{wrk['rps']:,.0f} rps**; "
        f"latency p50 {wrk['p50_ms']:.1f} ms, p99 {wrk['p99_ms']:.1f} ms, max "
        f"{wrk['max_ms']:.0f} ms (wrk counts an answer slower than "
        f"{settings['wrk_timeout_s']} s as a timeout).",
        "- sent: "
        + ", ".join(
            f"{kind} {sent.get(kind, 0):,} ({counts['shares_sent'][kind]:.1%})" for kind in KINDS
        )
        + "; answered as expected: "
        + ", ".join(f"{kind} {counts['answered'].get(kind, 0):,}" for kind in KINDS)
        + f"; sent as checks for want of a fed sign-in or session: {counts['short']}.",
        f"- statuses (wrk): {dict(sorted(counts['statuses'].items()))}; errors "
        f"**{errors['total']}**: socket {errors['socket_detail']}, unexpected answers "
        f"{errors['unexpected_by_status']}, kinds answered more than sent "
        f"{errors['unmatched_kinds']}, harness sign-ins failed "
        f"{errors['harness_sign_ins_failed']}.",
        f"- the harness's own sign-ins (the sessions logouts end): "
        f"{results['harness_sign_ins']}; feed windows of {settings['feed_window_s']:g} s "
        "(pairs, sessions, and how late the sessions were, s): "
        + "; ".join(
            f"{w['window']}: {w.get('pairs')}, {w.get('sessions')}, {w.get('sessions_late_s', '-')}"
            for w in results["feed_windows"]
        )
        + ".",
        f"- at the end: {facts['sessions_rows']:,} rows in `sessions`; "
        f"{facts['checked_sessions_alive']}/{settings['checked_sessions']} checked sessions "
        f"alive; auth events {facts['auth_events']}.",
        f"- workers' CPU-seconds {wrk['service_cpu_s']} (busiest worker's share "
        f"{wrk['busiest_worker_share']}); other processes' CPU {wrk['other_cpu_s']} s.",
        f"- service log: {results['service']['log']['problems']} warnings/errors "
        f"{results['service']['log']['by_scenario']}; exit status "
        f"{results['service']['exit_code']} after SIGTERM.",
    ]
    lines += [f"  - `{example}`" for example in results["service"]["log"]["examples"]]
    pids = list(results["samples"][0]["rss_kib"]) if results["samples"] else []
    lines += [
        "",
        "## Samples",
        "",
        "RSS in MiB. The baseline is the first sample at or after "
        f"{settings['warmup_s']:g} s of warm-up (t = {memory.get('baseline_t_s')} s); it is "
        f"compared with the mean of t = {memory.get('end_t_s')} s. Requests and rps are the "
        "service's access lines in each interval (the harness's own sign-ins included); in the "
        "`after` interval, requests wrk left in flight when it stopped end as 400 client_closed.",
        "",
        "| t (s) | phase | rps | requests | non-2xx | log problems | "
        + " | ".join(_label(results, pid) for pid in pids)
        + " | sessions rows |",
        "|---:|---|---:|---:|---:|---:|" + "---:|" * len(pids) + "---:|",
    ]
    problems: Counter[str] = Counter()
    for sample in results["samples"]:
        rss = " | ".join(_mib(sample["rss_kib"].get(pid)) for pid in pids)
        rps = "" if sample["rps"] is None else f"{sample['rps']:,.0f}"
        lines.append(
            f"| {sample['t_s']:g} | {sample['phase']} | {rps} | {sample['requests']:,} | "
            f"{sample['non_2xx']} | {sum(sample['log_problems'].values())} | {rss} | "
            f"{sample['sessions_rows']:,} |"
        )
        problems.update(sample["log_problems"])
    if problems:
        lines += ["", "Warnings and errors in the service's log, by message (numbers as N):", ""]
        lines += [f"- {count:,} times: `{text}`" for text, count in problems.most_common(10)]
    lines += ["", "## Memory growth after the warm-up", ""]
    for pid, entry in memory.get("processes", {}).items():
        lines.append(
            f"- {_label(results, pid)}: {_mib(entry['baseline_kib'])} → "
            f"{_mib(entry['end_kib'])} MiB ({_percent(entry['growth'])})"
        )
    lines += [
        f"- all together: {_percent(memory.get('total_growth'))}",
        "",
        "How the traffic is made: bench/soak.py (module docstring and `Feeder`) and "
        "bench/lua/soak.lua.",
        "",
    ]
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = results["samples"]  # memory from before the load (t = 0) to after it
    figure, (memory_axes, rate_axes) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for pid in samples[0]["rss_kib"]:
        points = [(s["t_s"], s["rss_kib"][pid] / 1024) for s in samples if pid in s["rss_kib"]]
        memory_axes.plot(*zip(*points, strict=True), marker="o", label=_label(results, pid))
    baseline = results["memory"].get("baseline_t_s")
    if baseline is not None:
        memory_axes.axvline(baseline, color="grey", linestyle="--", label="baseline (warm-up over)")
    memory_axes.set_ylabel("RSS (MiB)")
    memory_axes.set_ylim(bottom=0)
    memory_axes.legend(loc="lower right", fontsize="small")
    memory_axes.set_title(
        f"Soak {results['date'][:10]}: {results['settings']['connections']} connections, "
        f"{'passed' if results['verdict']['passed'] else 'failed'}"
    )
    load = [s for s in samples if s["phase"] == "load"]
    rate_axes.plot([s["t_s"] for s in load], [s["rps"] for s in load], marker="o")
    rate_axes.set_ylabel("requests/s (interval)")
    rate_axes.set_xlabel("seconds since wrk started")
    rate_axes.set_ylim(bottom=0)
    for axes in (memory_axes, rate_axes):
        axes.axvline(results["settings"]["duration_s"], color="black", linestyle=":")
        axes.grid(alpha=0.3)
    rate_axes.annotate("wrk stops", (results["settings"]["duration_s"], 0), ha="right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write(results: dict[str, Any], directory: Path, name: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    markdown, document, picture = (directory / f"{name}.{ext}" for ext in ("md", "json", "png"))
    document.write_text(json.dumps(results, indent=2) + "\n")
    markdown.write_text(as_markdown(results))
    chart(results, picture)
    return [markdown, document, picture]


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    log(
        f"soak: {settings.connections} connections for {settings.duration:g} s, a sample every "
        f"{settings.interval:g} s, baseline after {settings.warmup:g} s; "
        f"WORKERS={settings.workers}"
    )
    try:
        results = asyncio.run(soak_main(settings))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; the instance, the issuer and the database are gone")
        sys.exit(130)
    finally:
        REAPER.kill_all()
    paths = write(results, run.RESULTS, settings.output)
    log(f"wrote {', '.join(str(path.relative_to(run.ROOT)) for path in paths)}")
    print(paths[0].read_text(), flush=True)
    sys.exit(0 if results["verdict"]["passed"] else 1)


if __name__ == "__main__":
    main()
