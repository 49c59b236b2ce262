"""How soon a revoked session is refused elsewhere: on a second instance (`revocation`), and on
every instance of a fleet (`fleet_revocation`), for a plain-SQL DELETE and for a logout
through the API."""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg

from bench.browser import SESSION_COOKIE, expect, sign_in
from bench.console import log
from bench.instances import Service
from bench.issuer import Issuer

if TYPE_CHECKING:
    from bench.run import Bench, Settings

# A fleet trial revokes at a random moment this many ms after its polling began: more than a
# worker's freshness bound (40 ms), so the revocation falls anywhere between two passes.
LEAD_MS = 50


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


async def poll_until_refused(
    client: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    t0: float,
    *,
    interval: float,
    give_up_after: float,
) -> tuple[float | None, int]:
    """Seconds from t0 to the first 401 from `url` (None if none within `give_up_after`), and
    how many polls."""
    next_at = time.perf_counter()
    polls = 0
    while time.perf_counter() - t0 < give_up_after:
        async with client.get(url, headers=headers) as response:
            await response.read()
            status = response.status
        polls += 1
        if status == 401:
            return time.perf_counter() - t0, polls
        if status != 200:
            raise RuntimeError(f"{url} answered {status} while polling")
        next_at += interval
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            next_at = time.perf_counter()
    return None, polls


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
            return await poll_until_refused(
                on_b,
                f"{b.base}/api/user",
                headers,
                t0,
                interval=settings.poll_interval,
                give_up_after=settings.revocation_timeout,
            )

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
                "p50_ms": rounded(percentile(latencies, 50)),
                "p99_ms": rounded(percentile(latencies, 99)),
                "max_ms": rounded(max(latencies) if latencies else None),
                "polls_per_trial": round(polls_total / max(1, done), 2),
                "b_round_trip_p50_ms": rounded(percentile([t * 1000 for t in round_trips], 50)),
            }
            results[variant] = entry
            log(f"revocation ({variant}): {entry}")
    return results


async def fleet_revocation(
    issuer: Issuer,
    pool: asyncpg.Pool,
    instances: list[Service],
    *,
    trials: int,
    interval: float,
    give_up_after: float,
) -> dict[str, Any]:
    """Time from a revocation until every instance of the fleet refuses the session.

    Per trial: sign in on the first instance; open a fresh connection to every instance (so the
    trials sample each instance's workers) and `GET /api/me` over it, so the worker behind it
    holds the session; start polling `GET /api/user` over every one of them; revoke at a
    random moment within the next LEAD_MS (so a revocation falls anywhere between two of a
    worker's passes over the change log, as it would under traffic); poll on until each has
    answered 401. A logout is also checked on the worker that handled it: the very next request
    over the same connection must be refused.
    """
    first = instances[0]
    results: dict[str, Any] = {}
    created = 0

    async def connection_created(*_: Any) -> None:
        nonlocal created
        created += 1

    tracing = aiohttp.TraceConfig()
    tracing.on_connection_create_end.append(connection_created)
    # The browser: one keep-alive connection to the first instance, so its logout and the
    # request after it reach the same worker (checked by counting connections made).
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            trace_configs=[tracing],
        ) as browser,
        pool.acquire() as conn,
    ):
        for variant in ("sql", "logout"):
            everywhere: list[float] = []
            per_instance: list[list[float]] = [[] for _ in instances]
            round_trips: list[float] = []
            logouts: list[float] = []
            after_answers: list[float] = []  # from the logout's answer to the last refusal
            # From the start of the logout's transaction (its audit row's `at`, Postgres's
            # now()): at or before its commit, so never less than the time from the commit.
            after_transactions: list[float] = []
            wall_minus_perf = time.time() - time.perf_counter()
            timeouts = 0
            same_worker = {"refused": 0, "answered": 0, "other_connection": 0}
            done = 0
            for _ in range(trials):
                token = await sign_in(browser, first.base, issuer, "bench-fleet@gmail.com")
                headers = {"Cookie": f"{SESSION_COOKIE}={token}"}
                await expect(browser, f"{first.base}/api/user", headers)  # now held there
                pollers = [
                    aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=1),
                        cookie_jar=aiohttp.DummyCookieJar(),
                    )
                    for _ in instances
                ]
                polls: list[asyncio.Task[tuple[float | None, int]]] = []
                try:
                    session_id = None
                    for poller, instance in zip(pollers, instances, strict=True):
                        started = time.perf_counter()
                        body = await expect(poller, f"{instance.base}/api/me", headers)
                        round_trips.append((time.perf_counter() - started) * 1000)
                        session_id = uuid.UUID(json.loads(body)["session"]["id"])
                    polling_from = time.perf_counter()
                    polls = [
                        asyncio.create_task(
                            poll_until_refused(
                                poller,
                                f"{instance.base}/api/user",
                                headers,
                                polling_from,
                                interval=interval,
                                give_up_after=give_up_after + LEAD_MS / 1000,
                            )
                        )
                        for poller, instance in zip(pollers, instances, strict=True)
                    ]
                    await asyncio.sleep(secrets.randbelow(LEAD_MS) / 1000)
                    before = created
                    if variant == "sql":
                        await conn.execute("DELETE FROM sessions WHERE id = $1", session_id)
                        revoked_at = time.perf_counter()  # committed (autocommit)
                    else:
                        revoked_at = time.perf_counter()  # the logout leaves now
                        async with browser.post(
                            f"{first.base}/api/logout", headers={"Origin": first.base}
                        ) as response:
                            if response.status != 204:
                                raise RuntimeError(f"logout answered {response.status}")
                        answered_at = time.perf_counter()
                        logouts.append((answered_at - revoked_at) * 1000)
                        async with browser.get(f"{first.base}/api/user", headers=headers) as check:
                            await check.read()
                        if created != before:
                            same_worker["other_connection"] += 1
                        elif check.status == 401:
                            same_worker["refused"] += 1
                        else:
                            same_worker["answered"] += 1
                    found = await asyncio.gather(*polls)
                finally:
                    for poll in polls:  # left running only when the trial failed
                        poll.cancel()
                    for poller in pollers:
                        await poller.close()
                done += 1
                latencies = [
                    None if seconds is None else (polling_from + seconds - revoked_at) * 1000
                    for seconds, _ in found
                ]
                for index, latency in enumerate(latencies):
                    if latency is not None:
                        per_instance[index].append(latency)
                if any(latency is None for latency in latencies):
                    timeouts += 1
                    if done == 5 and timeouts == 5:
                        log(f"fleet revocation ({variant}): 5 of 5 trials timed out; stopping")
                        break
                else:
                    everywhere.append(max(latency or 0.0 for latency in latencies))
                    if variant == "logout":
                        after_answers.append(everywhere[-1] - logouts[-1])
                        began = await conn.fetchval(
                            "SELECT extract(epoch FROM at)::float8 FROM auth_events"
                            " WHERE kind = 'logout' AND detail->>'session_id' = $1",
                            str(session_id),
                        )
                        refused = revoked_at + everywhere[-1] / 1000 + wall_minus_perf
                        after_transactions.append((refused - began) * 1000)
            entry: dict[str, Any] = {
                "trials": done,
                "timeouts": timeouts,
                "timeout_ms": give_up_after * 1000,
                "every_instance_p50_ms": rounded(percentile(everywhere, 50)),
                "every_instance_p99_ms": rounded(percentile(everywhere, 99)),
                "every_instance_max_ms": rounded(max(everywhere) if everywhere else None),
                "per_instance_max_ms": [
                    rounded(max(values) if values else None) for values in per_instance
                ],
                "round_trip_p50_ms": rounded(percentile(round_trips, 50)),
            }
            if variant == "logout":
                # The logout's own answer: its commit happened before, so the time to every
                # instance's refusal from the commit is at most this much shorter.
                entry["logout_response_p50_ms"] = rounded(percentile(logouts, 50))
                entry["logout_response_max_ms"] = rounded(max(logouts) if logouts else None)
                # The same times from the logout's answer: the commit came between the sending
                # and the answer, so the time from the commit lies between the two figures.
                entry["every_instance_after_answer_p50_ms"] = rounded(percentile(after_answers, 50))
                entry["every_instance_after_answer_max_ms"] = rounded(
                    max(after_answers) if after_answers else None
                )
                entry["every_instance_after_transaction_max_ms"] = rounded(
                    max(after_transactions) if after_transactions else None
                )
                entry["same_worker_next_request"] = same_worker
            results[variant] = entry
            log(f"fleet revocation ({variant}): {entry}")
    return results
