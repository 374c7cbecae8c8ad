"""Child processes behind one small interface, so the logic runs the same headless and in Slicer.

A runner is *pulled*: the owner calls :meth:`ProcessRunner.poll` (from a QTimer in the app, from a
loop in tests and batch scripts) and gets the output chunks that arrived since the last call.
Nothing calls back into the owner from another thread, so MRML is only touched from the thread
that drives the job.

- :class:`SubprocessRunner` uses :mod:`subprocess` with reader threads (headless, tests, CLI).
- ``qtprocess.QProcessRunner`` wraps ``qt.QProcess`` (the Slicer application).

Stopping ends the whole process tree (:func:`end_process_tree`): in Slicer the child is the
``PythonSlicer`` launcher, which runs the real interpreter as *its* child and forwards no
signal, so ending the launcher alone would leave the engine running. The engine is asked first
through its cancel file (EngineJob), which works the same on every OS.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)

WINDOWS = os.name == "nt"


def process_tree(pid: int) -> list:
    """The process ``pid`` and all its descendants, as psutil.Process objects (children first
    found while the parent is still alive: an orphan loses its link to the tree)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def end_process_tree(pid: int | None, grace_s: float = 3.0) -> list[int]:
    """End ``pid`` and every process below it: terminate all, wait up to ``grace_s``, kill the
    rest. Returns the pids that were found. Uses psutil, which works the same way on Windows
    (where terminate is TerminateProcess: there are no POSIX signals to ask nicely with, which is
    why the engine is first asked through its cancel file)."""
    if pid is None:
        return []
    import psutil

    tree = process_tree(pid)
    for proc in tree:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    _, still = psutil.wait_procs(alive, timeout=5)
    if still:
        log.warning("processes %s did not end after kill", [p.pid for p in still])
    return [p.pid for p in tree]


class ProcessTreeSignal:
    """Signals a process tree without waiting (Stop on the GUI thread never blocks): each call
    sends terminate (or kill, ``force``) to the process and every descendant seen so far. The
    descendants are remembered, so a child orphaned by its launcher's end is still reached."""

    def __init__(self, pid: int):
        self.pid = pid
        self.known: dict[int, object] = {}

    def send(self, force: bool = False) -> None:
        import psutil

        for proc in process_tree(self.pid):
            self.known.setdefault(proc.pid, proc)
        for proc in self.known.values():
            try:
                proc.kill() if force else proc.terminate()
            except psutil.NoSuchProcess:
                pass


def psutil_available() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


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

    def signal_stop(self, force: bool = False) -> None:
        """Ask the process and its children to end (``force``: kill them); returns at once.
        The owner keeps polling until ``is_finished()``."""
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
        self._tree: ProcessTreeSignal | None = None

    def start(self, program, args, env=None, cwd=None):
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("The engine process is already running.")
        kwargs = {}
        if WINDOWS:  # no process groups to signal: stop() ends the tree by pid (psutil/taskkill)
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

    def signal_stop(self, force=False):
        proc = self._proc
        if self._tree is not None:  # also after the process itself has ended: its orphans
            self._tree.send(force)
            return
        if proc is None or proc.poll() is not None:
            return
        if psutil_available():
            if self._tree is None:
                self._tree = ProcessTreeSignal(proc.pid)
            self._tree.send(force)
        elif WINDOWS:
            subprocess.Popen(["taskkill", "/T", "/F", "/PID", str(proc.pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            try:
                os.killpg(proc.pid, signal.SIGKILL if force else signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, grace_s=3.0):
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        if psutil_available():
            end_process_tree(proc.pid, grace_s)
            proc.wait()
            for t in self._readers:
                t.join(timeout=5)
            return
        # without psutil: the process group (POSIX) or taskkill's tree (Windows)
        if WINDOWS:
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
            if WINDOWS:
                proc.kill()
            else:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
        for t in self._readers:
            t.join(timeout=5)


class BackgroundCommand:
    """A short child command (the engine's bundle check, the GPU probe) that never blocks its
    caller: ``pump()`` from a timer until it returns False (``wait()`` in scripts), then read
    ``stdout``, ``stderr`` and ``exit_code`` (None when it ran past ``timeout_s`` and was ended)."""

    def __init__(self, runner: ProcessRunner, program: str, args: list[str], env: dict | None = None,
                 timeout_s: float = 300.0):
        self.runner, self.timeout_s = runner, timeout_s
        self._out: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.timed_out = False
        self._deadline = time.monotonic() + timeout_s
        runner.start(program, list(args), env=env)

    def pump(self) -> bool:
        """Collect what arrived; True while the command still runs."""
        for stream, text in self.runner.poll():
            self._out[stream].append(text)
        if self.runner.is_finished():
            return False
        if time.monotonic() > self._deadline:
            self.timed_out = True
            self.runner.signal_stop(force=True)
        return True

    def wait(self, poll_s: float = 0.05) -> "BackgroundCommand":
        while self.pump():
            time.sleep(poll_s)
        return self

    def stop(self) -> None:
        self.runner.signal_stop(force=True)

    @property
    def stdout(self) -> str:
        return "".join(self._out["stdout"])

    @property
    def stderr(self) -> str:
        return "".join(self._out["stderr"])

    @property
    def exit_code(self) -> int | None:
        return None if self.timed_out else self.runner.exit_code


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
