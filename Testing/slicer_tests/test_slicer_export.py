"""Export for retraining: reviewed volume + segmentation -> nnU-Net v2 raw dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_fixtures import (add_volume, bundle, ct_crop, new_scene, oblique_flipped_ijk_to_ras,  # noqa: F401
                             resample_itk_onto_volume)

import slicer  # noqa: E402  (slicer-core: CI installs it)

from LKMSegmentLib import LKMSegmentCore, read_model_info  # noqa: E402
from LKMSegmentLib.datasetexport import ExportError, NnUNetDatasetExporter  # noqa: E402
from LKMSegmentLib.scene import set_segment_array  # noqa: E402


@pytest.fixture
def reviewed_case(ct_crop):
    """A volume with an oblique, flipped grid and a 'reviewed' segmentation (three segments)."""
    array, spacing = ct_crop
    scene = new_scene()
    volume = add_volume(scene, "CT", array, oblique_flipped_ijk_to_ras(spacing, array.shape))
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reviewed")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    masks = {}
    for name, box in (("spleen", np.s_[2:8, 3:12, 4:15]), ("liver", np.s_[9:16, 10:30, 12:35]),
                      ("my_lesion", np.s_[10:12, 12:14, 14:16])):
        mask = np.zeros(array.shape, np.uint8)
        mask[box] = 1
        sid = node.GetSegmentation().AddEmptySegment("", name)
        set_segment_array(node, sid, mask, volume)
        masks[name] = mask
    return scene, volume, node, masks


def test_export_writes_a_dataset_that_nnunet_integrity_check_accepts(reviewed_case, bundle, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    scene, volume, node, masks = reviewed_case
    dataset = tmp_path / "Dataset901_LKMReview"
    first = LKMSegmentCore.export_case(volume, node, dataset, bundle)
    second = LKMSegmentCore.export_case(volume, node, dataset, bundle)  # same volume name again

    assert first.case == "CT" and not first.renamed
    assert second.case != "CT" and second.renamed and "already used" in second.text()
    assert first.unknown_segments == ["my_lesion"] and "my_lesion" in first.text()
    assert first.missing_labels == ["kidney_right"]
    meta = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "liver": 1, "spleen": 2, "kidney_right": 3}
    assert meta["channel_names"] == {"0": "CT"}
    assert sorted(p.name for p in (dataset / "imagesTr").iterdir()) == [
        f"{first.case}_0000.nii.gz", f"{second.case}_0000.nii.gz"]
    assert not (dataset / ".partial").exists()

    verify_dataset_integrity(str(dataset), num_processes=1)  # raises on any problem


def test_exported_case_keeps_geometry_and_label_values_of_the_model(reviewed_case, bundle, tmp_path):
    scene, volume, node, masks = reviewed_case
    report = LKMSegmentCore.export_case(volume, node, tmp_path / "ds", bundle, case_name="patient 7")
    assert report.case == "patient_7"
    image = sitk.ReadImage(str(report.image))
    label = sitk.ReadImage(str(report.label))
    on_grid = resample_itk_onto_volume(image, volume)
    np.testing.assert_array_equal(on_grid, slicer.util.arrayFromVolume(volume))
    labels_on_grid = resample_itk_onto_volume(label, volume)
    table = read_model_info(bundle).label_table()
    expected = np.zeros_like(labels_on_grid)
    for name in ("spleen", "liver"):
        expected[masks[name] > 0] = table[name]
    np.testing.assert_array_equal(labels_on_grid, expected)


def test_export_refuses_a_dataset_made_with_other_labels_and_writes_nothing(reviewed_case, tmp_path):
    scene, volume, node, masks = reviewed_case
    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "dataset.json").write_text(json.dumps({
        "labels": {"background": 0, "heart": 1}, "channel_names": {"0": "CT"},
        "numTraining": 0, "file_ending": ".nii.gz"}))
    exporter = NnUNetDatasetExporter(dataset, {"liver": 1, "spleen": 2})
    with pytest.raises(ExportError, match="other labels"):
        exporter.export_case(volume, node)
    assert sorted(p.name for p in dataset.iterdir()) == ["dataset.json"]


def test_export_refuses_label_tables_nnunet_cannot_train(tmp_path):
    with pytest.raises(ExportError, match="without gaps"):
        NnUNetDatasetExporter(tmp_path, {"liver": 1, "spleen": 5})
