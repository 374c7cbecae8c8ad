"""Sides stay sides: one CT stored in four orientations gives the same labels in physical space,
and a structure the model learned on the patient's right stays on the patient's right.

nnU-Net uses each array in storage order (its NibabelIOWithReorient aside), so a model learns
left and right in the storage order of its training images. `bundle export` records that order
and the predictor reorients every input to it; without it, an input stored the other way round
gets its sides swapped, silently (shown below with the position-only model).
"""

import logging
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from engine_helpers import make_bundle, physical_points
from lkm_core.bundle import default_bundle_path, load_bundle
from lkm_core.cli.root import main
from lkm_core.inference.predictor import Predictor
from lkm_core.inference.preprocessing import image_orientation
from lkm_core.inputs.sample_data import REFERENCE_LABELS
from lkm_core.training.bundle_export import training_orientation

# RAS and LPS flip two axes, LAS one; SAR permutes the axes (slices become columns)
ORIENTATIONS = ("RAS", "LPS", "LAS", "SAR")


def stored_as(image, orientation):
    return sitk.DICOMOrient(image, orientation)


def in_storage_of(labels, reference):
    """The label array in ``reference``'s storage order (an exact permutation/flip)."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(labels, image_orientation(reference)))


def lps_x(image, value):
    """Mean LPS x (mm; larger = more to the patient's left) of the voxels labelled ``value``."""
    array = sitk.GetArrayViewFromImage(image)
    return float(physical_points(image)[array == value][:, 0].mean())


@pytest.fixture(scope="module")
def ct(sample_ct):
    return sitk.ReadImage(str(sample_ct.image), sitk.sitkFloat32)


# --- a bundle exported from nnU-Net ------------------------------------------------------------
@pytest.mark.slow
def test_exported_bundle_gives_the_same_labels_for_every_storage_order(trained_smoke, ct):
    bundle = load_bundle(trained_smoke.bundle)
    assert bundle.orientation == "RAS"  # the training crops' headers (the sample CT is RAS)
    crop = sitk.RegionOfInterest(ct, [56, 32, 24], [28, 26, 74])  # 2 patches
    predictor = Predictor(bundle, device="cpu", threads=1)
    results = {o: predictor.predict_image(stored_as(crop, o)).labels for o in ORIENTATIONS}
    reference = in_storage_of(results["RAS"], crop)
    assert reference.any()
    for orientation, labels in results.items():
        assert image_orientation(labels) == orientation  # each result in its input's geometry
        np.testing.assert_array_equal(in_storage_of(labels, crop), reference)


# --- the default model: its right kidney -------------------------------------------------------
@pytest.mark.slow
def test_default_model_puts_the_right_kidney_on_the_patients_right(ct, sample_ct):
    """The default model learned the right kidney (it labels no left kidney at all, see the
    README): in every storage order its right-kidney voxels lie right of the body's midline and
    on the reference's right kidney."""
    bundle = load_bundle(default_bundle_path())
    right = bundle.label_by_name("kidney_right").value
    size, index = [84, 40, 32], [14, 22, 68]   # both kidneys, liver, spleen: 2 patches
    crop = sitk.RegionOfInterest(ct, size, index)
    reference = sitk.RegionOfInterest(sitk.ReadImage(str(sample_ct.reference_labels)), size, index)
    truth = sitk.GetArrayFromImage(reference) == REFERENCE_LABELS["kidney_right"]
    truth_left = sitk.GetArrayFromImage(reference) == REFERENCE_LABELS["kidney_left"]
    assert truth.any() and truth_left.any()
    body = sitk.GetArrayViewFromImage(crop) > -300
    midline = float(physical_points(crop)[body][:, 0].mean())
    predictor = Predictor(bundle, device="cpu", threads=1, quick=True)
    first = None
    for orientation in ORIENTATIONS:
        labels = predictor.predict_image(stored_as(crop, orientation)).labels
        assert np.count_nonzero(sitk.GetArrayViewFromImage(labels) == right) > 100, orientation
        assert lps_x(labels, right) < midline - 30, orientation  # LPS: right is -x
        same = in_storage_of(labels, crop)
        kidney = same == right
        # on the reference's right kidney far more than on its left one (it does not separate
        # the two well); swapped sides would turn this round
        assert np.count_nonzero(kidney & truth) > 2 * np.count_nonzero(kidney & truth_left)
        first = same if first is None else first
        np.testing.assert_array_equal(same, first)


# --- a model that only knows positions ---------------------------------------------------------
class RightHalfNet(torch.nn.Module):
    """Class 1 in the half of the patch with the low last-axis index, whatever the intensities:
    in LPS storage that is the patient's right. A model can only learn sides this way."""

    def forward(self, x):
        w = x.shape[-1]
        ramp = (w / 2 - 0.5 - torch.arange(w, dtype=x.dtype)).expand_as(x[:, :1])
        return torch.cat([torch.zeros_like(ramp), ramp], 1)


def write_training_images(folder, directions):
    folder.mkdir(parents=True)
    for i, direction in enumerate(directions):
        image = sitk.Image([8, 8, 8], sitk.sitkInt16)
        image.SetDirection(direction)
        sitk.WriteImage(image, str(folder / f"case_{i:03d}_0000.nii.gz"))


LPS = (1, 0, 0, 0, 1, 0, 0, 0, 1)
RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)


def test_export_records_the_dominant_training_orientation(tmp_path, caplog):
    plans = {"dataset_name": "Dataset777_Sides", "image_reader_writer": "SimpleITKIO"}
    raw = tmp_path / "raw"
    write_training_images(raw / "Dataset777_Sides" / "imagesTr", [LPS, LPS, RAS])
    with caplog.at_level(logging.WARNING, logger="lkm_core"):
        orientation, found = training_orientation(plans, {"file_ending": ".nii.gz"}, raw=raw,
                                                  preprocessed=tmp_path / "none")
    assert orientation == "LPS" and "2 of 3" in found
    assert "several orientations" in caplog.text and "LPS x2, RAS x1" in caplog.text
    # nnU-Net's reorienting reader means RAS whatever the files say
    assert training_orientation({**plans, "image_reader_writer": "NibabelIOWithReorient"},
                                raw=raw)[0] == "RAS"
    # no images anywhere: nothing recorded, and a warning
    assert training_orientation(plans, raw=tmp_path / "x", preprocessed=tmp_path / "y")[0] is None


def test_export_reads_nnunets_preprocessed_properties_without_running_their_code(tmp_path):
    folder = tmp_path / "pre" / "Dataset777_Sides" / "nnUNetPlans_3d_fullres"
    folder.mkdir(parents=True)
    for i, direction in enumerate([RAS, RAS, LPS]):
        props = {"sitk_stuff": {"spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0),
                                "direction": direction}, "spacing": [1.0, 1.0, 1.0],
                 "bbox_used_for_cropping": [[0, 8], [0, 8], [0, 8]],
                 "shape_before_cropping": (8, 8, 8), "class_locations": {1: np.zeros((2, 4))}}
        (folder / f"case_{i}.pkl").write_bytes(pickle.dumps(props))

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (folder / "evil.pkl").write_bytes(pickle.dumps({"sitk_stuff": Evil()}))
    orientation, found = training_orientation({"dataset_name": "Dataset777_Sides"},
                                              raw=tmp_path / "none", preprocessed=tmp_path / "pre")
    assert orientation == "RAS" and "2 of 3" in found
    assert not (tmp_path / "pwned").exists()


def test_a_position_only_model_keeps_the_patients_right_in_every_storage_order(tmp_path):
    raw = tmp_path / "raw"
    write_training_images(raw / "Dataset778_Right" / "imagesTr", [LPS, LPS])
    orientation, _ = training_orientation({"dataset_name": "Dataset778_Right"}, raw=raw)
    assert orientation == "LPS"
    recorded = make_bundle(tmp_path / "with", spacing=(2.0, 2.0, 2.0), patch=(32, 32, 32),
                           orientation=orientation, labels=("right_half",))
    storage = make_bundle(tmp_path / "without", spacing=(2.0, 2.0, 2.0), patch=(32, 32, 32),
                          labels=("right_half",))
    image = sitk.Image([20, 16, 12], sitk.sitkFloat32) + 50.0
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin((-19.0, -15.0, -11.0))   # physical centre at LPS x = 0
    image.SetDirection(LPS)
    sides = {}
    for o in ORIENTATIONS:
        for name, bundle in (("recorded", recorded), ("storage order", storage)):
            labels = Predictor(bundle, device="cpu", networks=[RightHalfNet()]).predict_image(
                stored_as(image, o)).labels
            x = physical_points(labels)[..., 0]
            on = sitk.GetArrayViewFromImage(labels) == 1
            sides[name, o] = "right" if x[on].max() < 0 < x[~on].min() else \
                "left" if x[on].min() > 0 > x[~on].max() else "other"
    assert all(sides["recorded", o] == "right" for o in ORIENTATIONS), sides
    # without the recorded orientation the side depends on how the input is stored
    assert sides["storage order", "LPS"] == "right" and sides["storage order", "RAS"] == "left"
    assert sides["storage order", "SAR"] != "right"


def test_info_warns_when_a_bundle_records_no_orientation(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "b")
    assert main(["info", str(bundle.path)]) == 0
    assert "WARNING: The model test-model records no orientation" in capsys.readouterr().out
    with_orientation = make_bundle(tmp_path / "c", orientation="RAS")
    assert main(["info", str(with_orientation.path)]) == 0
    out = capsys.readouterr().out
    assert "orientation RAS" in out and "WARNING" not in out


def test_every_predict_with_a_bundle_without_orientation_warns_the_panel(tmp_path, capfd):
    """The warning is a "log" event of level warning in the JSON protocol (the Slicer panel
    lists those), on every run, before any case."""
    import json

    bundle = make_bundle(tmp_path / "b")
    code = main(["predict", str(tmp_path / "missing.nrrd"), "-o", str(tmp_path / "out"),
                 "--model", str(bundle.path), "--progress", "json"])
    assert code == 1                                           # the missing input fails
    events = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    warnings = [e["message"] for e in events if e["event"] == "log" and e["level"] == "warning"]
    assert any("records no orientation" in w and "--orientation" in w for w in warnings)
    oriented = make_bundle(tmp_path / "c", orientation="RAS")
    main(["predict", str(tmp_path / "missing.nrrd"), "-o", str(tmp_path / "out"),
          "--model", str(oriented.path), "--progress", "json"])
    assert "records no orientation" not in capfd.readouterr().out


@pytest.mark.parametrize("code", ["RAX", "RRS", "LP", "ras "])
def test_a_bundle_with_a_bad_orientation_code_is_refused(tmp_path, code):
    from lkm_core.errors import ModelError
    with pytest.raises(ModelError, match="not a 3-letter code"):
        make_bundle(tmp_path / "b", orientation=code)
