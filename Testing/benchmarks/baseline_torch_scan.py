"""The CPU inference scan as it was before the fused numba kernel (commit 80b17ed), frozen.

Testing/benchmarks/scan.py measures the new backends against this in the same run. It is the
chunked time-major torch scan: exp(delta*A) and delta*u*B built T steps at a time into
(T, b, d, n) buffers, one addcmul per step, the contraction with C as a bmm over the stored
states, and one thread for small steps (the two directions stacked along the batch).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

_CHUNK_ELEMENTS = 1 << 18
_SINGLE_THREAD_STEP_ELEMENTS = 1 << 18


@contextlib.contextmanager
def _step_threads(b, d, n):
    previous = torch.get_num_threads()
    single = previous > 1 and b * d * n <= _SINGLE_THREAD_STEP_ELEMENTS
    if single:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if single:
            torch.set_num_threads(previous)


def scan_time_major(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """(l, b, d) time-major inputs, A/D/delta_bias per sequence allowed, no grad."""
    with _step_threads(u.shape[1], u.shape[2], A.shape[-1]), torch.no_grad():
        return _scan_no_grad(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _compute_dtype(u):
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _chunk_length(b, d, n, l):
    return max(1, min(l, _CHUNK_ELEMENTS // max(1, b * d * n)))


def _step_sizes(delta, delta_bias, softplus, dtype):
    """delta (+ bias), softplus'd: (l, b, d) in the compute dtype (a new tensor)."""
    dt = delta.to(dtype)
    dt = dt + delta_bias.to(dtype) if delta_bias is not None else dt.clone()
    return F.softplus(dt) if softplus else dt


def _fill_chunk(dA, dBu, dt, u, B, A, t0, t1):
    """dA[i] = exp(delta_t A), dBu[i] = delta_t u_t B_t for t in [t0, t1), into the buffers."""
    T = t1 - t0
    torch.mul(dt[t0:t1, :, :, None], A, out=dA[:T])
    dA[:T].exp_()
    torch.mul((dt[t0:t1] * u[t0:t1])[:, :, :, None], B[t0:t1, :, None, :], out=dBu[:T])
    return dA[:T], dBu[:T]


def _run_chunk(h, dA, dBu, H):
    """Carry the state through one chunk; H[i] receives h after step i. Returns the last state.

    Writing H[0] while h is H[-1] of the previous chunk is safe: they are different rows
    (or, for T == 1, the same row updated elementwise in place).
    """
    for i in range(dA.shape[0]):
        torch.addcmul(dBu[i], h, dA[i], out=H[i])
        h = H[i]
    return h


def _contract_with_C(H, C, y):
    """y[t, b, :] = H[t, b] @ C[t, b] for a chunk: (T*b, d, n) @ (T*b, n, 1)."""
    T, b, d, n = H.shape
    torch.bmm(H.reshape(-1, d, n), C.reshape(-1, n, 1), out=y.view(-1, d, 1))


def _skip_and_gate(y, u, D, z):
    """y + D*u, gated by silu(z), in place on y (one chunk at a time keeps temporaries small)."""
    if D is not None:
        y.addcmul_(u, D.to(y.dtype))
    if z is not None:
        y.mul_(F.silu(z.to(y.dtype)))
    return y


def _scan_no_grad(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    l, b, d = u.shape
    n = A.shape[-1]
    dtype = _compute_dtype(u)
    dt = _step_sizes(delta, delta_bias, delta_softplus, dtype)
    uc = u.to(dtype)
    Bc, Cc, Ac = B.to(dtype).contiguous(), C.to(dtype).contiguous(), A.to(dtype)
    T = _chunk_length(b, d, n, l)
    dA, dBu, H = (uc.new_empty(T, b, d, n) for _ in range(3))
    y = uc.new_empty(l, b, d)
    h = uc.new_zeros(b, d, n)
    for t0 in range(0, l, T):
        t1 = min(l, t0 + T)
        dA_c, dBu_c = _fill_chunk(dA, dBu, dt, uc, Bc, Ac, t0, t1)
        h = _run_chunk(h, dA_c, dBu_c, H)
        _contract_with_C(H[: t1 - t0], Cc[t0:t1], y[t0:t1])
        _skip_and_gate(y[t0:t1], uc[t0:t1], D, z[t0:t1] if z is not None else None)
    return y.to(u.dtype)
