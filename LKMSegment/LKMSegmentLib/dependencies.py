"""What the engine needs in Slicer's Python, and how to get it without breaking Slicer.

The plan is exactly what lkm_core (and the module's Stop, psutil) import at run time that Slicer
does not ship, written once in ``Resources/engine-requirements.txt`` (shipped with the module):
safetensors, slicerio + pynrrd, psutil, numba; and PyTorch, which comes separately:

- torch through the PyTorch extension's helper (``PyTorchUtils``), which picks the CUDA build
  that matches the computer; plain pip (the package index's default build) only when that
  extension is missing;
- the rest with ``slicer.packaging.pip_ensure`` and the requirements file (Slicer 5.11+), or
  ``slicer.util.pip_install`` (older);
- always with a constraints file that pins every distribution already in Slicer's Python at its
  installed version (numpy, SimpleITK, requests, ...): pip cannot upgrade or replace them;
- numba (``SPEEDUPS``) only speeds up the CPU scan: it is installed on its own after the rest
  and, where it cannot be installed, the module goes on without it (the engine falls back to
  its torch scan and says so);
- mamba-ssm (CUDA kernels, optional, speed only) is never installed automatically: it has no
  wheels and needs a compiler; the engine's own scan is used without it.

Nothing is installed at import or without the user's confirmation (:func:`install` is called
by the panel after the user accepted :meth:`DependencyPlan.text`). Checking reads package
metadata only; torch is never imported into the Slicer process.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .enginecontract import engine_environment
from .process import BackgroundCommand, SubprocessRunner

DETECT_TIMEOUT_S = 120.0

REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "Resources" / "engine-requirements.txt"
PROTECTED = ("numpy", "SimpleITK", "requests")  # Slicer's; pinned, never installed by the plan
TORCH_REQUIREMENT = "torch>=2.1"
SPEEDUPS = ("numba",)  # in the requirements file, but the engine runs without them
REQUESTER = "LKMSegment"


def read_requirements(path=REQUIREMENTS_FILE) -> list[str]:
    """The requirement lines of a requirements file (comments and pip options skipped, as
    slicer.packaging.load_requirements does)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [x.strip() for x in lines if x.strip() and not x.strip().startswith(("#", "-"))]


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def allows(requirement: str, version: str) -> bool:
    """Whether ``version`` satisfies ``requirement`` (pre-releases count)."""
    try:
        from packaging.requirements import Requirement  # Slicer ships packaging
    except ImportError:
        return True
    return Requirement(requirement).specifier.contains(version, prereleases=True)


def is_satisfied(requirement: str) -> bool:
    """Installed at a version the requirement allows (package metadata only, nothing imported)."""
    version = installed_version(requirement_name(requirement))
    return version is not None and allows(requirement, version)


def too_old_torch() -> str | None:
    """The installed torch's version when it does not satisfy TORCH_REQUIREMENT (metadata only:
    an old torch is never imported)."""
    version = installed_version("torch")
    return version if version is not None and not allows(TORCH_REQUIREMENT, version) else None


@dataclass
class Step:
    package: str
    how: str  # "pytorch-extension", "pip", "manual"
    requirement: str
    note: str = ""


@dataclass
class DependencyPlan:
    steps: list[Step] = field(default_factory=list)
    optional: list[Step] = field(default_factory=list)
    speedups: list[Step] = field(default_factory=list)  # tried with the steps; failure is no error

    @property
    def needed(self) -> bool:
        return bool(self.steps)

    @property
    def pip_requirements(self) -> list[str]:
        """The requirement strings pip installs (torch included when no PyTorch extension)."""
        return [s.requirement for s in self.steps if s.how == "pip"]

    def text(self) -> str:
        if not self.steps:
            return "All required Python packages are installed."
        lines = ["LKMSegment needs these Python packages, which will be installed now:"]
        for s in self.steps:
            via = {"pytorch-extension": "via the PyTorch extension (matches your GPU)",
                   "pip": "with pip"}.get(s.how, s.how)
            lines.append(f"  - {s.requirement} {via}" + (f" ({s.note})" if s.note else ""))
        for s in self.speedups:
            lines.append(f"  - {s.requirement} with pip, if it installs here ({s.note})")
        lines.append("This can take several minutes and downloads up to a few GB (PyTorch).")
        lines.append("Slicer's own packages (numpy, SimpleITK, requests, ...) are not changed.")
        return "\n".join(lines)


def nvidia_gpu_present() -> bool:
    """A cheap hint without torch: an NVIDIA driver tool on PATH that lists a GPU."""
    tool = shutil.which("nvidia-smi")
    if not tool:
        return False
    try:
        out = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def _module_present(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def make_plan(installed=None, system: str | None = None, gpu=nvidia_gpu_present,
              pytorch_extension=None, requirements: list[str] | None = None) -> DependencyPlan:
    """Build the install plan. ``installed(requirement) -> bool``, ``pytorch_extension()``
    and ``gpu()`` are injectable for tests (default: this Python's metadata)."""
    installed = installed or is_satisfied
    pytorch_extension = pytorch_extension or (lambda: _module_present("PyTorchUtils"))
    system = system or platform.system()
    plan = DependencyPlan()
    if not installed(TORCH_REQUIREMENT):
        old = too_old_torch()
        upgrade = f"PyTorch {old} is installed, too old: it is upgraded" if old else ""
        if pytorch_extension():
            plan.steps.append(Step("torch", "pytorch-extension", TORCH_REQUIREMENT, upgrade))
        else:
            plan.steps.append(Step("torch", "pip", TORCH_REQUIREMENT, "; ".join(filter(None, (
                upgrade, "the package index's default build; install the PyTorch "
                "extension to get the build that matches your GPU")))))
    speedups = {_canonical(p) for p in SPEEDUPS}
    for requirement in (requirements if requirements is not None else read_requirements()):
        if installed(requirement):
            continue
        name = requirement_name(requirement)
        if _canonical(name) in speedups:
            plan.speedups.append(Step(name, "pip", requirement, "optional: a faster CPU scan"))
        else:
            plan.steps.append(Step(name, "pip", requirement))
    # the GPU hint (nvidia-smi, up to seconds) only when there is something to install anyway:
    # never on every click of an installed module
    if plan.steps and system == "Linux" and not installed("mamba-ssm") and gpu():
        plan.optional.append(Step("mamba_ssm", "manual", "mamba-ssm causal-conv1d",
                                  "optional CUDA kernels; needs the CUDA compiler (nvcc)"))
    protected = {_canonical(p) for p in PROTECTED}
    for step in plan.steps:
        if _canonical(step.package) in protected:
            raise RuntimeError(f"The install plan would install {step.package}, which belongs "
                               "to Slicer; this is a bug in LKMSegment.")
    return plan


def slicer_constraints(upgrading=()) -> list[str]:
    """``name==version`` for every distribution in this Python (Slicer's own packages): as a pip
    constraints file they keep pip from upgrading or replacing any of them. Not pinned: the
    distributions the plan itself upgrades (``upgrading``, e.g. an old torch), or pip could not."""
    skip = {_canonical(p) for p in upgrading}
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and dist.version and _canonical(name) not in skip:
            pins.setdefault(_canonical(name), f"{name}=={dist.version}")
    return [pins[k] for k in sorted(pins)]


def write_constraints(folder=None, upgrading=()) -> Path:
    folder = Path(folder or tempfile.mkdtemp(prefix="lkmsegment-pip-"))
    path = folder / "slicer-constraints.txt"
    path.write_text("\n".join(slicer_constraints(upgrading)) + "\n", encoding="utf-8")
    return path


def pip_arguments(requirements: list[str], constraints_file) -> list[str]:
    """What ``pip install`` gets for the plan's pip steps (``slicer.util.pip_install`` takes the
    same list): the requirements and Slicer's pins as constraints."""
    return ["-c", str(constraints_file), *requirements]


def install(plan: DependencyPlan, pip_install=None, torch_installer=None, log=print,
            pip_ensure=None, constraints_file=None) -> list[str]:
    """Carry out a plan (after the user confirmed it).

    ``pip_ensure(requirements, constraints=...)`` is ``slicer.packaging.pip_ensure`` (5.11+);
    otherwise ``pip_install(argument_list)``, ``slicer.util.pip_install``. ``torch_installer()``
    is the PyTorch extension's helper (returns the torch module or None). Raises RuntimeError
    with a message for the user when something required could not be installed; returns notes
    on the speed-ups that could not (the engine runs without them).
    """
    if pip_install is None and pip_ensure is None:
        raise ValueError("install needs pip_install or pip_ensure")
    constraints_file = constraints_file or write_constraints(
        upgrading=[s.package for s in plan.steps + plan.speedups])
    for step in plan.steps:
        if step.how == "pytorch-extension":
            log(f"Installing {step.requirement} through the PyTorch extension ...")
            if torch_installer is None or torch_installer() is None:
                found = installed_version("torch")
                raise RuntimeError(
                    (f"PyTorch {found} is installed but LKMSegment needs {step.requirement}; it could "
                     "not be upgraded. " if found else "PyTorch could not be installed. ")
                    + "Open the PyTorch Utils module, install it there (choose the CUDA version of "
                    "your GPU, or CPU), restart Slicer, then try again.")
    requirements = plan.pip_requirements
    if requirements:
        log("Installing " + ", ".join(requirements) + " ...")
        _pip(requirements, pip_install, pip_ensure, constraints_file)
    notes = []
    for step in plan.speedups:
        log(f"Installing {step.requirement} (optional) ...")
        try:
            _pip([step.requirement], pip_install, pip_ensure, constraints_file)
        except Exception as e:  # any pip failure: the engine runs without it
            notes.append(f"{step.package} could not be installed ({str(e).strip()[-200:] or type(e).__name__}); "
                         "LKMSegment works without it, more slowly on the CPU.")
            log(notes[-1])
    return notes


def _pip(requirements: list[str], pip_install, pip_ensure, constraints_file) -> None:
    if pip_ensure is not None:
        # the user already confirmed our plan: no second prompt; install in testing mode too,
        # the self test needs the engine
        # Requirement objects: what every Slicer release's pip_ensure accepts
        from packaging.requirements import Requirement  # Slicer ships packaging
        pip_ensure([Requirement(r) for r in requirements], constraints=str(constraints_file),
                   prompt_install=False, requester=REQUESTER, skip_in_testing=False)
    else:
        pip_install(pip_arguments(requirements, constraints_file))


def install_in_slicer(plan: DependencyPlan, log=print) -> list[str]:
    """:func:`install` with what this Slicer offers (call only after the user confirmed)."""
    import slicer

    ensure = None
    for name in ("packaging", "pydeps"):  # Slicer 5.11+ (the module's name changed once)
        try:
            module = importlib.import_module(f"slicer.{name}")
        except ImportError:
            continue
        ensure = getattr(module, "pip_ensure", None)
        if ensure is not None:
            break
    return install(plan, pip_install=slicer.util.pip_install, pip_ensure=ensure,
                   torch_installer=torch_installer_from_extension(), log=log)


def torch_installer_from_extension(requirement: str = TORCH_REQUIREMENT):
    """A callable that installs (or upgrades) torch the PyTorch extension's way, in the Slicer app
    only; returns the installed version, or None when it still does not satisfy ``requirement``.

    It follows ``PyTorchUtilsLogic.installTorch`` (light-the-torch picks the build that matches
    the GPU) without that method's ``torchInstalled()`` and final ``import torch``: the version is
    read from the package metadata, so torch (old or new) never loads into Slicer's process.
    """
    def run():
        import PyTorchUtils  # noqa: the PyTorch extension's module
        import slicer

        extension = PyTorchUtils.PyTorchUtilsLogic
        args = extension._getPipInstallArguments(torchVersionRequirement=requirement[len("torch"):])
        try:
            import light_the_torch._patch  # noqa: F401  (as installTorch does)
        except ImportError:
            extension._installLightTheTorch()
        slicer.util._executePythonModule("light_the_torch", args)
        importlib.invalidate_caches()
        return installed_version("torch") if is_satisfied(requirement) else None
    return run


DEVICE_PROBE = (
    "import json, torch\n"
    "d = {'torch': torch.__version__, 'cuda': torch.cuda.is_available(), 'devices': []}\n"
    "for i in range(torch.cuda.device_count() if d['cuda'] else 0):\n"
    "    p = torch.cuda.get_device_properties(i)\n"
    "    d['devices'].append({'name': p.name, 'memory_gb': round(p.total_memory / 2**30, 1)})\n"
    "print(json.dumps(d))\n"
)


def start_device_probe(python: str, runner=None, env: dict | None = None,
                       timeout_s: float = DETECT_TIMEOUT_S) -> BackgroundCommand:
    """Ask a child Python what torch sees (the Slicer process never imports torch), without
    waiting: the panel pumps it from a timer. The child gets the engine's environment unless
    ``env`` is given."""
    return BackgroundCommand(runner or SubprocessRunner(), python, ["-c", DEVICE_PROBE],
                             env=env if env is not None else engine_environment(), timeout_s=timeout_s)


def device_probe_result(command: BackgroundCommand) -> dict:
    """What the probe found, or {"error": message for the user}."""
    import json

    if command.timed_out:
        return {"error": f"Looking for a GPU took longer than {command.timeout_s:.0f} s; try again."}
    if command.exit_code != 0:
        tail = (command.stderr.strip().splitlines() or ["unknown error"])[-1]
        return {"error": f"PyTorch could not be loaded: {tail}"}
    try:
        return json.loads(command.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "Unexpected answer when looking for a GPU: " + command.stdout[-200:]}


def detect_devices(python: str, env: dict | None = None, timeout_s: float = DETECT_TIMEOUT_S) -> dict:
    """:func:`start_device_probe` waited for (scripts and tests)."""
    try:
        command = start_device_probe(python, env=env, timeout_s=timeout_s)
    except OSError as e:
        return {"error": f"Could not start Python to look for a GPU: {e}"}
    return device_probe_result(command.wait())


def describe_devices(info: dict) -> str:
    """One line for the panel: what 'auto' will use."""
    if "error" in info:
        return info["error"]
    if info.get("cuda") and info.get("devices"):
        gpus = ", ".join(f"{d['name']} ({d['memory_gb']} GB)" for d in info["devices"])
        return f"GPU: {gpus} — 'auto' uses it (falls back to CPU if memory runs out)."
    return ("No CUDA GPU found by PyTorch " + info.get("torch", "") +
            " — 'auto' runs on the CPU (use quick mode for a faster, coarser result).")
