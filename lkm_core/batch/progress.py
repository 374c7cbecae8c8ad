"""Progress reporters for the command line (the protocol is in :mod:`lkm_core.contract`).

A reporter is a callable taking one event dict:
``{"event": "progress", "case", "phase", "fraction"}``, ``{"event": "log", "level", "message"}``,
``{"event": "done", "case", "outputs", "summary"}``, ``{"event": "error", "case", "kind",
"message"}``.

- :class:`JsonReporter`: one JSON object per line on its own stream (the CLI gives it the real
  stdout and points everything else at stderr).
- :class:`BarReporter`: a one-line progress bar on stderr for people.
- :class:`NullReporter`: nothing.
:class:`ReporterLogHandler` turns lkm_core log records (info and above) into ``log`` events.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

from ..contract import PHASE_WEIGHTS, case_fraction  # noqa: F401  (the module reads the same)


class NullReporter:
    def __call__(self, event: dict) -> None:
        pass


class JsonReporter:
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        # reentrant: a signal handler (a stop request) may log through this reporter while the
        # line it interrupted holds the lock; a write is one call, so lines stay whole
        self.lock = threading.RLock()

    def __call__(self, event: dict) -> None:
        line = json.dumps(event, default=str, allow_nan=False)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class BarReporter:
    """``case  [#####-----]  52%  network`` redrawn on stderr; logs and errors on their own line."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.last = 0.0
        self.open_line = False
        # a pipelined batch reports from several threads; reentrant, because a signal handler (a
        # stop request) may log through this reporter while the interrupted line holds the lock
        self.lock = threading.RLock()

    def _line(self, text: str) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, event: dict) -> None:
        with self.lock:
            self._show(event)

    def _show(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "progress":
            now = time.monotonic()
            if now - self.last < 0.2 and event.get("fraction", 0) not in (0.0, 1.0):
                return
            self.last = now
            done = case_fraction(event["phase"], event["fraction"])
            filled = int(round(done * self.width))
            self.stream.write(f"\r{event.get('case', '')}  [{'#' * filled}{'-' * (self.width - filled)}]"
                              f" {done * 100:3.0f}%  {event['phase']:<12}")
            self.stream.flush()
            self.open_line = True
        elif kind == "log":
            self._line(f"{event.get('level', 'info')}: {event.get('message', '')}")
        elif kind == "done":
            outputs = ", ".join(event.get("outputs", []))
            note = " (already there, skipped)" if event.get("skipped") else ""
            self._line(f"{event.get('case')}: done{note} -> {outputs}")
        elif kind == "error":
            self._line(f"{event.get('case')}: error ({event.get('kind')}): {event.get('message')}")


class ReporterLogHandler(logging.Handler):
    """Forward log records to a reporter as ``log`` events."""

    def __init__(self, reporter, level=logging.INFO):
        super().__init__(level)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "warning" if record.levelno >= logging.WARNING else "info"
            self.reporter({"event": "log", "level": level, "message": record.getMessage()})
        except Exception:  # never let logging break a run
            self.handleError(record)
