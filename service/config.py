"""Configuration: read once from the environment into a frozen `Config`, validated up front."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from service import tracing

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_CLIENT_SCRIPT_URL = "https://accounts.google.com/gsi/client"
DEV_CLIENT_ID = "dev-login.apps.localhost"

TEN_YEARS = 10 * 365 * 86400
_PERIODS = {"second": 1, "minute": 60, "hour": 3600}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


# WORKERS' default never exceeds this: each worker holds its own Postgres connections.
MAX_DEFAULT_WORKERS = 8
CGROUP = Path("/sys/fs/cgroup")
CGROUP_MEMBERSHIP = Path("/proc/self/cgroup")


class ConfigError(Exception):
    """A variable has a value the service cannot run with; the message names it."""


@dataclass(frozen=True)
class RateLimit:
    count: int
    period: int  # seconds


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    database_url: str | None = None
    google_client_ids: tuple[str, ...] = ()
    google_certs_url: str = GOOGLE_CERTS_URL
    cookie_secure: bool = True
    session_idle_timeout: int = 1800
    session_absolute_timeout: int = 86400
    admin_emails: frozenset[str] = frozenset()
    allowed_domains: frozenset[str] = frozenset()
    allowed_emails: frozenset[str] = frozenset()
    allowed_origins: tuple[str, ...] = ()
    login_rate_limit: RateLimit = field(default_factory=lambda: RateLimit(20, 60))
    login_rate_limit_ipv6_prefix: int = 64
    audit_retention_days: int = 90
    trusted_proxies: tuple[str, ...] = ()
    log_format: str = "text"
    dev_login: bool = False
    workers: int = 1
    db_pool_size: int = 10
    db_statement_cache_size: int = 100
    db_acquire_timeout: float = 5.0
    db_statement_timeout: float = 10.0
    shutdown_timeout: int = 10
    requests_in_flight: int = 64
    # How long a request may wait for one of those before it is refused, 503 `overloaded`: under
    # sustained overload the queue sheds load instead of growing. Not a setting; tests shorten it.
    admission_timeout: float = 5.0
    session_cache: bool = True
    metrics_port: int | None = None  # Prometheus metrics on a listener of their own; off unset
    metrics_host: str = "127.0.0.1"
    tracing: bool = False  # OpenTelemetry traces, on when an OTLP endpoint is configured
    # How old a pass over the change log may be when a session is checked, for the cache to
    # answer from memory: with a request's round trip, the 50 ms promised for revocation. Not a
    # setting (the promise is the product); the tests set 0 to run every check through a pass.
    session_cache_fresh_for: float = 0.040
    # How long a request waits for a pass before the cache gives up and asks the pool. Not a
    # setting either; the tests lengthen it so that a busy machine cannot turn the cache off
    # under a test that proves it answers from memory.
    session_cache_pass_timeout: float = 1.0

    @property
    def client_ids(self) -> tuple[str, ...]:
        """Audiences accepted in ID tokens; the dev login's own when nothing else is set."""
        return self.google_client_ids or (DEV_CLIENT_ID,)

    @property
    def origin(self) -> str:
        return origin_of(self.public_url)

    @property
    def trusted_origins(self) -> frozenset[str]:
        return frozenset((self.origin, *self.allowed_origins))

    @property
    def hsts(self) -> bool:
        return self.public_url.startswith("https://")

    @property
    def session_cookie_name(self) -> str:
        # The __Host- prefix makes browsers refuse the cookie unless Secure, Path=/ and no Domain.
        return "__Host-session_id" if self.cookie_secure else "session_id"

    @property
    def nonce_cookie_prefix(self) -> str:
        """Each login nonce has a cookie of its own, named with this prefix (see nonces.py)."""
        return "__Host-login_nonce_" if self.cookie_secure else "login_nonce_"

    @property
    def connections_per_worker(self) -> int:
        """Postgres connections one worker may hold: its pool, and the session cache's own."""
        return self.db_pool_size + (1 if self.session_cache else 0)

    @property
    def touch_interval(self) -> float:
        """How stale `last_seen_at` may get before a request writes it again."""
        return min(60.0, self.session_idle_timeout / 2)

    def masked(self) -> dict[str, object]:
        """The effective configuration for the startup log, without credentials."""
        shown: dict[str, object] = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name != "database_url"
        }
        shown["database_url"] = mask_url(self.database_url) if self.database_url else "embedded"
        shown["login_rate_limit"] = f"{self.login_rate_limit.count}/{self.login_rate_limit.period}s"
        for name in ("admin_emails", "allowed_domains", "allowed_emails"):
            shown[name] = sorted(getattr(self, name))
        return shown

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, serving: bool = True) -> Config:
        """The configuration; commands that do not serve HTTP need no client ID."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        host = reader.text("HOST", "127.0.0.1")
        port = reader.integer("PORT", 8080, low=1, high=65535)
        dev_login = reader.boolean("DEV_LOGIN", False)
        client_ids = reader.items("GOOGLE_CLIENT_ID")
        if not client_ids and not dev_login and serving:
            raise ConfigError("GOOGLE_CLIENT_ID is required (or set DEV_LOGIN=1 for local use)")
        if dev_login and not is_loopback(host):
            raise ConfigError(
                f"DEV_LOGIN=1 is refused unless HOST is a loopback address, not {host!r}"
            )
        default_public = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        public_url = reader.text("PUBLIC_URL", default_public).rstrip("/")
        reader.check(
            "PUBLIC_URL", public_url, _is_origin(public_url), "must be http(s)://host[:port]"
        )
        if dev_login and not is_loopback(urlsplit(public_url).hostname or ""):
            raise ConfigError(f"DEV_LOGIN=1 is refused unless PUBLIC_URL is loopback: {public_url}")
        certs_url = reader.text("GOOGLE_CERTS_URL", GOOGLE_CERTS_URL)
        reader.check(
            "GOOGLE_CERTS_URL",
            certs_url,
            _is_certs_url(certs_url),
            "must be https (plain http only for a loopback host)",
        )
        origins = reader.items("ALLOWED_ORIGINS")
        for origin in origins:
            reader.check(
                "ALLOWED_ORIGINS", origin, _is_origin(origin), "must be http(s)://host[:port]"
            )
        proxies = reader.items("TRUSTED_PROXIES")
        for proxy in proxies:
            reader.check("TRUSTED_PROXIES", proxy, _is_network(proxy), "must be an IP or a network")
            reader.check(
                "TRUSTED_PROXIES",
                proxy,
                _has_no_host_bits(proxy),
                f"has host bits set; the network is {ipaddress.ip_network(proxy, strict=False)}",
            )
        if dev_login and proxies:
            # Behind a proxy, loopback is reachable by whoever the proxy lets in.
            raise ConfigError("DEV_LOGIN=1 is refused with TRUSTED_PROXIES set")
        log_format = reader.text("LOG_FORMAT", "text")
        reader.check(
            "LOG_FORMAT", log_format, log_format in ("text", "json"), "must be text or json"
        )
        metrics_port = reader.integer("METRICS_PORT", 0, low=1, high=65535) or None
        metrics_host = reader.text("METRICS_HOST", "127.0.0.1")
        reader.check("METRICS_HOST", metrics_host, _is_ip(metrics_host), "must be an IP address")
        if metrics_port == port:
            raise ConfigError(
                "METRICS_PORT must differ from PORT: the public port never serves them"
            )
        tracing_on = tracing.configured(env)
        if tracing_on and (protocol := tracing.unsupported_protocol(env)):
            raise ConfigError(f"{protocol}: traces are exported over OTLP/HTTP (http/protobuf)")
        if tracing_on and not tracing.installed():
            raise ConfigError(
                "an OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT) but OpenTelemetry is not "
                "installed: install the service with its `otel` extra"
            )
        return cls(
            host=host,
            port=port,
            public_url=public_url,
            database_url=env.get("DATABASE_URL") or None,
            google_client_ids=client_ids,
            google_certs_url=certs_url,
            cookie_secure=reader.boolean("COOKIE_SECURE", True),
            session_idle_timeout=reader.integer(
                "SESSION_IDLE_TIMEOUT", 1800, low=1, high=TEN_YEARS
            ),
            session_absolute_timeout=reader.integer(
                "SESSION_ABSOLUTE_TIMEOUT", 86400, low=1, high=TEN_YEARS
            ),
            admin_emails=frozenset(e.lower() for e in reader.items("ADMIN_EMAILS")),
            allowed_domains=frozenset(d.lower() for d in reader.items("ALLOWED_DOMAINS")),
            allowed_emails=frozenset(e.lower() for e in reader.items("ALLOWED_EMAILS")),
            allowed_origins=tuple(origin_of(origin) for origin in origins),
            login_rate_limit=reader.rate("LOGIN_RATE_LIMIT", "20/minute"),
            login_rate_limit_ipv6_prefix=reader.integer(
                "LOGIN_RATE_LIMIT_IPV6_PREFIX", 64, low=32, high=128
            ),
            # 0 keeps every event forever.
            audit_retention_days=reader.integer("AUDIT_RETENTION_DAYS", 90, low=0, high=36500),
            trusted_proxies=proxies,
            log_format=log_format,
            dev_login=dev_login,
            workers=reader.integer("WORKERS", default_workers(), low=1, high=256),
            db_pool_size=reader.integer("DB_POOL_SIZE", 10, low=1, high=1000),
            # 0 for PgBouncer in transaction mode, where prepared statements do not survive.
            db_statement_cache_size=reader.integer(
                "DB_STATEMENT_CACHE_SIZE", 100, low=0, high=100_000
            ),
            db_acquire_timeout=reader.seconds("DB_ACQUIRE_TIMEOUT", 5.0, low=0.01, high=600),
            db_statement_timeout=reader.seconds("DB_STATEMENT_TIMEOUT", 10.0, low=0.01, high=3600),
            shutdown_timeout=reader.integer("SHUTDOWN_TIMEOUT", 10, low=1, high=3600),
            requests_in_flight=reader.integer("REQUESTS_IN_FLIGHT", 64, low=1, high=100_000),
            session_cache=reader.boolean("SESSION_CACHE", True),
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            tracing=tracing_on,
        )


CONFIG = web.AppKey("config", Config)


class _Reader:
    """Parses one variable at a time, raising a `ConfigError` that names it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str) -> str:
        return self.env.get(name, "").strip() or default

    def items(self, name: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in self.env.get(name, "").split(",") if item.strip())

    def check(self, name: str, value: str, ok: bool, why: str) -> None:
        if not ok:
            raise ConfigError(f"{name}={value!r}: {why}")

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.env.get(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        self.check(name, raw, value in _TRUE | _FALSE, "must be true or false")
        return value in _TRUE

    def integer(self, name: str, default: int, *, low: int, high: int | None = None) -> int:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        self.check(name, raw, raw.isascii() and raw.isdigit(), "must be a whole number")
        value = int(raw)
        in_range = value >= low and (high is None or value <= high)
        self.check(name, raw, in_range, f"must be between {low} and {high or 'any'}")
        return value

    def seconds(self, name: str, default: float, *, low: float, high: float) -> float:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        self.check(
            name, raw, re.fullmatch(r"[0-9]+(\.[0-9]+)?", raw) is not None, "must be seconds"
        )
        value = float(raw)
        self.check(name, raw, low <= value <= high, f"must be between {low} and {high} seconds")
        return value

    def rate(self, name: str, default: str) -> RateLimit:
        raw = self.text(name, default)
        match = re.fullmatch(r"(\d+)\s*/\s*(second|minute|hour)", raw.lower())
        self.check(name, raw, match is not None, "must look like 20/minute (second, minute, hour)")
        assert match is not None
        count = int(match[1])
        self.check(name, raw, count > 0, "must allow at least one request")
        return RateLimit(count, _PERIODS[match[2]])


def origin_of(url: str) -> str:
    """scheme://host[:port], lower-cased, without the scheme's default port."""
    parts = urlsplit(url)
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = "" if parts.port in (None, default_port) else f":{parts.port}"
    return f"{parts.scheme}://{host}{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def _is_origin(value: str) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.path in ("", "/")
        and not (parts.query or parts.fragment or parts.username)
    )


def _is_certs_url(value: str) -> bool:
    parts = urlsplit(value)
    if parts.scheme == "https":
        return bool(parts.hostname)
    return parts.scheme == "http" and is_loopback(parts.hostname or "")


def _has_no_host_bits(value: str) -> bool:
    try:
        ipaddress.ip_network(value)
    except ValueError:
        return False
    return True


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def default_workers(cgroup: Path = CGROUP, membership: Path = CGROUP_MEMBERSHIP) -> int:
    """The CPUs this process may really use, capped at MAX_DEFAULT_WORKERS.

    os.cpu_count() is the host's count; the CPU affinity mask and a container's CPU quota (on
    its own cgroup or any parent: cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`) may say less,
    and the smallest one wins.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no affinity mask and no cgroups
        return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS))
    quotas = [q for d in _cgroup_dirs(cgroup, membership) if (q := _cgroup_quota(d)) is not None]
    if quotas:
        cpus = min(cpus, max(1, math.ceil(min(quotas))))
    return max(1, min(cpus, MAX_DEFAULT_WORKERS))


def _cgroup_dirs(cgroup: Path, membership: Path) -> list[Path]:
    """This process's cgroup directories and their parents, up to the mount's root."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    found = [cgroup]
    for line in lines:
        _, controllers, path = line.split(":", 2)
        # v2 ("0::/path") sits at the root of the mount; v1 has a mount per controller.
        base = cgroup if not controllers else cgroup / "cpu"
        if controllers and "cpu" not in controllers.split(","):
            continue
        relative = Path(path.lstrip("/"))
        for parent in (relative, *relative.parents):
            found.append(base / parent)
    return found


def _cgroup_quota(directory: Path) -> float | None:
    """CPUs allowed by one cgroup directory's quota; None when unlimited or unknown."""
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]  # v2: "max 100000"
        return int(quota) / int(period) if quota != "max" else None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((directory / "cpu.cfs_quota_us").read_text())  # v1: -1 is unlimited
        period_us = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None
