"""Ready-made LKM-UNet settings: the paper's two, and small ones for tests and CPUs.

A preset is a JSON-safe network config {"class": "LKMUNet", "kwargs": {...}} plus its patch
size. Paper settings (Wang et al. 2024, sec. 3): 3D Abdomen CT, 6 stages, patch 40x224x192,
PiM windows (20,28,24),(20,28,24),(10,14,12),(10,14,12),(5,7,6),(5,7,6); 2D Abdomen MR,
7 stages, 320x320, windows 40,20,20,10,10,5,5. Strides are those of nnU-Net's plan for such
patches, chosen so that every stage's feature map is divided by its window.
"""

from __future__ import annotations

import copy

_COMMON = {
    "conv_bias": True,
    "norm_op_kwargs": {"eps": 1e-5, "affine": True},
    "dropout_op": None, "dropout_op_kwargs": None,
    "nonlin": "LeakyReLU", "nonlin_kwargs": {"inplace": True},
    "pim_partition": "window", "use_pim": True, "use_pam": True, "bidirectional": True,
}


def _three_d(**kw):
    return {"conv_op": "Conv3d", "norm_op": "InstanceNorm3d", **_COMMON, **kw}


def _two_d(**kw):
    return {"conv_op": "Conv2d", "norm_op": "InstanceNorm2d", **_COMMON, **kw}


_PRESETS = {
    "3d_paper": ((40, 224, 192), _three_d(
        n_stages=6, features_per_stage=[32, 64, 128, 256, 320, 320], kernel_sizes=[[3, 3, 3]] * 6,
        strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
        n_blocks_per_stage=[2] * 6, n_conv_per_stage_decoder=[2] * 5,
        window_sizes=[[20, 28, 24], [20, 28, 24], [10, 14, 12], [10, 14, 12], [5, 7, 6], [5, 7, 6]])),
    "2d_paper": ((320, 320), _two_d(
        n_stages=7, features_per_stage=[32, 64, 128, 256, 512, 512, 512], kernel_sizes=[[3, 3]] * 7,
        strides=[[1, 1]] + [[2, 2]] * 6, n_blocks_per_stage=[2] * 7, n_conv_per_stage_decoder=[2] * 6,
        window_sizes=[[40, 40], [20, 20], [20, 20], [10, 10], [10, 10], [5, 5], [5, 5]])),
    # small enough for unit tests and quick CPU runs
    "3d_small": ((32, 64, 64), _three_d(
        n_stages=4, features_per_stage=[8, 16, 32, 64], kernel_sizes=[[3, 3, 3]] * 4,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        n_blocks_per_stage=[1] * 4, n_conv_per_stage_decoder=[1] * 3,
        window_sizes=[[8, 16, 16], [8, 8, 8], [4, 8, 8], [4, 8, 8]])),
    "2d_small": ((64, 64), _two_d(
        n_stages=4, features_per_stage=[8, 16, 32, 64], kernel_sizes=[[3, 3]] * 4,
        strides=[[1, 1], [2, 2], [2, 2], [2, 2]], n_blocks_per_stage=[1] * 4,
        n_conv_per_stage_decoder=[1] * 3, window_sizes=[[16, 16], [8, 8], [8, 8], [4, 4]])),
}

PRESET_NAMES = tuple(_PRESETS)

# the target spacing (mm, nnU-Net axis order) an untrained bundle of each preset gets
PRESET_SPACING = {"3d_paper": (2.5, 0.8, 0.8), "2d_paper": (1.5, 1.5),
                  "3d_small": (3.0, 3.0, 3.0), "2d_small": (3.0, 3.0)}


def _get(name):
    try:
        return _PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}") from None


def preset_patch_size(name: str) -> tuple:
    return tuple(_get(name)[0])


def preset_config(name: str, input_channels: int = 1, num_classes: int = 2, **overrides) -> dict:
    """{"class": "LKMUNet", "kwargs": {...}} for build_network(); overrides replace keywords."""
    kwargs = copy.deepcopy(_get(name)[1])
    kwargs.update(input_channels=input_channels, num_classes=num_classes, deep_supervision=False)
    kwargs.update(overrides)
    return {"class": "LKMUNet", "kwargs": kwargs}
