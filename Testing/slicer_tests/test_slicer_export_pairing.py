"""Export checks that the segmentation belongs to the input volume (real MRML, slicer-core).

Before this check the exporter took any segmentation and resampled it onto the input volume:
another volume's reviewed work became this volume's training label without a word.
"""

from __future__ import annotations

import numpy as np
import pytest

from slicer_fixtures import add_volume, bundle, new_scene, oblique_flipped_ijk_to_ras  # noqa: F401

import slicer  # noqa: E402

from LKMSegmentLib import LKMSegmentCore  # noqa: E402
from LKMSegmentLib.datasetexport import ExportError  # noqa: E402
from LKMSegmentLib.scene import set_segment_array  # noqa: E402

SHAPE = (12, 16, 20)


def _case(scene, name, offset):
    array = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    m = oblique_flipped_ijk_to_ras((1.5, 1.0, 2.0), SHAPE)
    m[:3, 3] += offset
    volume = add_volume(scene, name, array, m)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} reviewed")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:8, 4:10, 5:12] = 1
    set_segment_array(node, node.GetSegmentation().AddEmptySegment("", "liver"), mask, volume)
    return volume, node


def _loaded_from_file(scene, node, tmp_path):
    """The segmentation as Slicer loads a .seg.nrrd: no reference volume, only its geometry."""
    path = tmp_path / f"{node.GetName()}.seg.nrrd"
    writer = slicer.vtkMRMLSegmentationStorageNode()
    writer.SetFileName(str(path))
    assert writer.WriteData(node)
    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "from file")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(path))
    assert reader.ReadData(loaded)
    assert loaded.GetNodeReference(loaded.GetReferenceImageGeometryReferenceRole()) is None
    return loaded


def test_export_refuses_the_segmentation_of_another_volume_and_names_both(bundle, tmp_path):
    scene = new_scene()
    first, first_seg = _case(scene, "patient A", 0.0)
    second, _ = _case(scene, "patient B", 30.0)
    dataset = tmp_path / "ds"
    with pytest.raises(ExportError) as refused:
        LKMSegmentCore.export_case(second, first_seg, dataset, bundle)
    message = str(refused.value)
    assert "'patient A reviewed'" in message and "'patient A'" in message and "'patient B'" in message
    assert not dataset.exists(), "a refused export writes nothing"
    report = LKMSegmentCore.export_case(first, first_seg, dataset, bundle)  # its own volume: fine
    assert report.exported_segments == ["liver"]


def test_a_segmentation_loaded_from_a_file_pairs_by_its_grid(bundle, tmp_path):
    scene = new_scene()
    first, first_seg = _case(scene, "patient A", 0.0)
    second, _ = _case(scene, "patient B", 30.0)  # same size and axes, shifted origin
    loaded = _loaded_from_file(scene, first_seg, tmp_path)
    with pytest.raises(ExportError, match="another grid than the volume 'patient B'"):
        LKMSegmentCore.export_case(second, loaded, tmp_path / "ds", bundle)
    report = LKMSegmentCore.export_case(first, loaded, tmp_path / "ds", bundle)
    assert report.exported_segments == ["liver"] and report.num_training == 1


def test_export_without_a_segmentation_asks_for_one(bundle, tmp_path):
    scene = new_scene()
    volume, _ = _case(scene, "patient A", 0.0)
    with pytest.raises(ExportError, match="Choose the reviewed segmentation"):
        LKMSegmentCore.export_case(volume, None, tmp_path / "ds", bundle)
