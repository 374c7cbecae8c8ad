"""The confidence map overlay: the engine's per-voxel confidence as a volume in the scene.

MRML only (slicer-core and the application alike; no Qt, no ``slicer.app``): the scene is passed.

The confidence map (uint8 0-100 on the input's grid, ``--confidence-map``) becomes a scalar volume
under the input's study and parent transform, drawn with a colour table of the same bands as
the engine's pictures (below 50 % red, 50-80 % orange, 80-95 % yellow, from 95 % clear) and a
colour legend. The segmentation node refers to it (``MAP_ROLE``), so "Show confidence map"
finds it for the segmentation on screen, also after the scene is saved and loaded again.
"""

from __future__ import annotations

import slicer
import vtk

from .enginecontract import contract
from .nodeattributes import MADE_BY_MODULE, MAP_ROLE
from .scene import place_like_volume

COLOR_TABLE_NAME = "LKMSegment confidence"
CONFIDENCE_BANDS = contract.CONFIDENCE_BANDS  # the same bands as the engine's pictures
CLEAR_TEXT = "confidence >= 95 % (clear)"
STEP = 5            # colour table entries of 5 %: every band edge falls on an entry's edge
OVERLAY_OPACITY = 0.6


class ConfidenceMapError(Exception):
    """The confidence map cannot be used (message for the user: which file, what to do)."""


# -- the confidence map -------------------------------------------------------------------------
def band_of(percent: float):
    """(RGB, opacity, legend text) of a confidence in %."""
    for upper, color, text in CONFIDENCE_BANDS:
        if percent < upper:
            return color, 1.0, text
    return (1.0, 1.0, 1.0), 0.0, CLEAR_TEXT


def confidence_color_table(scene):
    """The module's colour table of the bands (one per scene; made on first use).

    Entries of 5 % over 0-100 (the map's window), each named after its band; from 95 % fully
    transparent, so only what needs a look is tinted."""
    for node in scene.GetNodesByClass("vtkMRMLColorTableNode"):
        if node.GetAttribute(MAP_ROLE) == "colors":
            return node
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOR_TABLE_NAME)
    table.SetAttribute(MAP_ROLE, "colors")
    table.SetTypeToUser()
    entries = 100 // STEP
    table.SetNumberOfColors(entries)
    for i in range(entries):
        color, opacity, text = band_of(i * STEP)
        table.SetColor(i, text, *color, opacity)
    return table


def _ijk_to_ras(node):
    import numpy as np

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def on_volume_grid(map_node, volume):
    """The map's voxels as an array (k, j, i) on ``volume``'s grid, or None when the two grids
    are not the same voxels.

    Slicer's reader makes every grid right-handed (it flips an axis of a left-handed one), so the
    map read back may list the input's voxels in another axis order or direction: those are
    reordered, exactly; any other difference (shift, spacing, size) means another grid."""
    import numpy as np

    t = np.linalg.inv(_ijk_to_ras(volume)) @ _ijk_to_ras(map_node)  # map IJK -> volume IJK
    axes = np.rint(t[:3, :3])
    if np.abs(t[:3, :3] - axes).max() > 1e-3 or not (
            np.abs(axes).sum(axis=0) == 1).all() or not (np.abs(axes).sum(axis=1) == 1).all():
        return None
    source = slicer.util.arrayFromVolume(map_node)  # (k, j, i)
    dims_v = volume.GetImageData().GetDimensions()  # (i, j, k)
    dims_m = map_node.GetImageData().GetDimensions()
    perm, flips = [], []
    for n in range(3):  # numpy axis n of the result is the volume's IJK axis 2 - n
        a = 2 - n
        b = int(np.nonzero(axes[a])[0][0])
        sign = axes[a, b]
        if dims_m[b] != dims_v[a] or abs(t[a, 3] - (0 if sign > 0 else dims_v[a] - 1)) > 1e-3:
            return None
        perm.append(2 - b)
        if sign < 0:
            flips.append(n)
    out = source.transpose(perm)
    return np.ascontiguousarray(np.flip(out, axis=flips) if flips else out)


def _legend(node):
    """The map's colour legend (made once). The application's Colors module registers the
    legend's node class at startup; a bare scene (slicer-core) gets it here."""
    scene = node.GetScene()
    if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    return slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(node)


def confidence_map_of(seg_node):
    """The confidence map volume a segmentation refers to, or None."""
    return seg_node.GetNodeReference(MAP_ROLE) if seg_node is not None else None


def load_confidence_map(scene, volume, path, segmentation=None, name: str | None = None):
    """Load the engine's confidence map of ``volume`` as a coloured overlay with a legend.

    The node goes under the volume's study and parent transform; ``segmentation`` (the node the
    run wrote) then refers to it, and a map it referred to before (an earlier run) is removed.
    Raises ConfidenceMapError, with the scene unchanged, when the file cannot be read or is not
    on the volume's grid."""

    scratch = slicer.vtkMRMLScene()
    loaded = scratch.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(loaded) or loaded.GetImageData() is None:
        raise ConfidenceMapError(f"The confidence map {path} could not be read.")
    voxels = on_volume_grid(loaded, volume)  # may be a view of ``loaded``'s voxels
    if voxels is None:
        raise ConfidenceMapError(f"The confidence map {path} is not on the grid of the volume "
                                 f"'{volume.GetName()}'; it was left out (run Segment again).")

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                   scene.GenerateUniqueName(name or f"{volume.GetName()} confidence"))
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)  # exactly the input's grid, voxel for voxel
    slicer.util.updateVolumeFromArray(node, voxels)
    del voxels, loaded, scratch
    node.SetAttribute(MAP_ROLE, volume.GetID())
    node.SetAttribute(MADE_BY_MODULE, "confidence map")
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(confidence_color_table(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0, 100)
    display.SetInterpolate(0)  # crisp voxels: each one is a statement about that voxel
    legend = _legend(node)
    if legend is not None:
        legend.SetTitleText("Confidence (%)")
        legend.SetLabelFormat("%.0f")
        legend.SetNumberOfLabels(11)
        legend.SetUseColorNamesForLabels(False)  # a bar 0-100 %: the bands are its colours
        legend.SetVisibility(True)
    place_like_volume(scene, node, volume)
    if segmentation is not None:
        old = confidence_map_of(segmentation)
        segmentation.SetNodeReferenceID(MAP_ROLE, node.GetID())
        if old is not None and old is not node:
            scene.RemoveNode(old)
    return node


def show_confidence_map(seg_node):
    """Make the segmentation's confidence map ready to be seen: its legend on. Returns
    (input volume or None, map volume); the application then puts them in the slice views
    (background, foreground at ``OVERLAY_OPACITY``). Raises ConfidenceMapError without one."""
    node = confidence_map_of(seg_node)
    if node is None:
        name = seg_node.GetName() if seg_node is not None else "this segmentation"
        raise ConfidenceMapError(f"'{name}' has no confidence map; segment with 'Confidence map' "
                                 "ticked (Advanced) to get one.")
    legend = _legend(node)
    if legend is not None:
        legend.SetVisibility(True)
    scene = node.GetScene()
    volume = scene.GetNodeByID(node.GetAttribute(MAP_ROLE)) if node.GetAttribute(MAP_ROLE) else None
    return volume, node
