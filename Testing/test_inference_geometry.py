"""The predictor puts labels back on the same physical voxels, with the input's exact geometry.

A model-independent threshold "network" runs through the real pre/post-processing (reading,
reorientation, resampling, transposition, normalisation, padding, sliding window, argmax,
resampling back), so any geometric slip shows up as a moved or misshapen label.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from engine_helpers import (ThresholdNet, centroid_mm, make_bundle, oblique_direction,
                            same_geometry, sphere_image)
from lkm_core.inference.predictor import Predictor

FLIPPED = np.diag([-1.0, -1.0, 1.0])              # how most CT is stored in NIfTI (RAS-ish)
PERMUTED = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=float)  # axes swapped
ORIENTATIONS = {"identity": np.eye(3), "flipped": FLIPPED, "permuted": PERMUTED,
                "oblique": oblique_direction(25)}


def assert_same_voxels(result, image, mask):
    """The label image has the input's exact geometry and equals the input mask."""
    assert same_geometry(result.labels, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), mask.astype(np.uint8))


def predict(bundle, path, **kwargs):
    """fp32: the network's calls are then the tiles only (no bf16 self-check call)."""
    net = ThresholdNet(bundle.num_classes)
    result = Predictor(bundle, device="cpu", networks=[net], precision="fp32",
                       **kwargs).predict_file(path)
    return result, net


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_label_lands_on_the_same_voxels_as_the_input_mask(tmp_path, orientation, suffix):
    spacing = (0.8, 1.1, 2.5)  # anisotropic
    image, mask = sphere_image(size=(30, 26, 14), spacing=spacing, origin=(-12.5, 40.0, 7.25),
                               direction=ORIENTATIONS[orientation], radius_mm=9)
    path = tmp_path / f"sphere{suffix}"
    sitk.WriteImage(image, str(path))
    # network spacing = input spacing (nnU-Net order z, y, x): no interpolation anywhere
    bundle = make_bundle(tmp_path / "b", spacing=spacing[::-1], patch=(8, 16, 16))
    result, net = predict(bundle, path)
    assert_same_voxels(result, sitk.ReadImage(str(path)), mask)
    assert len(net.calls) > 1  # several overlapping patches were stitched


@pytest.mark.parametrize("orientation", ["flipped", "oblique"])
def test_resampling_to_the_model_spacing_keeps_the_physical_position(tmp_path, orientation):
    geometry = dict(size=(48, 40, 16), spacing=(0.7, 0.9, 2.5), origin=(-15, -25, -10),
                    direction=ORIENTATIONS[orientation])
    grid, _ = sphere_image(**geometry)
    centre = np.array(grid.TransformContinuousIndexToPhysicalPoint((21.3, 17.8, 7.4)))
    image, mask = sphere_image(**geometry, centre_mm=centre, radius_mm=10)
    path = tmp_path / "sphere.nrrd"
    sitk.WriteImage(image, str(path))
    bundle = make_bundle(tmp_path / "b", spacing=(1.5, 1.5, 1.5), patch=(16, 16, 16))
    result, _ = predict(bundle, path)
    assert same_geometry(result.labels, image)
    out = sitk.GetArrayFromImage(result.labels).astype(bool)
    dice = 2 * (out & mask).sum() / (out.sum() + mask.sum())
    assert dice > 0.9
    assert np.linalg.norm(centroid_mm(result.labels) - centre) < 0.7  # well under one voxel
    assert result.network_spacing == pytest.approx((1.5, 1.5, 1.5))


def test_nifti_and_nrrd_of_the_same_volume_give_the_same_physical_labels(tmp_path):
    centre = np.array([20.0, -30.0, 45.0])  # LPS millimetres
    image, _ = sphere_image(size=(36, 30, 20), spacing=(1.2, 1.2, 2.0), direction=FLIPPED,
                            origin=(40.0, 0.0, 30.0), centre_mm=centre, radius_mm=7)
    bundle = make_bundle(tmp_path / "b", spacing=(2.0, 2.0, 2.0), patch=(16, 16, 16))
    results = []
    for name in ("a.nii.gz", "a.nrrd"):
        sitk.WriteImage(image, str(tmp_path / name))
        results.append(predict(bundle, tmp_path / name)[0].labels)
    for labels in results:
        assert same_geometry(labels, image)
        assert np.linalg.norm(centroid_mm(labels) - centre) < 1.0
    np.testing.assert_array_equal(*[sitk.GetArrayFromImage(r) for r in results])


@pytest.mark.parametrize("target", ["LPS", "RAS", "PIL"])
def test_bundle_orientation_reorients_and_the_label_comes_back_exactly(tmp_path, target):
    image, mask = sphere_image(size=(20, 18, 12), spacing=(1.0, 1.5, 2.0), direction=FLIPPED,
                               radius_mm=7)
    path = tmp_path / "s.nii.gz"
    sitk.WriteImage(image, str(path))
    bundle = make_bundle(tmp_path / "b", spacing=(1, 1, 1), orientation=target,
                         patch=(8, 8, 8))
    prepared_spacing = {"LPS": (1.0, 1.5, 2.0), "RAS": (1.0, 1.5, 2.0), "PIL": (1.5, 2.0, 1.0)}
    # same spacing as the reoriented input: no interpolation
    bundle.meta["spacing"] = list(prepared_spacing[target][::-1])
    result, _ = predict(bundle, path)
    assert_same_voxels(result, image, mask)


def test_transpose_feeds_the_network_permuted_axes_and_undoes_it(tmp_path):
    image, mask = sphere_image(size=(24, 20, 10), spacing=(1.0, 1.0, 3.0), radius_mm=7)
    path = tmp_path / "s.nrrd"
    sitk.WriteImage(image, str(path))
    # array is (z=10, y=20, x=24); transpose (2, 0, 1) -> (24, 10, 20); spacing in that order
    bundle = make_bundle(tmp_path / "b", spacing=(1.0, 3.0, 1.0), transpose=(2, 0, 1),
                         patch=(24, 10, 20))
    result, net = predict(bundle, path)
    assert net.calls == [(1, 1, 24, 10, 20)]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), mask.astype(np.uint8))


def test_volume_smaller_than_the_patch_is_padded_and_cropped_back(tmp_path):
    image, mask = sphere_image(size=(9, 7, 5), spacing=(2.0, 2.0, 2.0), radius_mm=4)
    path = tmp_path / "tiny.nii.gz"
    sitk.WriteImage(image, str(path))
    bundle = make_bundle(tmp_path / "b", spacing=(2, 2, 2), patch=(16, 32, 32))
    result, net = predict(bundle, path)
    assert net.calls == [(1, 1, 16, 32, 32)]
    assert_same_voxels(result, image, mask)


def test_2d_model_runs_slice_by_slice_on_the_input_grid(tmp_path):
    image, mask = sphere_image(size=(30, 28, 6), spacing=(1.0, 1.0, 4.0), direction=FLIPPED,
                               radius_mm=10)
    path = tmp_path / "s.nrrd"
    sitk.WriteImage(image, str(path))
    bundle = make_bundle(tmp_path / "b", dimension="2d", spacing=(1.0, 1.0), patch=(16, 16),
                         mirror_axes=(0, 1))
    result, net = predict(bundle, path, tta=True)
    assert all(len(shape) == 4 for shape in net.calls)  # (B, C, h, w)
    assert_same_voxels(result, image, mask)


def test_quick_mode_runs_coarser_and_returns_to_the_input_grid(tmp_path):
    image, mask = sphere_image(size=(40, 40, 20), spacing=(0.8, 0.8, 1.5), radius_mm=12)
    path = tmp_path / "s.nii.gz"
    sitk.WriteImage(image, str(path))
    bundle = make_bundle(tmp_path / "b", spacing=(1.5, 0.8, 0.8), patch=(8, 16, 16))
    result, _ = predict(bundle, path, quick=True)
    assert result.network_spacing == pytest.approx((3.0, 3.0, 3.0))
    assert same_geometry(result.labels, image)
    out = sitk.GetArrayFromImage(result.labels).astype(bool)
    assert 2 * (out & mask).sum() / (out.sum() + mask.sum()) > 0.8


def test_mirroring_and_several_folds_keep_an_equivariant_result(tmp_path):
    image, mask = sphere_image(size=(20, 20, 20), spacing=(1, 1, 1), radius_mm=6,
                               centre_mm=(7.0, 9.0, 11.0))
    path = tmp_path / "s.nrrd"
    sitk.WriteImage(image, str(path))
    bundle = make_bundle(tmp_path / "b", spacing=(1, 1, 1), patch=(12, 12, 12),
                         mirror_axes=(0, 1, 2))
    nets = [ThresholdNet(), ThresholdNet()]
    result = Predictor(bundle, device="cpu", networks=nets, tta=True, step=1.0,
                       precision="fp32").predict_file(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), mask.astype(np.uint8))
    assert len(nets[0].calls) == len(nets[1].calls) == 8 * 8  # 8 patches x 8 mirrors
