"""Metrics: counted by every worker, served on METRICS_PORT only, scraped by a real Prometheus."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import stats
from service.config import Config, ConfigError
from tests.conftest import Browser
from tests.conftest import Service as ServiceUnderTest
from tests.issuer import Issuer
from tests.test_instances import start_instance, wait_ready
from tests.test_operations import cli_env, run_cli

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Instance:
    port: int
    metrics_port: int
    process: asyncio.subprocess.Process

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def instance(database_url: str, unused_tcp_port_factory: Any) -> AsyncIterator[Instance]:
    port, metrics_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    env = cli_env(
        DATABASE_URL=database_url,
        DEV_LOGIN="1",
        COOKIE_SECURE="false",
        WORKERS="2",
        METRICS_PORT=str(metrics_port),
    )
    process = await start_instance(env, port)
    try:
        await wait_ready(port)
        yield Instance(port, metrics_port, process)
    finally:
        process.send_signal(signal.SIGTERM)
        output = (await process.communicate())[0].decode()
        assert process.returncode == 0, output
        assert "Traceback" not in output, output


async def sign_in(instance: Instance, *, good_nonce: bool = True) -> aiohttp.ClientSession:
    """A browser signed in through the dev login (or refused: a nonce this browser lacks)."""
    client = aiohttp.ClientSession(
        instance.base,
        headers={"Origin": instance.base},
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    )
    async with client.post("/api/login/nonce") as response:
        nonce = (await response.json())["nonce"] if good_nonce else "not-this-browsers"
    body = {"email": "metrics.person@example.org", "nonce": nonce}
    async with client.post("/api/dev-login/token", json=body) as response:
        credential = (await response.json())["credential"]
    async with client.post("/api/login", json={"credential": credential}) as response:
        assert response.status == (200 if good_nonce else 401), await response.text()
    return client


async def scrape(port: int) -> Samples:
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape_until(port: int, done: Callable[[Samples], bool]) -> Samples:
    """Counts reach a scrape within a second (each worker's flush): wait for them."""
    for _ in range(50):
        samples = await scrape(port)
        if done(samples):
            return samples
        await asyncio.sleep(0.1)
    return samples


P = "session_service_"


async def test_every_workers_counts_reach_the_scrape_and_outlive_a_killed_worker(
    instance: Instance,
) -> None:
    browsers = [await sign_in(instance) for _ in range(3)]
    await (await sign_in(instance, good_nonce=False)).close()
    try:
        for browser in browsers:
            for _ in range(4):
                async with browser.get("/api/user") as response:
                    assert response.status == 200
        async with browsers[0].post("/api/logout") as response:
            assert response.status == 204
    finally:
        for browser in browsers:
            await browser.close()

    user_ok = {"route": "/api/user", "method": "GET", "status_class": "2xx"}
    login = {"route": "/api/login", "method": "POST"}
    expected = {
        (f"{P}signins_total", (("outcome", "ok"), ("reason", "ok"))): 3,
        (f"{P}signins_total", (("outcome", "failed"), ("reason", "invalid_nonce"))): 1,
        (f"{P}sessions_created_total", ()): 3,
        (f"{P}sessions_ended_total", (("cause", "logout"),)): 1,
        (f"{P}http_requests_total", tuple(user_ok.items())): 12,
        (f"{P}http_request_duration_seconds_count", tuple(user_ok.items())): 12,
        (f"{P}http_request_duration_seconds_bucket", (*user_ok.items(), ("le", "+Inf"))): 12,
        (f"{P}http_requests_total", (*login.items(), ("status_class", "4xx"))): 1,
    }

    def found(samples: Samples) -> dict[tuple[str, Any], float]:
        return {(name, labels): value(samples, name, **dict(labels)) for name, labels in expected}

    # Each worker flushes within a second: wait until every count is in.
    samples = await scrape_until(instance.metrics_port, lambda s: found(s) == expected)
    assert found(samples) == expected

    def checks(samples: Samples) -> float:  # the logout is public: it checks no session
        return sum(v for (name, _), v in samples.items() if name == f"{P}session_checks_total")

    assert checks(await scrape_until(instance.metrics_port, lambda s: checks(s) == 12)) == 12
    assert not [key for key in samples if "5xx" in str(key)]

    # A worker killed outright: what it had flushed stays, and its successor counts on.
    pids = worker_pids(instance.process.pid)
    os.kill(pids[0], signal.SIGKILL)
    await wait_for_workers(instance.process.pid, 2, without=pids[0])
    after = await scrape(instance.metrics_port)
    assert value(after, f"{P}signins_total", outcome="ok", reason="ok") == 3
    assert value(after, f"{P}http_requests_total", **user_ok) == 12


async def test_the_public_port_serves_no_metrics(instance: Instance) -> None:
    async with aiohttp.ClientSession() as client, client.get(f"{instance.base}/metrics") as page:
        assert "# TYPE" not in await page.text()
        assert not page.headers["Content-Type"].startswith("text/plain")


async def test_docs_metrics_lists_every_metric_served_and_no_other(instance: Instance) -> None:
    await (await sign_in(instance)).close()
    samples = await scrape_until(
        instance.metrics_port, lambda s: value(s, f"{P}sessions_created_total") == 1
    )
    served = {re.sub(r"_(bucket|sum|count)$", "", name) for name, _ in samples}
    documented = set(re.findall(r"^\| `(session_service_\w+)`", read_docs(), re.MULTILINE))
    # A histogram is documented by its name; a counter by its name with _total.
    assert served == documented


async def test_postgres_counts_the_sessions_ended_outside_the_service_once(
    browser: Browser,
    issuer: Issuer,
    service: ServiceUnderTest,
    db: asyncpg.Pool,
    database_url: str,
) -> None:
    before = await stats.sessions_ended_outside(db)
    user = (await browser.sign_in(issuer))["user"]
    await browser.sign_in(issuer)  # replaces the browser's session
    other = service.browser()
    await other.sign_in(issuer)
    sessions = (await (await browser.get("/api/sessions")).json())["results"]
    [others] = [s for s in sessions if not s["current"]]
    assert (await browser.request("DELETE", f"/api/sessions/{others['id']}")).status == 204
    assert (await browser.post("/api/logout")).status == 204
    # The service's own endings: none counted.
    assert await stats.sessions_ended_outside(db) == before

    for _ in range(2):
        await service.browser().sign_in(issuer)
    # The operator CLI's, whatever application_name DATABASE_URL names.
    named = ("&" if "?" in database_url else "?") + "application_name=google-session-service"
    env = cli_env(DATABASE_URL=database_url + named)
    code, out, err = await run_cli("sessions", "revoke", "--user", user["email"], env=env)
    assert code == 0, err
    revoked = int(out.split()[1])
    assert await stats.sessions_ended_outside(db) == before + revoked
    # An operator's, by SQL (this pool is not the service's), and a TRUNCATE.
    deleted = int((await db.execute("DELETE FROM sessions")).split()[-1])
    await service.browser().sign_in(issuer)
    await db.execute("TRUNCATE sessions")
    assert await stats.sessions_ended_outside(db) == before + revoked + deleted + 1


def read_docs() -> str:
    return (ROOT / "docs" / "metrics.md").read_text()


async def test_a_real_prometheus_scrapes_the_sign_ins_and_the_request_histogram(
    instance: Instance, unused_tcp_port: int
) -> None:
    browsers = [await sign_in(instance) for _ in range(2)]
    for browser in browsers:
        await browser.close()
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: service\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{instance.metrics_port}']}}]\n"
        )
        prometheus = await asyncio.create_subprocess_exec(
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={scratch}/data",
            f"--web.listen-address=127.0.0.1:{unused_tcp_port}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            api = f"http://127.0.0.1:{unused_tcp_port}/api/v1/query"
            signins = f'{P}signins_total{{outcome="ok"}}'
            histogram = f'{P}http_request_duration_seconds_count{{route="/api/login"}}'
            assert await query_until(api, signins) == 2
            assert await query_until(api, histogram) == 2
        finally:
            prometheus.terminate()
            await prometheus.wait()


async def query_until(api: str, query: str) -> float:
    """The query's one value, once Prometheus has scraped it (it polls every second)."""
    async with aiohttp.ClientSession() as client:
        for _ in range(150):  # 15 s: Prometheus's start and a scrape or two
            try:
                async with client.get(api, params={"query": query}) as response:
                    result = (await response.json())["data"]["result"]
            except (aiohttp.ClientError, KeyError):
                result = []
            if result:
                return float(result[0]["value"][1])
            await asyncio.sleep(0.1)
    raise AssertionError(f"Prometheus never had {query}")


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return sorted(int(pid) for pid in children)


async def wait_for_workers(master: int, count: int, *, without: int) -> None:
    for _ in range(100):
        pids = worker_pids(master)
        if len(pids) == count and without not in pids:
            await asyncio.sleep(1.0)  # booted: the replacement opens its pool and listener
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the killed worker was not replaced")


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"METRICS_PORT": "8080"}, "METRICS_PORT must differ from PORT"),
        ({"METRICS_PORT": "9090", "METRICS_HOST": "metrics.local"}, "METRICS_HOST"),
        ({"METRICS_PORT": "70000"}, "METRICS_PORT"),
    ],
)
def test_a_bad_metrics_setting_is_a_one_line_config_error(
    variables: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_env({"DEV_LOGIN": "1", "PORT": "8080", **variables})


async def test_a_metrics_port_in_use_stops_the_service_with_one_line(
    database_url: str, unused_tcp_port_factory: Any
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        env = cli_env(DATABASE_URL=database_url, DEV_LOGIN="1", METRICS_PORT=str(metrics_port))
        process = await start_instance(env, unused_tcp_port_factory())
        output = (await asyncio.wait_for(process.communicate(), 30))[0].decode()
    assert process.returncode == 1
    assert f"configuration error: METRICS_PORT: cannot listen on 127.0.0.1:{metrics_port}" in output
    assert "Traceback" not in output
