"""The selective scan of Mamba.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t
    y_t = <h_t, C_t> + D * u_t,    y <- y * silu(z),    delta <- softplus(delta + delta_bias)

Two entry points:

* :func:`selective_scan` has mamba_ssm's ``selective_scan_fn`` layout: u, delta, z: (b, d, l);
  A: (d, n); B, C: (b, n, l); D, delta_bias: (d,); returns (b, d, l).
* :func:`selective_scan_time_major` takes u, delta, z: (l, b, d) and B, C: (l, b, n) and
  returns (l, b, d). The recurrence walks l, so this is the layout every step reads
  contiguously; the Mamba layer produces it directly and avoids full-size transposes.

Implementations, chosen automatically (backend.py holds the switch that overrides it):

* mamba_ssm's CUDA kernel, when it imports and the tensors are on a GPU;
* a Triton kernel (triton_scan.py) for GPU inference without mamba_ssm;
* the fused numba kernel (numba_scan.py) for fp32 CPU inference, when numba loads;
* ``_scan_no_grad``: inference anywhere (the fallback). Chunked: exp(delta*A) and delta*u*B are built for
  T steps at a time into preallocated (T, b, d, n) buffers, then one fused multiply-add per
  step carries the state. Nothing of size (b, d, l, n) is ever allocated.
* ``_SelectiveScan``: the same forward plus a hand-written backward (reverse scan) that keeps
  only the state at chunk boundaries and recomputes inside each chunk, for training
  without mamba_ssm.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from . import backend as _backend
from .kernels import mamba_selective_scan_fn
from .triton_scan import selective_scan_triton, triton_available

# Elements of one (T, b, d, n) chunk buffer: big enough to amortise per-op overhead and
# vectorise exp(), small enough to stay near the cache (Testing/benchmarks/scan.py).
_CHUNK_ELEMENTS = 1 << 18
# A step touching fewer elements than this runs on one thread (see _step_threads).
_SINGLE_THREAD_STEP_ELEMENTS = 1 << 18


def kernels_available() -> bool:
    return mamba_selective_scan_fn() is not None


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   *, backend: str | None = None):
    """Selective scan with mamba_ssm's ``selective_scan_fn`` signature and meaning.

    backend: None picks the best available ("mamba_ssm" on CUDA when it imports, else
    "triton" on CUDA for inference, "numba" for fp32 CPU inference when it loads, else
    "torch"); naming one forces it (for tests and benchmarks).
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, time_major=False)
    if backend is None and u.is_cuda and mamba_selective_scan_fn() is not None:
        backend = "mamba_ssm"
    if backend == "mamba_ssm":
        _backend.note_used("mamba_ssm")
        return mamba_selective_scan_fn()(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    tm = lambda t: t.permute(2, 0, 1) if t is not None else None
    y = selective_scan_time_major(tm(u), tm(delta), A, tm(B), tm(C), D, tm(z), delta_bias,
                                  delta_softplus, backend=backend)
    return y.permute(1, 2, 0)


def selective_scan_time_major(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                              delta_softplus=False, *, backend: str | None = None):
    """The scan on time-major tensors: u, delta, z (l, b, d); B, C (l, b, n) -> (l, b, d)."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, time_major=True)
    grad = _needs_grad(u, delta, A, B, C, D, z, delta_bias)
    if backend is None:
        if u.is_cuda:
            backend = "triton" if (not grad and triton_available(u.device)) else "torch"
        elif grad or u.dtype != torch.float32 or not _numba_can_take(A, delta, delta_softplus):
            backend = "torch"
        else:
            backend = _backend.cpu_inference_backend()
    if backend == "triton":
        _backend.note_used("triton")
        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if backend == "numba":
        return _scan_numba(u, delta, A, B, C, D, z, delta_bias, delta_softplus, grad)
    if backend != "torch":
        raise ValueError(f"unknown scan backend {backend!r}")
    _backend.note_used("torch")
    with _step_threads(u.shape[1], u.shape[2], A.shape[-1], u.is_cuda):
        if grad:
            return _SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        with torch.no_grad():
            return _scan_no_grad(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _numba_can_take(A, delta, delta_softplus) -> bool:
    """The kernel's exp is written for exp(delta*A) <= 1: A <= 0 and delta >= 0 (as in Mamba)."""
    return bool((A <= 0).all()) and (delta_softplus or bool((delta >= 0).all()))


def _scan_numba(u, delta, A, B, C, D, z, delta_bias, delta_softplus, grad):
    if grad:
        raise ValueError("the numba scan has no backward: use backend='torch' (or None) for autograd")
    if u.is_cuda:
        raise ValueError("the numba scan runs on the CPU; these tensors are on a GPU")
    if not _numba_can_take(A, delta, delta_softplus):
        raise ValueError("the numba scan needs A <= 0 and, without softplus, delta >= 0 (Mamba's case)")
    kernels = _backend.numba_scan_module()
    if kernels is None:
        raise RuntimeError(f"the numba scan cannot load: {_backend.backend_report()}")
    y = torch.empty(u.shape, dtype=torch.float32)
    kernels.run(u, delta, A, B, C, D, z, delta_bias, delta_softplus, y)
    _backend.note_used("numba")
    return y.to(u.dtype)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias, time_major):
    layout = "(l, b, d)" if time_major else "(b, d, l)"
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be {layout}; got {tuple(u.shape)}, {tuple(delta.shape)}")
    if time_major:
        l, b, d = u.shape
    else:
        b, d, l = u.shape
    # time-major callers may give every sequence its own A, D and delta_bias (b, d, ...):
    # that is how the two directions of a bidirectional block share one scan
    per_seq = time_major and A.dim() == 3
    if not ((A.dim() == 2 and A.shape[0] == d) or (per_seq and tuple(A.shape[:2]) == (b, d))):
        raise ValueError(f"A must be (d, n) with d={d}"
                         + (f" or (b, d, n) with b={b}" if time_major else "") + f"; got {tuple(A.shape)}")
    n = A.shape[-1]
    expected = (l, b, n) if time_major else (b, n, l)
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != expected:
            raise ValueError(f"{name} must be {'(l, b, n)' if time_major else '(b, n, l)'} = {expected}; "
                             f"got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must be {layout} like u; got {tuple(z.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) not in ((d,), (b, d) if time_major else (d,)):
            raise ValueError(f"{name} must be (d,) = ({d},)" + (f" or (b, d) = {(b, d)}" if time_major else "")
                             + f"; got {tuple(t.shape)}")


@contextlib.contextmanager
def _step_threads(b, d, n, on_gpu=False):
    """One thread for the step loop when a step is small.

    A step touches b*d*n elements; below ~256k the second thread gains little, and when the
    other core is busy its barrier at every op makes the loop several times slower (measured).
    """
    previous = torch.get_num_threads()
    single = not on_gpu and previous > 1 and b * d * n <= _SINGLE_THREAD_STEP_ELEMENTS
    if single:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if single:
            torch.set_num_threads(previous)


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


class _SelectiveScan(torch.autograd.Function):
    """Chunked time-major scan with a hand-written reverse scan for the gradients.

    Saves the inputs and the state at each chunk boundary ((l/T, b, d, n)); the backward
    recomputes the states inside one chunk at a time.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        l, b, d = u.shape
        n = A.shape[-1]
        dtype = _compute_dtype(u)
        delta_raw = delta.to(dtype) + delta_bias.to(dtype) if delta_bias is not None else delta.to(dtype)
        dt = F.softplus(delta_raw) if delta_softplus else delta_raw
        uc = u.to(dtype)
        Bc, Cc, Ac = B.to(dtype).contiguous(), C.to(dtype).contiguous(), A.to(dtype)
        # boundaries cost (l/T)*b*d*n and chunk buffers T*b*d*n: T near sqrt(l) keeps both small
        T = max(_chunk_length(b, d, n, l), min(l, math.isqrt(l)))
        starts = list(range(0, l, T))
        dA, dBu, H = (uc.new_empty(T, b, d, n) for _ in range(3))
        y_ssm = uc.new_empty(l, b, d)
        h = uc.new_zeros(b, d, n)
        boundaries = uc.new_empty(len(starts), b, d, n)
        for k, t0 in enumerate(starts):
            t1 = min(l, t0 + T)
            boundaries[k] = h
            dA_c, dBu_c = _fill_chunk(dA, dBu, dt, uc, Bc, Ac, t0, t1)
            h = _run_chunk(h, dA_c, dBu_c, H)
            _contract_with_C(H[: t1 - t0], Cc[t0:t1], y_ssm[t0:t1])
        ctx.delta_softplus = delta_softplus
        ctx.chunk = T
        ctx.has = (D is not None, z is not None, delta_bias is not None)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, delta_raw, boundaries, y_ssm)
        return _skip_and_gate(y_ssm.clone(), uc, D, z).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        u, delta, A, B, C, D, z, delta_bias, delta_raw, boundaries, y_ssm = ctx.saved_tensors
        with _step_threads(u.shape[1], u.shape[2], A.shape[-1], u.is_cuda):
            return _SelectiveScan._backward(ctx, grad_out, u, delta, A, B, C, D, z, delta_bias,
                                            delta_raw, boundaries, y_ssm)

    @staticmethod
    def _backward(ctx, grad_out, u, delta, A, B, C, D, z, delta_bias, delta_raw, boundaries, y_ssm):
        has_D, has_z, has_bias = ctx.has
        l, b, d = u.shape
        n = A.shape[-1]
        T = ctx.chunk
        dtype = y_ssm.dtype
        g = grad_out.to(dtype)
        uc = u.to(dtype)

        # the gate and the D skip
        y_pre = y_ssm + uc * D.to(dtype) if has_D else y_ssm
        grad_z = None
        if has_z:
            zc = z.to(dtype)
            sig = torch.sigmoid(zc)
            grad_z = (g * y_pre * sig * (1 + zc * (1 - sig))).to(z.dtype)
            g = g * zc * sig
        grad_D = _sum_to(g * uc, D).to(D.dtype) if has_D else None
        grad_u = g * D.to(dtype) if has_D else torch.zeros_like(uc)

        dt = F.softplus(delta_raw) if ctx.delta_softplus else delta_raw
        Bc, Cc, Ac = B.to(dtype).contiguous(), C.to(dtype).contiguous(), A.to(dtype)
        g = g.contiguous()  # gradient of y_ssm, (l, b, d)

        grad_dt = torch.empty_like(dt)
        grad_u_scan = torch.empty_like(uc)
        grad_B = torch.empty_like(Bc)
        grad_C = torch.empty_like(Cc)
        grad_A = uc.new_zeros(b, d, n)
        dA, dBu, H, GH = (uc.new_empty(T, b, d, n) for _ in range(4))
        gh_next = uc.new_zeros(b, d, n)   # gradient flowing into h_t from step t+1 onwards
        dA_next = uc.new_zeros(b, d, n)   # exp(delta_{t+1} A) of the step after the chunk

        for k in reversed(range(boundaries.shape[0])):
            t0 = k * T
            t1 = min(l, t0 + T)
            m = t1 - t0
            dA_c, dBu_c = _fill_chunk(dA, dBu, dt, uc, Bc, Ac, t0, t1)
            _run_chunk(boundaries[k], dA_c, dBu_c, H)
            Hc = H[:m]
            # y_t = <h_t, C_t>: gradient into C directly, into h_t as g_t (x) C_t
            grad_C[t0:t1] = torch.einsum("tbdn,tbd->tbn", Hc, g[t0:t1])
            direct = g[t0:t1, :, :, None] * Cc[t0:t1, :, None, :]
            # reverse scan: gh_t = direct_t + exp(delta_{t+1} A) * gh_{t+1}
            for i in reversed(range(m)):
                torch.addcmul(direct[i], gh_next, dA_next, out=GH[i])
                gh_next = GH[i]
                dA_next = dA_c[i]
            gh_next = gh_next.clone()     # the buffers are refilled by the next chunk
            dA_next = dA_next.clone()
            GHc = GH[:m]
            h_prev = torch.cat([boundaries[k][None], Hc[:-1]], dim=0)
            g_dA = GHc * h_prev * dA_c                      # d/d(delta A) of exp(delta A)
            grad_A += torch.einsum("tbdn,tbd->bdn", g_dA, dt[t0:t1])
            gB_sum = torch.einsum("tbdn,tbn->tbd", GHc, Bc[t0:t1])
            grad_dt[t0:t1] = (g_dA * Ac).sum(-1) + gB_sum * uc[t0:t1]
            grad_u_scan[t0:t1] = gB_sum * dt[t0:t1]
            grad_B[t0:t1] = torch.einsum("tbdn,tbd->tbn", GHc, dt[t0:t1] * uc[t0:t1])

        grad_u = grad_u + grad_u_scan
        grad_delta = grad_dt * torch.sigmoid(delta_raw) if ctx.delta_softplus else grad_dt
        grad_bias = _sum_to(grad_delta, delta_bias).to(delta_bias.dtype) if has_bias else None
        grad_A = grad_A if A.dim() == 3 else grad_A.sum(0)
        return (grad_u.to(u.dtype), grad_delta.to(delta.dtype), grad_A.to(A.dtype),
                grad_B.to(B.dtype), grad_C.to(C.dtype), grad_D, grad_z, grad_bias, None)


def _sum_to(grad, param):
    """Sum an (l, b, d) gradient down to a (d,) or per-sequence (b, d) parameter's shape."""
    return grad.sum(dim=(0, 1)) if param.dim() == 1 else grad.sum(dim=0)


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The materialising algorithm of mamba_ssm's ``selective_scan_ref``, for tests and benchmarks.

    (b, d, l) layout. Builds exp(delta*A) and delta*u*B for all steps at once ((b, d, l, n)
    each), then loops.
    """
    dtype = _compute_dtype(u)
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    uc, Bc, Cc = u.to(dtype), B.to(dtype), C.to(dtype)
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", dt, A.to(dtype)))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", dt, Bc, uc)
    h = uc.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        h = deltaA[:, :, i] * h + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, Cc[:, :, i]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + uc * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype)
