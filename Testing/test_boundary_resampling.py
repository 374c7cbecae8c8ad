"""Labels back on the input grid: the boundary-band resampling equals nnU-Net's resampling of
every class's scores (resample_data_or_seg_to_shape, order 1, nearest across anisotropic slices,
then argmax), voxel for voxel; quick mode's nearest neighbour is the coarse approximation."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

from engine_helpers import same_geometry
from lkm_core.inference import preprocessing
from lkm_core.inference.preprocessing import prepare, to_input_grid
from lkm_core.inference.sliding_window import scores_to_labels


def smooth_scores(shape, n_classes, seed):
    """Smooth random class scores (coarse noise interpolated): organ-like regions with real
    boundaries."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(size=(1, n_classes, 4, 4, 4)).astype(np.float32))
    return torch.nn.functional.interpolate(coarse, size=tuple(shape), mode="trilinear")[0] * 10


def nnunet_labels(scores, prepared):
    """nnU-Net's export path: resample all scores onto the cropped input grid, argmax, insert
    into the full (transposed) grid, undo the transpose."""
    crop = [s.stop - s.start for s in prepared.bbox]
    logits = resample_data_or_seg_to_shape(scores.numpy(), crop, prepared.target, prepared.spacing,
                                           is_seg=False, order=1, order_z=0,
                                           force_separate_z=None)
    full = np.zeros(prepared.full_shape, np.uint8)
    full[prepared.bbox] = logits.argmax(0)
    return full.transpose(np.argsort(prepared.transpose))


CASES = {  # input size xyz, input spacing xyz, model spacing (nnU-Net order), transpose
    "3 mm network to 0.8 mm input": ((60, 50, 40), (0.8, 0.8, 0.8), (3.0, 3.0, 3.0), (0, 1, 2)),
    "anisotropic input (nearest across slices)": ((64, 56, 12), (0.7, 0.7, 2.5),
                                                  (1.5, 1.5, 1.5), (0, 1, 2)),
    "transposed, finer network": ((30, 28, 26), (2.0, 1.8, 1.5), (1.2, 1.0, 1.1), (2, 0, 1)),
}


@pytest.mark.parametrize("small_slabs", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_band_resampling_gives_nnunets_full_score_resampling(case, small_slabs, monkeypatch):
    if small_slabs:  # many slabs and chunks: their seams must not show
        monkeypatch.setattr(preprocessing, "SLAB_VOXELS", 3000)
        monkeypatch.setattr(preprocessing, "BAND_CHUNK", 500)
    size, spacing, target, transpose = CASES[case]
    image = sitk.Image(size, sitk.sitkFloat32) + 100.0  # nonzero: no crop
    image.SetSpacing(spacing)
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    prepared = prepare(image, spacing=target, transpose=transpose, dimension="3d",
                       normalization=[{"scheme": "none"}])
    scores = smooth_scores(prepared.array.shape[1:], 4, seed=len(case))
    labels = scores_to_labels(scores)
    assert len(np.unique(labels)) == 4
    band = []
    ours = to_input_grid(labels, prepared, image, scores=scores,
                         on_band=lambda index, s: band.append(len(index[0])))
    assert same_geometry(ours, image)
    expected = nnunet_labels(scores, prepared)
    got = sitk.GetArrayFromImage(ours)
    assert np.count_nonzero(got != expected) <= 1e-5 * got.size  # float32 vs float64 ties
    # only the band was interpolated; nearest neighbour differs from the exact labels
    assert 0 < sum(band) < 0.8 * got.size
    nearest = sitk.GetArrayFromImage(to_input_grid(labels, prepared, image))
    assert np.count_nonzero(nearest != expected) > 0


def test_on_grid_input_keeps_the_network_labels_exactly():
    image = sitk.Image((20, 18, 16), sitk.sitkFloat32) + 1.0
    image.SetSpacing((1.5, 1.5, 1.5))
    prepared = prepare(image, spacing=(1.5, 1.5, 1.5), transpose=(0, 1, 2), dimension="3d",
                       normalization=[{"scheme": "none"}])
    scores = smooth_scores(prepared.array.shape[1:], 3, seed=1)
    labels = scores_to_labels(scores)
    out = to_input_grid(labels, prepared, image, scores=scores)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), labels)


def test_many_classes_take_the_same_way(monkeypatch):
    """Label values >= 128 leave no spare bit for the band flag in uint8: a separate mask."""
    size, spacing, target, transpose = CASES["3 mm network to 0.8 mm input"]
    image = sitk.Image(size, sitk.sitkFloat32) + 100.0
    image.SetSpacing(spacing)
    prepared = prepare(image, spacing=target, transpose=transpose, dimension="3d",
                       normalization=[{"scheme": "none"}])
    scores = smooth_scores(prepared.array.shape[1:], 200, seed=5)
    labels = scores_to_labels(scores)
    assert labels.max() >= 128
    got = sitk.GetArrayFromImage(to_input_grid(labels, prepared, image, scores=scores))
    assert np.count_nonzero(got != nnunet_labels(scores, prepared)) <= 1e-5 * got.size
