"""Parts of the module's logic that need neither MRML nor the real network (fast)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from slicer_fixtures import bundle  # noqa: F401  (puts LKMSegment/ on sys.path)

from LKMSegmentLib import dependencies as deps  # noqa: E402
from LKMSegmentLib.engine import EngineJob, PredictOptions, safe_case_name  # noqa: E402
from LKMSegmentLib.models import ModelBundleError, ModelRegistry, read_model_info, verify_bundle  # noqa: E402
from LKMSegmentLib.process import SubprocessRunner  # noqa: E402
from LKMSegmentLib.protocol import ProgressTracker, ProtocolParser  # noqa: E402
from scripted_runner import ScriptedRunner  # noqa: E402


# -- protocol ----------------------------------------------------------------------------------
def test_parser_joins_lines_split_across_chunks_and_keeps_stray_text_as_log():
    parser = ProtocolParser()
    line = json.dumps({"event": "progress", "case": "a", "phase": "network", "fraction": 0.5})
    events = parser.feed(line[:10]) + parser.feed(line[10:] + "\nWarning: some library printed\n")
    events += parser.feed(b'{"event": "done", "case": "a", "outputs": []}')
    events += parser.flush()
    assert [e.kind for e in events] == ["progress", "log", "done"]
    assert events[1].message == "Warning: some library printed"


def test_progress_tracker_weights_phases_and_cases():
    tracker = ProgressTracker(["a", "b"])
    parse = ProtocolParser().feed
    (e,) = parse(json.dumps({"event": "progress", "case": "a", "phase": "network", "fraction": 0.5}) + "\n")
    value = tracker.update(e)
    assert 0.2 < value < 0.3 and "a (1/2)" in tracker.text and "network" in tracker.text
    (e,) = parse(json.dumps({"event": "done", "case": "a", "outputs": []}) + "\n")
    assert tracker.update(e) == pytest.approx(0.5)


# -- processes ---------------------------------------------------------------------------------
FAKE_ENGINE = textwrap.dedent("""
    import json, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(json.dumps({"event": "log", "level": "info", "message": f"grandchild {child.pid}"}), flush=True)
    for i in range(1000):
        print(json.dumps({"event": "progress", "case": "x", "phase": "network", "fraction": i / 1000}), flush=True)
        time.sleep(0.05)
""")


def test_stop_kills_the_engine_and_its_children(tmp_path):
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE, encoding="utf-8")
    runner = SubprocessRunner()
    runner.start(sys.executable, [str(script)])
    parser, events = ProtocolParser(), []
    deadline = time.monotonic() + 30
    while not any(e.kind == "progress" for e in events):
        for stream, text in runner.poll():
            events += parser.feed(text) if stream == "stdout" else []
        assert time.monotonic() < deadline
        time.sleep(0.02)
    grandchild = int(events[0].message.split()[-1])
    runner.stop(grace_s=2)
    assert runner.is_finished() or runner.wait(5)
    for pid in (runner.pid, grandchild):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            try:  # reap if it is our zombie
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
        else:
            pytest.fail(f"process {pid} survived Stop")


def _job(runner, tmp_path, **kw):
    job = EngineJob(PredictOptions(model="/models/m", **kw), runner=runner, temp_root=str(tmp_path))
    job.input_path("case1").write_bytes(b"")
    job.start()
    return job


def test_engine_crash_is_reported_with_its_log_and_nothing_is_left(tmp_path):
    runner = ScriptedRunner(
        ['{"event": "progress", "case": "case1", "phase": "read", "fraction": 1.0}'],
        ["Traceback (most recent call last):", '  File "x.py", line 1', "MemoryError"], 1)
    job = _job(runner, tmp_path)
    assert job.run_to_end(poll_s=0) == "failed"
    message = job.failure_message()
    assert "exit code 1" in message and "MemoryError" in message and "No result for: case1" in message
    job.cleanup()
    assert os.listdir(tmp_path) == []


def test_engine_errors_and_fallback_warnings_reach_the_user(tmp_path):
    runner = ScriptedRunner([
        '{"event": "log", "level": "warning", "message": "CUDA out of memory: continuing on CPU"}',
        '{"event": "error", "case": "case1", "kind": "bad_input", "message": "image is 2D"}'], [], 1)
    job = _job(runner, tmp_path, device="cuda")
    job.run_to_end(poll_s=0)
    assert job.warnings == ["CUDA out of memory: continuing on CPU"]
    assert "case1: image is 2D" in job.failure_message()


def test_command_line_follows_the_engine_contract(tmp_path):
    runner = ScriptedRunner([], [], 0)
    _job(runner, tmp_path, device="cuda", quick=True, tta=True, step=0.5, subset=["liver", "spleen"],
         threads=2)
    program, args, env = runner.started
    assert args[:3] == ["-m", "lkm_core", "predict"]
    assert args[3].endswith("case1.nrrd")
    joined = " ".join(args)
    for part in ("--device cuda", "--quick", "--tta", "--step 0.5", "--subset liver,spleen",
                 "--threads 2", "--progress json", "--format seg.nrrd"):
        assert part in joined
    assert env["TMPDIR"].startswith(str(tmp_path)) and "PYTHONPATH" in env
    assert "--no-tta" in PredictOptions(model="m").arguments([], "out")  # unticked: no mirroring
    with pytest.raises(ValueError):
        PredictOptions(model="m", device="gpu0").arguments([], "out")
    # no choice made: all cores but one, so that Slicer's GUI stays responsive
    default = PredictOptions(model="m").arguments([], "out")
    cores = os.cpu_count() or 2
    assert default[default.index("--threads") + 1] == str(max(1, cores - 1))


def test_case_names_are_safe_and_unique():
    assert safe_case_name("CT 1.5 mm (arterial)") == "CT_1_5_mm_arterial"
    assert safe_case_name("CT", {"CT", "CT_2"}) == "CT_3"
    assert safe_case_name("äöü") == "case"


# -- dependencies ------------------------------------------------------------------------------
def test_plan_installs_torch_through_the_pytorch_extension_and_never_touches_slicer_packages():
    present = {"numpy", "SimpleITK"}  # a fresh Slicer: none of the engine's packages
    plan = deps.make_plan(installed=lambda r: deps.requirement_name(r) in present, system="Linux",
                          gpu=lambda: True, pytorch_extension=lambda: True)
    assert [(s.package, s.how) for s in plan.steps] == [
        ("torch", "pytorch-extension"), ("safetensors", "pip"), ("slicerio", "pip"),
        ("pynrrd", "pip"), ("psutil", "pip")]
    # numba only speeds up the CPU scan: tried on its own, never a reason Segment cannot run
    assert [(s.package, s.requirement) for s in plan.speedups] == [("numba", "numba>=0.68")]
    # together: the file shipped with the module
    assert plan.pip_requirements + [s.requirement for s in plan.speedups] == deps.read_requirements()
    assert "numba>=0.68 with pip, if it installs here" in plan.text()
    assert [s.package for s in plan.optional] == ["mamba_ssm"]
    assert not {s.package for s in plan.steps} & set(deps.PROTECTED)
    assert "numpy, SimpleITK, requests, ...) are not changed" in plan.text()

    plan = deps.make_plan(installed=lambda r: False, system="Windows", gpu=lambda: True,
                          pytorch_extension=lambda: False)
    assert plan.steps[0].how == "pip" and "PyTorch extension" in plan.steps[0].note
    assert not plan.optional  # mamba-ssm only on Linux with CUDA

    asked = []  # nvidia-smi is not run when nothing is missing (every Segment click checks)
    everything = deps.make_plan(installed=lambda r: deps.requirement_name(r) != "mamba-ssm", system="Linux",
                                gpu=lambda: asked.append(1) or True)
    assert not everything.needed and "All required" in everything.text() and asked == []


def test_install_pins_every_slicer_package_and_uses_pip_ensure_where_slicer_has_it(tmp_path):
    plan = deps.make_plan(installed=lambda r: False, system="Linux", gpu=lambda: False,
                          pytorch_extension=lambda: True)
    calls = []
    with pytest.raises(RuntimeError, match="PyTorch Utils"):
        deps.install(plan, pip_install=calls.append, torch_installer=lambda: None, log=lambda m: None)
    assert calls == []  # nothing is installed after a failed torch step

    constraints = deps.write_constraints(tmp_path)
    pins = constraints.read_text(encoding="utf-8").split()
    import numpy
    import SimpleITK
    assert f"numpy=={numpy.__version__}" in pins
    assert any(p.lower() == f"simpleitk=={SimpleITK.__version__}".lower() for p in pins)

    required = deps.read_requirements()[:-1]
    deps.install(plan, pip_install=calls.append, torch_installer=lambda: object(),
                 log=lambda m: None, constraints_file=constraints)  # Slicer 5.10: pip_install
    assert calls == [["-c", str(constraints), *required], ["-c", str(constraints), "numba>=0.68"]]
    ensured = []
    deps.install(plan, pip_install=calls.append, torch_installer=lambda: object(), log=lambda m: None,
                 pip_ensure=lambda reqs, **kw: ensured.append((reqs, kw)),
                 constraints_file=constraints)  # Slicer 5.11+: pip_ensure with the same files
    from packaging.requirements import Requirement
    options = {"constraints": str(constraints), "prompt_install": False, "requester": "LKMSegment",
               "skip_in_testing": False}
    assert [(list(map(str, reqs)), kw) for reqs, kw in ensured] == [(required, options),
                                                                     (["numba>=0.68"], options)]
    assert all(isinstance(r, Requirement) for r in ensured[0][0])  # what every pip_ensure takes
    assert len(calls) == 2


def test_an_old_torch_is_named_in_the_plan_and_not_pinned_against_its_upgrade(monkeypatch, tmp_path):
    versions = {"torch": "2.0.1"}  # what the metadata says; torch is never imported to ask
    monkeypatch.setattr(deps, "installed_version", lambda name: versions.get(name))
    for extension in (True, False):
        plan = deps.make_plan(installed=deps.is_satisfied, system="Linux", gpu=lambda: False,
                              pytorch_extension=lambda: extension, requirements=[])
        assert [(s.package, s.requirement) for s in plan.steps] == [("torch", "torch>=2.1")]
        assert "PyTorch 2.0.1 is installed, too old: it is upgraded" in plan.text()
    # the pip route (no PyTorch extension): a torch==2.0.1 pin would make pip refuse torch>=2.1
    monkeypatch.undo()
    calls = []
    deps.install(plan, pip_install=calls.append, log=lambda m: None)
    assert calls == [["-c", calls[0][1], "torch>=2.1"]]
    pins = Path(calls[0][1]).read_text(encoding="utf-8").split()
    assert not [p for p in pins if p.lower().startswith("torch==")]
    import numpy
    assert f"numpy=={numpy.__version__}" in pins  # Slicer's own packages stay pinned
    assert "torch==" in deps.write_constraints(tmp_path).read_text(encoding="utf-8")  # pinned otherwise


def test_a_speedup_that_cannot_install_is_a_note_and_the_rest_is_installed():
    plan = deps.make_plan(installed=lambda r: False, system="Linux", gpu=lambda: False,
                          pytorch_extension=lambda: True)
    calls, logged = [], []

    def pip_install(arguments):
        if "numba>=0.68" in arguments:
            raise RuntimeError("No matching distribution found for numba>=0.68")
        calls.append(arguments)
    notes = deps.install(plan, pip_install=pip_install, torch_installer=lambda: "2.13.0",
                         log=logged.append, constraints_file="pins.txt")
    assert calls == [["-c", "pins.txt", *deps.read_requirements()[:-1]]]
    assert len(notes) == 1 and "numba could not be installed" in notes[0] and "works without it" in notes[0]
    assert notes[0] in logged


def test_device_description_says_what_auto_will_use():
    assert "GPU: RTX (8.0 GB)" in deps.describe_devices(
        {"torch": "2.4", "cuda": True, "devices": [{"name": "RTX", "memory_gb": 8.0}]})
    assert "CPU" in deps.describe_devices({"torch": "2.4", "cuda": False, "devices": []})
    assert "could not be loaded" in deps.describe_devices({"error": "PyTorch could not be loaded: x"})


# -- models ------------------------------------------------------------------------------------
def test_model_details_are_read_without_the_engine(bundle):
    info = read_model_info(bundle)
    assert info.label_names == ["liver", "spleen", "kidney_right"]
    assert info.label_table() == {"liver": 1, "spleen": 2, "kidney_right": 3}
    text = info.summary()
    assert "Modality: CT" in text and "Licence: Apache-2.0" in text and "kidney_right" in text
    assert info.dimension == "3d" and "Model: 3D" in text  # the user sees 2D or 3D
    assert info.list_entry() == f"{info.name} {info.version} (3D)"


def test_a_2d_model_says_2d_in_the_model_list_and_details(tmp_path):
    from engine_helpers import make_bundle

    bundle2d = make_bundle(tmp_path / "b2d", dimension="2d", spacing=(1.0, 1.0), patch=(16, 16))
    info = read_model_info(bundle2d.path)
    assert info.dimension == "2d"
    assert info.list_entry().endswith("(2D)")
    assert "Model: 2D (segments a volume slice by slice" in info.summary()


def test_adding_a_model_validates_it_first_and_lists_the_default_first(bundle, tmp_path):
    import shutil

    defaults = tmp_path / "models"
    shutil.copytree(bundle, defaults / "default")
    registry = ModelRegistry([defaults], tmp_path / "settings" / "models.json")
    added = registry.add(bundle)  # the engine checks it (sha256 of the weights)
    assert added.name == "untrained-3d_small"
    assert [m.path for m in registry.models()] == [defaults / "default", bundle.resolve()]

    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    weights = next(tampered.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match="refused"):
        registry.add(tampered)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelBundleError, match="no model.json"):
        registry.add(tmp_path / "empty", verifier=verify_bundle)
    assert len(registry.models()) == 2
