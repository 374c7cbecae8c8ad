"""The selective scan of Mamba, with mamba_ssm's argument layout.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t
    y_t = <h_t, C_t> + D * u_t,    y <- y * silu(z),    delta <- softplus(delta + delta_bias)

Shapes (as mamba_ssm's ``selective_scan_fn``): u, delta, z: (b, d, l); A: (d, n);
B, C: (b, n, l); D, delta_bias: (d,). Returns (b, d, l) in u's dtype.

Three implementations, chosen by :func:`selective_scan`:

* mamba_ssm's CUDA kernel, when it imports and the tensors are on a GPU;
* a Triton kernel (triton_scan.py) for GPU inference without mamba_ssm;
* ``_scan_no_grad``: inference. Time-major, chunked: exp(delta*A) and delta*u*B are built for a
  chunk of T steps at a time into preallocated (T, b, d, n) buffers, then one fused
  multiply-add per step carries the state. Nothing of size (b, d, l, n) is ever allocated.
* ``_SelectiveScan``: the same forward plus a hand-written backward (reverse scan) that keeps
  only the state at chunk boundaries and recomputes inside each chunk, for training on a CPU.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from .kernels import mamba_selective_scan_fn
from .triton_scan import selective_scan_triton, triton_available

# Elements of one (T, b, d, n) chunk buffer: big enough to amortise per-op overhead and
# vectorise exp(), small enough to stay in cache (measured in Testing/benchmarks/scan.py).
_CHUNK_ELEMENTS = 1 << 18
_SINGLE_THREAD_STEP_ELEMENTS = 1 << 18


def kernels_available() -> bool:
    return mamba_selective_scan_fn() is not None


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   *, backend: str | None = None):
    """Selective scan with mamba_ssm's ``selective_scan_fn`` signature and meaning.

    backend: None picks the best available ("mamba_ssm" on CUDA when it imports, else
    "triton" on CUDA for inference, else "torch"); naming one forces it (for benchmarks).
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    if backend is None and u.is_cuda:
        if mamba_selective_scan_fn() is not None:
            backend = "mamba_ssm"
        elif not needs_grad and triton_available(u.device):
            backend = "triton"
    if backend == "mamba_ssm":
        return mamba_selective_scan_fn()(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if backend == "triton":
        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if backend not in (None, "torch"):
        raise ValueError(f"unknown scan backend {backend!r}")
    if needs_grad:
        with _step_threads(*u.shape[:2], A.shape[1], u.is_cuda):
            return _SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    with torch.no_grad():
        return _scan_no_grad(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (b, d, l); got {tuple(u.shape)}, {tuple(delta.shape)}")
    b, d, l = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (d, n) with d={d}; got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (b, n, l):
            raise ValueError(f"{name} must be (b, n, l) = {(b, n, l)}; got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must be (b, d, l) like u; got {tuple(z.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (d,):
            raise ValueError(f"{name} must be (d,) = ({d},); got {tuple(t.shape)}")


def _compute_dtype(u):
    return torch.float64 if u.dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def _step_threads(b, d, n, on_gpu=False):
    """One thread for the step loop when a step is small.

    A step touches b*d*n elements; below ~256k the second thread gains little, and when the
    other core is busy its barrier at every op makes the loop many times slower (measured).
    """
    previous = torch.get_num_threads()
    small = not on_gpu and b * d * n <= _SINGLE_THREAD_STEP_ELEMENTS
    if small and previous > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small and previous > 1:
            torch.set_num_threads(previous)


def _chunk_length(b, d, n, l):
    return max(1, min(l, _CHUNK_ELEMENTS // max(1, b * d * n)))


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """Time-major fp32 (or fp64) copies: (l, b, d) for u/delta, (l, b, n) for B/C."""
    dtype = _compute_dtype(u)
    delta_raw = delta.to(dtype)
    if delta_bias is not None:
        delta_raw = delta_raw + delta_bias.to(dtype)[:, None]
    dt = F.softplus(delta_raw) if delta_softplus else delta_raw
    u_t = u.to(dtype).permute(2, 0, 1).contiguous()
    dt_t = dt.permute(2, 0, 1).contiguous()
    B_t = B.to(dtype).permute(2, 0, 1).contiguous()
    C_t = C.to(dtype).permute(2, 0, 1).contiguous()
    return delta_raw, u_t, dt_t, B_t, C_t, A.to(dtype)


def _fill_chunk(dA, dBu, dt_t, u_t, B_t, A, t0, t1):
    """dA[i] = exp(delta_t A), dBu[i] = delta_t u_t B_t for t in [t0, t1), into the buffers."""
    T = t1 - t0
    torch.mul(dt_t[t0:t1, :, :, None], A, out=dA[:T])
    dA[:T].exp_()
    torch.mul((dt_t[t0:t1] * u_t[t0:t1])[:, :, :, None], B_t[t0:t1, :, None, :], out=dBu[:T])
    return dA[:T], dBu[:T]


def _run_chunk(h, dA, dBu, H):
    """Carry the state through one chunk; H[i] receives h after step i. Returns the last state."""
    for i in range(dA.shape[0]):
        torch.addcmul(dBu[i], h, dA[i], out=H[i])
        h = H[i]
    return h


def _finish(y_t, u, D, z, dtype):
    """(l, b, d) scan output -> (b, d, l), plus the D skip and the z gate."""
    y = y_t.permute(1, 2, 0)
    uc = u.to(y.dtype)
    if D is not None:
        y = y + uc * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype)


def _scan_no_grad(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    with _step_threads(*u.shape[:2], A.shape[1], u.is_cuda):
        return _scan_no_grad_impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _scan_no_grad_impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    b, d, l = u.shape
    n = A.shape[1]
    _, u_t, dt_t, B_t, C_t, A_c = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    T = _chunk_length(b, d, n, l)
    dA = u_t.new_empty(T, b, d, n)
    dBu = u_t.new_empty(T, b, d, n)
    H = u_t.new_empty(T, b, d, n)
    y_t = u_t.new_empty(l, b, d)
    h = u_t.new_zeros(b, d, n)
    for t0 in range(0, l, T):
        t1 = min(l, t0 + T)
        dA_c, dBu_c = _fill_chunk(dA, dBu, dt_t, u_t, B_t, A_c, t0, t1)
        h = _run_chunk(h, dA_c, dBu_c, H).clone() if t1 < l else _run_chunk(h, dA_c, dBu_c, H)
        # y_t = sum_n H_t * C_t for the whole chunk at once: (T*b, d, n) @ (T*b, n, 1)
        Hc = H[: t1 - t0]
        torch.bmm(Hc.reshape(-1, d, n), C_t[t0:t1].reshape(-1, n, 1),
                  out=y_t[t0:t1].view(-1, d, 1))
    return _finish(y_t, u, D, z, u.dtype)


class _SelectiveScan(torch.autograd.Function):
    """Chunked scan with a hand-written reverse scan for the gradients.

    Saves the inputs and the state at each chunk boundary ((l/T, b, d, n)); the backward
    recomputes the states inside one chunk at a time.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        b, d, l = u.shape
        n = A.shape[1]
        delta_raw, u_t, dt_t, B_t, C_t, A_c = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
        # boundaries cost (l/T)*b*d*n and chunk buffers T*b*d*n: T near sqrt(l) keeps both small
        T = max(_chunk_length(b, d, n, l), min(l, math.isqrt(l)))
        starts = list(range(0, l, T))
        dA = u_t.new_empty(T, b, d, n)
        dBu = u_t.new_empty(T, b, d, n)
        H = u_t.new_empty(T, b, d, n)
        y_t = u_t.new_empty(l, b, d)
        h = u_t.new_zeros(b, d, n)
        boundaries = u_t.new_empty(len(starts), b, d, n)
        for k, t0 in enumerate(starts):
            t1 = min(l, t0 + T)
            boundaries[k] = h
            dA_c, dBu_c = _fill_chunk(dA, dBu, dt_t, u_t, B_t, A_c, t0, t1)
            h = _run_chunk(h, dA_c, dBu_c, H).clone()
            Hc = H[: t1 - t0]
            torch.bmm(Hc.reshape(-1, d, n), C_t[t0:t1].reshape(-1, n, 1), out=y_t[t0:t1].view(-1, d, 1))
        y_ssm = y_t.permute(1, 2, 0)  # (b, d, l), before D and z
        ctx.delta_softplus = delta_softplus
        ctx.chunk = T
        ctx.has = (D is not None, z is not None, delta_bias is not None)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, delta_raw, boundaries, y_ssm)
        return _finish(y_t, u, D, z, u.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        with _step_threads(*grad_out.shape[:2], ctx.saved_tensors[2].shape[1], grad_out.is_cuda):
            return _SelectiveScan._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        u, delta, A, B, C, D, z, delta_bias, delta_raw, boundaries, y_ssm = ctx.saved_tensors
        has_D, has_z, has_bias = ctx.has
        b, d, l = u.shape
        n = A.shape[1]
        T = ctx.chunk
        dtype = y_ssm.dtype
        g = grad_out.to(dtype)
        uc = u.to(dtype)

        # the gate and the D skip
        y_pre = y_ssm + uc * D.to(dtype)[:, None] if has_D else y_ssm
        grad_z = None
        if has_z:
            zc = z.to(dtype)
            sig = torch.sigmoid(zc)
            grad_z = (g * y_pre * sig * (1 + zc * (1 - sig))).to(z.dtype)
            g = g * zc * sig
        grad_D = (g * uc).sum(dim=(0, 2)).to(D.dtype) if has_D else None
        grad_u = g * D.to(dtype)[:, None] if has_D else torch.zeros_like(uc)

        dt = F.softplus(delta_raw) if ctx.delta_softplus else delta_raw
        u_t = uc.permute(2, 0, 1).contiguous()
        dt_t = dt.permute(2, 0, 1).contiguous()
        B_t = B.to(dtype).permute(2, 0, 1).contiguous()
        C_t = C.to(dtype).permute(2, 0, 1).contiguous()
        g_t = g.permute(2, 0, 1).contiguous()  # (l, b, d): gradient of y_ssm
        A_c = A.to(dtype)

        grad_dt = torch.empty_like(dt_t)
        grad_u_scan = torch.empty_like(u_t)
        grad_B = torch.empty_like(B_t)
        grad_C = torch.empty_like(C_t)
        grad_A = torch.zeros_like(A_c)
        dA = u_t.new_empty(T, b, d, n)
        dBu = u_t.new_empty(T, b, d, n)
        H = u_t.new_empty(T, b, d, n)
        GH = u_t.new_empty(T, b, d, n)
        gh_next = u_t.new_zeros(b, d, n)   # gradient flowing into h_t from step t+1 onwards
        dA_next = u_t.new_zeros(b, d, n)   # exp(delta_{t+1} A) of the step after the chunk

        for k in reversed(range(boundaries.shape[0])):
            t0 = k * T
            t1 = min(l, t0 + T)
            m = t1 - t0
            dA_c, dBu_c = _fill_chunk(dA, dBu, dt_t, u_t, B_t, A_c, t0, t1)
            _run_chunk(boundaries[k], dA_c, dBu_c, H)
            Hc = H[:m]
            # gradient of y_t = <h_t, C_t>: into C directly, into h_t as g_t (x) C_t
            grad_C[t0:t1] = torch.einsum("tbdn,tbd->tbn", Hc, g_t[t0:t1])
            direct = g_t[t0:t1, :, :, None] * C_t[t0:t1, :, None, :]
            # reverse scan: gh_t = direct_t + exp(delta_{t+1} A) * gh_{t+1}
            for i in reversed(range(m)):
                torch.addcmul(direct[i], gh_next, dA_next, out=GH[i])
                gh_next = GH[i]
                dA_next = dA_c[i]
            gh_next = gh_next.clone()
            dA_next = dA_next.clone()
            GHc = GH[:m]
            h_prev = torch.cat([boundaries[k][None], Hc[:-1]], dim=0)
            g_dA = GHc * h_prev * dA_c                      # d/d(delta A) of exp(delta A)
            grad_A += torch.einsum("tbdn,tbd->dn", g_dA, dt_t[t0:t1])
            gB_sum = torch.einsum("tbdn,tbn->tbd", GHc, B_t[t0:t1])
            grad_dt[t0:t1] = torch.einsum("tbdn,dn->tbd", g_dA, A_c) + gB_sum * u_t[t0:t1]
            grad_u_scan[t0:t1] = gB_sum * dt_t[t0:t1]
            grad_B[t0:t1] = torch.einsum("tbdn,tbd->tbn", GHc, dt_t[t0:t1] * u_t[t0:t1])

        grad_u = grad_u + grad_u_scan.permute(1, 2, 0)
        grad_delta = grad_dt.permute(1, 2, 0)
        if ctx.delta_softplus:
            grad_delta = grad_delta * torch.sigmoid(delta_raw)
        grad_bias = grad_delta.sum(dim=(0, 2)).to(delta_bias.dtype) if has_bias else None
        return (grad_u.to(u.dtype), grad_delta.to(delta.dtype), grad_A.to(A.dtype),
                grad_B.permute(1, 2, 0).to(B.dtype), grad_C.permute(1, 2, 0).to(C.dtype),
                grad_D, grad_z, grad_bias, None)


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The materialising algorithm of mamba_ssm's ``selective_scan_ref``, for tests and benchmarks.

    Builds exp(delta*A) and delta*u*B for all steps at once ((b, d, l, n) each), then loops.
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
