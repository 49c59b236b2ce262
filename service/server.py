"""Production serving: gunicorn runs WORKERS processes of aiohttp's worker on one port.

Each worker builds its own app, so each has its own asyncpg pool (DB_POOL_SIZE connections at
most). SIGTERM stops accepting without resetting or dropping a connection already made, lets
requests in flight finish for up to SHUTDOWN_TIMEOUT seconds, runs the apps' cleanup (closing
the pools) and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.worker import GunicornWebWorker
from gunicorn.app.base import BaseApplication

from service import metrics
from service.app import create_app
from service.config import Config
from service.errors import error_response
from service.logs import logging_config, write_through

# After the listener closes, how long a connection made just before has to send its request
# before aiohttp's shutdown closes it as idle.
GRACE_SECONDS = 0.5

http_log = logging.getLogger("service.http")


class Protocol(RequestHandler):
    """aiohttp's connection handler, answering a request it cannot parse as the API answers
    errors: a JSON error with a fixed message, logged in one line.

    aiohttp's own answer is plain text quoting the bytes its parser choked on, and logs them
    with a traceback; those bytes may be a Cookie header holding a session token (one over
    8 KiB, say, which a page's script can cause by setting many cookies), so neither the
    answer nor the log repeats them.
    """

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            http_log.warning(
                "malformed request from %s: %s (%d)", request.remote, type(exc).__name__, status
            )
            code, text = "bad_request", "The request is not valid HTTP."
        else:
            http_log.error("error handling a request from %s", request.remote, exc_info=exc)
            code, text = "internal_error", "Something went wrong on our side."
        if request.writer.output_size > 0:  # part of an answer is out: the connection is lost
            raise ConnectionError("a response was already being sent")
        response = error_response(
            status, code, text, {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
        )
        response.force_close()
        return response


class ProtocolServer(web.Server):
    """aiohttp's low-level server, making `Protocol`s."""

    def __call__(self) -> RequestHandler:
        return Protocol(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """AppRunner, with `Protocol` for connections, that stops without dropping a connection the
    kernel has already completed.

    Closing the last copy of a listening socket resets the connections still in its accept
    queue, so the queue is emptied right before the listener closes (leaving microseconds in
    between). And aiohttp (3.14) closes, unanswered, a connection it accepted just before its
    shutdown if it has not read the request yet, so that shutdown starts GRACE_SECONDS after
    the listener closed.
    """

    def __init__(
        self, app: web.Application, listeners: list[Any], *, backlog: int, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.listeners = listeners
        self.backlog = backlog
        self.accepting: set[asyncio.Task[Any]] = set()

    def _reg_site(self, site: web.BaseSite) -> None:
        # aiohttp's gunicorn worker makes its sites with aiohttp's default backlog, and a site
        # listens again on gunicorn's socket with it: gunicorn's queue (its `backlog`, 2048)
        # shrank to 128, and a spike of new connections overflowed it, the kernel dropping
        # their SYNs (a second's wait each, then three). Here, before the site listens.
        site._backlog = self.backlog
        super()._reg_site(site)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = ProtocolServer  # aiohttp has no setting for the handler class
        return server

    async def cleanup(self) -> None:
        # gunicorn kills a worker that outlasts its graceful timeout: from here on, no line
        # waits in memory to be lost with it.
        write_through()
        loop = asyncio.get_running_loop()
        server = self.server
        if server is not None:
            # Empty the queue, then close the listener at once (site.stop() does not yield).
            pending = [c for listener in self.listeners for c in accept_pending(listener)]
            for site in list(self.sites):
                await site.stop()
            for connection in pending:
                task = loop.create_task(loop.connect_accepted_socket(server, connection))
                self.accepting.add(task)
                task.add_done_callback(self.accepting.discard)
            await asyncio.sleep(GRACE_SECONDS)
        await super().cleanup()


def accept_pending(listener: socket.socket) -> list[socket.socket]:
    """The connections waiting in a (non-blocking) listening socket's queue."""
    connections: list[socket.socket] = []
    while True:
        try:
            connection, _ = listener.accept()
        except ConnectionAbortedError:  # reset by the client while queued
            continue
        except OSError:  # BlockingIOError: the queue is empty
            return connections
        connections.append(connection)


class Worker(GunicornWebWorker):
    """aiohttp's gunicorn worker, running the app with `Runner`."""

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app: web.Application = self.wsgi  # type: ignore[has-type]  # set by gunicorn
        master = getattr(self.app, "metrics", None)  # the Server, as forked from the master
        if master is not None and master.sock is not None:
            app[metrics.LISTENER] = metrics.Listener(master.sock, self.metrics_slot)

        async def make_runner() -> Runner:
            return Runner(
                app,
                self.sockets,
                backlog=self.cfg.backlog,
                logger=http_log,
                keepalive_timeout=self.cfg.keepalive,
                access_log=None,
                shutdown_timeout=self.cfg.graceful_timeout * 0.95,
            )

        self.wsgi = make_runner


class Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics: metrics.Master | None = None
        if config.metrics_port is not None:
            self.metrics = metrics.Master(config.metrics_host, config.metrics_port)
        super().__init__()

    def load_config(self) -> None:
        config = self.config
        host = f"[{config.host}]" if ":" in config.host else config.host
        settings: dict[str, Any] = {
            "bind": f"{host}:{config.port}",
            "workers": config.workers,
            "worker_class": "service.server.Worker",
            "graceful_timeout": config.shutdown_timeout,
            # A worker that stops answering its heartbeat this long is replaced.
            "timeout": 60,
            "accesslog": None,  # service.middleware.access_log writes the access lines
            "logconfig_dict": logging_config(config.log_format),
            "proc_name": "google-session-service",
            "control_socket_disable": True,  # no management socket in $HOME
        }
        if self.metrics is not None:
            for hook in ("on_starting", "pre_fork", "child_exit", "on_exit"):
                settings[hook] = getattr(self.metrics, hook)
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> web.Application:
        # Called in each worker after the fork: every worker gets its own pool and tasks.
        return create_app(self.config)


def serve(config: Config) -> None:
    Server(config).run()
