"""Stop pressed while the engine is inside a long network step, as in the Slicer app.

Run by Testing/slicer_tests/test_stop_launcher.py in its own Python (so the PythonQt stand-in ``qt`` never
enters the test process): the module's EngineJob with its QProcessRunner on a real QProcess
(PyQt5, see pythonqt_qprocess/qt.py), pumped by a QTimer in a Qt event loop like the panel's,
the engine started through a launcher that forwards no signal. Prints one JSON line.

    python qprocess_stop_driver.py MODULE_DIR BUNDLE IMAGE LAUNCHER TEMP_ROOT OVERLOAD [no-psutil]

Stop is the panel's: ``request_stop()`` on the GUI thread, then the timer's ``pump()`` until the
job has ended. Reported: the time from the click until every process of the tree is gone, and
the longest the GUI thread was held by the Stop call or by any timer tick after it.
"""

import json
import sys
import time
from pathlib import Path

here = Path(__file__).resolve().parent
module_dir, bundle, image, launcher, temp_root, overload = sys.argv[1:7]
without_psutil = sys.argv[7:] == ["no-psutil"]
sys.path.insert(0, str(here.parent / "pythonqt_qprocess"))
sys.path.insert(0, module_dir)

import qt  # noqa: E402  (the stand-in)
from process_check import alive, process_tree  # noqa: E402

from LKMSegmentLib.engine import EngineJob, PredictOptions  # noqa: E402
from LKMSegmentLib import process, qtprocess  # noqa: E402
from LKMSegmentLib.qtprocess import QProcessRunner  # noqa: E402

if without_psutil:  # a Slicer where psutil is not installed: the module must not use it
    process.psutil_available = qtprocess.psutil_available = lambda: False

NETWORK_WAIT_S = 8.0
qt.FINISHED_OVERLOAD = overload
app = qt.QCoreApplication([])
job = EngineJob(PredictOptions(model=bundle, device="cpu", threads=1), runner=QProcessRunner(),
                temp_root=temp_root, python=launcher)
job.input_path("case").write_bytes(Path(image).read_bytes())
report = {"workdir": str(job.workdir)}
network_since = None
stop_clicked = None  # time.monotonic() of the Stop click
tree = []


def after_stop():
    """A timer tick after Stop: pump as the panel does, and see whether everything is gone."""
    t0 = time.monotonic()
    running = job.pump()
    report["longest_tick_s"] = max(report.get("longest_tick_s", 0), round(time.monotonic() - t0, 3))
    if "gone_s" not in report and not alive(tree):
        report["gone_s"] = round(time.monotonic() - stop_clicked, 2)
    if (not running and "gone_s" in report) or time.monotonic() - stop_clicked > 30:
        report["alive_after"] = alive(tree)
        report["workdir_exists"] = Path(job.workdir).exists()
        report["state"] = job.state
        app.quit()


def tick():
    global network_since, stop_clicked, tree
    if stop_clicked is not None:
        return after_stop()
    job.pump()
    if job.state != "running":
        report["ended_before_stop"] = job.state
        app.quit()
        return
    if network_since is None and "Running the network" in job.progress_text:
        network_since = time.monotonic()
    # the weights load in a few seconds; a patch of this network takes ~45 s or more on a CPU
    if network_since is not None and time.monotonic() - network_since > NETWORK_WAIT_S:
        tree = [p.pid for p in process_tree(job.runner.pid)]
        report["tree"] = tree
        report["names"] = [p.name() for p in process_tree(job.runner.pid)]
        report["progress_text"] = job.progress_text
        stop_clicked = time.monotonic()
        job.request_stop()  # what the panel's Stop button calls
        report["stop_call_s"] = round(time.monotonic() - stop_clicked, 3)


timer = qt.QTimer()
timer.setInterval(100)
timer.timeout.connect(tick)
job.start()
report["launcher_pid"] = job.runner.pid
timer.start()
qt.QTimer.singleShot(600_000, app.quit)  # never hang the test run
app.exec_()
print(json.dumps(report), flush=True)
