"""LKM-UNet: a residual-encoder U-Net whose encoder stages end in PiM and PaM.

Encoder stage s: residual blocks (the first one strided for s > 0) -> PiM -> PaM; the PaM
output is both the skip and the next stage's input. Decoder: transposed conv, concatenate the
skip, residual blocks, a 1x1 head per level (deep supervision).

The constructor takes nnU-Net's architecture keywords, so nnU-Net (>= 2.4) can build it from
a plan by import path and train it with its stock trainer.
"""

from __future__ import annotations

import logging
import pydoc
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .blocks import (TRANSPOSED_FOR_CONV, ResidualStage, Stem, as_tuple,
                     run_in_fp32_under_bf16)
from .mamba_blocks import PARTITIONS, PatchMamba, PixelMamba

log = logging.getLogger(__name__)

_DIMS = {nn.Conv2d: 2, nn.Conv3d: 3}


def _resolve(op):
    """nnU-Net passes classes; JSON plans and bundles may pass import paths."""
    if op is None or isinstance(op, type):
        return op
    if isinstance(op, str):
        resolved = pydoc.locate(op) or pydoc.locate(f"torch.nn.{op}")
        if isinstance(resolved, type) and issubclass(resolved, nn.Module) \
                and resolved.__module__.startswith("torch.nn"):
            return resolved
    raise ValueError(f"not a torch.nn module class: {op!r}")


def _per_stage(value, n_stages, name):
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n_stages
    if len(values) != n_stages:
        raise ValueError(f"{name} needs one entry per stage ({n_stages}), got {len(values)}")
    return values


class LKMEncoder(nn.Module):
    def __init__(self, input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                 n_blocks_per_stage, conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs,
                 nonlin, nonlin_kwargs, window_sizes, pool_sizes, pim_partition, use_pim, use_pam,
                 bidirectional):
        super().__init__()
        dims = _DIMS[conv_op]
        self.conv_op = conv_op
        self.output_channels = list(features_per_stage)
        self.kernel_sizes = [as_tuple(k, dims) for k in kernel_sizes]
        self.strides = [as_tuple(s, dims) for s in strides]
        self.conv_bias = conv_bias
        self.norm = (norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
        self.stem = Stem(conv_op, input_channels, features_per_stage[0], self.kernel_sizes[0], conv_bias,
                         norm_op, norm_op_kwargs, nonlin, nonlin_kwargs)
        stages, pims, pams = [], [], []
        channels = features_per_stage[0]
        for s in range(n_stages):
            stages.append(ResidualStage(n_blocks_per_stage[s], conv_op, channels, features_per_stage[s],
                                        self.kernel_sizes[s], self.strides[s], conv_bias, *self.norm))
            channels = features_per_stage[s]
            pims.append(PixelMamba(channels, window_sizes[s], pim_partition, bidirectional)
                        if use_pim else nn.Identity())
            pams.append(PatchMamba(channels, pool_sizes[s], bidirectional) if use_pam else nn.Identity())
        self.stages = nn.ModuleList(stages)
        self.pim = nn.ModuleList(pims)
        self.pam = nn.ModuleList(pams)

    def forward(self, x):
        x = run_in_fp32_under_bf16(self.stem, x)
        skips = []
        for stage, pim, pam in zip(self.stages, self.pim, self.pam):
            x = pam(pim(stage(x)))
            skips.append(x)
        return skips


class LKMDecoder(nn.Module):
    def __init__(self, encoder: LKMEncoder, num_classes, n_conv_per_stage, deep_supervision):
        super().__init__()
        self.deep_supervision = deep_supervision
        n = len(encoder.output_channels)
        n_conv_per_stage = _per_stage(n_conv_per_stage, n - 1, "n_conv_per_stage_decoder")
        transposed = TRANSPOSED_FOR_CONV[encoder.conv_op]
        ups, stages, heads = [], [], []
        for s in range(1, n):
            below, skip = encoder.output_channels[-s], encoder.output_channels[-(s + 1)]
            stride = encoder.strides[-s]
            ups.append(transposed(below, skip, stride, stride, bias=encoder.conv_bias))
            stages.append(ResidualStage(n_conv_per_stage[s - 1], encoder.conv_op, 2 * skip, skip,
                                        encoder.kernel_sizes[-(s + 1)], 1, encoder.conv_bias, *encoder.norm))
            heads.append(encoder.conv_op(skip, num_classes, 1, 1, 0, bias=True))
        self.transpconvs = nn.ModuleList(ups)
        self.stages = nn.ModuleList(stages)
        self.seg_layers = nn.ModuleList(heads)

    def forward(self, skips):
        x = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for s, (up, stage, head) in enumerate(zip(self.transpconvs, self.stages, self.seg_layers)):
            joined = torch.cat((up(x), skips[-(s + 2)]), dim=1)
            # the full-resolution stage makes the features the head turns into logits; rounded
            # to bf16 they moved labels at boundaries (Dice 0.989 on the default model's aorta)
            x = run_in_fp32_under_bf16(stage, joined) if s == last else stage(joined)
            if self.deep_supervision or s == last:
                outputs.append(run_in_fp32_under_bf16(head, x))
        outputs.reverse()  # full resolution first, as nnU-Net's loss expects
        return outputs if self.deep_supervision else outputs[0]


class LKMUNet(nn.Module):
    """Large Kernel Vision Mamba U-Net (Wang et al., MICCAI 2024), 2D or 3D.

    nnU-Net keywords: input_channels, n_stages, features_per_stage, conv_op, kernel_sizes,
    strides, n_blocks_per_stage (alias n_conv_per_stage), num_classes, n_conv_per_stage_decoder,
    conv_bias, norm_op(_kwargs), dropout_op(_kwargs), nonlin(_kwargs), deep_supervision.

    LKM keywords:
      window_sizes   PiM window per stage (voxels; with pim_partition="strided", the strides)
      pool_sizes     PaM pooling per stage (default: the window size, i.e. one token per window)
      pim_partition  "window" (paper, contiguous windows) or "strided" (official code)
      use_pim, use_pam, bidirectional: the paper's ablation switches
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage, conv_op, kernel_sizes,
                 strides, n_blocks_per_stage=None, num_classes: int = 2, n_conv_per_stage_decoder=1,
                 conv_bias: bool = False, norm_op=None, norm_op_kwargs: Optional[dict] = None,
                 dropout_op=None, dropout_op_kwargs: Optional[dict] = None, nonlin=None,
                 nonlin_kwargs: Optional[dict] = None, deep_supervision: bool = False, *,
                 window_sizes: Optional[Sequence] = None, pool_sizes: Optional[Sequence] = None,
                 pim_partition: str = "window", use_pim: bool = True, use_pam: bool = True,
                 bidirectional: bool = True, n_conv_per_stage=None, **unused):
        super().__init__()
        if unused:  # accepted so that plans written for other nnU-Net networks still build
            log.warning("LKMUNet ignores these keywords: %s", ", ".join(sorted(unused)))
        conv_op, norm_op, dropout_op, nonlin = map(_resolve, (conv_op, norm_op, dropout_op, nonlin))
        if conv_op not in _DIMS:
            raise ValueError(f"conv_op must be Conv2d or Conv3d, not {conv_op}")
        if pim_partition not in PARTITIONS:
            raise ValueError(f"pim_partition must be one of {PARTITIONS}, not {pim_partition!r}")
        dims = _DIMS[conv_op]
        if n_blocks_per_stage is None:
            n_blocks_per_stage = n_conv_per_stage if n_conv_per_stage is not None else 1
        features_per_stage = _per_stage(features_per_stage, n_stages, "features_per_stage")
        kernel_sizes = _per_stage(kernel_sizes, n_stages, "kernel_sizes")
        strides = _per_stage(strides, n_stages, "strides")
        n_blocks_per_stage = _per_stage(n_blocks_per_stage, n_stages, "n_blocks_per_stage")
        if (use_pim or use_pam) and window_sizes is None:
            raise ValueError("window_sizes (one per stage) are required when PiM or PaM is used")
        windows = [as_tuple(w, dims) for w in _per_stage(window_sizes, n_stages, "window_sizes")] \
            if window_sizes is not None else [(1,) * dims] * n_stages
        pools = [as_tuple(p, dims) for p in _per_stage(pool_sizes, n_stages, "pool_sizes")] \
            if pool_sizes is not None else windows
        self.dimension = dims
        self.window_sizes, self.pool_sizes = windows, pools
        self.encoder = LKMEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes,
                                  strides, n_blocks_per_stage, conv_bias, norm_op, norm_op_kwargs,
                                  dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, windows, pools,
                                  pim_partition, use_pim, use_pam, bidirectional)
        self.decoder = LKMDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision)

    def forward(self, x):
        return self.decoder(self.encoder(x))

    @staticmethod
    def initialize(module: nn.Module):
        """He init for convolutions, zero biases; for ``network.apply(network.initialize)``.

        Mamba's own depthwise Conv1d and Linear layers keep mamba_ssm's initialisation.
        """
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, a=1e-2)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

