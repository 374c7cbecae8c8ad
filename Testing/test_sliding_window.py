"""Sliding window pieces: tiling, weighting, patch fitting, batching, cancellation, progress."""

import threading

import numpy as np
import pytest
import torch

from engine_helpers import ThresholdNet
from lkm_core.errors import Cancelled
from lkm_core.inference.sliding_window import (gaussian_weights, pad_to_patch, plan_patch,
                                               predict_sliding_window, tile_starts, tiled_voxels)


@pytest.mark.parametrize("size,patch,step", [(100, 32, 0.5), (33, 32, 0.5), (32, 32, 0.5),
                                             (10, 32, 0.5), (200, 40, 0.25), (77, 16, 1.0)])
def test_tiles_cover_the_axis_with_the_requested_overlap(size, patch, step):
    starts = tile_starts(size, patch, step)
    assert starts[0] == 0 and starts[-1] == max(0, size - patch)
    assert all(b - a <= patch * step + 1 for a, b in zip(starts, starts[1:]))
    covered = np.zeros(max(size, patch), bool)
    for s in starts:
        covered[s:s + patch] = True
    assert covered.all()


def test_gaussian_weights_peak_in_the_centre_and_never_reach_zero():
    w = gaussian_weights((8, 16, 12))
    assert w.shape == (8, 16, 12) and float(w.max()) == pytest.approx(1.0)
    assert float(w.min()) > 0
    assert w[4, 8, 6] > w[0, 0, 0]
    assert gaussian_weights((1, 16, 16)).shape == (1, 16, 16)  # 2D patch through the 3D path


def test_patch_shrinks_only_where_the_volume_is_smaller_and_stays_divisible():
    half = (0.5, 0.5, 0.5)
    assert plan_patch((40, 224, 192), (30, 101, 122), (4, 32, 32), half) == (32, 128, 128)
    assert plan_patch((1, 64, 64), (20, 10, 64), (1, 8, 8), (1.0, 0.5, 0.5)) == (1, 16, 64)
    # unknown strides (divisor = the patch): the trained patch, padded as nnU-Net pads
    assert plan_patch((16, 32, 32), (9, 7, 5), (16, 32, 32), half) == (16, 32, 32)


def test_fit_tiling_spends_the_voxels_it_frees_on_fewer_tiles():
    """The 3d_paper patch on the quick clinical CT's grid, were strides the only constraint:
    nnU-Net's tiling runs 5 padded patches (6.2x the grid); the fitted patch spends the freed
    in-plane voxels on depth and covers the image in one tile, within the growth budget.
    (The real 3d_paper's windows need multiples of 40 x 224 x 192: no room to shrink.)"""
    shape, patch, divisors, half = (112, 101, 122), (40, 224, 192), (4, 32, 32), (0.5,) * 3
    fitted = plan_patch(patch, shape, divisors, half)
    assert fitted == (112, 128, 128)
    assert all(f % d == 0 for f, d in zip(fitted, divisors))
    assert np.prod(fitted) <= 1.25 * np.prod(patch)
    grid = np.prod(shape)
    assert tiled_voxels(shape, patch, half) / grid > 6
    assert tiled_voxels(shape, fitted, half) / grid < 1.5


def test_fit_tiling_never_needs_more_voxels_than_nnunets():
    rng = np.random.default_rng(3)
    for _ in range(40):
        patch = tuple(int(v) for v in rng.choice([16, 32, 48, 64], 3))
        shape = tuple(int(v) for v in rng.integers(5, 150, 3))
        step = float(rng.choice([0.5, 0.75, 1.0]))
        steps = (step,) * 3
        fitted = plan_patch(patch, shape, (8, 8, 8), steps)
        assert tiled_voxels(shape, fitted, steps) <= tiled_voxels(shape, patch, steps)
        assert np.prod(fitted) <= 1.25 * np.prod(patch)


def test_padding_is_symmetric_and_cropped_back():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    padded, crops = pad_to_patch(x, (6, 4, 8))
    assert padded.shape == (2, 6, 4, 8)
    assert torch.equal(padded[(slice(None), *crops)], x)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batched_and_overlapping_patches_give_the_pointwise_result(batch_size):
    rng = np.random.default_rng(1)
    array = rng.random((1, 20, 23, 17)).astype(np.float32)
    net = ThresholdNet()
    labels = predict_sliding_window([net], array, (8, 8, 8), 2, step=0.5, batch_size=batch_size)
    np.testing.assert_array_equal(labels, (array[0] > 0.5).astype(np.uint8))
    assert all(shape[0] <= batch_size for shape in net.calls)


def test_progress_rises_to_one_and_cancel_stops_between_patches():
    array = np.random.default_rng(2).random((1, 16, 16, 16)).astype(np.float32)
    fractions = []
    predict_sliding_window([ThresholdNet()], array, (8, 8, 8), 2, step=0.5,
                           progress=fractions.append)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    stop = threading.Event()

    def progress(fraction):
        if fraction > 0.2:
            stop.set()

    with pytest.raises(Cancelled):
        predict_sliding_window([ThresholdNet()], array, (8, 8, 8), 2, step=0.5,
                               progress=progress, should_stop=stop.is_set)


def test_scores_are_the_weighted_mean_of_the_logits_over_patches_mirrors_and_folds():
    """Divided by the summed weights, as nnU-Net does: a network whose logits are the same
    everywhere gives exactly them back, however many patches overlap a voxel."""
    from lkm_core.inference.sliding_window import sliding_window_scores

    class Constant(torch.nn.Module):
        def __init__(self, values):
            super().__init__()
            self.values = torch.tensor(values).view(1, -1, 1, 1, 1)

        def forward(self, x):
            return self.values.expand(x.shape[0], -1, *x.shape[2:]).clone()

    array = np.zeros((1, 21, 18, 30), np.float32)
    scores = sliding_window_scores([Constant([1.0, -2.0, 3.0]), Constant([3.0, 0.0, 1.0])], array,
                                   (8, 8, 8), 3, step=0.5, mirror_axes=(0, 2))
    assert scores.shape == (3, 21, 18, 30)
    torch.testing.assert_close(scores, torch.tensor([2.0, -1.0, 2.0]).view(3, 1, 1, 1).expand(
        3, 21, 18, 30), rtol=1e-6, atol=1e-6)
    # padded to the patch and cropped back: still the mean
    small = sliding_window_scores([Constant([1.0, 5.0])], np.zeros((1, 3, 4, 5), np.float32),
                                  (8, 8, 8), 2)
    assert small.shape == (2, 3, 4, 5) and torch.allclose(small[1], torch.tensor(5.0))
