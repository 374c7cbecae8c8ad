"""The app's QProcess runner (LKMSegmentLib/qtprocess.py) under PythonQt's rules.

``qt`` is the Slicer stand-in of slicer_app_standin.py (real QProcess from PyQt5, every call
checked against pythonqt_api.json). QProcess.finished is overloaded (int) and (int, ExitStatus);
which one a Python handler gets depends on PythonQt, so the runner is run with each.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

import slicer_app_standin as standin
from slicer_fixtures import new_scene


def _collect(runner, app, timeout=60):
    out = {"stdout": "", "stderr": ""}
    deadline = time.monotonic() + timeout
    while True:
        for stream, text in runner.poll():
            out[stream] += text
        if runner.is_finished():
            return out
        assert time.monotonic() < deadline, "the process did not finish"
        app.processEvents()
        time.sleep(0.01)


@pytest.mark.parametrize("overload", ["first", "last"])
def test_qprocess_runner_reports_output_and_exit_code_with_either_finished_overload(
        monkeypatch, tmp_path, overload):
    standin.install(monkeypatch, new_scene(), tmp_path)
    monkeypatch.setattr(standin, "SIGNAL_OVERLOAD", overload)
    from LKMSegmentLib.qtprocess import QProcessRunner

    app = standin.ensure_application()
    runner = QProcessRunner()
    code = "import sys; print('engine says hello'); print('a warning', file=sys.stderr); sys.exit(3)"
    runner.start(sys.executable, ["-c", code], env=dict(os.environ), cwd=str(tmp_path))
    out = _collect(runner, app)
    assert runner.exit_code == 3
    assert "engine says hello" in out["stdout"] and "a warning" in out["stderr"]
    assert standin.handler_errors == [], "\n".join(standin.handler_errors)
    assert standin.violations == [], standin.violations


def test_qprocess_runner_stop_uses_only_pythonqt_forms(monkeypatch, tmp_path):
    import psutil

    standin.install(monkeypatch, new_scene(), tmp_path)
    from LKMSegmentLib.qtprocess import QProcessRunner

    app = standin.ensure_application()
    runner = QProcessRunner()
    runner.start(sys.executable, ["-c", "import time; print('started', flush=True); time.sleep(120)"],
                 env=dict(os.environ), cwd=str(tmp_path))
    deadline = time.monotonic() + 30
    seen = ""
    while "started" not in seen:
        seen += "".join(text for _, text in runner.poll())
        app.processEvents()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pid = runner.pid
    runner.stop()
    _collect(runner, app, timeout=10)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert standin.handler_errors == [], "\n".join(standin.handler_errors)
    assert standin.violations == [], standin.violations
