"""``qt.QProcess`` behind the :class:`~.process.ProcessRunner` interface (Slicer application only).

QProcess delivers output through signals on the GUI thread; this runner only collects it, and
the owner takes it with ``poll()`` from its QTimer, exactly as with the subprocess runner.

Stop ends the whole process tree, not only the QProcess: in Slicer the QProcess is the
``PythonSlicer`` launcher, whose child is the engine; QProcess.terminate()/kill() reach only the
launcher (and terminate() does nothing to a console program on Windows). The process is not in a
group of its own (QProcess shares Slicer's), so the tree is found by pid with psutil.
"""

from __future__ import annotations

import qt

from .process import ProcessRunner, ProcessTreeSignal, end_process_tree, psutil_available


class QProcessRunner(ProcessRunner):
    def __init__(self):
        self._process = None
        self._chunks = []
        self._finished = False
        self._exit_code = None
        self._tree = None

    def start(self, program, args, env=None, cwd=None):
        process = qt.QProcess()
        if env is not None:
            environment = qt.QProcessEnvironment()
            for key, value in env.items():
                environment.insert(key, value)
            process.setProcessEnvironment(environment)
        if cwd:
            process.setWorkingDirectory(cwd)
        process.readyReadStandardOutput.connect(self._on_stdout)
        process.readyReadStandardError.connect(self._on_stderr)
        process.finished.connect(self._on_finished)
        process.errorOccurred.connect(self._on_error)
        self._process = process
        self._finished = False
        self._exit_code = None
        process.start(program, list(args))

    def _on_stdout(self):
        self._chunks.append(("stdout", bytes(self._process.readAllStandardOutput().data()).decode("utf-8", "replace")))

    def _on_stderr(self):
        self._chunks.append(("stderr", bytes(self._process.readAllStandardError().data()).decode("utf-8", "replace")))

    def _on_finished(self, exit_code=None, exit_status=None):
        # PythonQt may bind finished(int) or finished(int, ExitStatus): ask for what is missing
        self._on_stdout()
        self._on_stderr()
        if exit_status is None:
            exit_status = self._process.exitStatus()
        crashed = exit_status == qt.QProcess.CrashExit
        self._exit_code = -1 if crashed else int(exit_code if exit_code is not None else self._process.exitCode())
        self._finished = True

    def _on_error(self, error):
        if error == qt.QProcess.FailedToStart:
            self._chunks.append(("stderr", f"The engine could not be started: {self._process.errorString()}\n"))
            self._exit_code = -1
            self._finished = True

    def poll(self):
        chunks, self._chunks = self._chunks, []
        return chunks

    def is_finished(self):
        return self._process is None or (self._finished and not self._chunks)

    @property
    def exit_code(self):
        return self._exit_code

    @property
    def pid(self):
        return None if self._process is None else int(self._process.processId())

    def wait(self, timeout_s=None):
        if self._process is None:
            return True
        done = self._process.waitForFinished(-1 if timeout_s is None else int(timeout_s * 1000))
        return done or self._finished

    def signal_stop(self, force=False):
        if self._tree is not None:  # also after the launcher has ended: the engine it orphaned
            self._tree.send(force)
            return
        if self._process is None or self._finished:
            return
        pid = self.pid
        if pid and psutil_available():
            if self._tree is None:
                self._tree = ProcessTreeSignal(pid)
            self._tree.send(force)
        elif force:  # psutil missing (the install plan adds it): the launcher alone
            self._process.kill()
        else:
            self._process.terminate()

    def stop(self, grace_s=3.0):
        if self._process is None or self._finished:
            return
        pid = self.pid
        if pid and psutil_available():
            end_process_tree(pid, grace_s)
            self._process.waitForFinished(5000)
        else:  # psutil missing (the install plan adds it): the launcher alone, the old way
            self._process.terminate()
            if not self._process.waitForFinished(int(grace_s * 1000)):
                self._process.kill()
                self._process.waitForFinished(5000)
        if not self._finished:
            self._on_finished(self._process.exitCode(), qt.QProcess.CrashExit)
