"""Export reviewed cases for retraining, in nnU-Net v2's raw dataset layout.

    DATASET/imagesTr/<case>_0000.nii.gz   the volume (one channel)
    DATASET/labelsTr/<case>.nii.gz        the segmentation as one labelmap on the volume's grid
    DATASET/dataset.json                  channel_names, labels, numTraining, file_ending

Label values come from the model's label table: segments are mapped back to values by name.
Segments whose name is not in the table are reported and left out; a case name already in the
dataset is never reused silently (the new case gets a suffix and the report says so).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer

from .engine import safe_case_name
from .scene import check_input_volume, labelmap_array, reference_image

FILE_ENDING = ".nii.gz"


class ExportError(Exception):
    """The case could not be exported; nothing was written (message for the user)."""


@dataclass
class ExportReport:
    case: str
    image: Path
    label: Path
    requested_case: str = ""
    exported_segments: list[str] = field(default_factory=list)
    unknown_segments: list[str] = field(default_factory=list)
    missing_labels: list[str] = field(default_factory=list)
    overlapping_segments: list[str] = field(default_factory=list)
    num_training: int = 0

    @property
    def renamed(self) -> bool:
        return bool(self.requested_case) and self.requested_case != self.case

    def text(self) -> str:
        lines = [f"Exported case '{self.case}' ({len(self.exported_segments)} segments) — the "
                 f"dataset now has {self.num_training} training cases."]
        if self.renamed:
            lines.append(f"The name '{self.requested_case}' was already used in the dataset; "
                         f"this case was saved as '{self.case}'.")
        if self.unknown_segments:
            lines.append("Not in the model's label table, left out: " + ", ".join(self.unknown_segments))
        if self.missing_labels:
            lines.append("No segment for (exported as background): " + ", ".join(self.missing_labels))
        if self.overlapping_segments:
            lines.append("Overlapping segments (the later one wins): " + ", ".join(self.overlapping_segments))
        return "\n".join(lines)


def volume_geometry_lps(volume):
    """(origin, spacing, direction) in ITK's LPS convention from the volume's IJK-to-RAS."""
    m = vtk_matrix_to_numpy(volume)
    columns = m[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    direction = columns / spacing
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    return (tuple(ras_to_lps @ m[:3, 3]), tuple(float(s) for s in spacing),
            tuple((ras_to_lps @ direction).ravel()))


def vtk_matrix_to_numpy(volume) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def array_to_itk(array_kji: np.ndarray, volume) -> sitk.Image:
    image = sitk.GetImageFromArray(array_kji)
    origin, spacing, direction = volume_geometry_lps(volume)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def check_pairing(volume, seg_node) -> None:
    """Refuse a segmentation that was not made for ``volume`` (it would be exported resampled
    onto a grid it does not belong to).

    It belongs when its reference geometry volume is this volume or, for segmentations without
    such a reference (loaded from a file), when its reference geometry is this volume's grid.
    """
    what = f"The segmentation '{seg_node.GetName()}'"
    reference = seg_node.GetNodeReference(seg_node.GetReferenceImageGeometryReferenceRole())
    if reference is not None:
        if reference.GetID() != volume.GetID():
            raise ExportError(f"{what} belongs to the volume '{reference.GetName()}', not to "
                              f"'{volume.GetName()}'; choose the segmentation of '{volume.GetName()}' "
                              "or that volume as input.")
        return
    geometry = seg_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    grid = slicer.vtkOrientedImageData()
    if not geometry or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, grid, False):
        raise ExportError(f"{what} has no reference geometry, so it cannot be told whether it "
                          f"belongs to '{volume.GetName()}'; open it in Segment Editor with "
                          f"'{volume.GetName()}' as source volume first.")
    if not slicer.vtkOrientedImageDataResample.DoGeometriesMatch(grid, reference_image(volume)):
        raise ExportError(f"{what} was made on another grid than the volume '{volume.GetName()}' "
                          "(origin, spacing, axes or size differ); it belongs to another volume. "
                          f"Choose the segmentation of '{volume.GetName()}'.")


class NnUNetDatasetExporter:
    """Append cases to an nnU-Net raw dataset folder (created on first export)."""

    def __init__(self, dataset_dir, label_table: dict[str, int], channel_name: str = "CT",
                 dataset_name: str | None = None):
        self.dataset_dir = Path(dataset_dir)
        self.label_table = {str(k): int(v) for k, v in label_table.items() if int(v) != 0}
        self.channel_name = channel_name or "CT"
        self.dataset_name = dataset_name or self.dataset_dir.name
        values = sorted(self.label_table.values())
        if not values:
            raise ExportError("The model has no labels to export.")
        if values != list(range(1, len(values) + 1)) or len(set(values)) != len(values):
            raise ExportError(
                "nnU-Net needs label values 1, 2, 3, ... without gaps; this label table has "
                f"{values}. Export with a model whose labels are consecutive.")

    @property
    def images_dir(self) -> Path:
        return self.dataset_dir / "imagesTr"

    @property
    def labels_dir(self) -> Path:
        return self.dataset_dir / "labelsTr"

    def _labels_json(self) -> dict:
        labels = {"background": 0}
        for name, value in sorted(self.label_table.items(), key=lambda kv: kv[1]):
            labels[name] = value
        return labels

    def _read_dataset_json(self) -> dict | None:
        path = self.dataset_dir / "dataset.json"
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ExportError(f"{path} exists but cannot be read ({e}); fix or move it first.") from None
        existing = {k: int(v) for k, v in data.get("labels", {}).items()}
        if existing != self._labels_json():
            raise ExportError(
                f"{path} was made with other labels ({existing}); the current model has "
                f"{self._labels_json()}. Choose another dataset folder or the matching model.")
        if data.get("file_ending", FILE_ENDING) != FILE_ENDING:
            raise ExportError(f"{path} uses file ending {data.get('file_ending')!r}; "
                              f"this exporter writes {FILE_ENDING}. Choose another folder.")
        return data

    def case_taken(self, case: str) -> bool:
        return ((self.images_dir / f"{case}_0000{FILE_ENDING}").exists()
                or (self.labels_dir / f"{case}{FILE_ENDING}").exists())

    def unique_case_name(self, requested: str) -> str:
        base = safe_case_name(requested)
        case, n = base, 2
        while self.case_taken(case):
            case, n = f"{base}_{n:03d}", n + 1
        return case

    def export_case(self, volume, seg_node, case_name: str | None = None) -> ExportReport:
        """Write one training case; returns a report (unknown segments, renamed case, ...)."""
        check_input_volume(volume)
        if seg_node is None:
            raise ExportError("Choose the reviewed segmentation of the volume to export.")
        if seg_node.GetSegmentation().GetNumberOfSegments() == 0:
            raise ExportError("The segmentation is empty; there is nothing to export.")
        check_pairing(volume, seg_node)
        data = self._read_dataset_json()

        segmentation = seg_node.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        known = [n for n in names if n in self.label_table]
        unknown = [n for n in names if n not in self.label_table]
        if not known:
            raise ExportError(
                "None of the segments (" + ", ".join(names) + ") is in the model's label table ("
                + ", ".join(self.label_table) + "); rename them to the model's names to export.")

        labels, overlaps = labelmap_array(seg_node, volume, self.label_table)
        image = slicer.util.arrayFromVolume(volume).copy()

        requested = case_name or volume.GetName()
        case = self.unique_case_name(requested)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.labels_dir.mkdir(parents=True, exist_ok=True)
        partial = self.dataset_dir / ".partial"
        partial.mkdir(exist_ok=True)
        image_path = self.images_dir / f"{case}_0000{FILE_ENDING}"
        label_path = self.labels_dir / f"{case}{FILE_ENDING}"
        try:
            # write beside, then move: an interrupted export leaves no half case in the dataset
            tmp_image = partial / image_path.name
            tmp_label = partial / label_path.name
            sitk.WriteImage(array_to_itk(image, volume), str(tmp_image), True)
            sitk.WriteImage(array_to_itk(labels, volume), str(tmp_label), True)
            os.replace(tmp_label, label_path)
            os.replace(tmp_image, image_path)
        finally:
            shutil.rmtree(partial, ignore_errors=True)

        num_training = len(list(self.labels_dir.glob(f"*{FILE_ENDING}")))
        data = data or {
            "name": self.dataset_name,
            "description": "Cases exported from 3D Slicer (LKMSegment) for training or fine-tuning.",
            "channel_names": {"0": self.channel_name},
            "labels": self._labels_json(),
            "file_ending": FILE_ENDING,
        }
        data["numTraining"] = num_training
        tmp_json = self.dataset_dir / "dataset.json.tmp"
        tmp_json.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp_json, self.dataset_dir / "dataset.json")

        return ExportReport(
            case=case, image=image_path, label=label_path, requested_case=safe_case_name(requested),
            exported_segments=known, unknown_segments=unknown,
            missing_labels=[n for n in self.label_table if n not in names],
            overlapping_segments=overlaps, num_training=num_training)
