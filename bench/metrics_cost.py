"""`metrics_cost`: what Prometheus metrics cost a session check answered from memory.

Instance A runs without METRICS_PORT; instance M, on the same database, with it, scraped every
second meanwhile (more often than a Prometheus would). The same wrk run of `GET /api/user` goes
to each in turn, ROUNDS times, in the order A M M A A M ..., so that the machine's drift within
the hour falls on both alike; each side's CPU per request is the median of its runs (rps alone
is too noisy on a shared machine). Target: on at most 1.05x off. Both sides keep the per-request
tallies (they are always there); the difference is the flush, the files and the scrapes.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import TYPE_CHECKING, Any

import aiohttp

from bench.console import log
from bench.instances import REAPER, Service, free_port
from bench.wrk import run_wrk

if TYPE_CHECKING:
    from bench.run import Bench

ROUNDS = 4
SCRAPE_EVERY = 1.0


async def metrics_cost(
    bench: Bench, a: Service, env: dict[str, str], headers: dict[str, str]
) -> dict[str, Any]:
    settings = bench.settings
    m = Service("m", {**env, "METRICS_PORT": str(free_port())}, settings, bench.scratch)
    try:
        await m.start(bench.client)
        costs: dict[str, list[float]] = {"off": [], "on": []}
        sides = [(a, "off"), (m, "on")]
        scrapes = {"answered": 0, "failed": 0}
        scraper = asyncio.create_task(_scrape_forever(bench, m, scrapes))
        for service, _ in sides:  # a warm-up each
            await _run(bench, service, headers, settings.warmup)
        for round_number in range(ROUNDS):
            for service, side in sides:
                cost = await _run(bench, service, headers, settings.duration)
                costs[side].append(cost)
                log(f"metrics_cost {round_number + 1}/{ROUNDS}, metrics {side}: {cost:,.1f} µs")
            sides.reverse()
        scraper.cancel()
        await asyncio.gather(scraper, return_exceptions=True)
        scraped = scrapes["answered"] > 0 and scrapes["failed"] == 0
    finally:
        exit_code = await m.stop()
    off, on = statistics.median(costs["off"]), statistics.median(costs["on"])
    return {
        "off_cpu_us_per_request": round(off, 1),
        "on_cpu_us_per_request": round(on, 1),
        "ratio": round(on / off, 3),
        "runs_off": [round(cost, 1) for cost in costs["off"]],
        "runs_on": [round(cost, 1) for cost in costs["on"]],
        "scraped": scraped,
        "scrapes": scrapes,
        "exit_code": exit_code,
        "log": str(m.log_path),
    }


async def _scrape_forever(bench: Bench, m: Service, counts: dict[str, int]) -> None:
    url = f"http://127.0.0.1:{m.env['METRICS_PORT']}/metrics"
    while True:
        try:
            async with bench.client.get(url) as scrape:
                text = await scrape.text()
            ok = scrape.status == 200 and "session_service_sessions_created_total" in text
        except aiohttp.ClientError:
            ok = False
        counts["answered" if ok else "failed"] += 1
        await asyncio.sleep(SCRAPE_EVERY)


async def _run(bench: Bench, service: Service, headers: dict[str, str], seconds: float) -> float:
    settings = bench.settings
    run = await run_wrk(
        f"{service.base}/api/user",
        threads=settings.threads,
        connections=settings.connections,
        duration=seconds,
        headers=headers,
        processes=REAPER.pids,
        groups=REAPER.groups,
        server=service.group,
    )
    if run.errors:
        raise RuntimeError(f"metrics_cost: {run.errors} errors on {service.name}")
    cost = run.cpu_us_per_request(run.server_cpu_s)
    if cost is None:
        raise RuntimeError("metrics_cost: no CPU measured")
    return cost
