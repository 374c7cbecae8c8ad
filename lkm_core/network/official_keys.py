"""Load checkpoints of the official LKM-UNet code (github wjh892521292/LKM-UNet).

The official network builds its convolutions from dynamic_network_architectures, whose layout
this network shares, and names its Mamba parts differently. The mapping, official -> ours:

    encoder.mamba_layers.S.<p>            -> encoder.pim.S.bim.<p>      (PiM, strided sequences)
    encoder.w_mamba_layers.S.<p>          -> encoder.pam.S.bim.<p>      (PaM)
    ....mamba_forw.<p> / ....mamba_backw. -> ....mamba_fwd.<p> / ....mamba_bwd.<p>
    *.all_modules.*                       -> dropped (dynamic_network_architectures keeps every
                                             conv/norm twice: by name and in an nn.Sequential)
    decoder.encoder.*                     -> dropped (the decoder's reference to the encoder)

Everything else (stem, stages, transpconvs, seg_layers) keeps its name. Build the matching
network with :func:`official_network_kwargs`: strided PiM partition with the official window
sizes, and the official PaM pooling factors.
"""

from __future__ import annotations

import re


def convert_official_state_dict(state_dict: dict) -> dict:
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("module."):          # saved from DistributedDataParallel
            key = key[len("module."):]
        if ".all_modules." in key or key.startswith("decoder.encoder."):
            continue
        key = re.sub(r"^encoder\.mamba_layers\.(\d+)\.", r"encoder.pim.\1.bim.", key)
        key = re.sub(r"^encoder\.w_mamba_layers\.(\d+)\.", r"encoder.pam.\1.bim.", key)
        key = key.replace(".mamba_forw.", ".mamba_fwd.").replace(".mamba_backw.", ".mamba_bwd.")
        converted[key] = value
    return converted


def official_network_kwargs(n_stages: int, dimension: int) -> dict:
    """The official code's per-stage PiM strides and PaM pooling factors.

    It uses p = 2**((n_stages - s + 1)//2 - 1) at stage s; PiM strides are (5p, 7p, 6p) in 3D
    and 5p in 2D; PaM pools by 2**((n_stages - s + 1)//2)//2 (at least 1).
    """
    windows, pools = [], []
    for s in range(n_stages):
        p = 2 ** ((n_stages - s + 1) // 2 - 1)
        windows.append([5 * p, 7 * p, 6 * p] if dimension == 3 else [5 * p, 5 * p])
        pools.append([max(1, 2 ** ((n_stages - s + 1) // 2) // 2)] * dimension)
    return {"window_sizes": windows, "pool_sizes": pools, "pim_partition": "strided"}
