"""Production serving: gunicorn runs WORKERS processes of aiohttp's worker on one port.

Each worker builds its own app, so each has its own asyncpg pool (DB_POOL_SIZE connections at
most). SIGTERM stops accepting, lets requests in flight finish for up to SHUTDOWN_TIMEOUT
seconds, runs the apps' cleanup (closing the pools) and exits 0.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from gunicorn.app.base import BaseApplication

from service.app import create_app
from service.config import Config
from service.logs import logging_config


class Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, config: Config) -> None:
        self.config = config
        super().__init__()

    def load_config(self) -> None:
        config = self.config
        host = f"[{config.host}]" if ":" in config.host else config.host
        settings: dict[str, Any] = {
            "bind": f"{host}:{config.port}",
            "workers": config.workers,
            "worker_class": "aiohttp.GunicornWebWorker",
            "graceful_timeout": config.shutdown_timeout,
            # A worker that stops answering its heartbeat this long is replaced.
            "timeout": 60,
            "accesslog": None,  # service.middleware.access_log writes the access lines
            "logconfig_dict": logging_config(config.log_format),
            "proc_name": "google-session-service",
            "control_socket_disable": True,  # no management socket in $HOME
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> web.Application:
        # Called in each worker after the fork: every worker gets its own pool and tasks.
        return create_app(self.config)


def serve(config: Config) -> None:
    Server(config).run()
