"""`python bench/floor.py`: the floor, a bare aiohttp app served exactly as the service is served.

One route, `GET /` answering `{"ok": true}`: no middleware, no access log, no database. It runs
under gunicorn with the service's own worker class (`service.server.Worker`, so the same
connection handler and runner) and WORKERS processes, on HOST and PORT, with the gunicorn
settings the service uses that matter here. What the service's requests cost beyond this is
what the service itself adds; what this costs is aiohttp's and gunicorn's, which no change to
the service moves.

Run as a file, not with `-m`: the bench may measure another checkout's `service` (found on
PYTHONPATH), and this file must not be shadowed by that checkout's `bench` package.
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web
from gunicorn.app.base import BaseApplication


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", ok)
    return app


def worker_class() -> str:
    """The service's worker class; aiohttp's own for a checkout that predates it (a before/after
    comparison with BENCH_SERVICE_DIR), as that checkout's service then used."""
    try:
        from service.server import Worker  # noqa: F401 - only whether it is there
    except ImportError:
        return "aiohttp.GunicornWebWorker"
    return "service.server.Worker"


class Floor(BaseApplication):  # type: ignore[misc]
    def __init__(self, host: str, port: int, workers: int) -> None:
        self.host, self.port, self.workers = host, port, workers
        super().__init__()

    def load_config(self) -> None:
        settings: dict[str, Any] = {
            "bind": f"{self.host}:{self.port}",
            "workers": self.workers,
            "worker_class": worker_class(),
            "timeout": 60,
            "accesslog": None,
            "proc_name": "bench-floor",
            "control_socket_disable": True,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> web.Application:
        return create_app()


if __name__ == "__main__":
    env = os.environ.get
    Floor(env("HOST", "127.0.0.1"), int(env("PORT", "8090")), int(env("WORKERS", "2"))).run()
