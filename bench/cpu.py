"""How much CPU went to processes other than the bench's own during a run (approximately).

The machine is shared: a test suite running meanwhile takes cores from the service, wrk and
Postgres alike. Each run reports the CPU-seconds the whole machine spent busy minus those of
the service instances, Postgres, the bench and its children (wrk, the token minters).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
# The Postgres server the bench uses (its postmaster's pid, set by the bench); other Postgres
# servers on the machine (other jobs' test servers) are other processes.
POSTMASTER: int | None = None


@dataclass(frozen=True)
class Snapshot:
    busy: int  # jiffies, every core
    steal: int
    ours: int
    service: dict[int, int] = field(default_factory=dict)  # pid: jiffies, the groups' processes


def snapshot(groups: set[int]) -> Snapshot:
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = fields[:8]
    ours = 0
    service = {}
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
        if pid == me or group in groups or POSTMASTER in (pid, parent):
            # utime + stime, and the children's that were reaped (wrk, exited workers).
            used = sum(int(value) for value in rest[11:15])
            ours += used
            if group in groups:
                service[pid] = used
    # Interrupt time belongs to no process (much of it is the loopback traffic of the bench
    # itself), so it counts on neither side.
    return Snapshot(user + nice + system, steal, ours, service)


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


def others_seconds(before: Snapshot, after: Snapshot) -> tuple[float, float]:
    """CPU-seconds used by other processes, and stolen by the hypervisor, between two points."""
    others = (after.busy - before.busy) - (after.ours - before.ours)
    return max(0.0, others / TICK), (after.steal - before.steal) / TICK
