"""Optional CUDA kernels (mamba_ssm, causal_conv1d), imported lazily and never required.

`import mamba_ssm` fails outright without its compiled kernels (and needs triton), so the
imports happen on first use, inside a try, and the result is cached.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def mamba_selective_scan_fn():
    """mamba_ssm's fused selective scan, or None when it cannot be imported."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # ImportError, missing .so, missing triton, CUDA mismatch ...
        log.debug("mamba_ssm kernels unavailable: %s", exc)
        return None
    return selective_scan_fn


@functools.lru_cache(maxsize=None)
def causal_conv1d_fn():
    """causal_conv1d's fused depthwise causal convolution, or None."""
    try:
        from causal_conv1d import causal_conv1d_fn as fn
    except Exception as exc:
        log.debug("causal_conv1d kernels unavailable: %s", exc)
        return None
    return fn
