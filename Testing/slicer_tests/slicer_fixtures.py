"""Helpers for the Slicer-module tests: a real MRML scene (slicer-core), small test volumes.

The engine is run for real in a child process; to keep it fast on two shared cores the test
volume is a crop of the sample CT (one network patch) and the model an untrained 3d_small bundle.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "LKMSegment"))

LABELS = ["liver", "spleen", "kidney_right"]
# crop of the sample CT (x, y, z start and size, voxels of 3 mm): upper abdomen, one patch
CROP_START = (30, 25, 60)
CROP_SIZE = (40, 36, 20)


def make_bundle(folder: Path) -> Path:
    out = folder / "bundle"
    subprocess.run([sys.executable, "-m", "lkm_core", "bundle", "init", "--preset", "3d_small",
                    "--labels", ",".join(LABELS), "-o", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def ct_crop(sample_ct):
    """(array z,y,x int16, spacing) of a small crop of the sample CT."""
    image = sitk.ReadImage(str(sample_ct.image))
    crop = sitk.RegionOfInterest(image, CROP_SIZE, CROP_START)
    return sitk.GetArrayFromImage(crop).astype(np.int16), crop.GetSpacing()


def oblique_flipped_ijk_to_ras(spacing, shape_kji) -> np.ndarray:
    """An IJK-to-RAS with a flipped i axis, a 25° tilt about one axis and a 10° about another."""
    a, b = math.radians(25), math.radians(10)
    rot_x = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    rot_z = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    axes = rot_z @ rot_x @ np.diag([-1.0, 1.0, 1.0])  # i axis flipped: left-handed grid
    m = np.eye(4)
    m[:3, :3] = axes * np.asarray(spacing)[None, :]
    m[:3, 3] = (12.5, -40.25, 103.0)
    return m


def add_volume(scene, name, array_kji, ijk_to_ras: np.ndarray):
    import slicer
    import vtk

    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(volume, array_kji)
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(ijk_to_ras[r, c]))
    volume.SetIJKToRASMatrix(m)
    volume.CreateDefaultDisplayNodes()
    return volume


def add_labelmap_like(scene, volume, array_kji):
    """A labelmap node in ``scene`` holding ``array_kji`` on ``volume``'s own voxel grid."""
    import slicer
    import vtk

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    slicer.util.updateVolumeFromArray(labelmap, array_kji)
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    labelmap.SetIJKToRASMatrix(matrix)
    return labelmap


def new_scene():
    import slicer

    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    scene._keep_logic = logic  # noqa: keep the logic alive as long as the scene
    return scene


def ijk_to_ras(volume) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def resample_itk_onto_volume(image: sitk.Image, volume) -> np.ndarray:
    """Values of an ITK image (LPS) at every voxel centre of a MRML volume (RAS), as (k,j,i).

    The grids must coincide (up to axis order/flips): asserted, not interpolated.
    """
    dims = volume.GetImageData().GetDimensions()
    m = ijk_to_ras(volume)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ m  # volume IJK -> LPS
    direction = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())[None, :]
    to_index = np.linalg.inv(direction)
    k, j, i = np.meshgrid(*(np.arange(n) for n in dims[::-1]), indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    points = (lps @ ijk)[:3] - np.array(image.GetOrigin())[:, None]
    index = to_index @ points
    rounded = np.rint(index)
    assert np.abs(index - rounded).max() < 1e-3, "grids do not coincide"
    rounded = rounded.astype(int)
    size = np.array(image.GetSize())[:, None]
    assert (rounded >= 0).all() and (rounded < size).all(), "volume reaches outside the image"
    arr = sitk.GetArrayFromImage(image)  # z, y, x
    values = arr[rounded[2], rounded[1], rounded[0]]
    return values.reshape(dims[2], dims[1], dims[0])


def scene_snapshot(scene) -> list:
    """Every node (ID, class, name, modified time) and every segment: to prove 'unchanged'."""
    snap = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        entry = (node.GetID(), node.GetClassName(), node.GetName(), node.GetMTime())
        if node.IsA("vtkMRMLSegmentationNode"):
            seg = node.GetSegmentation()
            entry += (tuple(seg.GetNthSegmentID(s) for s in range(seg.GetNumberOfSegments())),)
        snap.append(entry)
    return snap


def cmake_lists(path: Path) -> dict[str, list[str]]:
    """The `set(NAME item item ...)` lists of a CMake file, ${MODULE_NAME} expanded."""
    text = re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))
    variables = dict(re.findall(r"set\((\w+)\s+(\w+)\)", text))
    lists = {}
    for name, body in re.findall(r"set\((\w+)\s+([^)]*)\)", text, flags=re.S):
        items = body.split()
        expanded = []
        for item in items:
            for var, value in variables.items():
                item = item.replace("${%s}" % var, value)
            expanded.append(item.strip('"'))
        lists[name] = expanded
    return lists
