"""MRML side of the module: volumes to files, engine results into segmentation nodes.

Only MRML classes and ``vtkSlicerSegmentationsModuleLogic`` static methods are used, which exist
in the Slicer application and in the headless ``slicer-core`` package alike (no Qt, no
``slicer.app``, no ``slicer.mrmlScene``: the scene is always passed in).

Rules for importing a result:
- segments are matched **by name**; a segment of the model replaces the segment of that name
  (keeping its ID, position, colour) or, when asked, an existing one is kept as it is;
- every other segment of the node (the user's own work) is left alone: new segments go into
  their own labelmap layer first and layers are merged only where nothing overlaps;
- the labelmap is resampled (nearest neighbour, exact for an aligned grid) into the input
  volume's geometry, which also becomes the node's reference geometry;
- a new node is placed under the input volume's study in the subject hierarchy and under the
  volume's parent transform;
- each segment of the model gets the engine's confidence in it as segment tags (from the
  .seg.nrrd, or from the run's summary for a plain labelmap), which Slicer saves with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .confidence import copy_confidence
from .nodeattributes import made_by_module

BINARY = "Binary labelmap"


class ResultImportError(Exception):
    """The engine's result could not be brought into the scene (message for the user)."""


def _seg_logic():
    return slicer.vtkSlicerSegmentationsModuleLogic


# -- volumes ------------------------------------------------------------------------------------
def check_input_volume(volume) -> None:
    if volume is None or not volume.IsA("vtkMRMLScalarVolumeNode") or volume.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError("Choose a scalar (CT or MR) volume as input; labelmaps cannot be segmented.")
    if made_by_module(volume):
        raise ValueError(f"'{volume.GetName()}' is a confidence map made by LKMSegment, not an image "
                         "to segment; choose the CT or MR volume.")
    image = volume.GetImageData()
    if image is None:
        raise ValueError(f"The volume '{volume.GetName()}' has no image data.")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"The volume '{volume.GetName()}' has {image.GetNumberOfScalarComponents()} "
                         "components (colour or vector image); the model needs a grey-level volume.")
    if 0 in image.GetDimensions():
        raise ValueError(f"The volume '{volume.GetName()}' is empty.")


def scene_volumes(scene, class_name: str = "vtkMRMLVolumeNode") -> list:
    """The scene's nodes of ``class_name`` (subclasses included), in scene order."""
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def segmentable_volumes(scene) -> list:
    """The scene's volumes a user can segment: scalar volumes, neither labelmaps nor the
    module's own confidence maps."""
    return [v for v in scene_volumes(scene, "vtkMRMLScalarVolumeNode")
            if not v.IsA("vtkMRMLLabelMapVolumeNode") and not made_by_module(v)]


def module_volume_ids(scene) -> list[str]:
    """IDs of the scene's volumes this module made (its confidence maps), in scene order: what
    the input selector hides."""
    return [v.GetID() for v in scene_volumes(scene) if made_by_module(v)]


def write_volume(volume, path) -> None:
    """Write a volume (its own IJK-to-RAS, without parent transforms) to NRRD/NIfTI."""
    check_input_volume(volume)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)  # faster; the file lives only for this run
    if not storage.WriteData(volume) or not os.path.exists(path):
        raise OSError(f"Could not write the volume '{volume.GetName()}' to {path}.")


def reference_image(volume):
    """A vtkOrientedImageData on the volume's grid, in the coordinates of nodes placed like it.

    The volume's own parent transform is passed so that no transform is applied: a segmentation
    made for the volume sits under that same transform (``place_like_volume``).
    """
    image = _seg_logic().CreateOrientedImageDataFromVolumeNode(volume, volume.GetParentTransformNode())
    # The helper returns a new object with a reference Python does not own; without this the
    # volume's voxels stay allocated for good (Slicer's own scripts release it the same way).
    image.UnRegister(None)
    return image


# -- reading the engine's output ----------------------------------------------------------------
def read_result(path, labels=None):
    """Load an engine result into a scratch scene; returns (scene, segmentation node).

    ``.seg.nrrd`` keeps the names/colours/terminology the engine wrote; a plain labelmap gets
    them from ``labels`` (the model's label table: list of contract.LabelRecord).
    """
    path = str(path)
    scratch = slicer.vtkMRMLScene()
    node = scratch.AddNewNodeByClass("vtkMRMLSegmentationNode")
    if path.endswith(".seg.nrrd"):
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(path)
        if not storage.ReadData(node):
            raise ResultImportError(f"The engine's result {path} could not be read as a segmentation.")
    else:
        labelmap = scratch.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(path)
        if not storage.ReadData(labelmap):
            raise ResultImportError(f"The engine's result {path} could not be read as a labelmap.")
        if not _seg_logic().ImportLabelmapToSegmentationNode(labelmap, node):
            raise ResultImportError(f"The labelmap {path} could not be converted to segments.")
        by_value = {lab.value: lab for lab in (labels or [])}
        segmentation = node.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            lab = by_value.get(segment.GetLabelValue())
            if lab is not None:
                segment.SetName(lab.name)
    if labels:
        # names, colours and codes from the model where the file did not carry them
        by_name = {lab.name: lab for lab in labels}
        segmentation = node.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            lab = by_name.get(segment.GetName())
            if lab is None:
                continue
            # a .seg.nrrd carries the engine's own colours and codes; a labelmap carries none
            # (Slicer gives its segments a generic 'Tissue' code), so the model's are used
            from_labelmap = not path.endswith(".seg.nrrd")
            if from_labelmap:
                segment.SetColor(*lab.color)
            entry = lab.slicer_terminology
            if entry and (from_labelmap or not segment.HasTerminology()):
                segment.SetTerminology(entry)
    return scratch, node


def segment_image(seg_node, segment_id, volume, reference=None):
    """One segment as a 0/1 vtkOrientedImageData resampled onto the volume's grid.

    ``reference``: ``reference_image(volume)`` when the caller already has it (one per import).
    """
    binary = slicer.vtkOrientedImageData()
    if not seg_node.GetBinaryLabelmapRepresentation(segment_id, binary):
        raise ResultImportError(f"Segment {segment_id} has no binary labelmap.")
    out = slicer.vtkOrientedImageData()
    ok = slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        binary, reference if reference is not None else reference_image(volume), out, False, False)
    if not ok:
        raise ResultImportError(f"Segment {segment_id} could not be resampled to the volume's grid.")
    return out


def segment_array(seg_node, segment_id, volume) -> np.ndarray:
    """A segment as a uint8 array (k, j, i) on the volume's voxel grid."""
    image = segment_image(seg_node, segment_id, volume)
    dims = image.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return (scalars.reshape(dims[2], dims[1], dims[0]) > 0).astype(np.uint8)


def set_segment_array(seg_node, segment_id, array_kji: np.ndarray, volume) -> None:
    """Replace a segment's voxels with a 0/1 array (k, j, i) on the volume's grid.

    The scripted equivalent of an edit in Segment Editor (used by scripts and tests).
    """
    reference = reference_image(volume)
    dims = reference.GetDimensions()
    if tuple(array_kji.shape) != (dims[2], dims[1], dims[0]):
        raise ValueError(f"array shape {array_kji.shape} does not match the volume {dims[::-1]}")
    image = slicer.vtkOrientedImageData()
    image.SetExtent(reference.GetExtent())
    matrix = vtk.vtkMatrix4x4()
    reference.GetImageToWorldMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    view = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    view[:] = (np.asarray(array_kji) > 0).astype(np.uint8).ravel()
    image.Modified()
    logic = _seg_logic()
    if not logic.SetBinaryLabelmapToSegment(image, seg_node, segment_id, logic.MODE_REPLACE, image.GetExtent()):
        raise ResultImportError(f"Segment {segment_id} could not be updated.")


def labelmap_array(seg_node, volume, label_of: dict[str, int]) -> tuple[np.ndarray, list[str]]:
    """Segments named in ``label_of`` painted with their values on the volume's grid.

    Returns (array k,j,i, names of segments that overlapped an earlier one).
    """
    dims = volume.GetImageData().GetDimensions()
    out = np.zeros((dims[2], dims[1], dims[0]), dtype=np.uint16 if max(label_of.values(), default=0) > 255 else np.uint8)
    overlaps = []
    segmentation = seg_node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        sid = segmentation.GetNthSegmentID(i)
        name = segmentation.GetSegment(sid).GetName()
        if name not in label_of:
            continue
        mask = segment_array(seg_node, sid, volume).astype(bool)
        if np.any(out[mask]):
            overlaps.append(name)
        out[mask] = label_of[name]
    return out, overlaps


# -- putting results into the scene -------------------------------------------------------------
@dataclass
class ImportReport:
    node: object = None
    created_node: bool = False
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    confidence_map: object = None  # the confidence map volume, when the run wrote one

    def text(self) -> str:
        parts = []
        for title, names in (("added", self.added), ("updated", self.replaced),
                             ("kept as they were", self.kept), ("empty (not found)", self.empty)):
            if names:
                parts.append(f"{title}: {', '.join(names)}")
        return "; ".join(parts) or "no segments"


def find_segment_by_name(segmentation, name: str) -> str | None:
    for i in range(segmentation.GetNumberOfSegments()):
        sid = segmentation.GetNthSegmentID(i)
        if segmentation.GetSegment(sid).GetName() == name:
            return sid
    return None


def place_like_volume(scene, node, volume) -> None:
    """Same parent transform as the volume; in the subject hierarchy under its study/parent."""
    node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return
    volume_item = sh.GetItemByDataNode(volume)
    parent = sh.GetItemParent(volume_item) if volume_item else sh.GetSceneItemID()
    node_item = sh.GetItemByDataNode(node)
    if not node_item:  # the app's plugins create items for new nodes; headless we do it
        sh.CreateItem(parent or sh.GetSceneItemID(), node)
    elif parent:
        sh.SetItemParent(node_item, parent)


def in_scene(scene, node) -> bool:
    """``node`` is still one of ``scene``'s nodes (a user may delete it while the engine runs)."""
    return node is not None and bool(scene.IsNodePresent(node))


def placement_problem(target, volume) -> str | None:
    """Why segments written into ``target`` would not land on ``volume`` (None: they would).

    Results are on the volume's grid in the coordinates of its parent transform; an existing
    segmentation with segments under another transform would show them somewhere else."""
    if target.GetTransformNodeID() == volume.GetTransformNodeID():
        return None
    if target.GetSegmentation().GetNumberOfSegments() == 0:
        return None  # nothing of the user's to move: it is placed like the volume on import

    def where(node):
        transform = node.GetParentTransformNode()
        return f"under the transform '{transform.GetName()}'" if transform else "under no transform"
    return (f"The segmentation '{target.GetName()}' is {where(target)} but the volume "
            f"'{volume.GetName()}' is {where(volume)}: the results would land in the wrong place. "
            "Choose 'Create new segmentation' as output, or put both under the same transform "
            "(Data module).")


def new_segmentation_node(scene, volume, name: str | None = None):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                   scene.GenerateUniqueName(name or f"{volume.GetName()} segmentation"))
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    place_like_volume(scene, node, volume)
    return node


def collapse_layers_safely(segmentation, volume, reference=None) -> bool:
    """Merge labelmap layers where segments do not overlap, but only when every layer is on the
    volume's grid: merging layers of another geometry would resample (alter) the user's voxels.
    """
    reference = reference if reference is not None else reference_image(volume)
    for i in range(segmentation.GetNumberOfLayers()):
        layer = segmentation.GetLayerDataObject(i)
        if layer is None or not slicer.vtkOrientedImageDataResample.DoGeometriesMatch(layer, reference):
            return False
    segmentation.CollapseBinaryLabelmaps(False)
    return True


def import_result(scene, volume, result_path, target=None, labels=None, replace_existing=True,
                  name=None, show_3d=False, confidence=None) -> ImportReport:
    """Bring one engine result into ``target`` (or a new node). See the module docstring.

    ``replace_existing``: True updates segments of the same name with the model's output;
    False keeps them exactly as they are (only missing structures are added).
    ``confidence``: the ``structures`` of the summary's confidence section (name -> scores),
    used where the result file carries no confidence tags.
    """
    scratch, source = read_result(result_path, labels)
    report = ImportReport()
    src = source.GetSegmentation()
    segments = []
    for i in range(src.GetNumberOfSegments()):
        sid = src.GetNthSegmentID(i)
        segments.append((sid, src.GetSegment(sid)))
    # Everything that can fail happens before the scene is touched.
    problem = placement_problem(target, volume) if target is not None else None
    if problem:
        raise ResultImportError(problem)
    reference = reference_image(volume)
    images = {sid: segment_image(source, sid, volume, reference) for sid, _ in segments}

    if target is None:
        target = new_segmentation_node(scene, volume, name)
        report.created_node = True
    elif target.GetSegmentation().GetNumberOfSegments() == 0:
        target.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        place_like_volume(scene, target, volume)
    if target.GetDisplayNode() is None:
        target.CreateDefaultDisplayNodes()
    report.node = target
    dest = target.GetSegmentation()
    was_modifying = target.StartModify()
    try:
        for sid, seg in segments:
            segment_name = seg.GetName()
            existing = find_segment_by_name(dest, segment_name)
            if existing is not None and not replace_existing:
                report.kept.append(segment_name)
                continue
            new = slicer.vtkSegment()
            new.SetName(segment_name)
            new.SetColor(*seg.GetColor())
            if seg.HasTerminology():
                new.SetTerminology(seg.GetTerminology())
            copy_confidence(seg, new, (confidence or {}).get(segment_name))
            new.AddRepresentation(BINARY, images[sid])
            new.SetLabelValue(1)
            scalars = images[sid].GetPointData().GetScalars()
            if scalars is None or scalars.GetRange()[1] <= 0:
                report.empty.append(segment_name)
            if existing is None:
                dest.AddSegment(new)
                report.added.append(segment_name)
            else:
                old = dest.GetSegment(existing)
                new.SetColor(*old.GetColor())  # a colour the user chose stays
                if old.HasTerminology():
                    new.SetTerminology(old.GetTerminology())
                index = dest.GetSegmentIndex(existing)
                after = dest.GetNthSegmentID(index + 1) if index + 1 < dest.GetNumberOfSegments() else ""
                dest.RemoveSegment(existing)
                dest.AddSegment(new, existing, after)
                report.replaced.append(segment_name)
        collapse_layers_safely(dest, volume, reference)
    finally:
        target.EndModify(was_modifying)
    if show_3d:
        target.CreateClosedSurfaceRepresentation()
    del scratch
    return report
