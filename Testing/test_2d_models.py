"""2D models (issue 7): a 2D bundle segments a 3D volume slice by slice, or a single 2D image,
and the labels come back on the input's exact grid.

Real 2D LKM-UNet bundles (``bundle init --preset 2d_small``, untrained) show the whole pipeline
runs and keeps the geometry; a threshold stand-in "network" (engine_helpers.ThresholdNet) shows
the labels land on the right voxels through in-plane resampling, transposition and 2D tiling.
A 2D input (one slice) gives a 2D output with the input's geometry; a 3D model refuses it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from engine_helpers import (ThresholdNet, centroid_mm, make_bundle, run_cli, same_geometry,
                            sphere_image)
from lkm_core.bundle import load_bundle
from lkm_core.cli.root import main as cli_main
from lkm_core.errors import InputError
from lkm_core.inference.predictor import Predictor

FLIPPED = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def bundle_2d_small(tmp_path_factory):
    """A real, untrained 2D LKM-UNet bundle (64x64 patch, 3 mm in-plane)."""
    folder = tmp_path_factory.mktemp("b2d") / "untrained-2d_small"
    assert cli_main(["bundle", "init", "--preset", "2d_small", "--labels", "liver,spleen",
                     "--mirror-axes", "0,1", "-o", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def ct_crop(sample_ct, tmp_path_factory):
    """A centre crop of the sample CT (3 mm, flipped x/y as stored), small enough for 2 cores."""
    image = sitk.ReadImage(str(sample_ct.image))
    crop = sitk.RegionOfInterest(image, [80, 70, 24], [20, 15, 44])
    path = tmp_path_factory.mktemp("ct") / "ct_crop.nii.gz"
    sitk.WriteImage(crop, str(path))
    return path


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def disc_image_2d(size=(41, 37), spacing=(0.8, 0.6), origin=(12.0, -7.5), flip=True,
                  radius_mm=6.0, centre_mm=None):
    """(2D image, mask): a disc of value 1 on 0, geometry with a flipped in-plane direction."""
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if flip:
        image.SetDirection((-1.0, 0.0, 0.0, -1.0))
    if centre_mm is None:
        centre_mm = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size])
    j, i = np.meshgrid(np.arange(size[1]), np.arange(size[0]), indexing="ij")
    d = np.array(image.GetDirection()).reshape(2, 2)
    pts = np.stack([i, j], -1) * np.array(spacing) @ d.T + np.array(origin)
    mask = np.linalg.norm(pts - np.asarray(centre_mm), axis=-1) <= radius_mm
    out = sitk.GetImageFromArray(mask.astype(np.float32))
    out.CopyInformation(image)
    return out, mask


# -- a real 2D LKM-UNet bundle ------------------------------------------------------------------
def test_real_2d_bundle_on_the_sample_ct_gives_labels_on_the_ct_grid(bundle_2d_small, ct_crop):
    bundle = load_bundle(bundle_2d_small)
    assert bundle.dimension == "2d" and bundle.patch_size == (64, 64)
    result = Predictor(bundle, device="cpu", threads=1).predict_file(ct_crop)
    image = sitk.ReadImage(str(ct_crop))
    assert same_geometry(result.labels, image)
    assert result.labels.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(result.labels))) <= {0, 1, 2}
    # the slice axis (z, 3 mm) keeps the input spacing; in-plane is the plan's 3 mm
    assert result.network_spacing == pytest.approx(image.GetSpacing())
    assert result.network_shape == (24, 70, 80)


def test_real_2d_bundle_on_an_anisotropic_flipped_volume_keeps_its_exact_geometry(
        bundle_2d_small, tmp_path):
    # in-plane 0.7 x 1.3 mm (the plan is 3 x 3 mm: resampled in-plane), 5 mm slices, flipped
    image, _ = sphere_image(size=(70, 40, 5), spacing=(0.7, 1.3, 5.0), direction=FLIPPED,
                            origin=(31.0, -12.0, 4.5), radius_mm=15, value=200, background=-800)
    path = tmp_path / "aniso.nrrd"
    sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(path))
    result = Predictor(load_bundle(bundle_2d_small), device="cpu", threads=1,
                       tta=True).predict_file(path)
    assert same_geometry(result.labels, sitk.ReadImage(str(path)))
    assert result.network_spacing == pytest.approx((3.0, 3.0, 5.0))


# -- a threshold stand-in through the same pipeline ---------------------------------------------
@pytest.mark.parametrize("transpose", [(0, 1, 2), (2, 0, 1)])
def test_2d_model_puts_a_structure_back_on_its_voxels_through_in_plane_resampling(
        tmp_path, transpose):
    # the input's in-plane spacing (0.7 x 0.9) differs from the plan's 1.2 x 1.2; with
    # transpose (2, 0, 1) the slices are taken along x (the plan's first axis after transpose)
    geometry = dict(size=(52, 44, 12), spacing=(0.7, 0.9, 3.0), origin=(-15, 25, -10),
                    direction=FLIPPED)
    if transpose == (2, 0, 1):
        geometry.update(size=(10, 44, 40), spacing=(3.0, 0.9, 0.8))
    grid, _ = sphere_image(**geometry)
    size = geometry["size"]
    centre = np.array(grid.TransformContinuousIndexToPhysicalPoint(
        [0.53 * (n - 1) for n in size]))
    # a nonzero background: nnU-Net's preprocessing crops a zero one away (fewer slices)
    image, mask = sphere_image(**geometry, centre_mm=centre, radius_mm=10, background=-1.0)
    path = tmp_path / "sphere.nii.gz"
    sitk.WriteImage(image, str(path))
    bundle = make_bundle(tmp_path / "b", dimension="2d", spacing=(1.2, 1.2), patch=(16, 16),
                         transpose=transpose, mirror_axes=(0, 1))
    net = ThresholdNet()
    result = Predictor(bundle, device="cpu", networks=[net], tta=True).predict_file(path)
    assert same_geometry(result.labels, image)
    out = sitk.GetArrayFromImage(result.labels)
    assert dice(out, mask) > 0.9
    assert np.linalg.norm(centroid_mm(result.labels) - centre) < 0.7  # under one voxel
    # every network call is 2D (B, C, 16, 16); a slice larger than the patch is tiled in 2D,
    # mirrored in-plane (4 mirrors), and every slice of the plan's first axis is visited
    assert {shape for shape in net.calls} == {(1, 1, 16, 16)}
    n_slices = size[::-1][transpose[0]]
    assert len(net.calls) >= n_slices * 4 * 4
    slice_spacing = geometry["spacing"][2 - transpose[0]]
    assert slice_spacing in result.network_spacing  # the slice axis is never resampled


def test_2d_model_batches_slices_when_asked(tmp_path):
    from lkm_core.inference.sliding_window import predict_sliding_window

    image, mask = sphere_image(size=(16, 16, 7), radius_mm=5)
    array = sitk.GetArrayFromImage(image)[None]
    net = ThresholdNet()
    labels = predict_sliding_window([net], array, (1, 16, 16), 2, batch_size=4)
    assert [shape[0] for shape in net.calls] == [4, 3]  # 7 slices in two batches
    np.testing.assert_array_equal(labels, mask)


# -- a true 2D image (one slice) ----------------------------------------------------------------
def test_single_2d_image_gives_a_2d_label_image_with_its_geometry(tmp_path):
    image, mask = disc_image_2d(spacing=(1.2, 1.2), radius_mm=9)
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(image, str(path))
    assert sitk.ReadImage(str(path)).GetDimension() == 2
    bundle = make_bundle(tmp_path / "b", dimension="2d", spacing=(1.2, 1.2), patch=(16, 16))
    result = Predictor(bundle, device="cpu", networks=[ThresholdNet()]).predict_file(path)
    assert result.labels.GetDimension() == 2
    assert result.labels.GetSize() == image.GetSize()
    assert result.labels.GetOrigin() == image.GetOrigin()
    assert result.labels.GetSpacing() == image.GetSpacing()
    assert result.labels.GetDirection() == image.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), mask.astype(np.uint8))
    # the same through predict_image with the 2D image itself
    again = Predictor(bundle, device="cpu", networks=[ThresholdNet()]).predict_image(image)
    assert again.labels.GetDimension() == 2 and same_geometry_2d(again.labels, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again.labels), mask.astype(np.uint8))


def same_geometry_2d(a, b) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetOrigin(), b.GetOrigin())
            and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetDirection(), b.GetDirection()))


@pytest.mark.parametrize("suffix,fmt", [(".nii.gz", "nii.gz"), (".nrrd", "seg.nrrd")])
def test_single_slice_image_file_works_with_a_2d_bundle_through_the_cli(
        bundle_2d_small, tmp_path, suffix, fmt):
    image, _ = disc_image_2d(size=(90, 75), spacing=(0.9, 1.1), radius_mm=20)
    image = sitk.Cast(image * 1000 - 500, sitk.sitkInt16)
    path = tmp_path / f"slice{suffix}"
    sitk.WriteImage(image, str(path))
    image = sitk.ReadImage(str(path))
    assert image.GetDimension() == 2
    out = tmp_path / "out"
    proc = run_cli("predict", path, "-o", out, "--model", bundle_2d_small, "--device", "cpu",
                   "--threads", "1", "--progress", "none", "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    labels_path = out / f"slice.{fmt}"
    summary = json.loads((out / "slice.json").read_text(encoding="utf-8"))
    assert summary["input"]["size"] == list(image.GetSize())
    assert all("area_mm2" in entry and "volume_ml" not in entry for entry in summary["labels"])
    if fmt == "nii.gz":
        labels = sitk.ReadImage(str(labels_path))
        assert labels.GetDimension() == 2  # 2D in, 2D out
        assert labels.GetSize() == image.GetSize()
        assert np.allclose(labels.GetOrigin(), image.GetOrigin())
        assert np.allclose(labels.GetSpacing(), image.GetSpacing())
        assert np.allclose(labels.GetDirection(), image.GetDirection())
    else:
        # a Slicer segmentation is 3D: one slice with the image's in-plane geometry
        labels = sitk.ReadImage(str(labels_path))
        assert labels.GetSize()[:2] == image.GetSize() and labels.GetSize()[2] == 1
        assert np.allclose(labels.GetOrigin()[:2], image.GetOrigin())
        assert np.allclose(labels.GetSpacing()[:2], image.GetSpacing())
        assert np.allclose(np.array(labels.GetDirection()).reshape(3, 3)[:2, :2],
                           np.array(image.GetDirection()).reshape(2, 2))


# -- a 3D model refuses single slices -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["2d file", "one-slice volume"])
def test_3d_bundle_refuses_a_single_slice_with_a_clear_message_and_no_output(tmp_path, kind):
    if kind == "2d file":
        image, _ = disc_image_2d()
    else:
        image, _ = sphere_image(size=(30, 28, 1), radius_mm=8)
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(image, str(path))
    bundle = make_bundle(tmp_path / "b3d", dimension="3d")
    with pytest.raises(InputError, match="this model segments 3D volumes"):
        Predictor(bundle, device="cpu", networks=[ThresholdNet()]).predict_file(path)
    out = tmp_path / "out"
    proc = run_cli("predict", path, "-o", out, "--model", bundle.path, "--device", "cpu",
                   "--threads", "1", "--progress", "none")
    assert proc.returncode == 1
    assert "this model segments 3D volumes" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())
