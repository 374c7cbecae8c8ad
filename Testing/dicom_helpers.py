"""Real DICOM for the DICOM tests: the public CT series of the sample data (UIDs restored where
its anonymiser blanked them), series written with SimpleITK's DICOM writer from real volumes,
and the checks (pydicom read-back, dciodvfy) applied to what the engine writes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def uid(name: str) -> str:
    """A stable UID for a test object (same name, same UID)."""
    return generate_uid(entropy_srcs=[name])


def restore_uids(source: Path, dest: Path, name: str = "ct", series_number: int = 3) -> Path:
    """Copy the sample's CT series, putting back what its anonymiser blanked and nothing can
    recover: Study and Series Instance UIDs (new, stable) and a Series Number. The SOP Instance
    and Class UIDs stay blank in the data sets, as published (the engine takes them from the file
    meta); every other attribute and the pixel data stay as they were."""
    dest.mkdir(parents=True)
    for path in sorted(Path(source).iterdir()):
        ds = pydicom.dcmread(str(path))
        assert ds.SOPInstanceUID == "" and ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = uid(name + "-study")
        ds.SeriesInstanceUID = uid(name + "-series")
        ds.SeriesNumber = series_number
        ds.save_as(str(dest / path.name))
    return dest


def write_series(image: sitk.Image, folder: Path, *, modality="MR", name="mr", series_number=7,
                 study_uid=None, frame_of_reference_uid=None, tags=None) -> Path:
    """One file per slice with SimpleITK's DICOM writer (GDCM), the image's geometry in Image
    Position/Orientation (Patient), int16 with rescale slope 1, intercept 0."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    common = {
        "0008|0016": MR_IMAGE_STORAGE if modality == "MR" else CT_IMAGE_STORAGE,
        "0008|0060": modality, "0010|0010": "Test^Patient", "0010|0020": "TEST-ID-0001",
        "0020|000d": study_uid or uid(name + "-study"), "0020|000e": uid(name + "-series"),
        "0020|0011": str(series_number), "0020|0052": frame_of_reference_uid or uid(name + "-for"),
        "0020|0037": orientation, "0028|1053": "1", "0028|1052": "0",
        "0008|103e": f"{modality} test series",
    }
    common.update(tags or {})
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        for tag, value in common.items():
            s.SetMetaData(tag, value)
        s.SetMetaData("0008|0018", uid(f"{name}-{k}"))
        s.SetMetaData("0020|0013", str(k + 1))
        s.SetMetaData("0020|0032", "\\".join(
            f"{v:.10g}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        writer.SetFileName(str(folder / f"IM{k:04d}.dcm"))
        writer.Execute(s)
    return folder


def dciodvfy(path) -> tuple:
    """(error lines, full output) of dicom3tools' validator."""
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    output = (done.stdout + done.stderr).strip()
    return [line for line in output.splitlines() if line.startswith("Error")], output


def masks_by_source_instance(seg_path) -> dict:
    """pydicom only: {(referenced SOP Instance UID, segment number): 2D mask}, from each frame's
    Derivation Image and Segment Identification sequences."""
    ds = pydicom.dcmread(str(seg_path))
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    out = {}
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[(str(source), segment)] = frame.astype(bool)
    return out
