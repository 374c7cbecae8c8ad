"""Batches that run for days: an unwritable output folder is refused before any network runs, a
disk that fills up stops the batch cleanly, OS errors are one line for the user, and the
pipelined batch writes the same bytes as the sequential one and cancels cleanly.

The CLI runs in-process (fast) with a tiny untrained bundle; the operating system's refusals are
injected where this machine cannot make them for real (tests run as root: permissions do not
bind, and there is no read-only mount to use).
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import sys
import tempfile
import threading

import numpy as np
import pytest
import SimpleITK as sitk

from engine_helpers import oblique_direction, run_cli, sphere_image
from engine_helpers import predict_in_process as run
from lkm_core import contract, files
from lkm_core.outputs import labels as outputs
from lkm_core.batch.runner import BatchSettings, run_batch
from lkm_core.batch.runner import check_output_folder_or_fail
from lkm_core.batch.report import BatchReport
from lkm_core.bundle import load_bundle
from lkm_core.inference.predictor import Predictor


def _ct(size, spacing=(2.0, 2.0, 2.5), direction=None, seed=0):
    image, _ = sphere_image(size=size, spacing=spacing, direction=direction,
                            origin=(3.0, -5.0, 7.0), value=200.0, background=-100.0)
    array = sitk.GetArrayFromImage(image)
    array += np.random.default_rng(seed).normal(0, 40, array.shape).astype(np.float32)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Four small CTs of different shapes and orientations (one oblique, one flipped)."""
    folder = tmp_path_factory.mktemp("inputs")
    flipped = np.diag([-1.0, 1.0, -1.0])
    images = [_ct((40, 36, 30)), _ct((33, 41, 27), direction=oblique_direction(25), seed=1),
              _ct((48, 30, 22), spacing=(1.5, 1.7, 3.0), direction=flipped, seed=2),
              _ct((30, 30, 30), seed=3)]
    paths = []
    for i, image in enumerate(images):
        path = folder / f"case{i}.nrrd"
        sitk.WriteImage(image, str(path))
        paths.append(path)
    return paths


class NetworkCalls:
    """Counts network runs (Predictor.infer) without changing them."""

    def __init__(self, monkeypatch):
        self.cases = []
        original = Predictor.infer

        def infer(predictor, loaded):
            self.cases.append(loaded.case)
            return original(predictor, loaded)
        monkeypatch.setattr(Predictor, "infer", infer)


def report_rows(out):
    with open(out / "batch_report.csv", newline="", encoding="utf-8") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


# -- 1. fail fast ---------------------------------------------------------------------------------
def test_a_write_error_names_the_final_file_not_its_temporary_name(tmp_path):
    target = tmp_path / "case.json"
    with pytest.raises(OSError) as caught:
        with files.atomic_path(target) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_unwritable_output_folder_is_refused_before_any_network_call(tmp_path, capsys, monkeypatch,
                                                                     small_bundle, cases, code):
    out = tmp_path / "out"
    real_mkstemp = tempfile.mkstemp

    def refusing_mkstemp(*args, dir=None, **kwargs):  # the first write into the output folder
        if dir is not None and str(out) in str(dir):
            raise OSError(code, os.strerror(code), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", refusing_mkstemp)
    calls = NetworkCalls(monkeypatch)
    status, err = run(capsys, cases, out, small_bundle)
    assert status == 1 and calls.cases == []
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert str(out) in lines[0] and "Cannot write to the output folder" in lines[0]
    assert "Traceback" not in err and "Unexpected error" not in err


def test_free_space_below_the_estimate_is_warned_about(tmp_path, monkeypatch, small_bundle, cases):
    """The estimate is from the inputs' sizes: a disk with 1 byte free gets a warning that names
    the folder (and the batch still runs: the estimate is deliberately high)."""
    monkeypatch.setattr(contract, "free_bytes", lambda folder: 1)
    messages = []
    import logging
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("lkm_core.batch.runner")
    logger.addHandler(handler)
    try:
        check_output_folder_or_fail(tmp_path / "out", cases, "seg.nrrd", False)
    finally:
        logger.removeHandler(handler)
    assert len(messages) == 1 and str(tmp_path / "out") in messages[0]
    size = sum(p.stat().st_size for p in cases)
    assert contract.format_bytes(contract.estimated_output_bytes(size)) in messages[0] or \
        "may need up to" in messages[0]


# -- 2. stop cleanly ------------------------------------------------------------------------------
@pytest.mark.parametrize("pipeline", ["off", pytest.param("on", marks=pytest.mark.slow)])
def test_full_disk_on_the_second_case_stops_the_batch(tmp_path, capsys, monkeypatch, small_bundle,
                                                      cases, pipeline):
    out = tmp_path / "out"
    writes = []
    real_write = outputs.write_seg_nrrd

    def filling_disk(labels, label_list, path, confidence=None):
        writes.append(path)
        if len(writes) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(labels, label_list, path, confidence)
    monkeypatch.setattr(outputs, "write_seg_nrrd", filling_disk)
    calls = NetworkCalls(monkeypatch)
    status, err = run(capsys, cases, out, small_bundle, "--report", "--pipeline", pipeline)
    assert status == 1
    # sequential: no case computed after the failing one; pipelined: at most the one in flight
    assert len(calls.cases) == (2 if pipeline == "off" else 3), calls.cases
    rows = report_rows(out)
    assert rows["case0"]["status"] == "done"
    assert rows["case1"]["status"] == "failed" and "No space left" in rows["case1"]["message"]
    assert [rows[c]["status"] for c in ("case2", "case3")] == ["not done", "not done"]
    assert "No space left" in rows["case3"]["message"]
    assert sorted(p.name for p in out.iterdir()) == ["batch_report.csv", "case0.json",
                                                      "case0.seg.nrrd"]
    assert "Traceback" not in err and "Unexpected error" not in err
    assert "the next case needs about" in err and ("MB" in err or "KB" in err)


def test_an_itk_write_on_a_full_disk_becomes_the_operating_systems_error(tmp_path, monkeypatch):
    """ITK says only RuntimeError; the probe in the same folder finds the cause (here ENOSPC on
    the probe's write) and that OSError, naming the file asked for, is what comes out."""
    image = sitk.Image([4, 4, 4], sitk.sitkUInt8)

    def itk_fails(*args, **kwargs):
        raise RuntimeError("itk::ExceptionObject: Could not write file")
    monkeypatch.setattr(outputs.sitk, "WriteImage", itk_fails)
    real_write = os.write
    monkeypatch.setattr(outputs.os, "write", lambda fd, data: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError) as caught:
        outputs.write_labelmap(image, tmp_path / "case.nii.gz")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "case.nii.gz")
    monkeypatch.setattr(outputs.os, "write", real_write)  # a folder that takes files: ITK's own
    with pytest.raises(RuntimeError, match="Could not write"):
        outputs.write_labelmap(image, tmp_path / "case.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_under_a_labelmap_format_stops_the_batch(tmp_path, capsys, monkeypatch,
                                                              small_bundle, cases):
    out = tmp_path / "out"
    real_write, writes = sitk.WriteImage, []

    def filling_disk(image, path, *args, **kwargs):
        if str(path).endswith(".partial.nii.gz"):
            writes.append(path)
            if len(writes) >= 2:
                monkeypatch.setattr(outputs.os, "write", lambda fd, data: (_ for _ in ()).throw(
                    OSError(errno.ENOSPC, "No space left on device")))
                raise RuntimeError("itk::ExceptionObject: Could not write file")
        return real_write(image, path, *args, **kwargs)
    monkeypatch.setattr(outputs.sitk, "WriteImage", filling_disk)
    status, err = run(capsys, cases, out, small_bundle, "--report", "--pipeline", "off",
                      "--format", "nii.gz")
    assert status == 1
    rows = report_rows(out)
    assert rows["case0"]["status"] == "done" and rows["case1"]["status"] == "failed"
    assert [rows[c]["status"] for c in ("case2", "case3")] == ["not done", "not done"]
    assert "Traceback" not in err and "Unexpected error" not in err and "No space left" in err


@pytest.mark.slow
def test_a_full_disk_stops_the_network_already_running_on_the_next_case(tmp_path, capsys,
                                                                       monkeypatch, small_bundle,
                                                                       cases):
    """Pipelined: case0's write fails while case1's network runs; case1 is not finished (its
    network stops at its next check) and nothing of it is written."""
    out = tmp_path / "out"
    case1_running = threading.Event()
    outcomes = {}
    original = Predictor.infer

    def infer(predictor, loaded):
        if loaded.case == "case1":
            case1_running.set()
        try:
            result = original(predictor, loaded)
        except BaseException as exc:
            outcomes[loaded.case] = type(exc).__name__
            raise
        outcomes[loaded.case] = "finished"
        return result
    monkeypatch.setattr(Predictor, "infer", infer)

    def full_disk(labels, label_list, path, confidence=None):
        assert case1_running.wait(60)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(outputs, "write_seg_nrrd", full_disk)
    status, err = run(capsys, cases, out, small_bundle, "--report", "--pipeline", "on")
    assert status == 1
    assert outcomes == {"case0": "finished", "case1": "Cancelled"}, outcomes
    rows = report_rows(out)
    assert rows["case0"]["status"] == "failed"
    assert [rows[c]["status"] for c in ("case1", "case2", "case3")] == ["not done"] * 3
    assert sorted(p.name for p in out.iterdir()) == ["batch_report.csv"]


def test_removed_output_folder_stops_the_batch(tmp_path, capsys, monkeypatch, small_bundle, cases):
    import shutil
    out = tmp_path / "out"
    real_write = outputs.write_json

    def then_remove(data, path):  # the folder goes away after the first case is written
        written = real_write(data, path)
        shutil.rmtree(out)
        return written
    monkeypatch.setattr(outputs, "write_json", then_remove)
    calls = NetworkCalls(monkeypatch)
    status, err = run(capsys, cases, out, small_bundle, "--pipeline", "off")
    assert status == 1 and len(calls.cases) == 2
    assert not out.exists()  # not silently recreated
    assert "removed" in err and "Traceback" not in err


# -- 3. OS errors are the user's --------------------------------------------------------------
def test_os_error_is_one_line_and_the_traceback_only_with_verbose(tmp_path, capsys, monkeypatch,
                                                                  small_bundle, cases):
    def too_long(labels, label_list, path, confidence=None):
        raise OSError(errno.ENAMETOOLONG, "File name too long", str(path))
    monkeypatch.setattr(outputs, "write_seg_nrrd", too_long)
    status, err = run(capsys, cases[:1], tmp_path / "a", small_bundle)
    assert status == 1
    assert err.strip().count("\n") == 0, err
    assert "case0.seg.nrrd" in err and "too long" in err and "Traceback" not in err
    status, err = run(capsys, cases[:1], tmp_path / "b", small_bundle, "--verbose")
    assert status == 1 and "Traceback" in err


def test_a_bug_keeps_unexpected_error_and_its_traceback(tmp_path, capsys, monkeypatch,
                                                        small_bundle, cases):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(outputs, "summarize", broken)
    status, err = run(capsys, cases[:1], tmp_path / "out", small_bundle)
    assert status == 1 and "Unexpected error" in err and "Traceback" in err


def test_os_error_reaches_the_slicer_panel_as_one_line(tmp_path, small_bundle, cases):
    """The engine (a real child process) meets an output folder it cannot create; the module
    reads its protocol lines and shows the user one line, no traceback."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from slicer_fixtures import bundle  # noqa: F401  (puts LKMSegment/ on sys.path)
    from scripted_runner import ScriptedRunner
    from LKMSegmentLib.engine import EngineJob, PredictOptions

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = run_cli("predict", cases[0], "-o", blocker / "out", "--model", small_bundle,
                   "--device", "cpu", "--progress", "json")
    assert done.returncode == 1
    job = EngineJob(PredictOptions(model=str(small_bundle)),
                    runner=ScriptedRunner(done.stdout.splitlines(), done.stderr.splitlines(), 1),
                    temp_root=str(tmp_path))
    job.input_path("case0").write_bytes(b"x")
    job.start()
    assert job.run_to_end(poll_s=0) == "failed"
    message = job.failure_message()
    engine_said = message.split("\n\n")[0].splitlines()
    assert engine_said[0] == "The engine reported:" and len(engine_said) == 2
    assert str(blocker / "out") in engine_said[1] and "Not a directory" in engine_said[1]
    assert "Traceback" not in message


def test_the_panel_checks_its_output_folder_before_the_engine_starts(tmp_path, monkeypatch):
    from slicer_fixtures import bundle  # noqa: F401
    from scripted_runner import ScriptedRunner
    from LKMSegmentLib.engine import EngineJob, PredictOptions

    runner = ScriptedRunner([], [], 0)
    job = EngineJob(PredictOptions(model="m"), runner=runner, temp_root=str(tmp_path))
    job.input_path("case0").write_bytes(b"x")
    real_mkstemp = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and str(job.output_dir) in str(dir):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(contract.OutputFolderError) as caught:
        job.start()
    assert runner.started is None  # the engine never started
    text = str(caught.value)
    assert "\n" not in text and str(job.output_dir) in text and "Read-only" in text
    job.cleanup()


# -- 4. pipelined batch ---------------------------------------------------------------------------
def _without_write_date(path) -> bytes:
    """The file's bytes less pynrrd's '# on <date>' comment (.seg.nrrd): the rest must match."""
    return re.sub(rb"\n# on [^\n]*\n", b"\n", path.read_bytes(), count=1)


def _without_timings(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("timings")
    return data


@pytest.mark.slow
def test_pipelined_outputs_are_bit_identical_to_sequential(tmp_path, capsys, small_bundle, cases):
    folders = {}
    for mode in ("off", "on"):
        folders[mode] = tmp_path / mode
        status, err = run(capsys, cases, folders[mode], small_bundle, "--pipeline", mode,
                              "--confidence-map")
        assert status == 0, err
    names = sorted(p.name for p in folders["off"].iterdir())
    assert names == sorted(p.name for p in folders["on"].iterdir()) and len(names) == 12
    for name in names:
        a, b = folders["off"] / name, folders["on"] / name
        if name.endswith(".json"):
            assert _without_timings(a) == _without_timings(b), name
        else:
            assert _without_write_date(a) == _without_write_date(b), name


@pytest.mark.slow
def test_pipelined_rerun_computes_only_the_missing_cases(tmp_path, capsys, monkeypatch,
                                                         small_bundle, cases):
    out = tmp_path / "out"
    assert run(capsys, cases[:3], out, small_bundle, "--pipeline", "on")[0] == 0
    for p in [*out.glob("case0.*"), *out.glob("case2.*")]:
        p.unlink()
    calls = NetworkCalls(monkeypatch)  # case2 is read ahead past case1, which is there
    assert run(capsys, cases[:3], out, small_bundle, "--pipeline", "on", "--report")[0] == 0
    assert calls.cases == ["case0", "case2"]
    rows = report_rows(out)
    assert [rows[c]["status"] for c in ("case0", "case1", "case2")] == ["done", "exists", "done"]


def _run_pipelined(bundle_path, cases, out, cancel, events):
    bundle = load_bundle(bundle_path)
    predictor = Predictor(bundle, device="cpu", threads=1, progress=events.append, cancel=cancel)
    report = BatchReport(None)
    failures = []
    check_output_folder_or_fail(out, cases, "seg.nrrd", False)  # as the CLI does: creates it
    code = run_batch([(p.name.split(".")[0], p) for p in cases], predictor, bundle,
                     BatchSettings(out, pipeline=True), reporter=events.append, report=report,
                     cancel=cancel, on_failure=lambda case, error, exc_info: failures.append(
                         (case, error)))
    return code, report, failures


def test_pipelined_progress_events_come_in_order_per_case(tmp_path, small_bundle, cases):
    events = []
    code, report, failures = _run_pipelined(small_bundle, cases, tmp_path / "out",
                                            lambda: False, events)
    assert code == 0 and not failures
    names = [p.name.split(".")[0] for p in cases]
    done = [e["case"] for e in events if e["event"] == "done"]
    assert done == names and [r["case"] for r in report.rows] == names
    for case in names:
        phases = [(e["phase"], e["fraction"]) for e in events
                  if e.get("case") == case and e["event"] == "progress"]
        order = [contract.PHASES.index(p) for p, _ in phases]
        assert order == sorted(order) and phases[0] == ("read", 0.0) and \
            phases[-1] == ("write", 1.0), case


def test_cancel_during_a_pipelined_run_leaves_nothing_half_written(tmp_path, small_bundle, cases):
    """Stop is asked for while case1's network runs, with case0 being exported and case2 read
    ahead: the run ends, every case has all its files or none, no temporary file is left."""
    stop = threading.Event()
    events = []

    def on_event(event):
        events.append(event)
        if event.get("case") == "case1" and event.get("phase") == "network":
            stop.set()
    out = tmp_path / "out"
    code, report, failures = _run_pipelined(small_bundle, cases, out, stop.is_set,
                                            _Recorder(on_event))
    assert code == 1 and stop.is_set()
    assert any(error.kind == "cancelled" for _, error in failures)
    files = sorted(p.name for p in out.iterdir())
    assert not [f for f in files if "partial" in f or f.startswith(".")], files
    for case in ("case0", "case1", "case2", "case3"):
        mine = [f for f in files if f.split(".")[0] == case]
        assert mine in ([], [f"{case}.json", f"{case}.seg.nrrd"]), files
    assert not any(f.startswith(("case2", "case3")) for f in files)


class _Recorder(list):
    def __init__(self, on_event):
        super().__init__()
        self.on_event = on_event

    def append(self, event):
        super().append(event)
        self.on_event(event)


@pytest.mark.slow
def test_cancel_file_stops_a_pipelined_cli_run_at_once(tmp_path, small_bundle, cases):
    """The real command line in a child process: the cancel file appears while case1's network
    runs; the run ends (the main thread is interrupted, the read-ahead abandoned) with every case
    all its files or none."""
    import subprocess
    out, stop = tmp_path / "out", tmp_path / "cancel"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "lkm_core", "predict", *map(str, cases), "-o",
                             str(out), "--model", str(small_bundle), "--device", "cpu",
                             "--threads", "1", "--progress", "json", "--pipeline", "on",
                             "--cancel-file", str(stop)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1].get("case") == "case1" and events[-1].get("phase") == "network":
            stop.touch()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in proc.stderr.read()
    assert any(e["event"] == "error" and e["kind"] == "cancelled" for e in events)
    files = sorted(p.name for p in out.iterdir())
    assert not [f for f in files if "partial" in f or f.startswith(".")], files
    for case in ("case0", "case1"):
        assert [f for f in files if f.split(".")[0] == case] in ([], [f"{case}.json",
                                                                    f"{case}.seg.nrrd"]), files
    assert not any(f.startswith(("case2", "case3")) for f in files), files
