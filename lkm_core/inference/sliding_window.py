"""Sliding-window prediction: overlapping patches, Gaussian weighting, mirroring, padding.

Works on a network-ready array (C, D, H, W). :func:`sliding_window_scores` returns the class
scores (classes, D, H, W): the Gaussian-weighted mean of the logits over patches, mirrors and
folds, divided by the summed weights as nnU-Net's predictor does, so that they can be resampled or
turned into probabilities (softmax). :func:`predict_sliding_window` returns their argmax. Memory:
one float32 accumulator of (classes, D, H, W) and one (D, H, W) of summed weights; with more
than one pass (folds x mirrorings), one (D, H, W) more for how much the passes disagree
(:func:`sliding_window_passes`).

Volumes smaller than the patch are padded to it with zeros (after normalisation), as nnU-Net
pads them. Two tilings choose the patch (:func:`plan_patch`): "nnunet" runs the trained patch
as nnU-Net does; "fit" shrinks it to the image where the image is smaller and takes the patch
that needs the fewest network voxels elsewhere, in multiples of what the network needs.

A 2D network runs through the same code with a patch of depth 1: each patch is a slice window,
squeezed to (B, C, H, W) for the network.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import Cancelled

log = logging.getLogger(__name__)


class DeviceOutOfMemory(RuntimeError):
    """CUDA ran out of memory even with one patch per batch."""


def gaussian_weights(patch: Sequence[int], sigma_scale: float = 1 / 8) -> torch.Tensor:
    """Separable Gaussian centred on voxel n // 2 of each axis, max 1, no zeros.

    The centre and width are nnU-Net's (a delta at n // 2, sigma n/8), so a model trained with
    nnU-Net gets the same tile weighting here as in nnU-Net's own predictor: where classes
    nearly tie, a half-voxel shift of the centre is enough to flip labels.
    """
    weights = None
    for n in patch:
        if n == 1:
            axis = torch.ones(1)
        else:
            sigma = n * sigma_scale
            x = torch.arange(n, dtype=torch.float64) - n // 2
            axis = torch.exp(-0.5 * (x / sigma) ** 2)
        weights = axis if weights is None else weights[..., None] * axis
    weights = (weights / weights.max()).float()
    floor = weights[weights > 0].min()
    return torch.clamp(weights, min=float(floor))


def tile_starts(size: int, patch: int, step: float) -> list:
    """Start indices of patches along one axis: evenly spaced, overlap >= 1 - step, first at 0,
    last flush with the end."""
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / (patch * step)) + 1
    stride = (size - patch) / (n - 1)
    return [int(round(i * stride)) for i in range(n)]


# how much larger than the trained patch a fitted patch may grow (voxels): the memory a patch
# needs grows with it, and the context the network sees should stay close to the trained one
FIT_MAX_GROWTH = 1.25


def tiled_voxels(shape: Sequence[int], patch: Sequence[int], steps: Sequence[float]) -> int:
    """Voxels through the network for one pass over ``shape`` (padded to the patch) in tiles
    of ``patch`` at ``steps`` (one per axis)."""
    total = 1
    for n, p, s in zip(shape, patch, steps):
        total *= len(tile_starts(max(n, p), p, s)) * p
    return total


def _axis_candidates(n: int, p: int, d: int, step: float) -> list:
    """Patch sizes worth trying along one axis: the image's size rounded up to the divisor if
    the image is smaller than the patch; else, from the patch up to the whole axis, the smallest
    size for each tile count (a larger one with the same count only costs more)."""
    d = max(1, int(d))
    whole = int(math.ceil(n / d)) * d
    if whole <= p:
        return [whole]
    if d >= p:  # the network's constraints are unknown: the trained patch only
        return [p]
    best = {}
    for c in range(p, whole + 1, d):
        best.setdefault(len(tile_starts(max(n, c), c, step)), c)
    return sorted(best.values())


def plan_patch(patch: Sequence[int], shape: Sequence[int], divisors: Sequence[int],
               steps: Sequence[float], max_growth: float = FIT_MAX_GROWTH) -> tuple:
    """The "fit" tiling's patch: along axes where the image is smaller than the patch, the
    image rounded up to the divisors; elsewhere the patch (grown by at most ``max_growth`` in
    voxels, using what the shrunken axes freed) that needs the fewest network voxels to cover
    the image at the requested step. Ties go to the smaller patch."""
    per_axis = [_axis_candidates(n, p, d, s)
                for n, p, d, s in zip(shape, patch, divisors, steps)]
    budget = max_growth * math.prod(patch)
    best = None
    for combo in itertools.product(*per_axis):
        volume = math.prod(combo)
        if volume > budget and combo != tuple(c[0] for c in per_axis):
            continue
        key = (tiled_voxels(shape, combo, steps), volume)
        if best is None or key < best[0]:
            best = (key, combo)
    return tuple(int(c) for c in best[1])


def pad_to_patch(array: torch.Tensor, patch: Sequence[int]):
    """Pad spatial axes (symmetrically, zeros) to at least the patch; returns (array, slices to
    crop the result back)."""
    spatial = array.shape[1:]
    pads, crops = [], []
    for n, p in zip(spatial, patch):
        total = max(0, p - n)
        before = total // 2
        pads.append((before, total - before))
        crops.append(slice(before, before + n))
    if not any(sum(p) for p in pads):
        return array, tuple(crops)
    flat = [v for pair in reversed(pads) for v in pair]  # torch pads the last axis first
    return torch.nn.functional.pad(array, flat), tuple(crops)


def mirror_sets(mirror_axes: Sequence[int]) -> list:
    """All combinations of flips of the given spatial axes (0-based), identity first."""
    axes = list(mirror_axes)
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass
class WindowScores:
    """What one sliding-window run gives: ``scores`` (classes, D, H, W), the normalised class
    scores; ``disagreement`` (D, H, W) float32 0-1 where the passes (folds x mirrorings)
    disagree, None with one pass (see :func:`sliding_window_passes`)."""
    scores: torch.Tensor
    disagreement: torch.Tensor | None = None


def sliding_window_scores(networks: Sequence[Callable], array: np.ndarray,
                          patch_size: Sequence[int], num_classes: int, **kwargs) -> torch.Tensor:
    """Normalised class scores (num_classes, D, H, W) of :func:`sliding_window_passes`."""
    return sliding_window_passes(networks, array, patch_size, num_classes,
                                 disagreement=False, **kwargs).scores


def sliding_window_passes(
    networks: Sequence[Callable],
    array: np.ndarray,
    patch_size: Sequence[int],
    num_classes: int,
    *,
    step: float = 0.5,
    mirror_axes: Sequence[int] = (),
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    results_device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    disagreement: bool = True,
) -> WindowScores:
    """Normalised class scores (num_classes, D, H, W), float32 on ``results_device``, of
    ``array`` (C, D, H, W): sum over patches, mirrors and folds of Gaussian-weighted logits,
    divided by the summed weights (times mirrors and folds): a weighted mean of logits.

    With more than one pass (folds x mirror sets) and ``disagreement``, also how much the
    passes disagree per voxel: on each patch, the Jensen gap of log-sum-exp between the passes'
    logits, g = mean_k LSE(z_k) - LSE(mean_k z_k) >= 0, Gaussian-weighted over patches, given as
    1 - exp(-g). That is 1 minus the summed geometric mean of the passes' probabilities: 0
    where every pass gives the same probabilities, near 1 where they confidently pick different
    classes (two passes: the squared Hellinger distance). Memory: one float32 (D, H, W) more.

    ``patch_size`` has 3 entries (a 2D network: (1, h, w)). ``networks`` are callables taking
    (B, C, *patch) [2D: (B, C, h, w)] and returning logits (B, num_classes, same spatial).
    On CUDA out-of-memory the batch is halved; with one patch it raises DeviceOutOfMemory.
    """
    device = torch.device(device)
    results_device = torch.device(results_device) if results_device else device
    two_d = patch_size[0] == 1
    data = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
    data, crops = pad_to_patch(data, patch_size)
    spatial = data.shape[1:]
    weights = gaussian_weights(patch_size).to(results_device)
    starts = [tile_starts(n, p, step if not (two_d and axis == 0) else 1.0)
              for axis, (n, p) in enumerate(zip(spatial, patch_size))]
    tiles = list(itertools.product(*starts))
    mirrors = mirror_sets(mirror_axes)
    passes = len(mirrors) * len(networks)
    track = disagreement and passes > 1
    accumulator = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=results_device)
    weight_sum = torch.zeros(spatial, dtype=torch.float32, device=results_device)
    gap_sum = (torch.zeros(spatial, dtype=torch.float32, device=results_device)
               if track else None)
    for t in tiles:
        weight_sum[tuple(slice(s, s + p) for s, p in zip(t, patch_size))] += weights
    weight_sum *= passes
    total = len(tiles) * passes
    done = 0
    log.info("sliding window: %d patches of %s, %d mirror(s), %d fold(s) on %s",
             len(tiles), tuple(patch_size), len(mirrors), len(networks), device)

    def run(net, x):
        """(logits summed over the mirror sets, their log-sum-exp summed likewise or None)."""
        summed, lse = None, None
        for flips in mirrors:
            dims = [a + 2 for a in flips]
            xi = torch.flip(x, dims) if dims else x
            if two_d:
                xi = xi[:, :, 0]
            with torch.autocast(device.type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                y = net(xi)
            if isinstance(y, (list, tuple)):  # deep supervision left on: full resolution first
                y = y[0]
            y = y.float()
            if two_d:
                y = y[:, :, None]
            if dims:
                y = torch.flip(y, dims)
            if y.shape[1] != num_classes:
                raise ValueError(f"network returned {y.shape[1]} classes, "
                                 f"the model lists {num_classes}")
            summed = y if summed is None else summed + y
            if track:
                lse = torch.logsumexp(y, 1) if lse is None else lse + torch.logsumexp(y, 1)
        return summed, lse

    with torch.inference_mode():
        i = 0
        while i < len(tiles):
            if should_stop is not None and should_stop():
                raise Cancelled("Stopped by the user.")
            chunk = tiles[i:i + batch_size]
            batch = torch.stack([
                data[(slice(None), *[slice(s, s + p) for s, p in zip(t, patch_size)])]
                for t in chunk])
            try:
                # every fold on the same patches in turn: their disagreement needs them together
                x = batch.to(device, non_blocking=True)
                logits, lse = None, None
                for net in networks:
                    y, l = run(net, x)
                    logits = y if logits is None else logits + y
                    if track:
                        lse = l if lse is None else lse + l
            except RuntimeError as exc:
                if device.type != "cuda" or not _is_oom(exc):
                    raise
                del exc
                torch.cuda.empty_cache()
                if batch_size == 1:
                    raise DeviceOutOfMemory("CUDA out of memory with one patch per batch")
                batch_size = max(1, batch_size // 2)
                log.warning("CUDA out of memory: retrying with %d patch(es) per batch",
                            batch_size)
                continue
            logits = logits.to(results_device)
            if track:
                gaps = (lse.to(results_device) / passes
                        - torch.logsumexp(logits / passes, 1)).clamp_min_(0)
            for n, (t, y) in enumerate(zip(chunk, logits)):
                window = [slice(s, s + p) for s, p in zip(t, patch_size)]
                accumulator[(slice(None), *window)].addcmul_(y, weights)
                if track:
                    gap_sum[tuple(window)].addcmul_(gaps[n], weights)
            i += len(chunk)
            done += len(chunk) * passes
            if progress is not None:
                progress(done / total)
        accumulator /= weight_sum
        if track:  # the weighted mean gap over patches (weight_sum counts every pass)
            gap_sum.mul_(passes).div_(weight_sum)
            spread = gap_sum.neg_().exp_().neg_().add_(1.0)  # 1 - exp(-gap), in place
    del weight_sum
    cropped = any(c.start != 0 or c.stop != n for c, n in zip(crops, spatial))
    if cropped:
        accumulator = accumulator[(slice(None), *crops)].clone()  # the padding freed
    if not track:
        return WindowScores(accumulator)
    return WindowScores(accumulator, spread[crops].clone() if cropped else spread)


def scores_to_labels(scores: torch.Tensor) -> np.ndarray:
    """Argmax over classes -> uint8 (uint16 beyond 256 classes) numpy label map."""
    if scores.shape[0] <= 256:
        return scores.argmax(0).to(torch.uint8).cpu().numpy()
    return scores.argmax(0).to(torch.int16).cpu().numpy().astype(np.uint16)


def predict_sliding_window(networks: Sequence[Callable], array: np.ndarray,
                           patch_size: Sequence[int], num_classes: int, **kwargs) -> np.ndarray:
    """Label map (D, H, W) of ``array``: the argmax of :func:`sliding_window_scores`."""
    return scores_to_labels(sliding_window_scores(networks, array, patch_size, num_classes,
                                                  **kwargs))
