"""How a run is asked to stop: a cancel file, Ctrl-C or SIGTERM, on every OS.

The Slicer module cannot count on a signal reaching the engine: its child is the PythonSlicer
launcher, which forwards none, and Windows has no SIGTERM for console programs. So the module
creates a file (``--cancel-file PATH``) and the engine watches for it. Every way of asking ends
up in one :class:`CancelRequest`:

- the predictor polls it between patches and phases (``Predictor(cancel=request)``);
- a watcher thread looks for the file a few times a second and, when it appears, also interrupts
  the main thread (``_thread.interrupt_main``: portable), so a long network step does not have to
  finish first;
- SIGTERM, SIGINT (Ctrl-C) and, on Windows, SIGBREAK set it and interrupt at once.

The CLI turns the interruption into ``Cancelled``: nothing half-written is left behind.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

POLL_S = 0.2


class CancelRequest:
    """Callable: True once a stop was asked for (file, signal or :meth:`set`)."""

    def __init__(self, cancel_file: str | os.PathLike | None = None):
        self.cancel_file = os.fspath(cancel_file) if cancel_file else None
        self._event = threading.Event()
        self._done = threading.Event()
        self._watcher = None
        self._previous = {}
        self.reason = None

    def __call__(self) -> bool:
        if not self._event.is_set() and self.cancel_file and os.path.exists(self.cancel_file):
            self.set("cancel file")
        return self._event.is_set()

    is_set = __call__

    def set(self, reason: str = "request") -> None:
        if not self._event.is_set():
            self.reason = reason
            log.info("stop requested (%s)", reason)
        self._event.set()

    # -- while a run is going ---------------------------------------------------------------
    def __enter__(self):
        if self.cancel_file:
            self._watcher = threading.Thread(target=self._watch, name="lkm-cancel-file",
                                             daemon=True)
            self._watcher.start()
        if threading.current_thread() is threading.main_thread():
            names = ["SIGTERM", "SIGINT"] + (["SIGBREAK"] if os.name == "nt" else [])
            for name in names:
                signum = getattr(signal, name, None)
                if signum is not None:
                    self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc):
        self._done.set()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        return False

    def _on_signal(self, signum, frame):
        # no logging here: the signal may have interrupted a write to the very stream the log
        # goes to, and a buffered stream refuses a reentrant write (the CLI says it stopped)
        if not self._event.is_set():
            self.reason = signal.Signals(signum).name
        self._event.set()
        raise KeyboardInterrupt

    def _watch(self):
        while not self._done.wait(POLL_S):
            if self():
                if not self._done.is_set():
                    _thread.interrupt_main()  # a KeyboardInterrupt in the main thread
                return
