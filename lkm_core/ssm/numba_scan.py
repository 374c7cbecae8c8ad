"""Fused CPU selective scan compiled by numba: one pass over the sequence, states in cache.

The torch scan (scan.py) writes exp(delta*A), delta*u*B and the states out for every chunk and
reads them back; it is memory-bound. This kernel reads only u, dt_proj's input (or delta), z,
B and C and writes y. It
vectorises across the channels (the inner dimension of every time-major row, so loads
are contiguous and the contraction with C is a vertical add), and exp, softplus and SiLU are
written as polynomials with range reduction so that they vectorise too: LLVM turns a call to
libm's exp into a scalar call on every platform but x86 with Intel's SVML, and then the exp
alone is the bound.

Every tensor is handed over as a flat view of its storage plus its strides, so
views (the gate z inside in_proj's output, B and C inside x_proj's) are read in place. One job
is one (sequence, direction); a direction may be scanned backwards by index (no flipped copy).

Importing this module imports numba and sets where compiled kernels are cached (a per-user
folder: every Segment click is a new process, and compiling costs seconds while loading a
cached kernel costs a fraction of one). Callers import it lazily and fall back to the torch
scan when it fails.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def _cache_folder() -> str:
    """$NUMBA_CACHE_DIR when the user set one, else numba/ under lkm_core's per-user cache."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    from ..files import cache_dir
    return str(cache_dir() / "numba")


CACHE_DIR = _cache_folder()

import numba  # noqa: E402  (after the cache folder is known)
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402
from numba.core import types as _types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

try:
    os.makedirs(CACHE_DIR, exist_ok=True)
    numba.config.CACHE_DIR = CACHE_DIR   # read by the cache=True decorators below
except OSError as exc:                   # unwritable: numba compiles in memory (and warns)
    log.info("numba kernels will not be cached (%s: %s)", CACHE_DIR, exc)

# No reassociation: the magic-number rounding in _exp2_nonpositive must not be folded away. error_model
# "numpy": a float division must not check for zero (that check stops vectorisation).
_JIT = dict(fastmath={"nnan", "ninf", "nsz", "contract", "arcp"}, error_model="numpy", cache=True)
_INLINE = dict(_JIT, inline="always")


@intrinsic
def _int_bits_as_float(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (a bitcast; vectorises)."""
    sig = _types.float32(_types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(_types.float32))
    return sig, codegen


_LOG2E = np.float32(1.4426950408889634)
_ROUND = np.float32(12582912.0)           # 1.5 * 2**23: adding it rounds to an integer
# 2**f = e**(f ln2) on |f| <= 1/2: Taylor to degree 6 (relative error <= 1.2e-7)
_C1, _C2, _C3 = np.float32(0.6931471805599453), np.float32(0.2402265069591007), np.float32(0.055504108664821576)
_C4, _C5, _C6 = np.float32(0.009618129107628477), np.float32(0.0013333558146428441), np.float32(0.00015403530393381606)
_ONE = np.float32(1.0)


@njit(**_INLINE)
def _exp2_nonpositive(x):
    """2**x for fp32 x <= 0 (relative error ~2e-7); below -126 the result is ~1e-38.

    The state decay is exp(delta A) = 2**(delta A log2 e): A comes pre-scaled by log2 e, so
    the range reduction is one rounding and one subtraction (no Cody-Waite split of ln 2).
    """
    x = max(x, np.float32(-126.0))
    k = (x + _ROUND) - _ROUND
    f = x - k
    p = ((((((_C6 * f + _C5) * f + _C4) * f + _C3) * f + _C2) * f + _C1) * f) + _ONE
    return p * _int_bits_as_float((np.int32(k) + np.int32(127)) << np.int32(23))


@njit(**_INLINE)
def _exp_nonpositive(x):
    """exp(x) for fp32 x <= 0."""
    return _exp2_nonpositive(x * _LOG2E)


@njit(**_INLINE)
def _softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), log1p by its atanh series (v in (0, 1])."""
    v = _exp_nonpositive(-abs(x))
    s = v / (np.float32(2.0) + v)          # log(1 + v) = 2 atanh(s), s <= 1/3
    s2 = s * s
    series = _ONE + s2 * (np.float32(1 / 3) + s2 * (np.float32(1 / 5) + s2 * (
        np.float32(1 / 7) + s2 * (np.float32(1 / 9) + s2 * (np.float32(1 / 11) + s2 * np.float32(1 / 13))))))
    return max(x, np.float32(0.0)) + np.float32(2.0) * s * series


@njit(**_INLINE)
def _silu(x):
    """x * sigmoid(x), from exp(-|x|) so that nothing overflows."""
    e = _exp_nonpositive(-abs(x))
    return x / (_ONE + e) if x >= 0 else x * e / (_ONE + e)


@njit(parallel=True, **_JIT)
def scan_kernel(u, u_s, delta, dt_s, z, z_s, B, b_s, C, c_s, y, y_s, At, Dp, bias, p_s, Wdt,
                length, n_seq, n_dir, reverse_second, has_z, softplus):
    """The scan for n_seq sequences times n_dir directions, results into y.

    u, delta, z, B, C, y: flat fp32 storage, each starting at its tensor's first element;
    *_s: (stride over t, over the sequence, over the direction) in elements, unit stride
    over channels (over states for B and C). At: (n_dir, nb, n, d) the transposed A times
    log2(e); Dp, bias:
    (n_dir, nb, d) (zeros when absent); p_s: 1 when nb is the number of sequences, 0 when one
    set is shared.
    Wdt: (n_dir, R, d), dt_proj's weight transposed, when delta holds Mamba's low-rank
    (R-wide) step input, delta_t = Wdt^T dt_low_t (the (l, b, d) delta is never stored); with
    R = 0 delta is the (l, b, d) step size itself. Direction 1 walks t backwards when
    reverse_second. Indices are unsigned so that no
    negative-index wraparound stands between LLVM and contiguous vector loads.
    """
    for job in prange(n_seq * n_dir):
        s = job // n_dir
        r = job - s * n_dir
        _scan_one(u, u_s, delta, dt_s, z, z_s, B, b_s, C, c_s, y, y_s, At, Dp, bias, p_s, Wdt,
                  length, s, r, reverse_second and r == 1, has_z, softplus)


@njit(**_JIT)
def _scan_one(u, u_s, delta, dt_s, z, z_s, B, b_s, C, c_s, y, y_s, At, Dp, bias, p_s, Wdt,
              length, s, r, backwards, has_z, softplus):
    """One sequence s in direction r (a separate function: LLVM vectorises it as a whole)."""
    n = At.shape[2]
    d = np.uint64(At.shape[3])
    a = At[r, s * p_s].ravel()
    dp = Dp[r, s * p_s]
    bs = bias[r, s * p_s]
    rank = Wdt.shape[1]
    wdt = Wdt[r].ravel()
    h = np.zeros(n * d, dtype=np.float32)
    raw = np.empty(d, dtype=np.float32)
    dt = np.empty(d, dtype=np.float32)
    dtu = np.empty(d, dtype=np.float32)
    acc = np.empty(d, dtype=np.float32)
    for step in range(length):
        t = length - 1 - step if backwards else step
        uo = np.uint64(t * u_s[0] + s * u_s[1] + r * u_s[2])
        do = np.uint64(t * dt_s[0] + s * dt_s[1] + r * dt_s[2])
        bo = t * b_s[0] + s * b_s[1] + r * b_s[2]
        co = t * c_s[0] + s * c_s[1] + r * c_s[2]
        if rank == 0:
            for j in range(d):
                raw[j] = delta[do + j] + bs[j]
        else:                              # dt_proj folded in: raw = bias + Wdt^T dt_low
            for j in range(d):
                raw[j] = bs[j]
            for q in range(rank):
                c = delta[do + np.uint64(q)]
                wo = np.uint64(q) * d
                for j in range(d):
                    raw[j] += c * wdt[wo + j]
        # D*u starts the sum over the states; the branch stays outside the vector loops
        if softplus:
            for j in range(d):
                x = _softplus(raw[j])
                dt[j] = x
                dtu[j] = x * u[uo + j]
                acc[j] = dp[j] * u[uo + j]
        else:
            for j in range(d):
                x = raw[j]
                dt[j] = x
                dtu[j] = x * u[uo + j]
                acc[j] = dp[j] * u[uo + j]
        for k in range(n):
            bk = B[bo + k]
            ck = C[co + k]
            ho = np.uint64(k) * d
            for j in range(d):
                hv = _exp2_nonpositive(dt[j] * a[ho + j]) * h[ho + j] + dtu[j] * bk
                h[ho + j] = hv
                acc[j] += hv * ck
        if has_z:
            zo = np.uint64(t * z_s[0] + s * z_s[1] + r * z_s[2])
            for j in range(d):
                acc[j] *= _silu(z[zo + j])
        yo = np.uint64(t * y_s[0] + s * y_s[1] + r * y_s[2])
        for j in range(d):
            y[yo + j] = acc[j]


@njit(parallel=True, **_JIT)
def conv_kernel(x, x_s, w, bias, out, o_s, length, n_seq, n_dir, reverse_second):
    """Depthwise causal conv along t plus SiLU: out[t] = silu(bias + sum_k w[k] x[t - K + 1 + k]).

    Direction 1, when reverse_second, is the causal conv of the reversed sequence written in
    the original order (taps mirrored: x[t + K - 1 - k]). x, out: flat with (t, seq, dir)
    strides like scan_kernel's; w: (n_dir, K, d); bias: (n_dir, d).
    """
    for job in prange(n_seq * n_dir):
        s = job // n_dir
        r = job - s * n_dir
        _conv_one(x, x_s, w, bias, out, o_s, length, s, r, reverse_second and r == 1)


@njit(**_JIT)
def _conv_one(x, x_s, w, bias, out, o_s, length, s, r, backwards):
    K = w.shape[1]
    d = np.uint64(w.shape[2])
    b = bias[r]
    taps = w[r].ravel()                    # (K * d,): slices taken once, not per step
    acc = np.empty(d, dtype=np.float32)
    for t in range(length):
        for j in range(d):
            acc[j] = b[j]
        for k in range(K):
            tt = t + K - 1 - k if backwards else t - K + 1 + k
            if 0 <= tt < length:
                xo = np.uint64(tt * x_s[0] + s * x_s[1] + r * x_s[2])
                wo = np.uint64(k) * d
                for j in range(d):
                    acc[j] += taps[wo + j] * x[xo + j]
        oo = np.uint64(t * o_s[0] + s * o_s[1] + r * o_s[2])
        for j in range(d):
            out[oo + j] = _silu(acc[j])


def _cap_threads():
    """numba's pool follows torch's thread count: the two pools must not fight for cores.

    Jobs (one sequence and direction each) are handed out one at a time rather than split in
    equal halves up front: on a shared machine a thread that loses its core for a while then
    leaves its jobs to the others instead of holding everyone up at the end.
    """
    import torch
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    numba.set_parallel_chunksize(1)


_LOG2E_EXACT = 1.4426950408889634


def _flat(t):
    """A flat numpy view of t's storage from its first element, and its (t, seq, dir) strides.

    t is (l, b, c) or (l, b, n_dir, c) with unit stride over c; nothing is copied.
    """
    import torch
    if t.dtype != torch.float32 or t.stride(-1) != 1:
        t = t.float().contiguous()
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    flat = torch.as_strided(t, (span,), (1,)).detach().numpy()
    strides = tuple(int(s) for s in t.stride()[:-1])
    return flat, strides if len(strides) == 3 else strides + (0,)


def _output(t):
    import torch
    if t.dtype != torch.float32 or t.stride(-1) != 1:
        raise ValueError("the output must be an fp32 tensor with a unit last stride")
    return _flat(t)


def causal_conv_silu(x, weight, bias, out, reverse_second=False):
    """silu(depthwise causal conv of x along t) into out (no autograd).

    x, out: (l, b, c) or (l, b, n_dir, c) views with a unit last stride; weight (n_dir, c, K)
    (nn.Conv1d's (c, 1, K) squeezed, one per direction); bias (n_dir, c).
    """
    l, b = x.shape[:2]
    n_dir = x.shape[2] if x.dim() == 4 else 1
    c = x.shape[-1]
    w = np.ascontiguousarray(weight.detach().float().reshape(n_dir, c, -1).transpose(1, 2).numpy())
    bb = np.ascontiguousarray(bias.detach().float().reshape(n_dir, c).numpy())
    fx, sx = _flat(x)
    fo, so = _output(out)
    _cap_threads()
    conv_kernel(fx, sx, w, bb, fo, so, int(l), int(b), int(n_dir), bool(reverse_second))
    return out


def run(u, delta, A, B, C, D, z, delta_bias, softplus, y, reverse_second=False, dt_weight=None):
    """Scan into y (no autograd). Time-major views, with an optional direction axis:

    u, delta, z, y: (l, b, c) or (l, b, n_dir, c); B, C: (l, b, n) or (l, b, n_dir, n), any
    strides with a unit last one. With dt_weight ((n_dir, c, R): dt_proj's weight per
    direction), delta is the R-wide input of dt_proj instead, (l, b, [n_dir,] R). A: (d, n), (b, d, n) or (n_dir, b, d, n); D and delta_bias
    (d,), (b, d) or (n_dir, b, d): one per direction and optionally per sequence.
    """
    import torch
    l, b = u.shape[:2]
    d = u.shape[-1]
    n = A.shape[-1]
    n_dir = u.shape[2] if u.dim() == 4 else 1
    # one parameter set per sequence when any of them is given per sequence (they are small)
    per_seq = A.dim() == (4 if n_dir > 1 else 3) or any(
        t is not None and t.dim() == (3 if n_dir > 1 else 2) for t in (D, delta_bias))
    nb = b if per_seq else 1

    def params(t, *trailing):
        t = t.detach().float().reshape(n_dir, -1, *trailing)
        return np.ascontiguousarray(t.expand(n_dir, nb, *trailing).numpy())

    At = np.ascontiguousarray(params(A * _LOG2E_EXACT, d, n).transpose(0, 1, 3, 2))
    zeros = torch.zeros(n_dir, 1, d)
    Dp = params(D if D is not None else zeros, d)
    bias = params(delta_bias if delta_bias is not None else zeros, d)
    Wdt = (np.ascontiguousarray(dt_weight.detach().float().reshape(n_dir, d, -1).transpose(1, 2).numpy())
           if dt_weight is not None else np.zeros((n_dir, 0, d), dtype=np.float32))
    fu, su = _flat(u)
    fdt, sdt = _flat(delta)
    fz, sz = _flat(z) if z is not None else (fu, su)
    fB, sB = _flat(B)
    fC, sC = _flat(C)
    fy, sy = _output(y)
    _cap_threads()
    scan_kernel(fu, su, fdt, sdt, fz, sz, fB, sB, fC, sC, fy, sy, At, Dp, bias, int(per_seq), Wdt,
                int(l), int(b), int(n_dir), bool(reverse_second), z is not None, bool(softplus))
    return y


def warm_up():
    """Compile both kernels (or load them from the cache) on tiny inputs: a failure shows here."""
    import torch
    l, b, d, n = 3, 1, 2, 2
    u = torch.zeros(l, b, d)
    run(u, u, -torch.ones(d, n), torch.zeros(l, b, n), torch.zeros(l, b, n), torch.ones(d), u,
        torch.zeros(d), True, torch.empty(l, b, d))
    causal_conv_silu(u, torch.ones(1, d, 4), torch.zeros(1, d), torch.empty(l, b, d))
