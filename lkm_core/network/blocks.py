"""Convolutional building blocks of the residual-encoder U-Net.

Attribute names (stem.convs, stages.N.blocks, conv1/conv2/skip, conv/norm) follow the layout
of nnU-Net's dynamic_network_architectures, so checkpoints of the official LKM-UNet code map
onto this network by renaming only its Mamba parts (see official_keys.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn

CONV_DIMS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
POOL_FOR_CONV = {nn.Conv1d: nn.AvgPool1d, nn.Conv2d: nn.AvgPool2d, nn.Conv3d: nn.AvgPool3d}
TRANSPOSED_FOR_CONV = {nn.Conv1d: nn.ConvTranspose1d, nn.Conv2d: nn.ConvTranspose2d,
                       nn.Conv3d: nn.ConvTranspose3d}


def as_tuple(value, dims: int) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != dims:
            raise ValueError(f"expected {dims} values, got {value}")
        return tuple(int(v) for v in value)
    return (int(value),) * dims


def active_autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs in on this device type now; None when it is off."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # torch < 2.4: no device-type argument
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def run_in_fp32_under_bf16(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, in fp32 when autocast runs bf16: for the layers whose rounding to bf16's 8
    mantissa bits costs labels (the stem, which sees raw intensities; the full-resolution
    decoder stage and the heads, whose outputs decide each voxel's class where two classes are
    close). fp16 (11 bits, the GPU's default, as in nnU-Net) and fp32 run unchanged."""
    if active_autocast_dtype(x.device.type) != torch.bfloat16:
        return module(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return module(x.float())


def convolve(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``; for fp32 CPU inference, through oneDNN directly. PyTorch gives an fp32 CPU
    convolution to its slow native kernel when batch x channels x the first two spatial sizes
    is at most 20480 (a rule made for 2D images): on 3D volumes with few channels, such as the
    full-resolution stages of small models, that kernel was 6-15x slower than oneDNN's, for the
    same result up to float rounding. Training, autocast and other devices take torch's own path."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled()
            or active_autocast_dtype("cpu") is not None
            or not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled
            or conv.padding_mode != "zeros" or isinstance(conv.padding, str)):
        return conv(x)
    return torch.mkldnn_convolution(x.contiguous(), conv.weight, conv.bias, conv.padding,
                                    conv.stride, conv.dilation, conv.groups)


class ConvNormAct(nn.Module):
    """conv -> (dropout) -> norm -> (nonlinearity), padding 'same' for odd kernels."""

    def __init__(self, conv_op, in_channels, out_channels, kernel_size, stride, conv_bias,
                 norm_op=None, norm_op_kwargs=None, dropout_op=None, dropout_op_kwargs=None,
                 nonlin=None, nonlin_kwargs=None):
        super().__init__()
        dims = CONV_DIMS[conv_op]
        kernel = as_tuple(kernel_size, dims)
        self.conv = conv_op(in_channels, out_channels, kernel, as_tuple(stride, dims),
                            padding=tuple((k - 1) // 2 for k in kernel), bias=conv_bias)
        self.dropout = dropout_op(**(dropout_op_kwargs or {})) if dropout_op is not None else None
        self.norm = norm_op(out_channels, **(norm_op_kwargs or {})) if norm_op is not None else None
        self.nonlin = nonlin(**(nonlin_kwargs or {})) if nonlin is not None else None

    def forward(self, x):
        x = convolve(self.conv, x)
        for op in (self.dropout, self.norm, self.nonlin):
            if op is not None:
                x = op(x)
        return x


class Stem(nn.Module):
    """One conv-norm-act at full resolution, to the first stage's width."""

    def __init__(self, conv_op, in_channels, out_channels, kernel_size, conv_bias, norm_op,
                 norm_op_kwargs, nonlin, nonlin_kwargs):
        super().__init__()
        self.convs = nn.Sequential(ConvNormAct(conv_op, in_channels, out_channels, kernel_size, 1,
                                               conv_bias, norm_op, norm_op_kwargs, None, None,
                                               nonlin, nonlin_kwargs))

    def forward(self, x):
        return self.convs(x)


class ResidualBlock(nn.Module):
    """Basic residual block, ResNet-D style: the skip average-pools before its 1x1 conv."""

    def __init__(self, conv_op, in_channels, out_channels, kernel_size, stride, conv_bias, norm_op,
                 norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs):
        super().__init__()
        dims = CONV_DIMS[conv_op]
        stride = as_tuple(stride, dims)
        self.conv1 = ConvNormAct(conv_op, in_channels, out_channels, kernel_size, stride, conv_bias,
                                 norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
        self.conv2 = ConvNormAct(conv_op, out_channels, out_channels, kernel_size, 1, conv_bias,
                                 norm_op, norm_op_kwargs)
        self.nonlin2 = nonlin(**(nonlin_kwargs or {})) if nonlin is not None else nn.Identity()
        skip = []
        if any(s != 1 for s in stride):
            skip.append(POOL_FOR_CONV[conv_op](stride, stride))
        if in_channels != out_channels:
            skip.append(ConvNormAct(conv_op, in_channels, out_channels, 1, 1, False, norm_op, norm_op_kwargs))
        self.skip = nn.Sequential(*skip) if skip else nn.Identity()

    def forward(self, x):
        return self.nonlin2(self.conv2(self.conv1(x)) + self.skip(x))


class ResidualStage(nn.Module):
    """n residual blocks; only the first changes width and resolution."""

    def __init__(self, n_blocks, conv_op, in_channels, out_channels, kernel_size, first_stride,
                 conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs):
        super().__init__()
        if n_blocks < 1:
            raise ValueError("a stage needs at least one residual block")
        blocks = [ResidualBlock(conv_op, in_channels if i == 0 else out_channels, out_channels,
                                kernel_size, first_stride if i == 0 else 1, conv_bias, norm_op,
                                norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
                  for i in range(n_blocks)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(x)
