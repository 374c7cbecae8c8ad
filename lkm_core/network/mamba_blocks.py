"""The Mamba parts of LKM-UNet: bidirectional Mamba (BiM), pixel-level (PiM) and patch-level (PaM).

PiM cuts the feature map into windows and runs BiM inside each window, so every sequence is a
large *local* kernel. Two partitions are offered:

* ``"window"`` (the paper): contiguous windows of the given size; the tokens of one window are
  one sequence, in raster order, so spatial neighbours stay close in the sequence.
* ``"strided"`` (the official code): the given sizes are strides; sequence (i, j, k) holds the
  voxels at offsets (i, j, k) modulo the stride, i.e. a dilated grid across the whole map.

A map that the window does not divide is zero-padded at its far end and cropped afterwards; it
is never turned into one global sequence (the official code does, which can need tens of GB).

PaM average-pools each window to one token, runs BiM over the pooled tokens (global context
at low cost) and copies each result back over its window.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ssm import Mamba
from ..ssm import backend as scan_backend
from ..ssm.mamba import bidirectional_fused_cpu, bidirectional_time_major

PARTITIONS = ("window", "strided")
# Inference runs BiM on groups of sequences of at most this many (token x d_inner) elements,
# so one Mamba layer's temporaries stay near 100 MB each whatever the feature map's size.
_GROUP_ELEMENTS = 1 << 25


def _pad_to_multiple(x: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the spatial dims of (B, C, *S) at their far end to multiples of sizes."""
    spatial = x.shape[2:]
    padded = tuple(math.ceil(s / w) * w for s, w in zip(spatial, sizes))
    if padded == tuple(spatial):
        return x, padded
    pad = []
    for s, p in reversed(list(zip(spatial, padded))):
        pad += [0, p - s]
    return F.pad(x, pad), padded


def _crop(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    return x[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]


def partition(x: torch.Tensor, sizes: Sequence[int], mode: str = "window"):
    """(B, C, *S) -> sequences (B * n_seq, seq_len, C) and what `unpartition` needs."""
    if mode not in PARTITIONS:
        raise ValueError(f"pim_partition must be one of {PARTITIONS}, not {mode!r}")
    dims = x.dim() - 2
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != dims:
        raise ValueError(f"window {sizes} does not match a {dims}D feature map")
    spatial = tuple(x.shape[2:])
    x, padded = _pad_to_multiple(x, sizes)
    counts = tuple(p // w for p, w in zip(padded, sizes))
    layout = (spatial, padded, sizes, counts, mode)
    seq_len = math.prod(counts if mode == "strided" else sizes)
    return _sequence_view(x, layout).reshape(-1, seq_len, x.shape[1]), layout


def _sequence_view(x: torch.Tensor, layout) -> torch.Tensor:
    """A view of the padded map (B, C, *padded) with axes (B, *seq index, *token index, C).

    Reshaped to (B * n_seq, seq_len, C) it is `partition`'s output; written through, it puts
    sequences back in place without an intermediate full-size copy.
    """
    _, _, sizes, counts, mode = layout
    dims = len(sizes)
    B, C = x.shape[:2]
    split = [B, C]
    for n, w in zip(counts, sizes):
        split += [n, w]
    x = x.view(split) if x.is_contiguous() else x.reshape(split)  # (B, C, n0, w0, n1, w1, ...)
    count_axes = [2 + 2 * i for i in range(dims)]
    size_axes = [3 + 2 * i for i in range(dims)]
    if mode == "window":   # one sequence per window, tokens = positions inside the window
        seq_axes, tok_axes = count_axes, size_axes
    else:                  # one sequence per offset, tokens = the strided grid of that offset
        seq_axes, tok_axes = size_axes, count_axes
    return x.permute(0, *seq_axes, *tok_axes, 1)


def unpartition(seqs: torch.Tensor, batch: int, layout) -> torch.Tensor:
    """Inverse of `partition`: (B * n_seq, seq_len, C) -> (B, C, *S)."""
    C = seqs.shape[-1]
    return _unpartition_channels_first(seqs.permute(2, 0, 1), batch, layout, C)


def _unpartition_channels_first(seqs_cf, batch, layout, C):
    """(C, B * n_seq, seq_len) -> (B, C, *S), written contiguously (the source moves along
    the last window axis when it is channels first)."""
    spatial, padded, sizes, counts, mode = layout
    dims = len(sizes)
    seq_shape, tok_shape = (counts, sizes) if mode == "window" else (sizes, counts)
    x = seqs_cf.reshape(C, batch, *seq_shape, *tok_shape)
    # axes now: 0 channel, 1 batch, 2..dims+1 seq index, dims+2..2dims+1 token index
    order = [1, 0]
    for i in range(dims):
        count_axis, size_axis = (2 + i, 2 + dims + i) if mode == "window" else (2 + dims + i, 2 + i)
        order += [count_axis, size_axis]
    return _crop(x.permute(order).reshape(batch, C, *padded), spatial)


def add_unpartitioned(x: torch.Tensor, seqs_cf: torch.Tensor, layout) -> torch.Tensor:
    """x + unpartition(seqs) in fp32 for channels-first seqs_cf (C, B * n_seq, seq_len).

    Without padding: one copy of x, then the sequences are added through a strided view of
    it (with the channels first, both sides run along the last window axis). With padding:
    the sequences are put back contiguously, cropped and added.
    """
    spatial, padded = layout[:2]
    if tuple(padded) != tuple(spatial):
        return x.float() + _unpartition_channels_first(seqs_cf, x.shape[0], layout, seqs_cf.shape[0])
    out = x.float().clone(memory_format=torch.contiguous_format)
    view = _sequence_view(out, layout)
    view = view.permute(view.dim() - 1, *range(view.dim() - 1))     # (C, B, *seq index, *token index)
    view.add_(seqs_cf.reshape(view.shape))
    return out


class BiMamba(nn.Module):
    """LayerNorm, then Mamba over the sequence and (separate weights) over its reverse.

    The two inner outputs are summed (the reverse one flipped back) and projected once by a
    shared Linear(d_inner -> C): each Mamba has no out_proj of its own.
    """

    def __init__(self, channels: int, bidirectional: bool = True, d_state: int = 16,
                 d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.mamba_fwd = Mamba(channels, d_state, d_conv, expand, use_out_proj=False)
        self.mamba_bwd = (Mamba(channels, d_state, d_conv, expand, use_out_proj=False)
                          if bidirectional else None)
        self.out_proj = nn.Linear(self.mamba_fwd.d_inner, channels, bias=False)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """(N, L, C) -> (N, L, C), fp32 throughout."""
        with torch.autocast(device_type=seqs.device.type, enabled=False):
            kernels = self.fused_cpu_kernels(seqs)
            if kernels is not None:
                return self._forward_fused(self.norm(seqs.float()), kernels)
            normed = self.norm(seqs.float().transpose(0, 1))      # time-major (L, N, C)
            if torch.is_grad_enabled():
                return self._mix(normed).transpose(0, 1)
            # inference: a bounded number of sequences at a time bounds the layer's memory
            L, N, C = normed.shape
            group = self._group(L)
            if group >= N:
                return self._mix(normed).transpose(0, 1)
            out = normed.new_empty(L, N, C)
            for start in range(0, N, group):
                out[:, start:start + group] = self._mix(normed[:, start:start + group])
            return out.transpose(0, 1)

    def _group(self, length):
        directions = 2 if self.mamba_bwd is not None else 1
        return max(1, _GROUP_ELEMENTS // (length * self.mamba_fwd.d_inner * directions))

    def fused_cpu_kernels(self, seqs):
        """The numba kernels when this call can take the fused CPU path, else None."""
        if (self.mamba_bwd is None or seqs.is_cuda or torch.is_grad_enabled()
                or scan_backend.cpu_inference_backend() != "numba"):
            return None
        return scan_backend.numba_scan_module()

    def forward_channels_first(self, seqs: torch.Tensor) -> torch.Tensor:
        """(N, L, C) -> (C, N, L): the same result, channels first (PiM adds it back that way)."""
        with torch.autocast(device_type=seqs.device.type, enabled=False):
            kernels = self.fused_cpu_kernels(seqs)
            if kernels is not None:
                return self._forward_fused(self.norm(seqs.float()), kernels, channels_first=True)
            return self.forward(seqs).permute(2, 0, 1)

    def _forward_fused(self, normed, kernels, channels_first=False):
        """Inference on the CPU with the fused kernels, batch-major, a group of sequences at a time.

        channels_first: out_proj writes (C, N, L), so that putting the sequences back into a
        (B, C, *S) map moves runs along the last spatial axis instead of single values.
        """
        N, L, C = normed.shape
        out_weight = self.out_proj.weight.repeat(1, 2)     # W (y_fwd + y_bwd) = [W, W] [y_fwd; y_bwd]
        out = normed.new_empty((C, N, L) if channels_first else (N, L, C))
        group = self._group(L)
        for start in range(0, N, group):
            stop = min(N, start + group)
            y = bidirectional_fused_cpu(self.mamba_fwd, self.mamba_bwd, normed[start:stop], kernels)
            if channels_first:
                torch.mm(out_weight, y.view(-1, y.shape[-1]).t(), out=out[:, start:stop].view(C, -1))
            else:
                torch.matmul(y, out_weight.t(), out=out[start:stop])
        scan_backend.note_used("numba")
        return out

    def _mix(self, normed):
        if self.mamba_bwd is None:
            return self.out_proj(self.mamba_fwd.forward_time_major(normed))
        return self.out_proj(bidirectional_time_major(self.mamba_fwd, self.mamba_bwd, normed))


class PixelMamba(nn.Module):
    """PiM: BiM inside each window (or strided sequence) of the feature map, plus the input."""

    def __init__(self, channels: int, window: Sequence[int], partition_mode: str = "window",
                 bidirectional: bool = True, **mamba_kwargs):
        super().__init__()
        if partition_mode not in PARTITIONS:
            raise ValueError(f"pim_partition must be one of {PARTITIONS}, not {partition_mode!r}")
        self.window = tuple(int(w) for w in window)
        self.partition_mode = partition_mode
        self.bim = BiMamba(channels, bidirectional, **mamba_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seqs, layout = partition(x, self.window, self.partition_mode)
        if self.bim.fused_cpu_kernels(seqs) is not None:     # CPU inference: channels-first output
            return add_unpartitioned(x, self.bim.forward_channels_first(seqs), layout).to(x.dtype)
        out = unpartition(self.bim(seqs), x.shape[0], layout)
        return (x.float() + out).to(x.dtype)


class PatchMamba(nn.Module):
    """PaM: average-pool each pooling window to one token, BiM over the tokens, copy back, add."""

    def __init__(self, channels: int, pool: Sequence[int], bidirectional: bool = True, **mamba_kwargs):
        super().__init__()
        self.pool = tuple(int(p) for p in pool)
        self.bim = BiMamba(channels, bidirectional, **mamba_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        xf = x.float()
        padded, _ = _pad_to_multiple(xf, self.pool)
        pool_op = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[x.dim() - 2]
        pooled = pool_op(padded, self.pool, self.pool)
        if padded.shape != xf.shape:
            # average over real voxels only: padding must not dilute border windows
            ones, _ = _pad_to_multiple(torch.ones_like(xf[:, :1]), self.pool)
            pooled = pooled / pool_op(ones, self.pool, self.pool).clamp_min(1e-6)
        B, C = pooled.shape[:2]
        grid = pooled.shape[2:]
        tokens = pooled.reshape(B, C, -1).transpose(1, 2)
        out = self.bim(tokens).transpose(1, 2).reshape(B, C, *grid)
        for axis, p in enumerate(self.pool):
            out = out.repeat_interleave(p, dim=2 + axis)   # nearest-neighbour unpooling
        return (xf + _crop(out, spatial)).to(x.dtype)
