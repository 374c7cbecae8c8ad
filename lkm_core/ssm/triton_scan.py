"""Inference selective scan as one Triton kernel, for GPUs without mamba_ssm's compiled kernels.

mamba_ssm has no wheels and needs nvcc to build, so most GPU users (Slicer's included) do not
have it. A Python loop over the sequence costs one kernel launch per step on a GPU; this
kernel instead keeps the (BLOCK_D, n) state of a block of channels in registers and walks the
sequence inside the kernel. Forward only (no autograd): training uses the autograd path.

Triton is imported lazily; without it (or without CUDA) this path is simply not offered.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _kernel():
    try:
        import triton
        import triton.language as tl
    except Exception as exc:
        log.debug("triton unavailable: %s", exc)
        return None

    @triton.jit
    def scan_kernel(u_ptr, dt_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr,
                    L, DIM, N,
                    su_l, su_b, sdt_l, sdt_b, sz_l, sz_b, sB_l, sB_b, sC_l, sC_b, sy_l, sy_b,
                    sA_b, sD_b, sbias_b,
                    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
        # u, dt, z, y: (l, b, d) and B, C: (l, b, n), any strides over l and b, unit stride
        # over the last dim; A: (d, n), D and bias: (d,), or one of each per sequence (batch
        # strides sA_b, sD_b, sbias_b; 0 when shared). One program: one sequence, BLOCK_D channels.
        pid_b = tl.program_id(0)
        pid_d = tl.program_id(1)
        d_off = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        n_off = tl.arange(0, BLOCK_N)
        d_mask = d_off < DIM
        n_mask = n_off < N
        A = tl.load(A_ptr + pid_b * sA_b + d_off[:, None] * N + n_off[None, :],
                    mask=d_mask[:, None] & n_mask[None, :], other=0.0)
        if HAS_D:
            Dv = tl.load(D_ptr + pid_b * sD_b + d_off, mask=d_mask, other=0.0)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + pid_b * sbias_b + d_off, mask=d_mask, other=0.0)
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        for t in range(L):
            u = tl.load(u_ptr + t * su_l + pid_b * su_b + d_off, mask=d_mask, other=0.0)
            dt = tl.load(dt_ptr + t * sdt_l + pid_b * sdt_b + d_off, mask=d_mask, other=0.0)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))
            Bt = tl.load(B_ptr + t * sB_l + pid_b * sB_b + n_off, mask=n_mask, other=0.0)
            Ct = tl.load(C_ptr + t * sC_l + pid_b * sC_b + n_off, mask=n_mask, other=0.0)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], axis=1)
            if HAS_D:
                y = y + Dv * u
            if HAS_Z:
                z = tl.load(z_ptr + t * sz_l + pid_b * sz_b + d_off, mask=d_mask, other=0.0)
                y = y * z * tl.sigmoid(z)
            tl.store(y_ptr + t * sy_l + pid_b * sy_b + d_off, y, mask=d_mask)

    return scan_kernel


def triton_available(device: torch.device) -> bool:
    return device.type == "cuda" and _kernel() is not None


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          block_d: int = 32):
    """Time-major scan (u, delta, z: (l, b, d); B, C: (l, b, n)) -> (l, b, d); no gradients."""
    kernel = _kernel()
    if kernel is None:
        raise RuntimeError("triton is not available")
    l, b, d = u.shape
    n = A.shape[-1]
    # fp32, unit stride over the last dim; the l and b strides are passed as they are
    prep = lambda t: t if (t.dtype == torch.float32 and t.stride(-1) == 1) else t.float().contiguous()
    u_, dt_, B_, C_ = prep(u), prep(delta), prep(B), prep(C)
    z_ = prep(z) if z is not None else u_
    A_ = A.float().contiguous()
    D_ = D.float().contiguous() if D is not None else A_
    bias_ = delta_bias.float().contiguous() if delta_bias is not None else A_
    y = torch.empty((l, b, d), device=u.device, dtype=torch.float32)
    block_n = max(16, 1 << (n - 1).bit_length())
    grid = (b, (d + block_d - 1) // block_d)
    strides = [s for t in (u_, dt_, z_, B_, C_, y) for s in (t.stride(0), t.stride(1))]
    per_sequence = lambda t, dims: t.stride(0) if t.dim() == dims else 0
    strides += [per_sequence(A_, 3), per_sequence(D_, 2) if D is not None else 0,
                per_sequence(bias_, 2) if delta_bias is not None else 0]
    kernel[grid](u_, dt_, z_, A_, B_, C_, D_, bias_, y, l, d, n, *strides,
                 HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=bool(delta_softplus), BLOCK_D=block_d, BLOCK_N=block_n)
    return y.to(u.dtype)
