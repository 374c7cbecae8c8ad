"""Helpers for the inference-engine tests: synthetic volumes, a threshold "network", bundles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from lkm_core.bundle import load_bundle, write_bundle
from lkm_core.terminology import label_entry


class ThresholdNet(torch.nn.Module):
    """Model-independent stand-in: class 1 where the (unnormalised) input is above 0.5.

    Its logits are (0.5, x) per voxel, so any positive weighting of overlapping patches keeps
    the argmax equal to x > 0.5: the output must be the input mask, voxel for voxel, whenever
    the pre/post-processing is geometrically right."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.num_classes = num_classes
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        background = torch.full_like(x[:, :1], 0.5)
        rest = [x[:, :1]] + [torch.full_like(x[:, :1], -1.0)] * (self.num_classes - 2)
        return torch.cat([background, *rest], 1)


def make_bundle(folder: Path, *, dimension="3d", spacing=(1.0, 1.0, 1.0), patch=(16, 16, 16),
                transpose=(0, 1, 2), orientation=None, labels=("liver",),
                normalization=None, quick_spacing=None, mirror_axes=None) -> "Bundle":
    """A bundle whose weights are a placeholder (tests pass their own network callables);
    ``mirror_axes``: the axes its "checkpoint" allows test-time mirroring along (None: none
    recorded)."""
    meta = {
        "name": "test-model", "version": "1.2.3", "dimension": dimension, "input_channels": 1,
        "spacing": list(spacing), "patch_size": list(patch), "transpose": list(transpose),
        "orientation": orientation,
        "normalization": [normalization or {"scheme": "none"}],
        "network": {"class": "LKMUNet", "kwargs": {}},
        "labels": [label_entry(i + 1, n) for i, n in enumerate(labels)],
        "provenance": {"trained": False},
    }
    if quick_spacing is not None:
        meta["quick_spacing"] = quick_spacing
    if mirror_axes is not None:
        meta["inference"] = {"mirror_axes": list(mirror_axes)}
    write_bundle(folder, meta, {"fold_0": {"placeholder": torch.zeros(1)}})
    return load_bundle(folder)


def sphere_image(size=(40, 36, 30), spacing=(1.0, 1.0, 1.0), direction=None, origin=(0, 0, 0),
                 centre_mm=None, radius_mm=8.0, value=1.0, background=0.0) -> tuple:
    """(image, mask): a ball of ``radius_mm`` at physical point ``centre_mm`` (default: the
    volume's centre); voxel values ``value`` inside, ``background`` outside."""
    image = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        image.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    if centre_mm is None:
        centre_mm = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size])
    points = physical_points(image)
    mask = (np.linalg.norm(points - np.asarray(centre_mm), axis=-1) <= radius_mm)
    array = np.where(mask, value, background).astype(np.float32)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out, mask


def physical_points(image: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) physical coordinates of every voxel centre."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    index = np.stack([i, j, k], -1).astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return index * np.array(image.GetSpacing()) @ direction.T + np.array(image.GetOrigin())


def centroid_mm(image: sitk.Image, value=1) -> np.ndarray:
    array = sitk.GetArrayViewFromImage(image)
    return physical_points(image)[array == value].mean(0)


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-9)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-9))


def oblique_direction(angle_deg=20.0) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]])
    return rz @ rx


def run_cli(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """The real command line in a child process (one torch thread)."""
    import os
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "lkm_core", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, **kwargs)


def predict_in_process(capsys, inputs, out, bundle, *extra):
    """``lkm-segment predict`` in this process on one CPU thread: (exit code, stderr)."""
    from lkm_core.cli import main

    code = main(["predict", *map(str, inputs), "-o", str(out), "--model", str(bundle),
                 "--progress", "none", "--device", "cpu", "--threads", "1", *extra])
    return code, capsys.readouterr().err
