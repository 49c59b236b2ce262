"""The sign-in scenarios, and what a sign-in costs the service and Postgres.

- `login`: a closed loop of 50 connections, every request a fresh (nonce secret, ID token)
  pair minted beforehand (lua/login.lua), all from one client address;
- `login_paced`: the same requests offered at a fixed total rate (lua/login_paced.lua), for the
  latency a steady crowd sees rather than the queue of a closed loop;
- `login_many_ips`: the closed loop through a trusted proxy, each request from a client address
  of its own (X-Forwarded-For), on an instance of its own (TRUSTED_PROXIES in strict mode
  refuses requests without the header): the service without one hot limiter row.

Each also reports the sessions made, the certs fetches, what Postgres backends waited on, the
WAL bytes and transaction ids per sign-in, and the service's and Postgres's CPU per sign-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from bench import postgres
from bench.console import log
from bench.instances import Service

if TYPE_CHECKING:
    from bench.run import Bench

# Pairs minted per run, over the warm-up's rate times the duration: the warm-up signs most of
# the people in for the first time (the slower path), so the runs go up to twice as fast, and
# a run that runs out of pairs is invalid.
HEADROOM = 4
LOGIN_USERS = 1000  # the sign-ins are made as this many different people, in turn
EMAILS = [f"bench-login-{index:04d}@gmail.com" for index in range(LOGIN_USERS)]
SIGNED_IN = """
SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id
WHERE u.email LIKE 'bench-login-%'
"""
# What each active backend of the bench's database is doing, one row each.
WAITS = r"""
SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU')
       || CASE WHEN wait_event_type = 'Lock'
          THEN ' in ' || left(btrim(regexp_replace(query, '\s+', ' ', 'g')), 40)
          ELSE '' END AS w
FROM pg_stat_activity
WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
"""

# (pairs file) -> (Lua script, its arguments)
Script = Callable[[Path], tuple[str, list[str]]]


async def settled_sessions(bench: Bench) -> int:
    """The sign-ins' sessions, once no more appear: sign-ins still in the service when wrk
    stopped finish on their own (a handler is not cancelled when its client goes)."""
    count = -1
    while True:
        now = await bench.pool.fetchval(SIGNED_IN)
        if now == count:
            return int(count)
        count = now
        await asyncio.sleep(0.5)


async def signin_scenario(
    bench: Bench,
    name: str,
    service: Service,
    *,
    script: Script,
    warmup_pairs: int,
    run_pairs: Callable[[float], int],
    rank: str = "rps",
) -> dict[str, Any]:
    """Mints the pairs, runs the scenario, and adds what its sign-ins cost."""
    settings = bench.settings
    started = time.monotonic()
    warmup_file = await bench.mint(bench.scratch / f"{name}-warmup.txt", warmup_pairs, EMAILS)
    log(f"{name}: minted {warmup_pairs:,} pairs for the warm-up")
    fetches_before = len(bench.issuer.fetches)
    sessions_before = await bench.pool.fetchval(SIGNED_IN)
    counters_before = await postgres.counters(bench.pool)
    waits: Counter[str] = Counter()
    samples = 0
    measured: dict[str, float] = {}

    async def login_files(warm_rps: float) -> list[Path]:
        per_run = run_pairs(warm_rps)
        t0 = time.monotonic()
        files = [
            await bench.mint(bench.scratch / f"{name}-{index}.txt", per_run, EMAILS)
            for index in range(settings.runs)
        ]
        log(
            f"{name}: warm-up {warm_rps:,.0f} rps; minted {per_run:,} pairs per run in "
            f"{time.monotonic() - t0:.1f} s"
        )
        measured["start"] = time.monotonic()
        return files

    # Where Postgres backends spend the measured runs, sampled from pg_stat_activity.
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal samples
        async with bench.pool.acquire() as conn:
            while not stop.is_set():
                if "start" in measured:
                    waits.update(row["w"] for row in await conn.fetch(WAITS))
                    samples += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)

    sampler = asyncio.create_task(sample())
    try:
        result = await bench.scenario(
            name,
            f"{service.base}/api/login",
            connections=settings.login_connections,
            server=service,
            warmup_file=warmup_file,
            login_files=login_files,
            script=script,
            rank=rank,
        )
    finally:
        stop.set()
        await sampler
    ended = time.monotonic()
    sessions_after = await settled_sessions(bench)
    created = sessions_after - sessions_before
    counters_after = await postgres.counters(bench.pool)
    statuses: Counter[str] = Counter()
    for run in result["all_runs"]:
        statuses.update(run["login"]["statuses"])
    median = result["median_run"]
    result.update(
        {
            "cert_fetches_during_scenario": len(bench.issuer.fetches) - fetches_before,
            "cert_fetches_during_measured_runs": bench.issuer.fetches_between(
                measured.get("start", ended), ended
            ),
            "cert_fetches_total_so_far": len(bench.issuer.fetches),
            "sessions_created": created,
            "requests_sent": result["warmup"]["login"]["sent"]
            + sum(run["login"]["sent"] for run in result["all_runs"]),
            # Over the measured runs (wrk's "sent" counts requests still in flight at its stop).
            "requests_sent_measured_runs": sum(run["login"]["sent"] for run in result["all_runs"]),
            "requests_ok": sum(
                run["login"]["statuses"].get("200", 0) for run in result["all_runs"]
            ),
            "statuses_measured_runs": dict(statuses),
            "distinct_users": LOGIN_USERS,
            "seconds_with_minting": round(ended - started, 1),
            "postgres_active_backends_per_sample": round(sum(waits.values()) / samples, 2)
            if samples
            else None,
            "postgres_wait_events": {
                wait: round(count / max(1, sum(waits.values())), 3)
                for wait, count in waits.most_common(8)
            },
            # Over the whole scenario, warm-up included: every sign-in that made a session.
            "per_sign_in": {
                **postgres.per_operation(counters_before, counters_after, created),
                # The median run's CPU over its 200s (µs): the instance's master and workers,
                # and the bench's Postgres.
                "service_cpu_us": median["cpu_us_per_request"],
                "postgres_cpu_us": median["postgres_cpu_us_per_request"],
            },
        }
    )
    log(
        f"{name}: {created:,} sessions created; cert fetches during the scenario: "
        f"{result['cert_fetches_during_scenario']} (total so far {len(bench.issuer.fetches)}); "
        f"per sign-in {result['per_sign_in']}; Postgres waits {result['postgres_wait_events']}"
    )
    return result


def closed_loop_script(bench: Bench, origin: str) -> Script:
    threads = str(bench.settings.threads)
    return lambda file: ("login.lua", [str(file), threads, origin])


async def closed_loop(bench: Bench, service: Service) -> dict[str, Any]:
    """`login`: 50 connections signing in as fast as they are answered, from one address."""
    settings = bench.settings
    return await signin_scenario(
        bench,
        "login",
        service,
        script=closed_loop_script(bench, service.base),
        warmup_pairs=max(4000, int(settings.warmup * 3000)),
        run_pairs=lambda warm_rps: max(3000, math.ceil(warm_rps * settings.duration * HEADROOM)),
    )


async def paced(bench: Bench, service: Service) -> dict[str, Any]:
    """`login_paced`: 50 connections offering `paced_rate` sign-ins a second in all."""
    settings = bench.settings
    rate = settings.paced_rate
    threads = str(settings.threads)

    def pairs(seconds: float) -> int:
        return math.ceil(rate * seconds * 1.25) + 200  # a late thread catches up

    result = await signin_scenario(
        bench,
        "login_paced",
        service,
        script=lambda file: ("login_paced.lua", [str(file), threads, service.base, f"{rate:g}"]),
        warmup_pairs=pairs(settings.warmup),
        run_pairs=lambda _: pairs(settings.duration),
        rank="p99_ms",  # the rate is fixed: the median run is the one of median p99
    )
    result["offered_rps"] = rate
    result["runs_paced"] = [run["paced"] for run in result["all_runs"]]
    return result


async def many_addresses(
    bench: Bench, env: dict[str, str], client: aiohttp.ClientSession
) -> tuple[dict[str, Any], Service]:
    """`login_many_ips`: the closed loop from a new client address per request, through a
    trusted proxy, on an instance of its own (stopped before this returns)."""
    settings = bench.settings
    service = Service(
        "login-many-ips", {**env, "TRUSTED_PROXIES": "127.0.0.1/32"}, settings, bench.scratch
    )
    threads = str(settings.threads)
    first_address: dict[Path, int] = {}

    def script(file: Path) -> tuple[str, list[str]]:
        # Every file starts where the previous one's addresses ended.
        offset = first_address.setdefault(file, 1 + 1_000_000 * len(first_address))
        return "login.lua", [str(file), threads, service.base, str(offset)]

    try:
        await service.start(client)
        result = await signin_scenario(
            bench,
            "login_many_ips",
            service,
            script=script,
            warmup_pairs=max(4000, int(settings.warmup * 3000)),
            run_pairs=lambda warm_rps: max(
                3000, math.ceil(warm_rps * settings.duration * HEADROOM)
            ),
        )
        result["workers"] = len(service.workers())  # each verifies tokens with its own certs
    finally:
        exit_code = await service.stop()
    result.update(client_addresses="one per request: X-Forwarded-For 10.x.y.z", exit_code=exit_code)
    return result, service
