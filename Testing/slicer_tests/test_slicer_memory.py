"""Importing results does not make the Slicer process grow (real MRML, slicer-core).

A 9-structure result on a 256³ volume is imported five times into the same segmentation node,
replacing its segments each time, as repeated Segment clicks do. Before the fix every import kept
about one volume's worth of memory per segment (the reference images made by
CreateOrientedImageDataFromVolumeNode were never released): +1.3 GB over five imports.
"""

from __future__ import annotations

import gc

import numpy as np
import psutil
import pytest

from slicer_fixtures import add_labelmap_like, add_volume, new_scene

import slicer  # noqa: E402

from lkm_core.contract import LabelRecord  # noqa: E402
from LKMSegmentLib.scene import import_result  # noqa: E402

pytestmark = pytest.mark.slow
SIZE = 256
STRUCTURES = 9
ALLOWED_GROWTH_MB = 50


def _result_file(volume, path):
    """A .seg.nrrd with nine structures on the volume's grid, written by Slicer's own writer."""
    labels = np.zeros((SIZE,) * 3, np.uint8)
    for value in range(1, STRUCTURES + 1):
        labels[20 * value:20 * value + 15, 30:200, 40:220] = value
    scratch = slicer.vtkMRMLScene()
    labelmap = add_labelmap_like(scratch, volume, labels)
    node = scratch.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    writer = slicer.vtkMRMLSegmentationStorageNode()
    writer.SetFileName(str(path))
    assert writer.WriteData(node)
    return path


def test_five_imports_into_the_same_node_do_not_grow_memory(tmp_path):
    scene = new_scene()
    array = np.random.default_rng(0).integers(-1000, 1000, (SIZE,) * 3).astype(np.int16)
    volume = add_volume(scene, "CT", array, np.diag([-0.8, -0.8, 1.0, 1.0]))
    del array
    result = _result_file(volume, tmp_path / "CT.seg.nrrd")
    labels = [LabelRecord(v, f"Segment_{v}") for v in range(1, STRUCTURES + 1)]
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CT segmentation")
    process = psutil.Process()

    rss_mb = []
    for _ in range(5):
        report = import_result(scene, volume, result, target=target, labels=labels)
        gc.collect()
        rss_mb.append(process.memory_info().rss / 2**20)
    assert target.GetSegmentation().GetNumberOfSegments() == STRUCTURES
    assert len(report.replaced) == STRUCTURES  # the later imports replaced the segments
    growth = rss_mb[-1] - rss_mb[0]
    print(f"RSS after each import (MB): {[round(v) for v in rss_mb]}; growth {growth:.0f} MB")
    assert growth <= ALLOWED_GROWTH_MB, f"memory grew by {growth:.0f} MB over five imports: {rss_mb}"
