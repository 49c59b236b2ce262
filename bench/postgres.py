"""What Postgres wrote for a scenario (WAL bytes, transaction ids) and how fast the disk under
its data directory flushes (pg_test_fsync).

The counters are the server's: on a server shared with other jobs their writes count too, so
each measurement also reports how many transactions other databases ran meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pty
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

# The next transaction id, read without taking one (pg_current_xact_id() would take one).
_COUNTERS = """
SELECT pg_current_wal_lsn()::text AS lsn,
       pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next_xid,
       others.transactions AS other_transactions, others.rows AS other_rows
FROM (SELECT coalesce(sum(xact_commit + xact_rollback), 0)::bigint AS transactions,
             coalesce(sum(tup_inserted + tup_updated + tup_deleted), 0)::bigint AS rows
      FROM pg_stat_database WHERE datname IS DISTINCT FROM current_database()) AS others
"""
_FDATASYNC = re.compile(r"^\s+fdatasync\s+([\d.]+) ops/sec\s+(\d+) usecs/op")


@dataclass(frozen=True)
class Counters:
    wal_bytes: int  # the WAL position, as a byte offset
    next_xid: int
    # What other databases of the server did (their WAL and ids count too): transactions run,
    # read-only ones included, and rows written (none: they took no transaction ids).
    other_transactions: int
    other_rows: int


def _lsn_bytes(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


async def counters(pool: asyncpg.Pool) -> Counters:
    row = await pool.fetchrow(_COUNTERS)
    return Counters(
        _lsn_bytes(row["lsn"]), row["next_xid"], row["other_transactions"], row["other_rows"]
    )


def per_operation(before: Counters, after: Counters, operations: int) -> dict[str, Any]:
    """WAL bytes and transaction ids per operation (a sign-in) between two readings."""
    wal, xids = after.wal_bytes - before.wal_bytes, after.next_xid - before.next_xid
    return {
        "operations": operations,
        "wal_bytes": wal,
        "xids": xids,
        "wal_bytes_per_operation": round(wal / operations, 1) if operations else None,
        "xids_per_operation": round(xids / operations, 3) if operations else None,
        "other_databases_transactions": after.other_transactions - before.other_transactions,
        "other_databases_rows_written": after.other_rows - before.other_rows,
    }


def pg_test_fsync_binary() -> str | None:
    """Debian's pg_test_fsync (the newest installed), or one on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_test_fsync"),
        key=lambda path: int(re.sub(r"\D", "", path.split("/")[4]) or 0),
    )
    return found[-1] if found else shutil.which("pg_test_fsync")


def _directory_beside(data_directory: Path, scratch: Path) -> tuple[Path, bool]:
    """A directory on the data directory's filesystem: the scratch one if it is there, else a
    new one next to the data directory (True: remove it afterwards)."""
    device = data_directory.stat().st_dev
    if scratch.stat().st_dev == device:
        return scratch, False
    return Path(tempfile.mkdtemp(prefix="bench-fsync-", dir=data_directory.parent)), True


def _measure(binary: str, data_directory: Path, scratch: Path, seconds: int) -> dict[str, Any]:
    """pg_test_fsync beside the data directory; what stood in the way, rather than failing the
    bench, when it cannot run there."""
    if not data_directory.is_dir():
        return {"error": f"the data directory {data_directory} is not on this machine"}
    try:
        directory, remove = _directory_beside(data_directory, scratch)
    except OSError as error:
        return {"error": f"no directory beside {data_directory}: {error}"}
    try:
        return {**_fdatasync_rate(binary, directory, seconds), "tested_in": str(directory)}
    except OSError as error:
        return {"error": f"{binary}: {error}"}
    finally:
        if remove:
            shutil.rmtree(directory, ignore_errors=True)


def _fdatasync_rate(binary: str, directory: Path, seconds: int) -> dict[str, Any]:
    """Runs pg_test_fsync until its first fdatasync figure (one 8 kB write per sync), then
    stops it: the rest of its tests would take a minute. Through a pseudo-terminal, since it
    only flushes its output line by line to one."""
    controller, terminal = pty.openpty()
    target = directory / "pg_test_fsync.out"
    try:
        process = subprocess.Popen(  # noqa: S603 - a fixed binary and arguments
            [binary, "-s", str(seconds), "-f", str(target)],
            stdin=subprocess.DEVNULL,
            stdout=terminal,
            stderr=terminal,
        )
    except OSError:
        os.close(controller)
        raise
    finally:
        os.close(terminal)
    output = b""
    deadline = time.monotonic() + 10 * seconds + 30
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the program ended and closed the terminal
                break
            if not chunk:
                break
            output += chunk
            for line in output.decode(errors="replace").splitlines():
                if match := _FDATASYNC.match(line):
                    return {
                        "fdatasync_ops_per_s": float(match[1]),
                        "fdatasync_us_per_op": int(match[2]),
                        "line": line.strip(),
                    }
        return {"error": "no fdatasync line", "output": output.decode(errors="replace")[-500:]}
    finally:
        process.kill()
        process.wait()
        os.close(controller)
        with contextlib.suppress(OSError):
            target.unlink()


async def disk(pool: asyncpg.Pool, scratch: Path, seconds: int = 2) -> dict[str, Any]:
    """pg_test_fsync's fdatasync rate for the disk of the bench Postgres's data directory; what
    stood in the way when there is none."""
    binary = pg_test_fsync_binary()
    if binary is None:
        return {"error": "pg_test_fsync is not installed (Debian: postgresql-NN)"}
    try:
        data_directory = Path(await pool.fetchval("SHOW data_directory"))
    except asyncpg.PostgresError as error:  # not a superuser
        return {"error": f"SHOW data_directory: {error}"}
    result = await asyncio.to_thread(_measure, binary, data_directory, scratch, seconds)
    return {
        **result,
        "binary": binary,
        "seconds_per_test": seconds,
        "data_directory": str(data_directory),
    }
