"""How long the panel's Stop holds the GUI thread, against the blocking stop scripts use.

Both stop the same engine (the paper's 3D network, untrained, one 40x224x192 patch on one CPU
thread: a long network step, as in a real run) inside its network step, through a launcher that
forwards no signal and the headless runner. Measured per Stop: the longest time one call on the
caller's thread took (the click, then every 100 ms pump) and the time from the click until every
process of the engine's tree is gone.

    python Testing/benchmarks/stop_gui_hold.py [--repeats 2]

Prints one line per way and the ratio of the longest hold (blocking / panel).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO / "LKMSegment"), str(REPO / "Testing"), str(REPO / "Testing" / "slicer_tests"),
                str(REPO / "Testing" / "slicer_tests" / "slicer_python")]

from engine_helpers import run_cli  # noqa: E402
from LKMSegmentLib.engine import EngineJob, PredictOptions  # noqa: E402
from LKMSegmentLib.process import SubprocessRunner  # noqa: E402
from process_check import alive, process_tree  # noqa: E402

NETWORK_WAIT_S = 6.0


def one_stop(bundle, image, launcher, blocking: bool) -> tuple[float, float]:
    """(longest hold of the caller's thread, click to all processes gone), seconds."""
    job = EngineJob(PredictOptions(model=str(bundle), device="cpu", threads=1), runner=SubprocessRunner(),
                    python=str(launcher))
    job.input_path("case").write_bytes(Path(image).read_bytes())
    job.start()
    since = None
    while since is None or time.monotonic() - since < NETWORK_WAIT_S:
        assert job.pump(), job.failure_message()
        if since is None and "Running the network" in job.progress_text:
            since = time.monotonic()
        time.sleep(0.1)
    tree = [p.pid for p in process_tree(job.runner.pid)]
    clicked = time.monotonic()
    if blocking:
        job.stop()
        longest = time.monotonic() - clicked
    else:
        job.request_stop()
        longest = time.monotonic() - clicked
        while True:
            t0 = time.monotonic()
            running = job.pump()
            longest = max(longest, time.monotonic() - t0)
            if not running and not alive(tree):
                break
            time.sleep(0.1)
    while alive(tree):
        time.sleep(0.02)
    gone = time.monotonic() - clicked
    assert job.state == "stopped", job.state
    return longest, gone


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(tempfile.mkdtemp(prefix="stop-bench-"))
    bundle = work / "bundle"
    result = run_cli("bundle", "init", "--preset", "3d_paper", "--labels", "liver", "-o", bundle)
    assert result.returncode == 0, result.stderr
    array = np.random.default_rng(0).normal(0, 50, (40, 224, 192)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, str(work / "ct.nrrd"))
    launcher = work / "PythonSlicer"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE.parent / "slicer_tests" / "slicer_python" / "launcher.py"}" "$@"\n',
                        encoding="utf-8")
    launcher.chmod(0o755)
    holds = {}
    for name, blocking in (("blocking stop() (baseline)", True), ("panel request_stop()", False)):
        runs = [one_stop(bundle, work / "ct.nrrd", launcher, blocking) for _ in range(args.repeats)]
        holds[name] = max(r[0] for r in runs)
        print(f"{name}: longest hold {holds[name]:.3f} s; click to all gone "
              + ", ".join(f"{r[1]:.2f}" for r in runs) + " s")
    base, new = holds.values()
    print(f"ratio of the longest hold, baseline / panel: {base / max(new, 1e-3):.0f}x")


if __name__ == "__main__":
    main()
