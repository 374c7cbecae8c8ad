"""The body crop (``--crop body``): the network runs only on the box around the patient.

ThresholdNet (class 1 where its input is above 0.5) is local, so where the pre- and
post-processing are geometrically right the labels must be the same voxel for voxel whatever box
the network ran on; what changes is how much it saw.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from engine_helpers import (ThresholdNet, make_bundle, oblique_direction, physical_points,
                            predict_in_process, same_geometry)
from lkm_core.errors import InputError
from lkm_core.inference.predictor import Predictor
from lkm_core.inference.preprocessing import body_bbox

# CT model: HU clipped and scaled so that the ThresholdNet's 0.5 is 50 HU
CT = {"scheme": "ct", "clip": [-1000.0, 1000.0], "mean": 0.0, "std": 100.0}


def patient_in_air(size=(48, 40, 20), spacing=(2.0, 2.0, 3.0), direction=None):
    """(image, organ mask): air (-1000 HU) all round a soft-tissue body (40 HU, an ellipsoid in
    the middle third of the field of view in-plane) holding a 120 HU organ."""
    image = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size]))
    points = physical_points(image) - centre
    to_index = np.asarray(image.GetDirection()).reshape(3, 3).T  # physical -> index axes
    local = points @ to_index.T
    half = np.array([size[0] * spacing[0] / 6, size[1] * spacing[1] / 5, size[2] * spacing[2]])
    body = ((local / half) ** 2).sum(-1) <= 1.0
    organ = np.linalg.norm(local - np.array([4.0, 0.0, 0.0]), axis=-1) <= 7.0
    array = np.where(organ, 120.0, np.where(body, 40.0, -1000.0)).astype(np.float32)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out, organ.astype(np.uint8)


@pytest.mark.parametrize("direction", [None, oblique_direction(25.0)])
def test_body_crop_gives_the_same_labels_from_less_network_work(tmp_path, direction):
    from lkm_core.outputs.labels import summarize

    image, organ = patient_in_air(direction=direction)
    bundle = make_bundle(tmp_path / "b", spacing=(3.0, 2.0, 2.0), patch=(8, 16, 16),
                         normalization=CT)
    runs = {}
    for crop in ("nonzero", "body"):
        net = ThresholdNet()
        result = Predictor(bundle, device="cpu", networks=[net], crop=crop,
                           precision="fp32").predict_image(image)
        assert same_geometry(result.labels, image)
        runs[crop] = (sitk.GetArrayFromImage(result.labels), net, summarize(result, bundle))
    np.testing.assert_array_equal(runs["body"][0], organ)
    np.testing.assert_array_equal(runs["nonzero"][0], organ)
    seen = {crop: sum(np.prod(shape) for shape in net.calls) for crop, (_, net, _) in runs.items()}
    assert seen["body"] < 0.6 * seen["nonzero"]
    assert runs["nonzero"][2]["tiling"]["crop"] == {"mode": "nonzero", "kept": 1.0}
    body = runs["body"][2]["tiling"]["crop"]
    assert body["mode"] == "body" and 0.2 < body["kept"] < 0.7


def test_body_box_has_the_margin_in_mm_and_ignores_specks():
    array = np.full((30, 60, 80), -1000.0, dtype=np.float32)
    array[10:20, 20:40, 30:50] = 40.0          # the patient
    array[2, 2, 2] = 500.0                     # one bright speck in the air (noise)
    box = body_bbox(array, spacing=(3.0, 1.0, 2.0), margin_mm=6.0)
    # 6 mm: 2 voxels at 3 mm, 6 at 1 mm, 3 at 2 mm; the coarse grid (every 2nd voxel) may round
    # the body's far edge out by one voxel, never in
    for sl, (lo, hi), margin in zip(box, [(10, 20), (20, 40), (30, 50)], (2, 6, 3)):
        assert lo - margin - 1 <= sl.start <= lo - margin
        assert hi + margin <= sl.stop <= hi + margin + 1
    assert body_bbox(np.full((5, 6, 7), -1000.0, np.float32), (1, 1, 1)) == (
        slice(0, 5), slice(0, 6), slice(0, 7))     # nothing above air: the whole image


def test_body_crop_needs_a_ct_model_and_auto_is_nnunets_crop(tmp_path):
    mr = make_bundle(tmp_path / "mr", normalization={"scheme": "zscore", "use_mask": False})
    with pytest.raises(InputError, match="CT intensities.*'zscore'.*--crop nonzero"):
        Predictor(mr, device="cpu", networks=[ThresholdNet()], crop="body")
    with pytest.raises(InputError, match="crop 'organs'"):
        Predictor(mr, device="cpu", networks=[ThresholdNet()], crop="organs")
    assert Predictor(mr, device="cpu", networks=[ThresholdNet()]).crop == "nonzero"


def test_cli_crop_body_on_an_mr_model_is_a_usage_error_that_writes_nothing(tmp_path, capsys):
    bundle_dir = tmp_path / "mr"
    make_bundle(bundle_dir, normalization={"scheme": "zscore", "use_mask": False})
    image, _ = patient_in_air(size=(12, 10, 6))
    sitk.WriteImage(image, str(tmp_path / "case.nii.gz"))
    code, err = predict_in_process(capsys, [tmp_path / "case.nii.gz"], tmp_path / "out",
                                   bundle_dir, "--crop", "body")
    assert code == 2 and "CT intensities" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    json.dumps(err)  # one plain line of text
