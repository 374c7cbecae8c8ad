"""What the engine needs in Slicer's Python, and how to get it without breaking Slicer.

The check never imports torch (that would load gigabytes into the Slicer process): it asks
``importlib.util.find_spec``. The plan says what to install and how; it is shown to the user and
carried out only after they confirm:

- torch through the PyTorch extension's helper (``PyTorchUtils``), which picks the CUDA build
  that matches the computer; plain pip (CPU build) only when that extension is missing;
- safetensors with pip;
- mamba-ssm (CUDA kernels, optional, speed only) is never installed automatically: it has no
  wheels and needs a compiler; the engine's own scan is used without it;
- numpy, SimpleITK and requests belong to Slicer and are never installed, upgraded or removed.
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
from dataclasses import dataclass, field

PROTECTED = ("numpy", "SimpleITK", "requests")
TORCH_REQUIREMENT = "torch>=2.1"
PIP_REQUIREMENTS = {"safetensors": "safetensors>=0.4"}


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

    @property
    def needed(self) -> bool:
        return bool(self.steps)

    def text(self) -> str:
        if not self.steps:
            return "All required Python packages are installed."
        lines = ["LKMSegment needs these Python packages, which will be installed now:"]
        for s in self.steps:
            via = {"pytorch-extension": "via the PyTorch extension (matches your GPU)",
                   "pip": "with pip"}.get(s.how, s.how)
            lines.append(f"  - {s.requirement} {via}" + (f" ({s.note})" if s.note else ""))
        lines.append("This can take several minutes and downloads up to a few GB (PyTorch).")
        lines.append("Slicer's own numpy and SimpleITK are not changed.")
        return "\n".join(lines)


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


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


def make_plan(installed=is_installed, system: str | None = None, gpu=nvidia_gpu_present) -> DependencyPlan:
    """Build the install plan. ``installed``/``gpu`` are injectable for tests."""
    system = system or platform.system()
    plan = DependencyPlan()
    if not installed("torch"):
        how = "pytorch-extension" if installed("PyTorchUtils") else "pip"
        note = "" if how == "pytorch-extension" else "CPU build; install the PyTorch extension for GPU support"
        plan.steps.append(Step("torch", how, TORCH_REQUIREMENT, note))
    for module, requirement in PIP_REQUIREMENTS.items():
        if not installed(module):
            plan.steps.append(Step(module, "pip", requirement))
    if system == "Linux" and gpu() and not installed("mamba_ssm"):
        plan.optional.append(Step("mamba_ssm", "manual", "mamba-ssm causal-conv1d",
                                  "optional CUDA kernels; needs the CUDA compiler (nvcc)"))
    for step in plan.steps:
        assert step.package not in PROTECTED, step.package
    return plan


def install(plan: DependencyPlan, pip_install, torch_installer=None, log=print) -> None:
    """Carry out a plan. ``pip_install(requirement_string)`` is ``slicer.util.pip_install`` in
    the app; ``torch_installer()`` the PyTorch extension's helper (returns the torch module or
    None). Raises RuntimeError with a message for the user when something could not be installed.
    """
    for step in plan.steps:
        if step.package in PROTECTED:
            raise RuntimeError(f"Refusing to install {step.package}: it belongs to Slicer.")
        log(f"Installing {step.requirement} ...")
        if step.how == "pytorch-extension":
            if torch_installer is None or torch_installer() is None:
                raise RuntimeError(
                    "PyTorch could not be installed. Open the PyTorch Utils module, install it "
                    "there (choose the CUDA version of your GPU, or CPU), then try again.")
        elif step.how == "pip":
            # --upgrade-strategy only-if-needed keeps numpy/SimpleITK as Slicer ships them
            pip_install(f"{step.requirement} --upgrade-strategy only-if-needed")
        else:
            continue


def torch_installer_from_extension(requirement: str = TORCH_REQUIREMENT):
    """A callable that installs torch with the PyTorch extension (in the Slicer app only)."""
    def run():
        import PyTorchUtils  # noqa: the PyTorch extension's module

        logic = PyTorchUtils.PyTorchUtilsLogic()
        if logic.torchInstalled():
            return logic.torch
        return logic.installTorch(askConfirmation=False, torchVersionRequirement=requirement[len("torch"):])
    return run


DEVICE_PROBE = (
    "import json, torch\n"
    "d = {'torch': torch.__version__, 'cuda': torch.cuda.is_available(), 'devices': []}\n"
    "for i in range(torch.cuda.device_count() if d['cuda'] else 0):\n"
    "    p = torch.cuda.get_device_properties(i)\n"
    "    d['devices'].append({'name': p.name, 'memory_gb': round(p.total_memory / 2**30, 1)})\n"
    "print(json.dumps(d))\n"
)


def detect_devices(python: str, env: dict | None = None, timeout_s: float = 120) -> dict:
    """Ask a child Python what torch sees (the Slicer process never imports torch)."""
    import json

    try:
        out = subprocess.run([python, "-c", DEVICE_PROBE], capture_output=True, text=True,
                             env=env, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"Could not start Python to look for a GPU: {e}"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["unknown error"])[-1]
        return {"error": f"PyTorch could not be loaded: {tail}"}
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "Unexpected answer when looking for a GPU: " + out.stdout[-200:]}


def describe_devices(info: dict) -> str:
    """One line for the panel: what 'auto' will use."""
    if "error" in info:
        return info["error"]
    if info.get("cuda") and info.get("devices"):
        gpus = ", ".join(f"{d['name']} ({d['memory_gb']} GB)" for d in info["devices"])
        return f"GPU: {gpus} — 'auto' uses it (falls back to CPU if memory runs out)."
    return ("No CUDA GPU found by PyTorch " + info.get("torch", "") +
            " — 'auto' runs on the CPU (use quick mode for a faster, coarser result).")
