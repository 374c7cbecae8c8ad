"""The module's default Segment path in a replica of Slicer's own Python, plus the install plan.

The replica is a fresh venv holding exactly the packages Slicer 5.12 installs into its Python
(``slicer_python/slicer-5.12-packages.txt``, read from Slicer's SuperBuild, ``--no-deps``) plus
exactly what the module's install plan says it would install on a fresh Slicer, with the plan's
own constraints (Slicer's packages pinned). For the plan's torch step the local
``torch==2.13.0`` CPU wheel is used, never a download.

Slicer 5.12 runs Python 3.12; these machines have no Python 3.12 (Debian 12 ships 3.11 and
nothing here downloads an interpreter), so the replica is built on Python 3.11: every pinned
package has a 3.11 wheel. VTK, Qt and MRML are compiled into Slicer, not pip packages; the part
of the module driven here (EngineJob, SubprocessRunner, ModelRegistry, dependencies) does not
use them. lkm_core is not installed in the replica: it is found the way the installed extension
puts it, a copy next to a copy of the module's files (the files CMake packages).

Two more replicas take the PyTorch extension's route (``slicer_python/pytorch_extension_standin``:
``PyTorchUtils`` and ``slicer.util`` as the real ones, light-the-torch a stand-in because its
CLI only installs from PyTorch's own index, unreachable here): a fresh Slicer with the extension,
and one with an old torch (2.0.1, real, installed without its dependencies and never imported).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from slicer_fixtures import cmake_lists

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PACKAGES = HERE / "slicer_python" / "slicer-5.12-packages.txt"
DRIVER = HERE / "slicer_python" / "replica_driver.py"
PYTORCH_EXTENSION = HERE / "slicer_python" / "pytorch_extension_standin"
OLD_TORCH = "torch==2.0.1"  # older than the module's TORCH_REQUIREMENT (torch>=2.1)
TORCH_WHEEL_GLOB = "torch-2.13.0+cpu-cp311-*.whl"
WHEEL_DIRS = [Path("/opt/wheels")]


def _clean_env(**extra) -> dict:
    """No PYTHONPATH, no user site: the replica sees only itself (as Slicer's Python does)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME",
                                                                "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", PYTHONUTF8="1", OMP_NUM_THREADS="2", **extra)
    return env


def _run(cmd, timeout=900, env=None, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                            timeout=timeout, env=_clean_env(**(env or {})), **kw)
    assert result.returncode == 0, f"{cmd[:4]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def _driver(python, *args, timeout=1500, env=None) -> dict:
    result = _run([python, DRIVER, *args], timeout=timeout, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _frozen(python) -> list[str]:
    return [_canonical(x) for x in _run([python, "-m", "pip", "freeze", "--all"]).stdout.split()]


def _canonical(pin: str) -> str:
    name, _, version = pin.partition("==")
    return re.sub(r"[-_.]+", "-", name).lower() + "==" + version


def slicer_packages() -> list[str]:
    lines = PACKAGES.read_text(encoding="utf-8").splitlines()
    return [x.strip() for x in lines if x.strip() and not x.startswith("#")]


def install_extension_layout(dest: Path) -> Path:
    """The installed extension's qt-scripted-modules folder: the files CMake packages."""
    lists = cmake_lists(REPO / "LKMSegment" / "CMakeLists.txt")
    module_files = lists["MODULE_PYTHON_SCRIPTS"] + lists["MODULE_PYTHON_RESOURCES"]
    engine_files = lists["LKM_CORE_PYTHON_SCRIPTS"] + lists["LKM_CORE_RESOURCES"]
    for rel in module_files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / "LKMSegment" / rel, dest / rel)
    for rel in engine_files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    return dest


def torch_wheel() -> Path:
    found = sorted(p for d in WHEEL_DIRS for p in d.glob(TORCH_WHEEL_GLOB))
    assert found, f"the local torch 2.13.0 CPU wheel ({TORCH_WHEEL_GLOB}) is not in {WHEEL_DIRS}"
    return found[0]


@pytest.fixture(scope="session")
def bare_replica(tmp_path_factory):
    """Slicer's Python as shipped, next to the module's files; built once, each case copies it."""
    python311 = shutil.which("python3.11")
    assert python311, "Python 3.11 is needed to build the replica of Slicer's Python"
    root = tmp_path_factory.mktemp("slicer-replica")
    venv = root / "python"
    _run([python311, "-m", "venv", venv])
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q",
          *slicer_packages()])
    ext = install_extension_layout(root / "qt-scripted-modules")
    no_engine = subprocess.run([python, "-c", "import lkm_core"], capture_output=True,
                               env=_clean_env(), cwd=root)
    assert no_engine.returncode != 0, "lkm_core must not be importable in the bare replica"
    return {"venv": venv, "ext": ext, "root": root}


def copy_replica(bare, dest: Path) -> Path:
    """A copy of the bare replica (a venv is usable moved: run as ``python -m``); its python."""
    shutil.copytree(bare["venv"], dest / "python", symlinks=True)
    return dest / "python" / "bin" / "python"


@pytest.fixture(scope="session")
def replica(bare_replica, tmp_path_factory):
    """Slicer's packages, then the module's plan (as on a fresh Slicer without the PyTorch extension)."""
    root = tmp_path_factory.mktemp("plan-replica")
    python, ext = copy_replica(bare_replica, root), bare_replica["ext"]
    plan = _driver(python, "plan", ext, root)
    # the plan's pip arguments, with the local CPU wheel for its torch step
    arguments = [str(torch_wheel()) if a.split(">")[0].split("=")[0] == "torch" else a
                 for a in plan["pip_arguments"]]
    assert arguments != plan["pip_arguments"], plan  # a fresh Slicer has no torch
    _run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *arguments])
    return {"python": python, "ext": ext, "root": root, "plan": plan, "frozen": _frozen(python)}


def install_with_extension(python, ext) -> dict:
    """The module's ensureDependencies after the user's OK (install_in_slicer), the PyTorch
    extension installed; its light-the-torch stand-in takes the local CPU torch wheel."""
    return _driver(python, "install", ext, PYTORCH_EXTENSION,
                   env={"LTT_STANDIN_CPU_WHEEL": str(torch_wheel())})


@pytest.fixture(scope="session")
def extension_replica(bare_replica, tmp_path_factory):
    """A fresh Slicer with the PyTorch extension and no torch, after the module's install."""
    python = copy_replica(bare_replica, tmp_path_factory.mktemp("extension-replica"))
    report = install_with_extension(python, bare_replica["ext"])
    return {"python": python, "ext": bare_replica["ext"], "report": report, "frozen": _frozen(python)}


@pytest.mark.slow
def test_the_plan_is_what_the_engine_needs_and_leaves_slicers_packages_as_shipped(replica):
    steps = {s["package"]: s for s in replica["plan"]["steps"]}
    assert set(steps) == {"torch", "safetensors", "slicerio", "pynrrd", "psutil"}
    assert [s["package"] for s in replica["plan"]["speedups"]] == ["numba"]  # optional, on its own
    assert steps["torch"]["how"] == "pip"  # no PyTorch extension in this Slicer
    for pin in slicer_packages():  # numpy, SimpleITK, requests, ... exactly as Slicer ships them
        assert _canonical(pin) in replica["frozen"], f"{pin} was changed by the install plan"


@pytest.mark.slow
def test_default_segment_path_runs_in_slicers_python_with_the_plan(replica, sample_ct, tmp_path):
    report = _driver(replica["python"], "segment", replica["ext"], sample_ct.image, tmp_path)
    assert report["state"] == "done", report["failure"]
    assert Path(report["engine_search_path"]) == replica["ext"]  # the copy next to the module
    assert Path(report["python"]) == replica["python"]
    assert not report["workdir_left"]

    # the .seg.nrrd: every model label a named segment, on the input's exact grid
    seg = slicerio.read_segmentation(report["result"])
    assert [s["name"] for s in seg["segments"]] == report["labels"]
    ct, labels = sitk.ReadImage(str(sample_ct.image)), sitk.ReadImage(report["result"])
    assert labels.GetSize() == ct.GetSize()
    assert np.allclose(labels.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    assert np.allclose(labels.GetSpacing(), ct.GetSpacing(), atol=1e-6)
    assert np.allclose(labels.GetDirection(), ct.GetDirection(), atol=1e-6)

    # the summary agrees with the file, voxel for voxel
    summary = json.loads(Path(report["summary_file"]).read_text(encoding="utf-8"))
    assert summary == report["summary_event"]
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=100)
    by_name = {s["name"]: s["labelValue"] for s in seg["segments"]}
    for entry in summary["labels"]:
        assert entry["voxels"] == counts[by_name[entry["name"]]]
    assert summary["input"]["size"] == list(ct.GetSize())
    liver = next(e for e in summary["labels"] if e["name"] == "liver")
    assert liver["voxels"] > 10_000  # the default model was trained on this CT


@pytest.mark.slow
def test_add_model_and_detect_work_without_a_pip_installed_lkm_core(replica, tmp_path):
    report = _driver(replica["python"], "add-model", replica["ext"], tmp_path)
    assert report["pythonpath"] is None  # nothing but the module put the engine on the path
    assert report["added"] == "lkm-default-abdomen-ct-3mm"
    assert report["listed"] == ["lkm-default-abdomen-ct-3mm"]
    assert "error" not in report["devices"], report["devices"]
    assert report["devices"]["torch"].startswith("2.13.0")


def _site_packages(python: Path) -> Path:
    return next((python.parent.parent / "lib").glob("python3.*/site-packages"))


@pytest.mark.slow
def test_pytorch_extension_route_installs_torch_without_importing_it(extension_replica):
    report = extension_replica["report"]
    assert report["steps"][0] == {"package": "torch", "how": "pytorch-extension",
                                  "requirement": "torch>=2.1", "note": ""}
    assert {s["package"] for s in report["steps"][1:]} == {"safetensors", "slicerio", "pynrrd", "psutil"}
    assert "torch>=2.1 via the PyTorch extension" in report["text"]
    assert report["torch_before"] is None
    # the extension's pip arguments, run with this Python as Slicer's _executePythonModule does;
    # then the module's own pip steps, Slicer's packages pinned
    python = str(extension_replica["python"])
    assert report["commands"][0] == [python, "-m", "light_the_torch", "install", "torch>=2.1", "torchvision"]
    assert [c[:5] for c in report["commands"][1:]] == [[python, "-m", "pip", "install", "-c"]] * 2
    assert report["torch_after"] == "2.13.0+cpu"  # the CPU build, as light-the-torch picks without a GPU
    assert not report["torch_imported"]  # the version was read from the metadata
    # light-the-torch was not there: the extension's own helper installed it on first use
    assert Path(report["light_the_torch"]).parent.parent == _site_packages(extension_replica["python"])
    assert report["notes"] == []  # the optional numba installed too
    assert report["after_steps"] == []  # the next Segment click asks nothing
    for pin in slicer_packages():  # numpy, SimpleITK, ... as Slicer ships them
        assert _canonical(pin) in extension_replica["frozen"], f"{pin} was changed by the install"


@pytest.mark.slow
def test_the_engine_runs_on_torch_from_the_pytorch_extension(extension_replica, tmp_path):
    # Add model (the engine verifies the bundle) and Detect (a child Python imports torch): the
    # full Segment on this torch build is the plan replica's test above
    report = _driver(extension_replica["python"], "add-model", extension_replica["ext"], tmp_path)
    assert report["added"] == "lkm-default-abdomen-ct-3mm"
    assert "error" not in report["devices"], report["devices"]
    assert report["devices"]["torch"] == "2.13.0+cpu"


@pytest.mark.slow
def test_an_old_torch_is_upgraded_through_the_pytorch_extension(bare_replica, tmp_path):
    python = copy_replica(bare_replica, tmp_path)
    # a real old release, as an old PyTorch extension install left it; never imported here
    _run([python, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q", OLD_TORCH],
         timeout=1800)
    report = install_with_extension(python, bare_replica["ext"])
    assert report["torch_before"] == "2.0.1"
    torch_step = report["steps"][0]
    assert (torch_step["how"], torch_step["requirement"]) == ("pytorch-extension", "torch>=2.1")
    assert "PyTorch 2.0.1 is installed, too old: it is upgraded" in report["text"]  # the user is told
    assert report["torch_after"] == "2.13.0+cpu"
    assert not report["torch_imported"]
    assert report["after_steps"] == []  # no prompt on the next click
