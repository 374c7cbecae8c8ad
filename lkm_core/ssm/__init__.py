"""Selective state-space scan and the Mamba layer, on any machine.

mamba_ssm's CUDA kernels are used when they import and the tensors are on a GPU; everywhere
else our own scans run: a fused numba kernel for CPU inference (when numba loads), a chunked
torch scan as its fallback, and a memory-lean autograd path for training.
"""

from .backend import backend_report, backends_used
from .scan import selective_scan, selective_scan_reference, kernels_available
from .mamba import Mamba

__all__ = ["selective_scan", "selective_scan_reference", "kernels_available", "Mamba",
           "backend_report", "backends_used"]
