"""The image: the Dockerfile built with rootful podman and run against the machine's Postgres.

It takes minutes and needs root, podman (with runc), debootstrap and a Postgres on
127.0.0.1:5432, so it runs only with CONTAINER_TEST=1, as .ci/run does. Then anything missing
fails the test instead of skipping it.

No image registry is reachable here, so the base images are made locally by
tests/container/base-images.sh (Debian bookworm from debootstrap; the machine's Node copied in)
and passed as the Dockerfile's NODE_BASE and PYTHON_BASE. Every bit of podman state (storage,
runtime state, events) lives under CONTAINER_TEST_DIR (/var/tmp/service-container-test), through
our own CONTAINERS_CONF and CONTAINERS_STORAGE_CONF, and is removed at the end; only the
debootstrap tarball is kept there between runs (see base-images.sh). A lock lets one run at a
time use that directory, and a run cleans up whatever a killed run left.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import with_database

pytestmark = pytest.mark.skipif(
    os.environ.get("CONTAINER_TEST") != "1",
    reason="builds and runs the image with podman (minutes, root): set CONTAINER_TEST=1",
)

ROOT = Path(__file__).parent.parent
BASE_IMAGES = Path(__file__).parent / "container" / "base-images.sh"
DEFAULT_STATE = "/var/tmp/service-container-test"  # noqa: S108 - a fixed place, under a lock
STATE = Path(os.environ.get("CONTAINER_TEST_DIR", DEFAULT_STATE))
RUN = STATE / "run"  # podman's storage and state for this run, removed at the end
CACHE = STATE / "cache"  # the debootstrap root filesystem, kept between runs
ARTIFACTS = ROOT / "test-artifacts" / "container"  # the build log and the containers' logs
POSTGRES = os.environ.get(
    "CONTAINER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
IMAGE = "localhost/service-test/app:latest"
SHUTDOWN_TIMEOUT = 10
STOP_MARGIN = 5  # seconds beyond SHUTDOWN_TIMEOUT a stop may take
EMAIL = "ada@example.com"


def execute(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool found on PATH (podman, umount, bash), without a shell."""
    executable = shutil.which(args[0])
    assert executable, f"{args[0]} is not installed"
    return subprocess.run([executable, *args[1:]], text=True, check=False, **options)  # noqa: S603


def log(message: str) -> None:
    print(f"[container test] {message}", flush=True)


# -- podman with our own state -------------------------------------------------------------------


@dataclass
class Podman:
    env: dict[str, str]
    containers: dict[str, str] = field(default_factory=dict)  # id: name, for its log file

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        done = execute("podman", *args, env=self.env, capture_output=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return done.stdout.strip()

    async def arun(self, *args: str, seconds: float = 60) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            "podman",
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), seconds)
        assert process.returncode is not None
        return process.returncode, output.decode().strip()

    def start(self, name: str, port: int, database_url: str, **env: str) -> str:
        """`podman run -d` the image on the host's network, with the dev login on loopback."""
        settings = {
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "DEV_LOGIN": "1",
            "COOKIE_SECURE": "false",
            "WORKERS": "2",
            "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
            **env,
        }
        flags = [f"--env={key}={value}" for key, value in settings.items()]
        container = self.run("run", "-d", "--network=host", "--stop-timeout=30", *flags, IMAGE)
        self.containers[container] = name
        return container

    def logs(self, container: str) -> str:
        """The container's output (the service logs to stderr)."""
        done = execute("podman", "logs", container, env=self.env, capture_output=True, timeout=60)
        return done.stdout + done.stderr

    def remove(self, container: str) -> None:
        """Remove a container, keeping its logs in test-artifacts/container/."""
        if container in self.containers:
            name = self.containers.pop(container)
            (ARTIFACTS / f"{name}.log").write_text(self.logs(container))
        self.run("rm", "--force", "--time=0", container, check=False, timeout=60)


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory`, deepest first."""
    prefix = str(directory.resolve())
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def remove_state(podman: Podman | None) -> None:
    """Remove the run's containers, unmount what podman (or debootstrap) left, delete RUN."""
    if not RUN.exists():
        return
    if podman is not None and (RUN / "storage").exists():
        podman.run("rm", "--all", "--force", "--time=0", check=False, timeout=120)
    for point in mounts_under(RUN):
        if execute("umount", point, capture_output=True).returncode:
            execute("umount", "--lazy", point, capture_output=True)
    shutil.rmtree(RUN)


def podman_env() -> dict[str, str]:
    for directory in ("storage", "runroot", "tmp", "networks", "work"):
        (RUN / directory).mkdir(parents=True, exist_ok=True)
    (RUN / "containers.conf").write_text(
        f"""[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{RUN / "tmp"}"

[network]
network_config_dir = "{RUN / "networks"}"
"""
    )
    (RUN / "storage.conf").write_text(
        f"""[storage]
driver = "overlay"
graphroot = "{RUN / "storage"}"
runroot = "{RUN / "runroot"}"
"""
    )
    return {
        **os.environ,
        "CONTAINERS_CONF": str(RUN / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(RUN / "storage.conf"),
        "TMPDIR": str(RUN / "tmp"),
    }


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    if os.geteuid() != 0:
        pytest.fail("the container test runs rootful podman: run it as root")
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: "
            "apt-get update && apt-get install -y podman buildah debootstrap runc"
        )
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "lock", "w") as lock:
        log(f"waiting for the lock on {STATE}")
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run on this machine finishes first
        shutil.rmtree(ARTIFACTS, ignore_errors=True)
        ARTIFACTS.mkdir(parents=True)
        stale = Podman(podman_env()) if (RUN / "storage.conf").exists() else None
        remove_state(stale)  # what a killed run left
        podman = Podman(podman_env())
        try:
            podman.run("info", "--format={{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}")
            yield podman
        finally:
            for container in list(podman.containers):
                podman.remove(container)
            remove_state(podman)
            log(f"removed {RUN}")


# -- the image --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    started = time.monotonic()
    done = execute(
        "bash",
        str(BASE_IMAGES),
        str(CACHE),
        str(RUN / "work"),
        env=podman.env,
        capture_output=True,
        timeout=900,
    )
    assert done.returncode == 0, f"base images failed:\n{done.stdout}{done.stderr}"
    for line in done.stdout.splitlines():
        log(line)
    based = time.monotonic()
    log(f"base images in {based - started:.0f} s")

    build_log = ARTIFACTS / "build.log"
    with open(build_log, "w") as output:
        built = execute(
            "podman",
            "build",
            "--format=docker",  # OCI, the default, drops HEALTHCHECK
            "--pull=never",
            "--network=host",
            "--build-arg=NODE_BASE=localhost/service-test/node-base",
            "--build-arg=PYTHON_BASE=localhost/service-test/python-base",
            f"--tag={IMAGE}",
            str(ROOT),
            env=podman.env,
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=1800,
        )
    if built.returncode != 0:
        tail = "\n".join(build_log.read_text().splitlines()[-60:])
        pytest.fail(f"podman build failed ({built.returncode}):\n{tail}")
    size = int(podman.run("image", "inspect", "--format={{.Size}}", IMAGE))
    log(f"image built in {time.monotonic() - based:.0f} s; {IMAGE} is {size / 1e6:.0f} MB")
    return IMAGE


# -- the database and a running container --------------------------------------------------------


async def _execute(statement: str) -> None:
    conn = await asyncpg.connect(POSTGRES, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def container_database_url() -> Iterator[str]:
    """A fresh database on the machine's Postgres, dropped at the end."""
    name = f"service_container_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_execute(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as error:
        pytest.fail(f"the container test needs the machine's Postgres at {POSTGRES}: {error}")
    yield with_database(POSTGRES, name)
    asyncio.run(_execute(f'DROP DATABASE "{name}" WITH (FORCE)'))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_ready(podman: Podman, container: str, base_url: str) -> None:
    async with aiohttp.ClientSession() as client:
        for _ in range(300):  # 60 s
            try:
                async with client.get(f"{base_url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                _, state = await podman.arun("inspect", "--format={{.State.Status}}", container)
                if state != "running":
                    raise AssertionError(
                        f"the container is {state}:\n{podman.logs(container)}"
                    ) from None
            await asyncio.sleep(0.2)
    raise AssertionError(f"never ready:\n{podman.logs(container)}")


@dataclass
class Running:
    id: str
    base_url: str


@pytest.fixture(scope="module")
def container(podman: Podman, image: str, container_database_url: str) -> Iterator[Running]:
    port = free_port()
    running = Running(
        podman.start("service", port, container_database_url), f"http://127.0.0.1:{port}"
    )
    yield running
    podman.remove(running.id)


async def sign_in(base_url: str, email: str = EMAIL) -> str:
    """The dev login as the frontend does it; returns the session cookie."""
    origin = {"Origin": base_url}
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address
    async with aiohttp.ClientSession(base_url=base_url, cookie_jar=jar) as client:
        async with client.post("/api/login/nonce", headers=origin) as response:
            assert response.status == 200, await response.text()
            nonce = (await response.json())["nonce"]
        body = {"email": email, "nonce": nonce}
        async with client.post("/api/dev-login/token", json=body, headers=origin) as response:
            assert response.status == 200, await response.text()
            credential = (await response.json())["credential"]
        assert any(cookie.key.startswith("login_nonce_") for cookie in jar), "no nonce cookie"
        body = {"credential": credential}
        async with client.post("/api/login", json=body, headers=origin) as response:
            assert response.status == 200, await response.text()
        async with client.get("/api/user") as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["email"] == email
        session = [cookie.value for cookie in jar if cookie.key == "session_id"]
    assert session, "no session cookie"
    return session[0]


# -- the tests ----------------------------------------------------------------------------------


async def test_the_container_becomes_ready_and_runs_as_non_root(
    podman: Podman, container: Running
) -> None:
    await wait_ready(podman, container.id, container.base_url)

    code, uid = await podman.arun("exec", container.id, "id", "-u")
    assert (code, uid.isdigit()) == (0, True), uid
    assert int(uid) != 0
    code, status = await podman.arun("exec", container.id, "cat", "/proc/1/status")
    assert code == 0, status
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert "0" not in uids, status  # real, effective, saved and filesystem uid of PID 1
    code, command = await podman.arun("exec", container.id, "cat", "/proc/1/cmdline")
    assert "service" in command, command
    log(f"PID 1 runs as uid {uids[0]}: {command.replace(chr(0), ' ')}")


async def test_a_dev_login_sign_in_through_the_container(
    podman: Podman, container: Running
) -> None:
    await wait_ready(podman, container.id, container.base_url)

    await sign_in(container.base_url)


@pytest.mark.parametrize("path", ["/", "/customer"])
async def test_the_built_frontend_is_served(podman: Podman, container: Running, path: str) -> None:
    await wait_ready(podman, container.id, container.base_url)

    async with (
        aiohttp.ClientSession() as client,
        client.get(container.base_url + path) as response,
    ):
        html = await response.text()

    assert response.status == 200
    assert response.content_type == "text/html"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert "<!doctype html>" in html.lower()
    assert "/_app/immutable/" in html  # the SvelteKit build, not a placeholder


async def test_the_image_health_check_passes(podman: Podman, container: Running) -> None:
    await wait_ready(podman, container.id, container.base_url)
    code, healthcheck = await podman.arun(
        "inspect", "--format={{json .Config.Healthcheck}}", container.id
    )
    assert code == 0 and "/healthz" in healthcheck, healthcheck  # kept by --format docker

    code, output = await podman.arun("healthcheck", "run", container.id)

    assert code == 0, output
    assert "unhealthy" not in output, output
    code, status = await podman.arun("inspect", "--format={{.State.Health.Status}}", container.id)
    assert (code, status) == (0, "healthy"), status


async def get_user(port: int, cookie: str) -> str:
    """One GET /api/user on a new connection (see `send`)."""
    return await send(port, cookie, "GET /api/user")


async def send(port: int, cookie: str, request_line: str) -> str:
    """One request on a new connection, in plain HTTP/1.1 so that no client library retries
    behind our back: its status, "refused" when the connection could not be made (the
    listener is closed), or what went wrong after it was made."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
    except (ConnectionRefusedError, ConnectionResetError):  # reset: mid-handshake at close
        return "refused"
    except TimeoutError:
        return "connect timed out"
    try:
        request = (
            f"{request_line} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Origin: http://127.0.0.1:{port}\r\nContent-Length: 0\r\n"
            f"Cookie: session_id={cookie}\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), SHUTDOWN_TIMEOUT + STOP_MARGIN)
    except (OSError, TimeoutError) as error:
        return f"lost after connecting: {error!r}"
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 "):
        return f"lost after connecting: {response[:80]!r}"
    status = lines[0].split()[1]
    length = next(
        (int(line[15:]) for line in lines if line.lower().startswith("content-length:")), None
    )
    if length is not None and len(body) != length:
        return f"{status} cut short: {len(body)} of {length} bytes"
    return status


async def wait_for_a_lock_waiter(conn: asyncpg.Connection) -> None:
    for _ in range(1000):
        if await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the slow request never waited for the lock")


async def test_sigterm_under_load_loses_no_request_and_exits_0(
    podman: Podman, image: str, container_database_url: str
) -> None:
    """SIGTERM while 16 clients send requests back to back: every request either gets its 200
    or fails to connect (the listener is closed); none is reset or answered with an error once
    its connection was made. A slow request in flight when the signal comes (a logout waiting
    for a row lock, released a second after the signal) completes. The container exits 0
    within SHUTDOWN_TIMEOUT (and a margin)."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    container = podman.start("sigterm", port, container_database_url)
    await wait_ready(podman, container, base_url)
    cookie = await sign_in(base_url, "load@example.com")
    slow_cookie = await sign_in(base_url, "slow@example.com")
    holder = await asyncpg.connect(container_database_url)
    lock = holder.transaction()
    await lock.start()
    await holder.execute(
        "SELECT 1 FROM sessions WHERE user_id = (SELECT id FROM users WHERE email = $1) FOR UPDATE",
        "slow@example.com",
    )
    slow = asyncio.create_task(send(port, slow_cookie, "POST /api/logout"))
    await wait_for_a_lock_waiter(holder)

    outcomes: Counter[str] = Counter()
    answered_after_term = 0
    term_sent: float | None = None
    stop = asyncio.Event()

    async def client() -> None:
        nonlocal answered_after_term
        while not stop.is_set():
            outcome = await get_user(port, cookie)
            outcomes[outcome] += 1
            if outcome == "200" and term_sent is not None:
                answered_after_term += 1
            if outcome == "refused":
                await asyncio.sleep(0.01)

    clients = [asyncio.create_task(client()) for _ in range(16)]
    try:
        await asyncio.sleep(2)
        answered_before = outcomes["200"]
        term_sent = time.monotonic()
        code, output = await podman.arun("kill", "--signal=TERM", container)
        assert code == 0, output
        await asyncio.sleep(1)
        assert not slow.done()
        await lock.rollback()
        code, exit_code = await podman.arun(
            "wait", container, seconds=SHUTDOWN_TIMEOUT + STOP_MARGIN + 30
        )
        stopped_in = time.monotonic() - term_sent
        assert code == 0, exit_code
        await asyncio.sleep(0.5)  # the load goes on against the closed port
    finally:
        stop.set()
        await asyncio.gather(*clients)
        slow_outcome = await slow
        slow_sessions = await holder.fetchval(
            "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id"
            " WHERE u.email = 'slow@example.com'"
        )
        await holder.close()
        logs = podman.logs(container)
    lost = {outcome: n for outcome, n in outcomes.items() if outcome not in ("200", "refused")}
    log(
        f"SIGTERM under load: {answered_before} answered before it, {answered_after_term} after "
        f"it, {outcomes['refused']} refused at connect, {sum(lost.values())} lost; "
        f"exit code {exit_code} in {stopped_in:.1f} s"
    )

    assert not lost, f"requests lost: {lost}\n{logs[-4000:]}"
    assert (slow_outcome, slow_sessions) == ("204", 0), logs[-4000:]
    assert answered_before > 0 and outcomes["refused"] > 0, outcomes
    assert exit_code == "0", logs[-4000:]
    assert stopped_in < SHUTDOWN_TIMEOUT + STOP_MARGIN, stopped_in
    podman.remove(container)
