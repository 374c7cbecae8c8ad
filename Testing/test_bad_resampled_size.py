"""Inputs whose grid at the model's spacing is nonsense are refused before anything is allocated:
one line naming the size and the spacing, no network call, no output file."""

import numpy as np
import pytest
import SimpleITK as sitk

from engine_helpers import ThresholdNet, make_bundle, sphere_image
from lkm_core.inference import preprocessing
from lkm_core.cli.root import main
from lkm_core.errors import InputError, ResourceError
from lkm_core.inference.predictor import Predictor


def image_with(size, spacing):
    image, _ = sphere_image(size=size, spacing=spacing, radius_mm=min(size) * min(spacing) / 3,
                            background=-1.0)
    return image


def refuse(bundle, image, error):
    net = ThresholdNet(bundle.num_classes)
    with pytest.raises(error) as info:
        Predictor(bundle, device="cpu", networks=[net]).predict_image(image, case="ct")
    assert net.calls == []
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_volume_that_becomes_a_few_voxels_is_refused_with_size_and_spacing(tmp_path):
    bundle = make_bundle(tmp_path / "b", spacing=(3.0, 3.0, 3.0), patch=(8, 8, 8))
    # an absurdly small spacing: 40 voxels of 0.05 mm are 2 mm, under one voxel at 3 mm
    message = refuse(bundle, image_with((40, 40, 40), (0.05, 0.05, 0.05)), InputError)
    assert "40x40x40 voxels of 0.05x0.05x0.05 mm" in message and "1x1x1 voxels" in message
    assert "3x3x3 mm" in message and "fewer than 4" in message
    # a tiny image: 3 slices of 3 mm along z stay 3 voxels
    message = refuse(bundle, image_with((30, 30, 3), (3.0, 3.0, 3.0)), InputError)
    assert "30x30x3 voxels" in message and "30x30x3 voxels at" in message
    # four voxels along every axis is enough
    Predictor(bundle, device="cpu", networks=[ThresholdNet()]).predict_image(
        image_with((4, 4, 4), (3.0, 3.0, 3.0)))


def test_a_2d_model_needs_four_voxels_in_plane_only(tmp_path):
    bundle = make_bundle(tmp_path / "b", dimension="2d", spacing=(1.0, 1.0), patch=(8, 8))
    # three slices are fine for a 2D model (it does not convolve across slices), and so is one
    Predictor(bundle, device="cpu", networks=[ThresholdNet()]).predict_image(
        image_with((12, 12, 3), (1.0, 1.0, 5.0)))
    one = sitk.GetImageFromArray(np.pad(np.ones((6, 6), np.float32), 3))
    result = Predictor(bundle, device="cpu", networks=[ThresholdNet()]).predict_image(one)
    assert result.labels.GetDimension() == 2
    message = refuse(bundle, image_with((12, 3, 6), (1.0, 1.0, 1.0)), InputError)
    assert "12x3x6 voxels of 1x1x1 mm" in message


def test_a_grid_too_big_for_memory_is_refused_before_allocating(tmp_path):
    bundle = make_bundle(tmp_path / "b", spacing=(1.0, 1.0, 1.0), patch=(8, 8, 8))
    # 20 voxels of 5 m each: 100000 voxels per axis at 1 mm, 10^15 voxels
    message = refuse(bundle, image_with((20, 20, 20), (5000.0, 5000.0, 5000.0)), ResourceError)
    assert "20x20x20 voxels of 5000x5000x5000 mm" in message
    assert "100000x100000x100000 voxels" in message and "GB" in message


def test_the_memory_check_counts_the_class_scores(tmp_path, monkeypatch):
    image = image_with((40, 40, 40), (1.0, 1.0, 1.0))
    few = make_bundle(tmp_path / "few", spacing=(1.0, 1.0, 1.0), patch=(8, 8, 8))
    many = make_bundle(tmp_path / "many", spacing=(1.0, 1.0, 1.0), patch=(8, 8, 8),
                       labels=tuple(f"organ{i}" for i in range(40)))
    # enough memory for 2 classes' scores on 64000 voxels, not for 41
    monkeypatch.setattr(preprocessing, "available_memory", lambda: 64000 * 4 * 10)
    Predictor(few, device="cpu", networks=[ThresholdNet()]).predict_image(image)
    refuse(many, image, ResourceError)


def test_the_command_line_prints_one_line_and_writes_nothing(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "b", spacing=(3.0, 3.0, 3.0), patch=(8, 8, 8))
    path = tmp_path / "tiny.nii.gz"
    sitk.WriteImage(image_with((40, 40, 40), (0.05, 0.05, 0.05)), str(path))
    out = tmp_path / "out"
    code = main(["predict", str(path), "-o", str(out), "--model", str(bundle.path),
                 "--progress", "none", "--device", "cpu", "--threads", "1"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert "40x40x40 voxels of 0.05x0.05x0.05 mm" in err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
