"""A process runner that plays back engine output: the module's error paths without a real
failing engine (it follows LKMSegmentLib.process.ProcessRunner's interface)."""

from __future__ import annotations

import slicer_fixtures  # noqa: F401  (puts LKMSegment/ on sys.path)
from LKMSegmentLib.process import ProcessRunner  # noqa: E402


class ScriptedRunner(ProcessRunner):
    """Plays back engine output: for the error paths without a real failing engine."""

    def __init__(self, stdout_lines, stderr_lines, exit_code):
        self.chunks = [("stdout", line + "\n") for line in stdout_lines]
        self.chunks += [("stderr", line + "\n") for line in stderr_lines]
        self._exit = exit_code
        self.started = None

    def start(self, program, args, env=None, cwd=None):
        self.started = (program, args, env)

    def poll(self):
        chunks, self.chunks = self.chunks, []
        return chunks

    def is_finished(self):
        return not self.chunks

    @property
    def exit_code(self):
        return self._exit

    def stop(self, grace_s=3.0):
        pass

    def wait(self, timeout_s=None):
        return True

    @property
    def pid(self):
        return None
