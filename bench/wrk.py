"""Running wrk and reading its results (from the JSON line bench/lua/*.lua print when done)."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import cpu

LUA = Path(__file__).parent / "lua"
WRK = "wrk"


@dataclass
class WrkRun:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    socket_errors: int  # connect + read + write + timeout
    status_errors: int  # wrk's "Non-2xx or 3xx responses" (status >= 400)
    socket_detail: dict[str, int]
    login: dict[str, Any] | None = None  # statuses and token-pool use (login.lua only)
    paced: dict[str, Any] | None = None  # the offered rate and how late sends were (paced only)
    first_failure: str = ""
    load_before: float = 0.0  # the 1-minute load average when the run started
    other_cpu_s: float = 0.0  # CPU-seconds other processes used during the run (bench/cpu.py)
    steal_s: float = 0.0
    # CPU-seconds per service process (pid: s): shows how evenly the workers shared the load.
    service_cpu_s: dict[int, float] = field(default_factory=dict)
    # The busiest worker's share of the workers' CPU: 1/WORKERS when the kernel spread wrk's
    # connections evenly, near 1.0 when one worker accepted (nearly) all of them.
    busiest_worker_share: float | None = None
    # CPU-seconds of the instance under test (its master and workers) and of the bench's
    # Postgres: what a request costs, next to what it takes.
    server_cpu_s: float | None = None
    postgres_cpu_s: float | None = None
    output: str = field(default="", repr=False)

    @property
    def ok(self) -> int:
        """Requests answered as expected: for login, 200s; otherwise wrk's count less errors."""
        if self.login is not None:
            return int(self.login["statuses"].get("200", 0))
        return max(0, self.requests - self.status_errors)

    def cpu_us_per_request(self, seconds: float | None) -> float | None:
        """CPU-seconds spread over the requests answered as expected, in µs each."""
        return None if seconds is None or not self.ok else round(seconds / self.ok * 1e6, 1)

    @property
    def errors(self) -> int:
        """Socket errors plus error responses; for login also anything but 200 (3xx included)."""
        errors = self.socket_errors + self.status_errors
        if self.login is not None:
            others = sum(
                count for status, count in self.login["statuses"].items() if status != "200"
            )
            errors = self.socket_errors + max(self.status_errors, others)
            errors += self.login["exhausted"]
        return errors

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("output")
        data["errors"] = self.errors
        data["cpu_us_per_request"] = self.cpu_us_per_request(self.server_cpu_s)
        data["postgres_cpu_us_per_request"] = self.cpu_us_per_request(self.postgres_cpu_s)
        return data


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


async def run_wrk(
    url: str,
    *,
    threads: int,
    connections: int,
    duration: float,
    headers: dict[str, str] | None = None,
    script: str = "report.lua",
    script_args: list[str] | None = None,
    processes: set[int] | None = None,
    groups: set[int] | None = None,
    server: int | None = None,
) -> WrkRun:
    """One wrk run; `processes` holds its pid while it runs, for cleanup on interruption;
    `groups` are the process groups whose CPU is the bench's own (the service instances);
    `server` is the one under test (its gunicorn master's pid, which leads its group)."""
    command = [
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--latency",
        "-s",
        str(LUA / script),
    ]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    command.append(url)
    if script_args:
        command += ["--", *script_args]
    load_before = load_average()
    cpu_before = cpu.snapshot(groups or set())
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    if processes is not None:
        processes.add(process.pid)
    try:
        raw, _ = await asyncio.wait_for(process.communicate(), timeout=duration + 60)
    finally:
        if process.returncode is None:  # interrupted: no wrk outlives the bench
            process.kill()
            await process.wait()
        if processes is not None:
            processes.discard(process.pid)
    cpu_after = cpu.snapshot(groups or set())
    others, steal = cpu.others_seconds(cpu_before, cpu_after)
    output = raw.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {' '.join(command)}\n{output}")
    run = parse(output, load_before)
    run.other_cpu_s, run.steal_s = round(others, 2), round(steal, 2)
    run.service_cpu_s = cpu.service_seconds(cpu_before, cpu_after)
    run.postgres_cpu_s = round(cpu.postgres_seconds(cpu_before, cpu_after), 2)
    if server is not None:
        run.server_cpu_s = round(cpu.group_seconds(cpu_before, cpu_after, server), 2)
    workers = [
        used
        for pid, used in run.service_cpu_s.items()
        if pid not in (groups or set())
        and (server is None or cpu_after.group_of.get(pid) == server)
    ]
    if len(workers) > 1 and sum(workers) > 0.5:
        run.busiest_worker_share = round(max(workers) / sum(workers), 2)
    return run


def parse(output: str, load_before: float = 0.0) -> WrkRun:
    match = re.search(r"^BENCH_RESULT (\{.*\})$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no BENCH_RESULT line in wrk's output:\n{output}")
    result = json.loads(match[1])
    login = re.search(r"^BENCH_LOGIN (\{.*\})$", output, re.MULTILINE)
    paced = re.search(r"^BENCH_PACED (\{.*\})$", output, re.MULTILINE)
    failure = re.search(r"^BENCH_FIRST_FAILURE (.*)$", output, re.MULTILINE)
    duration_s = result["duration_us"] / 1e6
    socket_detail = {name: result[name] for name in ("connect", "read", "write", "timeout")}
    return WrkRun(
        requests=result["requests"],
        duration_s=duration_s,
        rps=result["requests"] / duration_s if duration_s else 0.0,
        p50_ms=result["p50_us"] / 1000,
        p90_ms=result["p90_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        max_ms=result["max_us"] / 1000,
        mean_ms=result["mean_us"] / 1000,
        socket_errors=sum(socket_detail.values()),
        status_errors=result["status"],
        socket_detail=socket_detail,
        login=json.loads(login[1]) if login else None,
        paced=json.loads(paced[1]) if paced else None,
        first_failure=failure[1] if failure else "",
        load_before=load_before,
        output=output,
    )
