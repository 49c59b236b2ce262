"""CPU time from /proc: each service instance's, the bench's Postgres's, and everyone else's.

The machine is shared: a test suite running meanwhile takes cores from the service, wrk and
Postgres alike. Each run reports the CPU-seconds the whole machine spent busy minus those of
the service instances, the bench's Postgres, the bench and its children (wrk, the token
minters), and per instance (a gunicorn master and its workers) and for Postgres the
CPU-seconds they used, from which the bench derives CPU per request.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
# The Postgres server the bench uses (its postmaster's pid, set by the bench); other Postgres
# servers on the machine (other jobs' test servers) are other processes.
POSTMASTER: int | None = None
# The bench's database on that server (set by the bench): the backends of other databases
# (another job's tests on the same server) are other processes too.
DATABASE: str | None = None
# A client backend's title: "postgres: [cluster: ]user database host(port)|[local] state".
_BACKEND = re.compile(r"^postgres: (?:\S+: )?\S+ (\S+) (?:\S+\(\d+\)|\[local\])")


@dataclass(frozen=True)
class Snapshot:
    busy: int  # jiffies, every core
    steal: int
    ours: int
    service: dict[int, int] = field(default_factory=dict)  # pid: jiffies, the groups' processes
    group_of: dict[int, int] = field(default_factory=dict)  # pid: its process group
    # pid: jiffies of the bench's Postgres (the postmaster, its background workers, the
    # backends of the bench's database), each process's own time only: the postmaster reaps
    # every backend, other databases' too, so its children's time is not the bench's.
    postgres: dict[int, int] = field(default_factory=dict)


def _used(rest: list[str], *, children: bool = True) -> int:
    # utime + stime, and the children's that were reaped (wrk, exited workers).
    return sum(int(value) for value in rest[11 : 15 if children else 13])


def _another_database(pid: int) -> bool:
    """Whether a Postgres process is a client backend of a database other than the bench's."""
    try:
        title = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[0].decode()
    except (OSError, UnicodeDecodeError):
        return False
    match = _BACKEND.match(title)
    return match is not None and DATABASE is not None and match[1] != DATABASE


def snapshot(groups: set[int]) -> Snapshot:
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = fields[:8]
    ours = 0
    postgres: dict[int, int] = {}
    service: dict[int, int] = {}
    group_of: dict[int, int] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        pid, parent, group = int(entry.name), int(rest[1]), int(rest[2])
        if POSTMASTER is not None and POSTMASTER in (pid, parent):
            if pid != POSTMASTER and _another_database(pid):
                continue
            postgres[pid] = _used(rest, children=False)
            ours += postgres[pid]
        elif pid == me or group in groups:
            ours += _used(rest)
            if group in groups:
                service[pid] = _used(rest)
                group_of[pid] = group
    # Interrupt time belongs to no process (much of it is the loopback traffic of the bench
    # itself), so it counts on neither side.
    return Snapshot(user + nice + system, steal, ours, service, group_of, postgres)


def parent_of(pid: int) -> int | None:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def service_seconds(before: Snapshot, after: Snapshot) -> dict[int, float]:
    """CPU-seconds each service process (gunicorn masters and workers) used in between."""
    return {
        pid: round((used - before.service.get(pid, 0)) / TICK, 2)
        for pid, used in sorted(after.service.items())
    }


def group_seconds(before: Snapshot, after: Snapshot, group: int) -> float:
    """CPU-seconds one instance (the process group of its gunicorn master) used in between."""
    used = sum(
        jiffies - before.service.get(pid, 0)
        for pid, jiffies in after.service.items()
        if after.group_of.get(pid) == group
    )
    # A worker that exited meanwhile took its time with it, unless the master reaped it (then
    # its time is in the master's children's fields): count what it had before.
    gone = sum(
        jiffies
        for pid, jiffies in before.service.items()
        if before.group_of.get(pid) == group and pid not in after.service
    )
    return max(0, used - gone) / TICK


def postgres_seconds(before: Snapshot, after: Snapshot) -> float:
    """CPU-seconds the bench's Postgres used in between (a backend that ended meanwhile takes
    its share with it)."""
    used = sum(jiffies - before.postgres.get(pid, 0) for pid, jiffies in after.postgres.items())
    return max(0, used) / TICK


def others_seconds(before: Snapshot, after: Snapshot) -> tuple[float, float]:
    """CPU-seconds used by other processes, and stolen by the hypervisor, between two points."""
    others = (after.busy - before.busy) - (after.ours - before.ours)
    return max(0.0, others / TICK), (after.steal - before.steal) / TICK
