"""The official LKM-UNet code's module layout, rebuilt for tests that need its checkpoints.

The official network cannot be imported here (it needs mamba_ssm's CUDA kernels), so this
rebuilds its module layout: the convolutional parts from the real
dynamic_network_architectures blocks it uses, the Mamba parts under its names
(mamba_layers / w_mamba_layers, mamba_forw / mamba_backw / out_proj / norm), and the decoder's
reference to the encoder. Our Mamba layer stands in for mamba_ssm's (same parameter names).
"""

import torch.nn as nn
from dynamic_network_architectures.building_blocks.residual import StackedResidualBlocks
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks

from lkm_core.ssm import Mamba

N_STAGES, FEATURES, STRIDES = 4, [8, 16, 32, 32], [[1, 1], [2, 2], [2, 2], [2, 2]]
NORM = dict(conv_bias=True, norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
            dropout_op=None, dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


class OfficialBiMamba(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mamba_forw = Mamba(dim, use_out_proj=False)
        self.out_proj = nn.Linear(2 * dim, dim, bias=False)
        self.mamba_backw = Mamba(dim, use_out_proj=False)


class OfficialLayout(nn.Module):
    def __init__(self):
        super().__init__()
        enc = nn.Module()
        enc.stem = StackedConvBlocks(1, nn.Conv2d, 1, FEATURES[0], 3, 1, **NORM)
        stages, channels = [], FEATURES[0]
        for s in range(N_STAGES):
            stages.append(StackedResidualBlocks(2, nn.Conv2d, channels, FEATURES[s], 3, STRIDES[s], **NORM))
            channels = FEATURES[s]
        enc.stages = nn.ModuleList(stages)
        enc.mamba_layers = nn.ModuleList(OfficialBiMamba(f) for f in FEATURES)
        enc.w_mamba_layers = nn.ModuleList(OfficialBiMamba(f) for f in FEATURES)
        dec = nn.Module()
        dec.encoder = enc
        dec.stages = nn.ModuleList(StackedResidualBlocks(2, nn.Conv2d, 2 * FEATURES[-(s + 1)], FEATURES[-(s + 1)],
                                                         3, 1, **NORM) for s in range(1, N_STAGES))
        dec.transpconvs = nn.ModuleList(nn.ConvTranspose2d(FEATURES[-s], FEATURES[-(s + 1)], 2, 2)
                                        for s in range(1, N_STAGES))
        dec.seg_layers = nn.ModuleList(nn.Conv2d(FEATURES[-(s + 1)], 3, 1) for s in range(1, N_STAGES))
        self.encoder, self.decoder = enc, dec
