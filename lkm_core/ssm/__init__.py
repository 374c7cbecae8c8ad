"""Selective state-space scan and the Mamba layer, on any machine.

mamba_ssm's CUDA kernels are used when they import and the tensors are on a GPU; everywhere
else our own scans run (a fast no-grad path and a memory-lean autograd path).
"""

from .scan import selective_scan, selective_scan_reference, kernels_available
from .mamba import Mamba

__all__ = ["selective_scan", "selective_scan_reference", "kernels_available", "Mamba"]
