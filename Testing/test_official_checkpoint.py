"""A checkpoint laid out like the official LKM-UNet code loads through the documented mapping.

The official network cannot be imported here (it needs mamba_ssm's CUDA kernels), so this
test rebuilds its module layout: the convolutional parts from the real
dynamic_network_architectures blocks it uses, the Mamba parts under its names
(mamba_layers / w_mamba_layers, mamba_forw / mamba_backw / out_proj / norm), and the decoder's
reference to the encoder. Our Mamba layer stands in for mamba_ssm's (same parameter names).
"""

import pytest
import torch
import torch.nn as nn

import dynamic_network_architectures as dna  # noqa: E402  (installed with the train extra)
from dynamic_network_architectures.building_blocks.residual import StackedResidualBlocks  # noqa: E402
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks  # noqa: E402

from lkm_core.network import LKMUNet  # noqa: E402
from lkm_core.network.official_keys import convert_official_state_dict, official_network_kwargs  # noqa: E402
from lkm_core.ssm import Mamba  # noqa: E402

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


def test_official_layout_checkpoint_loads_strictly_and_values_land_in_place():
    torch.manual_seed(0)
    official = OfficialLayout().state_dict()
    assert any(".all_modules." in k for k in official) and any(k.startswith("decoder.encoder.") for k in official)
    ours = LKMUNet(1, N_STAGES, FEATURES, nn.Conv2d, 3, STRIDES, 2, 3, 2, deep_supervision=True,
                   **{k: v for k, v in NORM.items()}, **official_network_kwargs(N_STAGES, 2))
    converted = convert_official_state_dict({"module." + k: v for k, v in official.items()})
    result = ours.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    mine = ours.state_dict()
    assert torch.equal(mine["encoder.pim.2.bim.mamba_bwd.A_log"], official["encoder.mamba_layers.2.mamba_backw.A_log"])
    assert torch.equal(mine["encoder.pam.1.bim.out_proj.weight"], official["encoder.w_mamba_layers.1.out_proj.weight"])
    assert torch.equal(mine["encoder.stages.1.blocks.0.skip.1.conv.weight"],
                       official["encoder.stages.1.blocks.0.skip.1.conv.weight"])
    assert ours(torch.randn(1, 1, 40, 40))[0].shape == (1, 3, 40, 40)


def test_official_stage_settings_follow_its_formula():
    kw = official_network_kwargs(6, 3)
    assert kw["window_sizes"] == [[20, 28, 24], [20, 28, 24], [10, 14, 12], [10, 14, 12], [5, 7, 6], [5, 7, 6]]
    assert [p[0] for p in kw["pool_sizes"]] == [4, 4, 2, 2, 1, 1] and kw["pim_partition"] == "strided"
