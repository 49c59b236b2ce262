"""The servers the bench starts (service instances, the floor), each a gunicorn master and its
workers in a process group of its own, and their removal whatever happens to the bench."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from bench.console import log

if TYPE_CHECKING:
    from bench.run import Settings

SERVE = ("-m", "service", "serve")


class Reaper:
    """Process groups and processes to kill if the orderly shutdown never ran."""

    def __init__(self) -> None:
        self.groups: set[int] = set()
        self.pids: set[int] = set()
        atexit.register(self.kill_all)

    def kill_all(self) -> None:
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for group in list(self.groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)


REAPER = Reaper()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def memory_of(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


class Service:
    """`python -m service serve` (or `command`) in a process group of its own: gunicorn's
    master and workers. Ready when `ready_path` answers 200."""

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        settings: Settings,
        logs: Path,
        *,
        command: tuple[str, ...] = SERVE,
        ready_path: str = "/readyz",
    ) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "PORT": str(self.port)}
        self.settings = settings
        self.command = command
        self.ready_path = ready_path
        self.log_path = logs / f"service-{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def group(self) -> int | None:
        """The process group (the master's pid), by which the bench counts its CPU."""
        return self.process.pid if self.process else None

    async def start(self, client: aiohttp.ClientSession) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                *self.command,
                cwd=self.settings.service_dir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        REAPER.groups.add(self.process.pid)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise RuntimeError(f"instance {self.name} exited:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with client.get(f"{self.base}{self.ready_path}") as response:
                    if response.status == 200:
                        log(f"instance {self.name} ready on {self.base} (pid {self.process.pid})")
                        return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"instance {self.name} never became ready:\n{self.log_tail()}")

    def workers(self) -> list[int]:
        return children_of(self.process.pid) if self.process else []

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def stop(self) -> int | None:
        """SIGTERM to the whole group, as an orchestrator would; SIGKILL if it lingers."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=20)
            except TimeoutError:
                log(f"instance {self.name} ignored SIGTERM for 20 s: killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group, if any
        await process.wait()
        REAPER.groups.discard(process.pid)
        return process.returncode
