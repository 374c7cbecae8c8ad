"""From the input image to the network's array, and from the network's labels back.

Geometry always travels with the voxels: the network array comes with ``grid``, a SimpleITK
image holding the physical geometry of that array (before ``transpose``), and labels go back to
the input by a nearest-neighbour resample in physical space onto the input's own grid, so the
result has the input's exact size, origin, spacing and direction whatever happened in between
(reorientation, resampling, transposition, padding).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import InputError

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    array: np.ndarray          # (C, *spatial) float32, axes transposed for the network
    grid: sitk.Image           # geometry of the (untransposed) network grid, uint8, no content
    transpose: tuple           # nnU-Net transpose_forward applied to the (z, y, x) array


def target_spacing_xyz(image: sitk.Image, spacing, transpose, dimension: str) -> tuple:
    """The network spacing in SimpleITK (x, y, z) order.

    ``spacing`` is in nnU-Net order (array axes after ``transpose``). A 2d model gives only the
    in-plane spacing; the slice axis (first transposed axis) keeps the image's spacing."""
    arr_spacing = image.GetSpacing()[::-1]                  # (z, y, x)
    transposed = [arr_spacing[t] for t in transpose]
    target = list(spacing) if dimension == "3d" else [transposed[0], *spacing]
    untransposed = [0.0] * 3
    for i, t in enumerate(transpose):
        untransposed[t] = float(target[i])
    return tuple(untransposed[::-1])


def reorient(image: sitk.Image, orientation: str | None) -> sitk.Image:
    """Permute/flip the axes (exact, no interpolation) so the image has ``orientation``."""
    if not orientation:
        return image
    current = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    if current == orientation:
        return image
    return sitk.DICOMOrient(image, orientation)


def resampled_grid(image: sitk.Image, spacing_xyz) -> sitk.Image:
    """An empty image covering the same physical box as ``image`` at ``spacing_xyz``, centred,
    same direction."""
    old_spacing = np.array(image.GetSpacing())
    new_spacing = np.array(spacing_xyz, dtype=float)
    old_size = np.array(image.GetSize())
    new_size = np.maximum(1, np.round(old_size * old_spacing / new_spacing)).astype(int)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in (old_size - 1) / 2.0]))
    origin = centre - direction @ (new_spacing * (new_size - 1) / 2.0)
    grid = sitk.Image([int(v) for v in new_size], sitk.sitkUInt8)
    grid.SetSpacing([float(v) for v in new_spacing])
    grid.SetOrigin([float(v) for v in origin])
    grid.SetDirection(image.GetDirection())
    return grid


def same_spacing(a, b, tolerance=1e-3) -> bool:
    return all(abs(x - y) <= tolerance * max(abs(x), abs(y)) for x, y in zip(a, b))


def resample_to_spacing(image: sitk.Image, spacing_xyz) -> tuple:
    """(resampled image, grid): linear interpolation onto :func:`resampled_grid`."""
    if same_spacing(image.GetSpacing(), spacing_xyz):
        grid = sitk.Image(image.GetSize(), sitk.sitkUInt8)
        grid.CopyInformation(image)
        return image, grid
    grid = resampled_grid(image, spacing_xyz)
    out = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return out, grid


def normalize(array: np.ndarray, scheme: dict) -> np.ndarray:
    """Intensity normalisation in place (float32). ``scheme`` from Bundle.normalization."""
    kind = scheme["scheme"]
    if kind == "ct":
        lo, hi = (float(v) for v in scheme["clip"])
        np.clip(array, lo, hi, out=array)
        array -= float(scheme["mean"])
        array /= max(float(scheme["std"]), 1e-8)
    elif kind == "zscore":
        values = array[array != 0] if scheme.get("use_mask") else array
        mean, std = float(values.mean()), float(values.std())
        array -= mean
        array /= max(std, 1e-8)
    elif kind != "none":
        raise ValueError(f"unknown normalisation {kind}")
    return array


def prepare(image: sitk.Image, *, spacing, transpose, dimension: str, normalization: list,
            orientation: str | None = None, timings: dict | None = None) -> Prepared:
    """Input image (float32, 3D, validated) -> network array with its geometry."""
    import time
    t0 = time.perf_counter()
    oriented = reorient(image, orientation)
    target = target_spacing_xyz(oriented, spacing, transpose, dimension)
    resampled, grid = resample_to_spacing(oriented, target)
    t1 = time.perf_counter()
    array = sitk.GetArrayFromImage(resampled)  # (z, y, x), a copy we may modify
    if array.dtype != np.float32:
        array = array.astype(np.float32)
    if len(normalization) != 1:
        raise InputError(f"The model expects {len(normalization)} image channels per case; "
                         "only single-channel models are supported by this predictor.")
    normalize(array, normalization[0])
    array = np.ascontiguousarray(array.transpose(transpose))[None]
    if timings is not None:
        timings["resample"] = timings.get("resample", 0.0) + t1 - t0
        timings["normalize"] = timings.get("normalize", 0.0) + time.perf_counter() - t1
    log.debug("network grid %s at %s mm", grid.GetSize(), grid.GetSpacing())
    return Prepared(array=array, grid=grid, transpose=tuple(transpose))


def labels_to_input(labels: np.ndarray, prepared: Prepared, reference: sitk.Image) -> sitk.Image:
    """Network-grid label array (transposed axes) -> label image on ``reference``'s exact grid
    (nearest neighbour in physical space)."""
    inverse = tuple(int(i) for i in np.argsort(prepared.transpose))
    dtype = np.uint8 if labels.max(initial=0) <= 255 else np.uint16
    untransposed = np.ascontiguousarray(labels.transpose(inverse), dtype=dtype)
    image = sitk.GetImageFromArray(untransposed)
    image.CopyInformation(prepared.grid)
    if (image.GetSize() == reference.GetSize() and image.GetOrigin() == reference.GetOrigin()
            and image.GetSpacing() == reference.GetSpacing()
            and image.GetDirection() == reference.GetDirection()):
        return image
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                         image.GetPixelID())
