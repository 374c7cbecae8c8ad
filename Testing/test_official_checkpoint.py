"""A checkpoint laid out like the official LKM-UNet code loads through the documented mapping.

The official layout is rebuilt in Testing/official_layout.py (mamba_ssm cannot be imported here).
"""

import torch
import torch.nn as nn

from lkm_core.network import LKMUNet
from lkm_core.network.official_keys import convert_official_state_dict, official_network_kwargs
from official_layout import FEATURES, N_STAGES, NORM, STRIDES, OfficialLayout


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
