"""Which scan implementation runs: the one switch, numba's lazy loading, a record of what ran.

The switch is the environment variable LKM_SCAN_BACKEND:

* ``auto`` (default): the fused numba kernel for CPU inference when numba imports and its
  kernel compiles (or loads from the cache), else the pure-torch scan;
* ``torch``: never use numba (the pure-torch scan, e.g. to compare or to rule numba out);
* ``numba``: require the numba kernel for CPU inference (an error if it cannot load).

Training (autograd) always uses the torch scan's hand-written backward; GPUs use mamba_ssm's
kernel or the Triton kernel as before.
"""

from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger(__name__)

ENV_VAR = "LKM_SCAN_BACKEND"
CHOICES = ("auto", "numba", "torch")

_used: set[str] = set()
_unavailable_reason: list[str] = []


def requested() -> str:
    value = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {', '.join(CHOICES)}; unset it or pick one")
    return value


@functools.lru_cache(maxsize=None)
def numba_scan_module():
    """lkm_core.ssm.numba_scan with its kernels compiled or loaded, or None (logged once)."""
    try:
        from . import numba_scan
        numba_scan.warm_up()
    except Exception as exc:   # ImportError, a compilation or cache failure, an old numba ...
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        _unavailable_reason.append(reason)
        log.warning("fused numba scan unavailable (%s); using the pure-torch scan", reason)
        return None
    return numba_scan


def cpu_inference_backend() -> str:
    """"numba" or "torch": what a no-grad CPU scan uses now."""
    choice = requested()
    if choice == "torch":
        return "torch"
    if numba_scan_module() is not None:
        return "numba"
    if choice == "numba":
        raise RuntimeError(f"{ENV_VAR}=numba but the numba scan cannot load ({_unavailable_reason[-1]}); "
                           f"install numba or set {ENV_VAR}=auto")
    return "torch"


def note_used(name: str) -> None:
    _used.add(name)


def backends_used() -> tuple[str, ...]:
    """The scan implementations that ran in this process so far, sorted by name."""
    return tuple(sorted(_used))


def reset_backends_used() -> None:
    _used.clear()


def backend_report() -> str:
    """One line for a run's summary, e.g. "numba" or "torch (numba unavailable: ...)"."""
    used = ", ".join(backends_used()) or "none"
    if _unavailable_reason and "numba" not in _used:
        return f"{used} (numba unavailable: {_unavailable_reason[-1]})"
    return used
