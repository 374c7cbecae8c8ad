"""Runs inside the replica of Slicer's Python (Testing/slicer_tests/test_slicer_replica.py), as the module does.

    python replica_driver.py plan MODULE_DIR WORK        -> the install plan for this Python
    python replica_driver.py segment MODULE_DIR CT WORK  -> Segment with the default model
    python replica_driver.py add-model MODULE_DIR WORK   -> Add model + Detect, as the panel does
    python replica_driver.py install MODULE_DIR EXTENSION_DIR
        -> the plan, installed as the module installs it in Slicer (install_in_slicer), with the
           PyTorch extension's module folder EXTENSION_DIR on sys.path (and slicer.util there)

MODULE_DIR is laid out as the installed extension lays out its qt-scripted-modules folder:
LKMSegment.py, LKMSegmentLib/, Resources/ and lkm_core/ side by side. Only that folder is put on
sys.path (as Slicer does for a module); lkm_core is found by the module itself. Prints one JSON
object on the last line of stdout.
"""

import json
import shutil
import sys
from pathlib import Path

command, module_dir = sys.argv[1], sys.argv[2]
sys.path.insert(0, module_dir)


def plan(work: Path) -> dict:
    from LKMSegmentLib import dependencies as deps

    # a fresh Slicer: no PyTorch extension, no GPU
    p = deps.make_plan(pytorch_extension=lambda: False, gpu=lambda: False)
    constraints = deps.write_constraints(work)
    # the speed-ups too (numba installs here): the replica runs the engine as a user's would
    everything = p.pip_requirements + [s.requirement for s in p.speedups]
    return {"steps": [vars(s) for s in p.steps], "speedups": [vars(s) for s in p.speedups],
            "text": p.text(), "pip_arguments": deps.pip_arguments(everything, constraints)}


def segment(ct: str, work: Path) -> dict:
    import SimpleITK as sitk

    from LKMSegmentLib.engine import EngineJob, PredictOptions, safe_case_name
    from LKMSegmentLib.enginecontract import engine_search_path
    from LKMSegmentLib.models import ModelRegistry
    from LKMSegmentLib.process import SubprocessRunner, python_executable

    registry = ModelRegistry([Path(engine_search_path()) / "lkm_core" / "models"],
                             work / "settings" / "models.json")
    model = registry.models()[0]  # the bundled default model, listed first
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    job = EngineJob(PredictOptions(model=str(model.path)), runner=SubprocessRunner(),
                    temp_root=str(work / "tmp"))
    case = safe_case_name("sample CT")
    # the panel writes the volume with MRML's storage node; SimpleITK (shipped by Slicer) here
    sitk.WriteImage(sitk.ReadImage(ct), str(job.input_path(case)))
    job.start()
    state = job.run_to_end(timeout_s=1200)
    out = {"state": state, "engine_search_path": engine_search_path(),
           "python": python_executable(), "command": job.command(),
           "model": str(model.path), "labels": model.label_names,
           "failure": job.failure_message() if state != "done" else "",
           "warnings": job.warnings}
    if state == "done":
        result = job.result_file(case)
        kept = work / "result"
        kept.mkdir(exist_ok=True)
        out["result"] = str(shutil.copy(result, kept / result.name))
        summary = job.output_dir / f"{case}.json"
        out["summary_file"] = str(shutil.copy(summary, kept / summary.name))
        out["summary_event"] = job.summaries.get(case)
    job.cleanup()
    out["workdir_left"] = job.workdir.exists()
    return out


def add_model(work: Path) -> dict:
    import os

    from LKMSegmentLib import dependencies as deps
    from LKMSegmentLib.enginecontract import engine_search_path
    from LKMSegmentLib.models import ModelRegistry
    from LKMSegmentLib.process import python_executable

    registry = ModelRegistry([], work / "settings" / "models.json")
    info = registry.add(Path(engine_search_path()) / "lkm_core" / "models" / "default")
    devices = deps.detect_devices(python_executable())
    return {"added": info.name, "listed": [m.name for m in registry.models()],
            "devices": devices, "pythonpath": os.environ.get("PYTHONPATH")}


def install(extension_dir: str) -> dict:
    import importlib.util

    sys.path.insert(0, extension_dir)  # as Slicer puts an installed extension's module folder
    import slicer.util

    from LKMSegmentLib import dependencies as deps

    commands = []  # every process slicer.util starts, as its command line
    launch = slicer.util.launchConsoleProcess
    slicer.util.launchConsoleProcess = lambda args, **kw: commands.append(list(args)) or launch(args, **kw)

    before = deps.make_plan()  # the module's own checks: PyTorchUtils importable, no NVIDIA GPU
    torch_before = deps.installed_version("torch")
    log = []
    notes = deps.install_in_slicer(before, log=log.append)
    after = deps.make_plan()
    return {"steps": [vars(s) for s in before.steps], "speedups": [vars(s) for s in before.speedups],
            "text": before.text(), "log": log, "notes": notes, "commands": commands,
            "torch_before": torch_before, "torch_after": deps.installed_version("torch"),
            "after_steps": [vars(s) for s in after.steps + after.speedups],
            "torch_imported": "torch" in sys.modules,
            "light_the_torch": importlib.util.find_spec("light_the_torch").origin}


if __name__ == "__main__":
    if command == "plan":
        result = plan(Path(sys.argv[3]))
    elif command == "segment":
        result = segment(sys.argv[3], Path(sys.argv[4]))
    elif command == "install":
        result = install(sys.argv[3])
    else:
        result = add_model(Path(sys.argv[3]))
    print(json.dumps(result, default=str))
