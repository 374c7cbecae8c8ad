"""From the input image to the network's array, and from the network's scores back.

The order and the interpolation are nnU-Net's (DefaultPreprocessor), so that a model trained with
nnU-Net sees here what it saw in training:

1. reorient to the bundle's ``orientation`` (axis permutation and flips only, exact);
2. ``transpose`` the (z, y, x) array;
3. crop to the bounding box of the nonzero voxels (or, with ``crop="body"`` on a CT model, to the
   box of the body: see :func:`body_bbox`);
4. normalise on the image's own grid (CT: clip then z-score with the dataset's statistics;
   z-score with ``use_mask``: statistics inside the hole-filled nonzero mask, voxels outside it
   stay 0);
5. resample to the model's spacing with cubic splines, in-plane only with nearest neighbour
   across slices when the spacing is anisotropic (ratio > 3), as nnU-Net's
   ``resample_data_or_seg_to_shape`` does (its ``skimage.transform.resize`` is
   ``scipy.ndimage.zoom`` with ``grid_mode=True`` clipped to the input's range, which this
   module does directly). Plans that name other resampling functions or arguments are followed
   as :class:`Resampling` reads them (nnU-Net's shipped functions; others are refused).

Back on the input grid (:func:`to_input_grid`), the labels are what nnU-Net's predictor gives:
the argmax of the class scores resampled linearly (nearest across slices when anisotropic) onto
the cropped input grid, 0 outside the crop. The scores are interpolated only in the band where
they can change the label: a voxel whose interpolation corners on the network grid all carry the
same argmax keeps it (a convex combination of score vectors that share their largest class keeps
that class), so the result equals the full resampling of every class while the work and memory
scale with the boundary. Quick mode takes the nearest network voxel instead.
Geometry travels with the voxels throughout: the result has the input's exact size, origin,
spacing and direction.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..bundle import CROPS
from ..errors import InputError, ResourceError
from ..nnunet_steps import DEFAULT_RESAMPLING, Resampling, ResampleStep

log = logging.getLogger(__name__)

MIN_NETWORK_VOXELS = 4      # fewer voxels than this on a convolved axis: nothing to segment
BAND_CHUNK = 1 << 16        # band voxels interpolated at once (bounds the temporary memory)
SLAB_VOXELS = 1 << 21       # output voxels labelled at once on the way back (bounds it too)


@dataclass
class Geometry:
    """Size, spacing, origin and direction of an image (SimpleITK order), without its voxels."""
    size: tuple
    spacing: tuple
    origin: tuple
    direction: tuple

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@dataclass
class Prepared:
    array: np.ndarray | None   # (C, *spatial) float32, axes transposed (None once used)
    grid: sitk.Image           # geometry of the (untransposed) network grid, uint8, no content
    transpose: tuple           # nnU-Net transpose_forward applied to the (z, y, x) array
    oriented: Geometry = None  # the reoriented input (what the transposed array was cut from)
    orientation: str | None = None   # the input's own orientation code, when it was reoriented
    full_shape: tuple = ()     # transposed shape of the reoriented input
    bbox: tuple = ()           # slices of the crop (nonzero or body) in that transposed array
    crop: str = "nonzero"      # which crop ran: "nonzero" (nnU-Net's) or "body"
    spacing: tuple = ()        # transposed spacing of the input (mm)
    target: tuple = ()         # transposed spacing of the network grid (mm)
    resampling: Resampling = DEFAULT_RESAMPLING

    @property
    def crop_record(self) -> dict:
        """Which crop ran and the share of the (reoriented) input it kept: for the summary."""
        kept = np.prod([s.stop - s.start for s in self.bbox]) / float(np.prod(self.full_shape))
        return {"mode": self.crop, "kept": round(float(kept), 3)}

    @property
    def network_spacing_xyz(self) -> tuple:
        """The model's spacing in SimpleITK (x, y, z) order."""
        return _untranspose(self.target, self.transpose)[::-1]


def _untranspose(values, transpose) -> tuple:
    out = [0.0] * len(values)
    for i, t in enumerate(transpose):
        out[t] = values[i]
    return tuple(out)


def target_spacing(spacing_t, spacing, dimension: str, resample: bool = True) -> tuple:
    """The network spacing in transposed order. A 2d model gives only the in-plane spacing; the
    slice axis (first transposed axis) keeps the image's; plans that do not resample
    (``resample`` False) keep the image's own spacing."""
    if not resample:
        return tuple(float(v) for v in spacing_t)
    return tuple(float(v) for v in spacing) if dimension == "3d" else \
        (float(spacing_t[0]), *(float(v) for v in spacing))


def network_shape(shape, spacing, target) -> tuple:
    """nnU-Net's compute_new_shape (at least one voxel per axis)."""
    return tuple(max(1, int(round(s / t * n))) for n, s, t in zip(shape, spacing, target))


def reorient(image: sitk.Image, orientation: str | None) -> sitk.Image:
    """Permute/flip the axes (exact, no interpolation) so the image has ``orientation``."""
    if not orientation:
        return image
    current = image_orientation(image)
    if current == orientation:
        return image
    return sitk.DICOMOrient(image, orientation)


def image_orientation(image_or_direction) -> str:
    """The 3-letter code (SimpleITK convention: where each index axis points, e.g. LPS for the
    identity direction) of an image or a direction matrix."""
    direction = image_or_direction.GetDirection() if isinstance(image_or_direction, sitk.Image) \
        else tuple(float(v) for v in np.asarray(image_or_direction).ravel())
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(direction)


def oriented_size_spacing(image: sitk.Image, orientation: str | None) -> tuple:
    """(size, spacing) in (x, y, z) that :func:`reorient` would give, without reorienting."""
    size, spacing = image.GetSize(), image.GetSpacing()
    if not orientation or image.GetDimension() != 3:
        return tuple(size), tuple(spacing)
    d = np.array(image.GetDirection()).reshape(3, 3)
    t = np.array(sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(orientation)
                 ).reshape(3, 3)
    axes = [int(np.argmax(np.abs(d.T @ t[:, j]))) for j in range(3)]
    return tuple(size[a] for a in axes), tuple(spacing[a] for a in axes)


# --- refusing what cannot be processed, before anything is allocated --------------------------
def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (psutil; sysconf where it is missing)."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None


def check_input_size(image: sitk.Image, *, spacing, transpose, dimension: str,
                     orientation: str | None = None, num_classes: int = 2,
                     patch_size=None, source="the image",
                     resampling: Resampling = DEFAULT_RESAMPLING) -> tuple:
    """Refuse (InputError / ResourceError, one line naming size and spacing) an image that would
    have fewer than 4 voxels on an axis the network convolves at the model's spacing (for a 2d
    model the two in-plane axes), or whose resampled volume or class scores would not fit in the
    available memory. Returns the transposed network shape."""
    size, sp = oriented_size_spacing(image, orientation)
    shape_t = tuple(size[::-1][t] for t in transpose)
    spacing_t = tuple(sp[::-1][t] for t in transpose)
    target_t = target_spacing(spacing_t, spacing, dimension, resampling.data.resample)
    new = network_shape(shape_t, spacing_t, target_t)
    convolved = range(3) if dimension == "3d" else range(1, 3)
    size_txt = "x".join(map(str, image.GetSize()))
    spacing_txt = "x".join(f"{s:g}" for s in image.GetSpacing())
    new_txt = "x".join(map(str, _untranspose(new, transpose)[::-1]))
    target_txt = "x".join(f"{s:g}" for s in _untranspose(target_t, transpose)[::-1])
    if any(new[a] < MIN_NETWORK_VOXELS for a in convolved):
        raise InputError(
            f"{source} ({size_txt} voxels of {spacing_txt} mm) would be only {new_txt} voxels at "
            f"the model's spacing of {target_txt} mm, fewer than {MIN_NETWORK_VOXELS} along an axis "
            "the network convolves: check the voxel spacing in the image header, or give a "
            "larger image.")
    patch = tuple(patch_size) if patch_size is not None else new
    if len(patch) == 2:
        patch = (1, *patch)
    padded = math.prod(max(n, p) for n, p in zip(new, patch))
    voxels = math.prod(size)
    resampled = new != shape_t
    # preprocessing: reoriented copy + working copy (+ scipy's float64 spline coefficients) +
    # the result; network: scores, summed weights and input on the padded grid + the labels
    need = max(voxels * (8 + (8 if resampled else 0)) + padded * 4,
               padded * 4 * (num_classes + 2) + voxels)
    free = available_memory()
    if free is not None and need > free:
        raise ResourceError(
            f"{source} ({size_txt} voxels of {spacing_txt} mm) would be {new_txt} voxels at the "
            f"model's spacing of {target_txt} mm, needing about {need / 1e9:.1f} GB of memory for "
            f"the resampled volume and its class scores, but only {free / 1e9:.1f} GB are "
            "available: check the voxel spacing in the image header, use --quick, or free memory.")
    return new


# --- normalisation ------------------------------------------------------------------------------
def nonzero_mask(array: np.ndarray) -> np.ndarray:
    """nnU-Net's create_nonzero_mask: nonzero voxels with their holes filled."""
    from scipy.ndimage import binary_fill_holes
    return binary_fill_holes(array != 0)


def nonzero_bbox(array: np.ndarray) -> tuple:
    """Slices of the bounding box of the nonzero voxels (the whole array when all are zero)."""
    nonzero = array != 0
    out = []
    for axis in range(array.ndim):
        other = tuple(a for a in range(array.ndim) if a != axis)
        hit = np.flatnonzero(nonzero.any(axis=other))
        out.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else
                   slice(0, array.shape[axis]))
    return tuple(out)


# Air is about -1000 HU and fat -100: -500 separates the patient (and the table) from the air
# around them, on any CT, before any normalisation.
BODY_THRESHOLD_HU = -500.0
# air kept around the body's box, so the network sees the skin with the air next to it
BODY_MARGIN_MM = 10.0
# parts smaller than this share of the largest (noise, a stray bright voxel) do not widen the box;
# arms and the table are far larger and stay in
BODY_MIN_PART = 0.01


def body_bbox(array: np.ndarray, spacing, threshold: float = BODY_THRESHOLD_HU,
              margin_mm: float = BODY_MARGIN_MM) -> tuple:
    """Slices of the box around the body in a CT array (HU): the voxels above ``threshold``, in
    parts of at least ``BODY_MIN_PART`` of the largest, plus ``margin_mm`` on every side. The
    whole array when nothing is above the threshold. Found on every second voxel: a box needs no
    more, and it keeps this a fraction of a second on a clinical CT."""
    from scipy.ndimage import find_objects, label

    stride = 2
    coarse = array[tuple(slice(None, None, stride) for _ in range(array.ndim))] > threshold
    parts, count = label(coarse)
    if count == 0:
        return tuple(slice(0, n) for n in array.shape)
    sizes = np.bincount(parts.ravel())[1:]
    objects = find_objects(parts)
    boxes = [objects[i] for i in np.flatnonzero(sizes >= BODY_MIN_PART * sizes.max())]
    out = []
    for axis, n in enumerate(array.shape):
        margin = int(np.ceil(margin_mm / float(spacing[axis])))
        # coarse voxel k covers fine voxels k*stride .. k*stride + stride - 1
        lo = min(b[axis].start for b in boxes) * stride
        hi = max(b[axis].stop for b in boxes) * stride
        out.append(slice(max(0, lo - margin), min(n, hi + margin)))
    return tuple(out)


def takes_body_crop(normalization: list) -> bool:
    """Whether a model's input is CT intensities (HU), which the body crop needs."""
    return bool(normalization) and normalization[0].get("scheme") == "ct"


def resolve_crop(crop: str, normalization: list, recorded: str = "nonzero") -> str:
    """'auto' -> what the model records (``recorded``, Bundle.crop: nnU-Net's nonzero crop
    unless the body crop was shown to keep its labels); refuses an unknown crop, and the body
    crop on a model that does not take CT intensities."""
    crop = (crop or "auto").lower()
    if crop == "auto":
        crop = recorded
    if crop not in CROPS:
        raise InputError(f"Unknown crop {crop!r}: use auto, {' or '.join(CROPS)}.")
    if crop == "body" and not takes_body_crop(normalization):
        scheme = normalization[0].get("scheme") if normalization else None
        raise InputError("The body crop finds the patient by CT intensities (HU), but this model "
                         f"normalises its input as {scheme!r}: use --crop nonzero (or auto).")
    return crop


def crop_box(array: np.ndarray, crop: str, spacing) -> tuple:
    """The box the network runs on (``crop`` from :func:`resolve_crop`)."""
    return body_bbox(array, spacing) if crop == "body" else nonzero_bbox(array)


def normalize(array: np.ndarray, scheme: dict, mask: np.ndarray | None = None) -> np.ndarray:
    """Intensity normalisation in place (float32), nnU-Net's schemes. ``scheme`` from
    Bundle.normalization; ``mask`` (z-score with use_mask): default :func:`nonzero_mask`."""
    kind = scheme["scheme"]
    if kind == "ct":
        lo, hi = (float(v) for v in scheme["clip"])
        np.clip(array, lo, hi, out=array)
        array -= float(scheme["mean"])
        array /= max(float(scheme["std"]), 1e-8)
    elif kind == "zscore" and scheme.get("use_mask"):
        mask = nonzero_mask(array) if mask is None else mask
        values = array[mask]
        array[mask] = (values - values.mean()) / max(float(values.std()), 1e-8)
        # outside the mask every voxel is 0 already (nnU-Net leaves them so)
    elif kind == "zscore":
        mean, std = array.mean(), array.std()
        array -= mean
        array /= max(float(std), 1e-8)
    elif kind != "none":
        raise ValueError(f"unknown normalisation {kind}")
    return array


# --- resampling (nnU-Net's resample_data_or_seg_to_shape, images) -------------------------------
def _zoom(array: np.ndarray, shape, order: int, per_slice_axis: int | None = None) -> np.ndarray:
    """skimage's resize (mode edge, no anti-aliasing): a spline zoom clipped to the input's
    range, per slice along ``per_slice_axis`` when nnU-Net resizes slice by slice."""
    from scipy.ndimage import zoom
    factors = [m / n for m, n in zip(shape, array.shape)]
    out = zoom(array, factors, output=np.float32, order=order, mode="nearest", grid_mode=True)
    if per_slice_axis is None:
        np.clip(out, array.min(), array.max(), out=out)
    else:
        other = tuple(a for a in range(array.ndim) if a != per_slice_axis)
        np.clip(out, array.min(axis=other, keepdims=True), array.max(axis=other, keepdims=True),
                out=out)
    return out


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """scipy's order-0 map_coordinates with nnU-Net's centre-aligned coordinates, mode nearest."""
    c = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    return np.clip(np.floor(c + 0.5), 0, n_in - 1).astype(np.intp)


def resample_array(array: np.ndarray, shape, spacing, target, order: int = 3,
                   step: ResampleStep | None = None) -> np.ndarray:
    """(D, H, W) float32 -> ``shape``: cubic splines (mode edge), across an anisotropic axis
    apart with nearest neighbour, as nnU-Net resamples images (``step``: the plans' own order
    and separate-axis rule)."""
    shape = tuple(int(v) for v in shape)
    if tuple(array.shape) == shape:
        return array
    step = step or ResampleStep(order=order)
    order = step.order
    axis = step.separate_axis(spacing, target)
    if axis is None:
        return _zoom(array, shape, order)
    in_plane = list(shape)
    in_plane[axis] = array.shape[axis]
    if tuple(in_plane) != tuple(array.shape):
        # a spline evaluated at its own nodes along `axis`: the per-slice 2D interpolation
        array = _zoom(array, in_plane, order, per_slice_axis=axis)
    if array.shape[axis] != shape[axis]:
        array = np.take(array, _nearest_index(array.shape[axis], shape[axis]), axis=axis)
    return np.ascontiguousarray(array, dtype=np.float32)


# --- the way in --------------------------------------------------------------------------------
def prepare(image: sitk.Image, *, spacing, transpose, dimension: str, normalization: list,
            orientation: str | None = None, timings: dict | None = None, num_classes: int = 2,
            patch_size=None, source="the image",
            resampling: Resampling = DEFAULT_RESAMPLING, crop: str = "nonzero") -> Prepared:
    """Input image (float32, 3D, validated) -> network array with its geometry. Refuses (see
    :func:`check_input_size`) before allocating anything. ``crop``: see :func:`resolve_crop`."""
    if len(normalization) != 1:
        raise InputError(f"The model expects {len(normalization)} image channels per case; "
                         "only single-channel models are supported by this predictor.")
    transpose = tuple(int(t) for t in transpose)
    check_input_size(image, spacing=spacing, transpose=transpose, dimension=dimension,
                     orientation=orientation, num_classes=num_classes, patch_size=patch_size,
                     source=source, resampling=resampling)
    t0 = time.perf_counter()
    own = image_orientation(image)
    oriented = reorient(image, orientation)
    geometry = Geometry.of(oriented)
    array = sitk.GetArrayFromImage(oriented)  # (z, y, x), a copy we may modify
    del oriented
    if array.dtype != np.float32:
        array = array.astype(np.float32)
    array = array.transpose(transpose)
    full_shape = array.shape
    spacing_t = tuple(geometry.spacing[::-1][t] for t in transpose)
    target_t = target_spacing(spacing_t, spacing, dimension, resampling.data.resample)
    bbox = crop_box(array, crop, spacing_t)
    array = np.ascontiguousarray(array[bbox])
    new_shape = network_shape(array.shape, spacing_t, target_t)
    normalize(array, normalization[0])
    t1 = time.perf_counter()
    array = resample_array(array, new_shape, spacing_t, target_t, step=resampling.data)[None]
    if timings is not None:
        timings["normalize"] = timings.get("normalize", 0.0) + t1 - t0
        timings["resample"] = timings.get("resample", 0.0) + time.perf_counter() - t1
    grid = _network_grid(geometry, bbox, new_shape, transpose)
    log.debug("network grid %s at %s mm", grid.GetSize(), grid.GetSpacing())
    return Prepared(array=array, grid=grid, transpose=transpose, oriented=geometry,
                    orientation=own if orientation and own != orientation else None,
                    full_shape=tuple(full_shape), bbox=bbox, crop=crop, spacing=spacing_t,
                    target=target_t, resampling=resampling)


def _network_grid(geometry: Geometry, bbox, new_shape, transpose) -> sitk.Image:
    """The physical grid nnU-Net's centre-aligned resize samples: the crop's box, ``new_shape``
    voxels (untransposed), spacing = box / voxels."""
    start = np.array(_untranspose([s.start for s in bbox], transpose)[::-1], dtype=float)
    n = np.array(_untranspose([s.stop - s.start for s in bbox], transpose)[::-1], dtype=float)
    m = np.array(_untranspose(new_shape, transpose)[::-1], dtype=float)
    scale = n / m
    spacing = np.array(geometry.spacing) * scale
    direction = np.array(geometry.direction).reshape(3, 3)
    first = start + 0.5 * scale - 0.5          # continuous input index of network voxel 0
    origin = np.array(geometry.origin) + direction @ (np.array(geometry.spacing) * first)
    grid = sitk.Image([int(v) for v in m], sitk.sitkUInt8)
    grid.SetSpacing([float(v) for v in spacing])
    grid.SetOrigin([float(v) for v in origin])
    grid.SetDirection(geometry.direction)
    return grid


# --- the way back ------------------------------------------------------------------------------
@dataclass
class _Taps:
    """Per output index along one axis: the two network neighbours and the weight of the
    second (linear), or one neighbour (i1 = i0, w = 0: nearest neighbour or exact match)."""
    i0: np.ndarray
    i1: np.ndarray
    w: np.ndarray
    linear: bool


def _axis_taps(n_net: int, n_out: int, linear: bool) -> _Taps:
    if n_net == n_out:
        i = np.arange(n_out, dtype=np.intp)
        return _Taps(i, i, np.zeros(n_out, np.float32), False)
    if not linear or n_net == 1:
        i = _nearest_index(n_net, n_out)
        return _Taps(i, i, np.zeros(n_out, np.float32), False)
    c = np.clip((np.arange(n_out) + 0.5) * (n_net / n_out) - 0.5, 0, n_net - 1)
    i0 = np.minimum(np.floor(c).astype(np.intp), n_net - 2)
    return _Taps(i0, i0 + 1, (c - i0).astype(np.float32), True)


def _uniform_cells(labels: np.ndarray, linear_axes) -> np.ndarray:
    """True where the cell starting at a voxel (it and its +1 neighbours along the linear axes,
    clamped at the end) carries one label only."""
    uniform = np.ones(labels.shape, bool)
    for offsets in itertools.product(*[(0, 1) if a in linear_axes else (0,)
                                       for a in range(labels.ndim)]):
        if not any(offsets):
            continue
        shifted = labels
        for a, o in enumerate(offsets):
            if o:
                n = labels.shape[a]
                shifted = np.take(shifted, np.minimum(np.arange(n) + 1, n - 1), axis=a)
        uniform &= shifted == labels
    return uniform


def to_input_grid(labels: np.ndarray, prepared: Prepared, reference: sitk.Image, *,
                  scores=None, lut: np.ndarray | None = None,
                  on_band: Callable | None = None) -> sitk.Image:
    """Network-grid labels (transposed axes) -> label image on ``reference``'s exact grid.

    With ``scores`` (torch tensor (classes, *network shape), normalised) the labels are those of
    nnU-Net's linear resampling of every class's scores, computed only in the boundary band;
    without, the nearest network voxel's label (quick mode). ``lut`` maps label values (subset).
    ``on_band(index, band_scores)``: called per chunk of band voxels with their (z, y, x) index
    in the reoriented input array and their interpolated scores (classes, n), for callers that
    want probabilities where labels meet."""
    crop_shape = tuple(s.stop - s.start for s in prepared.bbox)
    back = prepared.resampling.probabilities
    axis = back.separate_axis(prepared.target, prepared.spacing)
    scores = scores if back.order == 1 else None   # the plans' order 0: nearest
    taps = [_axis_taps(n, m, scores is not None and a != axis)
            for a, (n, m) in enumerate(zip(labels.shape, crop_shape))]
    linear = [a for a, t in enumerate(taps) if t.linear]
    dtype = labels.dtype if lut is None else lut.dtype
    full = np.zeros(prepared.full_shape, dtype=dtype)
    out = full[prepared.bbox]
    # the band flag rides in the labels' top bit, so that one gather gives both
    code, flag, nonuniform = labels, None, None
    if linear:
        nonuniform = ~_uniform_cells(labels, linear)
        top = labels.dtype.type(1 << (8 * labels.dtype.itemsize - 1))
        if int(labels.max(initial=0)) < int(top):
            code, flag, nonuniform = labels | (nonuniform.astype(labels.dtype) * top), top, None
    rows = max(1, SLAB_VOXELS // max(1, crop_shape[1] * crop_shape[2]))
    for first in range(0, crop_shape[0], rows):
        part = _gather(code, taps, slice(first, first + rows))
        if linear:
            if flag is not None:
                band = part >= flag
                part &= ~flag
            else:
                band = _gather(nonuniform, taps, slice(first, first + rows))
            index = np.nonzero(band)
            del band
            if len(index[0]):
                _resolve_band(part, index, first, scores, taps, prepared, on_band)
        out[first:first + rows] = part if lut is None else lut[part]
    del out
    return _to_reference(full, prepared, reference, sitk.sitkNearestNeighbor)


def _to_reference(full: np.ndarray, prepared: Prepared, reference: sitk.Image,
                  interpolator) -> sitk.Image:
    """An array on the reoriented input's voxels (transposed axes) -> an image on
    ``reference``'s exact grid (exact axis permutations and flips; ``interpolator`` only where
    reorientation left the grid slightly different)."""
    inverse = tuple(int(i) for i in np.argsort(prepared.transpose))
    image = sitk.GetImageFromArray(np.ascontiguousarray(full.transpose(inverse)))
    del full
    prepared.oriented.apply(image)
    if prepared.orientation:
        image = sitk.DICOMOrient(image, prepared.orientation)
    if _same_grid(image, reference):
        image.CopyInformation(reference)
        return image
    log.debug("grid differs from the input's after reorientation: resampled")
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0,
                         image.GetPixelID())


def probabilities_on_input_grid(scores, prepared: Prepared, reference: sitk.Image) -> np.ndarray:
    """nnU-Net's saved probabilities: every class's scores (torch (classes, *network shape))
    resampled as its ``resampling_fn_probabilities`` does (linear, nearest across a separately
    resampled axis), then softmax; outside the crop the background is certain. float32
    (classes, *reference array shape), i.e. (c, z, y, x) as nnU-Net's SimpleITK reader gives."""
    import torch

    crop_shape = tuple(s.stop - s.start for s in prepared.bbox)
    back = prepared.resampling.probabilities
    axis = back.separate_axis(prepared.target, prepared.spacing)
    x = scores.detach().float().cpu()
    for a, n_out in enumerate(crop_shape):
        taps = _axis_taps(x.shape[a + 1], n_out, back.order == 1 and a != axis)
        lo = x.index_select(a + 1, torch.from_numpy(taps.i0))
        if taps.linear:
            hi = x.index_select(a + 1, torch.from_numpy(taps.i1))
            w = torch.from_numpy(taps.w).reshape([-1 if d == a + 1 else 1 for d in range(x.ndim)])
            lo = lo.add_((hi - lo).mul_(w))
        x = lo
    probabilities = torch.softmax(x, 0).numpy()
    del x
    out = []
    for c, p in enumerate(probabilities):
        full = np.full(prepared.full_shape, 1.0 if c == 0 else 0.0, dtype=np.float32)
        full[prepared.bbox] = p
        image = _to_reference(full, prepared, reference, sitk.sitkLinear)
        out.append(sitk.GetArrayFromImage(image))
    return np.stack(out)


def _gather(array: np.ndarray, taps, rows: slice) -> np.ndarray:
    """``array`` at the first neighbour of every output voxel of a slab of rows (one take per
    axis: cheaper than 3D fancy indexing)."""
    out = array.take(taps[0].i0[rows], axis=0)
    out = out.take(taps[1].i0, axis=1)
    return out.take(taps[2].i0, axis=2)


def _resolve_band(part, index, first, scores, taps, prepared, on_band) -> None:
    """Interpolate every class's scores at the band voxels of a slab (``index`` local to it,
    which starts at output row ``first``), in chunks, and write the argmax into ``part``."""
    import torch

    device = scores.device
    flat = scores.reshape(scores.shape[0], -1)  # gathers by flat index: far faster in torch
    strides = [scores.shape[2] * scores.shape[3], scores.shape[3], 1]
    corners = list(itertools.product(*[(0, 1) if t.linear else (0,) for t in taps]))
    for start in range(0, len(index[0]), BAND_CHUNK):
        local = [i[start:start + BAND_CHUNK] for i in index]
        sel = [local[0] + first, local[1], local[2]]
        axes = []  # per axis: flat offsets of its first and second neighbour, weight of the second
        for t, s, stride in zip(taps, sel, strides):
            lo = torch.from_numpy(t.i0[s] * stride).to(device)
            if t.linear:
                axes.append((lo, torch.from_numpy(t.i1[s] * stride).to(device),
                             torch.from_numpy(t.w[s]).to(device)))
            else:
                axes.append((lo, lo, None))
        acc = None
        for corner in corners:
            offset, weight = None, None
            for (lo, hi, w), o in zip(axes, corner):
                offset = (hi if o else lo) if offset is None else offset + (hi if o else lo)
                if w is not None:
                    w = w if o else 1 - w
                    weight = w if weight is None else weight * w
            term = flat.index_select(1, offset).mul_(weight)
            acc = term if acc is None else acc.add_(term)
        part[tuple(local)] = acc.max(0).indices.to(torch.int32).cpu().numpy().astype(part.dtype)
        if on_band is not None:
            on_band(_reoriented_index(sel, prepared), acc)


def _reoriented_index(sel, prepared: Prepared) -> tuple:
    shifted = [s + b.start for s, b in zip(sel, prepared.bbox)]
    return _untranspose(shifted, prepared.transpose)


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6, atol=0)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-4 * min(b.GetSpacing()))
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))



def postprocess_labels(labels: np.ndarray, steps: list) -> np.ndarray:
    """nnU-Net's remove_all_but_largest_component_from_segmentation, per step of
    :func:`check_postprocessing`: the union of the step's labels/regions keeps only its largest
    connected component (full connectivity, as skimage's label; ties all kept), the rest becomes
    the background label. ``labels`` is changed in place and returned."""
    from scipy.ndimage import label as connected

    for step in steps:
        mask = np.isin(labels, [v for region in step["regions"] for v in region])
        components, n = connected(mask, structure=np.ones((3,) * labels.ndim, bool))
        if n < 2:
            continue
        sizes = np.bincount(components.ravel())[1:]
        keep = np.flatnonzero(sizes == sizes.max()) + 1
        labels[mask & ~np.isin(components, keep)] = step["background_label"]
    return labels
