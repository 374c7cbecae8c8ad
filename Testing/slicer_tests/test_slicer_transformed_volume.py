"""A volume under a parent transform: its result lands on its own grid (real MRML, slicer-core).

The segmentation is placed under the volume's transform, so the segments must be stored in the
volume's own coordinates; a reference made in world coordinates applied the transform twice
(the segments were shifted by the transform's translation).
"""

from __future__ import annotations

import numpy as np
import vtk

from slicer_fixtures import add_labelmap_like, add_volume, new_scene

import slicer  # noqa: E402

from lkm_core.contract import LabelRecord  # noqa: E402
from LKMSegmentLib.scene import import_result, segment_array  # noqa: E402


def test_result_of_a_transformed_volume_is_on_the_volume_grid(tmp_path):
    scene = new_scene()
    shape = (10, 12, 14)
    volume = add_volume(scene, "CT", np.zeros(shape, np.int16), np.diag([-2.0, -2.0, 3.0, 1.0]))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 7.0)
    transform.SetMatrixTransformToParent(shift)
    volume.SetAndObserveTransformNodeID(transform.GetID())

    # the engine's result is written in the volume's own coordinates (as the volume was written)
    labels = np.zeros(shape, np.uint8)
    labels[2:5, 3:7, 4:9] = 1
    scratch = slicer.vtkMRMLScene()
    labelmap = add_labelmap_like(scratch, volume, labels)
    writer = slicer.vtkMRMLVolumeArchetypeStorageNode()
    writer.SetFileName(str(tmp_path / "CT.nrrd"))
    assert writer.WriteData(labelmap)

    report = import_result(scene, volume, tmp_path / "CT.nrrd", labels=[LabelRecord(1, "liver")])
    node = report.node
    assert node.GetTransformNodeID() == transform.GetID()
    segment_id = node.GetSegmentation().GetNthSegmentID(0)
    stored = node.GetSegmentation().GetSegment(segment_id).GetRepresentation("Binary labelmap")
    matrix = vtk.vtkMatrix4x4()
    stored.GetImageToWorldMatrix(matrix)
    own = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(own)  # the volume's own grid, not the world one
    assert [matrix.GetElement(r, 3) for r in range(3)] == [own.GetElement(r, 3) for r in range(3)]
    np.testing.assert_array_equal(segment_array(node, segment_id, volume), labels)
