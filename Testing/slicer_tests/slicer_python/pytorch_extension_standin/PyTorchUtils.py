"""Stand-in for the PyTorch extension's ``PyTorchUtils`` module, for the replica of Slicer's Python.

It follows SlicerPyTorch's ``PyTorchUtils/PyTorchUtils.py`` (fepegar/SlicerPyTorch) in what
LKMSegment uses of it: ``PyTorchUtilsLogic`` with the same static methods, argument names and
pip arguments (LKMSegment then runs light-the-torch itself, as ``installTorch`` does). Left out:
the Qt widget and what LKMSegment does not call. One difference, in ``_installLightTheTorch``:
the real one runs ``slicer.util.pip_install('light-the-torch>=0.5')``; here the light-the-torch
stand-in (../light_the_torch_standin, why: its __init__.py) goes into the replica's site-packages.
"""

import shutil
import sysconfig
from pathlib import Path

LIGHT_THE_TORCH_STANDIN = Path(__file__).resolve().parent.parent / "light_the_torch_standin" / "light_the_torch"


class PyTorchUtilsLogic:
    @staticmethod
    def _getPipInstallArguments(forceComputationBackend=None, torchVersionRequirement=None,
                                torchvisionVersionRequirement=None):
        # the extension's contract: light-the-torch's "install" of torch and torchvision, each
        # with its requirement (if any), and the backend option only when one is forced
        packages = [f"torch{torchVersionRequirement or ''}",
                    f"torchvision{torchvisionVersionRequirement or ''}"]
        backend = ([] if forceComputationBackend is None
                   else [f"--pytorch-computation-backend={forceComputationBackend}"])
        return ["install", *packages, *backend]

    @staticmethod
    def _installLightTheTorch():
        site_packages = Path(sysconfig.get_paths()["purelib"])
        shutil.copytree(LIGHT_THE_TORCH_STANDIN, site_packages / "light_the_torch",
                        ignore=shutil.ignore_patterns("__pycache__"))
