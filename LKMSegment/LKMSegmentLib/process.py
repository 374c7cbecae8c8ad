"""Child processes behind one small interface, so the logic runs the same headless and in Slicer.

A runner is *pulled*: the owner calls :meth:`ProcessRunner.poll` (from a QTimer in the app, from a
loop in tests and batch scripts) and gets the output chunks that arrived since the last call.
Nothing calls back into the owner from another thread, so MRML is only touched from the thread
that drives the job.

- :class:`SubprocessRunner` uses :mod:`subprocess` with reader threads (headless, tests, CLI).
- ``qtprocess.QProcessRunner`` wraps ``qt.QProcess`` (the Slicer application).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time


class ProcessRunner:
    """Interface of a runner. ``poll`` returns [(stream, text)], stream is 'stdout' or 'stderr'."""

    def start(self, program: str, args: list[str], env: dict | None = None, cwd: str | None = None):
        raise NotImplementedError

    def poll(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def is_finished(self) -> bool:
        """True once the process has exited and all its output has been handed out by poll."""
        raise NotImplementedError

    @property
    def exit_code(self) -> int | None:
        raise NotImplementedError

    def stop(self, grace_s: float = 3.0) -> None:
        """Terminate the process (and its children), then kill it if it does not exit in time."""
        raise NotImplementedError

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until finished (True) or timeout (False). Output stays queued for poll."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        raise NotImplementedError


class SubprocessRunner(ProcessRunner):
    """Runs the child with :class:`subprocess.Popen` in its own process group."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._readers: list[threading.Thread] = []

    def start(self, program, args, env=None, cwd=None):
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("The engine process is already running.")
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True  # stop() can end the whole group
        self._proc = subprocess.Popen(
            [program, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env, cwd=cwd, **kwargs)
        self._readers = [
            threading.Thread(target=self._read, args=(self._proc.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read, args=(self._proc.stderr, "stderr"), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream, name):
        try:
            for line in iter(stream.readline, b""):
                self._queue.put((name, line.decode("utf-8", errors="replace")))
        finally:
            stream.close()

    def poll(self):
        chunks = []
        while True:
            try:
                chunks.append(self._queue.get_nowait())
            except queue.Empty:
                return chunks

    def is_finished(self):
        if self._proc is None:
            return True
        return (self._proc.poll() is not None and not any(t.is_alive() for t in self._readers)
                and self._queue.empty())

    @property
    def exit_code(self):
        return None if self._proc is None else self._proc.poll()

    @property
    def pid(self):
        return None if self._proc is None else self._proc.pid

    def wait(self, timeout_s=None):
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        for t in self._readers:
            t.join(timeout=5)
        return True

    def stop(self, grace_s=3.0):
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        if os.name == "nt":
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(proc.pid)], capture_output=True)
        else:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            if os.name == "nt":
                proc.kill()
            else:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
        for t in self._readers:
            t.join(timeout=5)


def inside_slicer_app() -> bool:
    """True in the Slicer application (not with the headless slicer-core package)."""
    slicer = sys.modules.get("slicer")
    return slicer is not None and getattr(slicer, "app", None) is not None


def python_executable() -> str:
    """The interpreter that runs the engine: PythonSlicer inside Slicer, this Python elsewhere."""
    if inside_slicer_app():
        found = shutil.which("PythonSlicer")
        if found:
            return found
        folder = os.path.dirname(sys.executable)
        for candidate in ("PythonSlicer", "PythonSlicer.exe"):
            if os.path.exists(os.path.join(folder, candidate)):
                return os.path.join(folder, candidate)
    return sys.executable
