"""Stop stops everything: through a launcher that forwards no signal, and on every OS.

In Slicer the engine runs as ``PythonSlicer -m lkm_core predict ...``; PythonSlicer is a
launcher whose child is the real interpreter, and it forwards no signal. Here
``slicer_python/launcher.py`` stands in for it and a real QProcess (PyQt5, under the names
PythonQt gives it: ``pythonqt_qprocess/qt.py``) stands in for Slicer's ``qt.QProcess``: both
are stand-ins for the Slicer application, which cannot run here. The model is the paper's 3D
network (untrained), so the engine is inside a network step of ~45 s or more when Stop comes.

The cancel file is the path that works on Windows too (no POSIX signals, no process groups):
the engine ends by itself when it appears, in the middle of a patch, with no signal sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

from engine_helpers import run_cli

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODULE = REPO / "LKMSegment"
CANCEL_BOUND_S = 20  # the engine notices its cancel file mid-patch well within this


@pytest.fixture(scope="module")
def heavy_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heavy") / "lkm-3d-paper"
    result = run_cli("bundle", "init", "--preset", "3d_paper", "--labels", "liver", "-o", folder)
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope="module")
def one_patch_ct(tmp_path_factory):
    """A CT-like volume on the 3d_paper grid (0.8 x 0.8 x 2.5 mm): exactly one 40x224x192 patch."""
    rng = np.random.default_rng(0)
    array = rng.normal(0, 50, (40, 224, 192)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.5))
    path = tmp_path_factory.mktemp("ct") / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    """An executable named like Slicer's that runs the launcher stand-in (exec: same pid)."""
    path = tmp_path_factory.mktemp("bin") / "PythonSlicer"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "slicer_python" / "launcher.py"}" "$@"\n',
                    encoding="utf-8")
    path.chmod(0o755)
    return path


def _end_leftovers(pids):
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.slow
@pytest.mark.parametrize("psutil_mode", ["psutil", "no-psutil"])
def test_stop_through_the_launcher_ends_every_process_and_deletes_the_folder(
        heavy_bundle, one_patch_ct, launcher, tmp_path, psutil_mode):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    driver = HERE / "slicer_python" / "qprocess_stop_driver.py"
    # finished(int): the overload that gives the runner the least (PythonQt may bind either)
    result = subprocess.run([sys.executable, str(driver), str(MODULE), str(heavy_bundle),
                             str(one_patch_ct), str(launcher), str(tmp_path), "int", psutil_mode],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    try:
        assert "ended_before_stop" not in report, report
        assert report["names"][0] == "python3" or "python" in report["names"][0]
        assert len(report["tree"]) >= 2, report  # the launcher and the engine below it
        assert "Running the network" in report["progress_text"]
        # from the click to every process gone, and the GUI thread never held long; without
        # psutil too: the module then ends the engine by the process id it wrote beside its
        # cancel file (QProcess reaches only the launcher, which forwards no signal)
        assert report["alive_after"] == [] and report["gone_s"] <= 5.0, report
        assert report["stop_call_s"] <= 0.5 and report["longest_tick_s"] <= 0.5, report
        assert not report["workdir_exists"] and not Path(report["workdir"]).exists()
        assert report["state"] == "stopped"
        assert list(tmp_path.iterdir()) == []  # nothing of the run is left in the temp root
    finally:
        _end_leftovers(report.get("tree", []))


@pytest.mark.slow
def test_the_engine_ends_by_itself_mid_patch_when_its_cancel_file_appears(
        heavy_bundle, one_patch_ct, tmp_path):
    """No signal at all (as on Windows): only the file. The engine must not finish its patch
    first (that takes far longer than the bound below) and must write nothing."""
    cancel, out = tmp_path / "cancel", tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lkm_core", "predict", str(one_patch_ct), "-o", str(out),
         "--model", str(heavy_bundle), "--device", "cpu", "--threads", "1", "--progress", "json",
         "--cancel-file", str(cancel)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env)
    try:
        events = []
        for line in proc.stdout:
            events.append(json.loads(line))
            if events[-1].get("phase") == "network":
                break
        time.sleep(8)  # weights loaded, inside the first (only) patch
        assert proc.poll() is None
        cancel.write_text("stop", encoding="utf-8")
        t0 = time.monotonic()
        rest, stderr = proc.communicate(timeout=120)
        ended_after = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    events += [json.loads(x) for x in rest.splitlines() if x.strip()]
    assert proc.returncode == 1
    errors = [e for e in events if e["event"] == "error"]
    assert errors and errors[-1]["kind"] == "cancelled", events[-3:]
    assert not [e for e in events if e["event"] == "done"]
    assert not out.exists() or list(out.iterdir()) == []
    # a 3d_paper patch on one CPU thread takes ~45-90 s: ending this soon means mid-patch
    assert ended_after < CANCEL_BOUND_S, f"the engine took {ended_after:.1f} s to notice the cancel file"


def test_qprocess_runner_works_with_either_finished_overload(tmp_path):
    code = (
        "import sys; sys.path[:0] = [%r, %r]\n"
        "import qt\n"
        "from LKMSegmentLib.qtprocess import QProcessRunner\n"
        "app = qt.QCoreApplication([])\n"
        "for overload in ('int', 'int,status'):\n"
        "    qt.FINISHED_OVERLOAD = overload\n"
        "    r = QProcessRunner()\n"
        "    r.start(sys.executable, ['-c', 'import sys; print(\"hi\"); sys.exit(3)'])\n"
        "    r.wait(30)\n"
        "    app.processEvents()\n"
        "    out = ''.join(t for s, t in r.poll() if s == 'stdout')\n"
        "    print(overload, r.exit_code, r.is_finished(), out.strip())\n"
    ) % (str(HERE / "pythonqt_qprocess"), str(MODULE))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["int 3 True hi", "int,status 3 True hi"]
