"""The LKM-UNet network, its presets, and building it from a JSON-safe config."""

from __future__ import annotations

import torch.nn as nn

from .lkmunet import LKMUNet
from . import presets

# Only these classes can be named by a bundle or a plan: a model file never runs code.
NETWORK_CLASSES = {"LKMUNet": LKMUNet, "lkm_core.network.LKMUNet": LKMUNet,
                   "lkm_core.network.lkmunet.LKMUNet": LKMUNet}


def build_network(config: dict) -> nn.Module:
    """Build {"class": "LKMUNet", "kwargs": {...}}; op classes may be given by name."""
    name = config.get("class", "LKMUNet")
    if name not in NETWORK_CLASSES:
        raise ValueError(f"unknown network class {name!r}; known: LKMUNet")
    return NETWORK_CLASSES[name](**config.get("kwargs", {}))


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


__all__ = ["LKMUNet", "build_network", "count_parameters", "presets"]
