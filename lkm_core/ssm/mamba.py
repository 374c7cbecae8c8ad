"""The Mamba layer (Gu & Dao), with mamba_ssm's parameter names, shapes and initialisation.

State dicts move between this layer and ``mamba_ssm.Mamba`` unchanged: in_proj, conv1d,
x_proj, dt_proj, A_log, D, out_proj. The fused CUDA kernels are used when present; otherwise
the depthwise causal convolution is a padded nn.Conv1d and the scan is ours.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kernels import causal_conv1d_fn
from .scan import kernels_available, selective_scan, selective_scan_time_major


class Mamba(nn.Module):
    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank="auto", dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random",
                 dt_scale: float = 1.0, dt_init_floor: float = 1e-4, conv_bias: bool = True,
                 bias: bool = False, use_out_proj: bool = True, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        # A bidirectional block sums two inner outputs and projects them once, so it asks
        # its Mamba layers for no out_proj (and no such keys in the state dict).
        self.out_proj = (nn.Linear(self.d_inner, d_model, bias=bias, **factory)
                         if use_out_proj else nn.Identity())

        self._init_dt(dt_init, dt_scale, dt_min, dt_max, dt_init_floor)
        # S4D-real initialisation: A = -(1..n) for every channel, stored as log, kept in fp32
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True

    def _init_dt(self, dt_init, dt_scale, dt_min, dt_max, dt_init_floor):
        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', not {dt_init!r}")
        # bias such that softplus(bias) is log-uniform in [dt_min, dt_max]
        dt = torch.exp(torch.rand(self.d_inner, device=self.dt_proj.bias.device)
                       * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        inverse_softplus = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus)
        self.dt_proj.bias._no_reinit = True

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, length, d_model) -> (batch, length, d_model) (d_inner without out_proj)."""
        return self.forward_time_major(hidden.transpose(0, 1)).transpose(0, 1)

    def forward_time_major(self, hidden: torch.Tensor) -> torch.Tensor:
        """(length, batch, d_model) -> (length, batch, d_model): the layout the scan walks."""
        # fp16 scans overflow: the whole layer runs in fp32 whatever autocast says
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            hidden = hidden.float()
            if hidden.is_cuda and kernels_available():
                return self._forward_kernels(hidden.transpose(0, 1)).transpose(0, 1)
            return self._forward_time_major(hidden)

    def _forward_time_major(self, hidden):
        y = selective_scan_time_major(**self.scan_inputs(hidden), delta_softplus=True)
        return self.out_proj(y)

    def scan_inputs(self, hidden):
        """Everything the scan needs for time-major fp32 input (l, b, d_model)."""
        xz = self.in_proj(hidden)                                # (l, b, 2*d_inner)
        x, z = xz[..., :self.d_inner], xz[..., self.d_inner:]
        x = self._causal_conv_time_major(x)
        x_dbl = self.x_proj(x)                                   # (l, b, r + 2n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return dict(u=x, delta=dt @ self.dt_proj.weight.t(), A=-torch.exp(self.A_log.float()),
                    B=B, C=C, D=self.D.float(), z=z, delta_bias=self.dt_proj.bias.float())

    def _causal_conv_time_major(self, x):
        """Depthwise causal conv along l, then SiLU: out[t] = bias + sum_k w[k] * x[t - K + 1 + k]."""
        weight = self.conv1d.weight[:, 0, :]                     # (d_inner, K)
        K = weight.shape[1]
        out = x * weight[:, K - 1]
        if self.conv1d.bias is not None:
            out = out + self.conv1d.bias
        for shift in range(1, min(K, x.shape[0])):
            out[shift:] = out[shift:] + x[:-shift] * weight[:, K - 1 - shift]
        return F.silu(out)

    def _forward_kernels(self, hidden):
        """mamba_ssm's layout, (b, l, d_model), for its fused CUDA kernels."""
        length = hidden.shape[1]
        xz = self.in_proj(hidden).transpose(1, 2)              # (b, 2*d_inner, l)
        x, z = xz.chunk(2, dim=1)
        fused = causal_conv1d_fn()
        x = x.contiguous()
        if fused is not None:
            x = fused(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        else:
            x = F.silu(self.conv1d(x)[..., :length])
        x_dbl = self.x_proj(x.transpose(1, 2))                  # (b, l, r + 2n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)
        A = -torch.exp(self.A_log.float())
        y = selective_scan(x, delta.contiguous(), A, B.transpose(1, 2).contiguous(),
                           C.transpose(1, 2).contiguous(), self.D.float(), z.contiguous(),
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))


def bidirectional_time_major(forward: Mamba, backward: Mamba, hidden: torch.Tensor) -> torch.Tensor:
    """forward(x) + flip(backward(flip(x))) for time-major (l, b, d_model) input, inner width out.

    Without mamba_ssm's kernels both directions go through ONE scan: the sequences of the two
    directions are stacked along the batch, each with its own A, D and delta_bias, which halves
    the number of sequential steps (the scan's cost on a CPU is mostly per step).
    Both layers must have no out_proj of their own (use_out_proj=False).
    """
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        hidden = hidden.float()
        if hidden.is_cuda and kernels_available():
            return forward.forward_time_major(hidden) + backward.forward_time_major(hidden.flip(0)).flip(0)
        fwd, bwd = forward.scan_inputs(hidden), backward.scan_inputs(hidden.flip(0))
        n_seq = hidden.shape[1]
        stacked = {}
        for key in fwd:
            if key in ("A", "D", "delta_bias"):   # one per sequence: (2b, d, ...)
                stacked[key] = torch.cat([fwd[key].expand(n_seq, *fwd[key].shape),
                                          bwd[key].expand(n_seq, *bwd[key].shape)])
            else:                                 # (l, 2b, ...)
                stacked[key] = torch.cat([fwd[key], bwd[key]], dim=1)
        y = selective_scan_time_major(**stacked, delta_softplus=True)
        return forward.out_proj(y[:, :n_seq]) + backward.out_proj(y[:, n_seq:]).flip(0)


def bidirectional_fused_cpu(forward: Mamba, backward: Mamba, hidden: torch.Tensor, kernels) -> torch.Tensor:
    """forward(x) + flip(backward(flip(x))) for batch-major (N, L, d_model) fp32 CPU input, no grad.

    Returns the two inner outputs side by side, (N, L, 2 * d_inner): a Linear with its weight
    repeated twice ([W, W]) turns them into W (y_fwd + y_bwd) without a separate add. Nothing
    is flipped and nothing concatenated: one in_proj GEMM serves both directions, the
    backward direction's conv and scan walk the sequence backwards by index (numba kernels),
    dt_proj, softplus, D and the SiLU gate happen inside the scan, and each sequence's rows are
    contiguous in memory (batch-major), so the kernels stream through them.
    """
    N, L, _ = hidden.shape
    d, n, r = forward.d_inner, forward.d_state, forward.dt_rank
    pair = (forward, backward)
    stack = lambda get: torch.stack([get(m).detach().float() for m in pair])
    in_bias = (torch.cat([m.in_proj.bias for m in pair]) if forward.in_proj.bias is not None else None)
    xz = F.linear(hidden, torch.cat([m.in_proj.weight for m in pair]), in_bias).view(N, L, 2, 2, d)
    time_major = lambda t: t.transpose(0, 1)       # a view: (N, L, ...) -> (L, N, ...)
    u = hidden.new_empty(N, L, 2, d)
    conv_bias = (stack(lambda m: m.conv1d.bias) if forward.conv1d.bias is not None
                 else hidden.new_zeros(2, d))
    kernels.causal_conv_silu(time_major(xz[:, :, :, 0]), stack(lambda m: m.conv1d.weight[:, 0]), conv_bias,
                             time_major(u), reverse_second=True)
    rows = u.view(N * L, 2, d)
    x_dbl = hidden.new_empty(2, N * L, r + 2 * n)
    for i, m in enumerate(pair):
        torch.mm(rows[:, i], m.x_proj.weight.t(), out=x_dbl[i])
    per_direction = lambda t: t.view(2, N, L, t.shape[-1]).permute(2, 1, 0, 3)   # (L, N, 2, c)
    y = hidden.new_empty(N, L, 2, d)
    # dt_proj happens inside the scan (from x_dbl's first r columns): no (N, L, 2, d) delta
    kernels.run(time_major(u), per_direction(x_dbl[:, :, :r]), stack(lambda m: -torch.exp(m.A_log.float())),
                per_direction(x_dbl[:, :, r:r + n]), per_direction(x_dbl[:, :, r + n:]),
                stack(lambda m: m.D), time_major(xz[:, :, :, 1]), stack(lambda m: m.dt_proj.bias),
                True, time_major(y), reverse_second=True, dt_weight=stack(lambda m: m.dt_proj.weight))
    return y.view(N, L, 2 * d)
