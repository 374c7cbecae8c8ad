"""DICOM in: a folder tree (a study, several studies, a PACS export) split into image series.

Every file is read with pydicom, headers only. Files are grouped into series by Series Instance
UID, wherever they lie under the folder (a series split into nested folders is one series). Each
scalar CT/MR series of single-frame images is one case; every other object is listed as
skipped with the reason (localisers, SEG, RTSTRUCT, SR, colour, multi-frame, other modalities).
A series whose slices do not form one regular volume (missing slices, mixed spacing, several
orientations, several images at one position, a tilted stack) is kept as a case that is refused
with a message saying which, when it is read, so the rest of the batch goes on.

Case names come from the modality, the Series Number and a hash of the Series Instance UID
(``CT_s3_1a2b3c4d5e``): unique, stable between runs, and free of patient data (no names, IDs,
dates or folder names).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, ResourceError

log = logging.getLogger(__name__)

SEGMENTED_MODALITIES = ("CT", "MR")
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
# SOP class UID prefixes of objects that are never image volumes, with the reason shown
NON_IMAGE_CLASSES = (
    ("1.2.840.10008.5.1.4.1.1.66", "a segmentation or registration object"),   # SEG, REG, ...
    ("1.2.840.10008.5.1.4.1.1.481", "a radiotherapy object"),                  # RTSTRUCT, RTDOSE
    ("1.2.840.10008.5.1.4.1.1.88", "a structured report"),                     # SR
    ("1.2.840.10008.5.1.4.1.1.11", "a presentation state"),
    ("1.2.840.10008.5.1.4.1.1.104", "an encapsulated document"),
)
# tolerances: positions in mm, direction cosines, relative spacing
POSITION_TOL_MM = 0.01
# the only attributes the scan reads (less time and memory on studies of thousands of files)
SCAN_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
             "FrameOfReferenceUID", "SeriesNumber", "Modality", "ImageType", "Rows", "Columns",
             "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames", "PixelSpacing",
             "ImagePositionPatient", "ImageOrientationPatient"]
ORIENTATION_TOL = 1e-4
SPACING_REL_TOL = 0.01


@dataclass(frozen=True)
class DicomSeries:
    """One image series: its files sorted along the slice normal (the volume's k order)."""

    name: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    series_number: int | None
    modality: str
    files: tuple = field(repr=False)
    sop_instance_uids: tuple = field(repr=False)   # same order as ``files``
    problem: str | None = None     # why the series cannot be one volume (refused when read)

    @property
    def folder(self) -> Path:
        return Path(os.path.commonpath([str(Path(f).parent) for f in self.files]))

    def __str__(self) -> str:
        number = f" {self.series_number}" if self.series_number is not None else ""
        return f"the {self.modality} series{number} ({len(self.files)} files in {self.folder})"


@dataclass(frozen=True)
class Skipped:
    """DICOM objects that are not segmented, with the reason."""

    name: str
    series_uid: str
    modality: str
    files: int
    folder: str
    reason: str


@dataclass
class Scan:
    series: list = field(default_factory=list)     # DicomSeries
    skipped: list = field(default_factory=list)    # Skipped
    non_dicom: int = 0


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:
        raise ResourceError("Reading DICOM folders needs pydicom: pip install pydicom "
                            "(or pip install \"lkm_core[dicom]\").") from exc
    return pydicom


def series_case_name(modality: str, series_number, series_uid: str) -> str:
    """``CT_s3_<10 hex>``: from the modality, the Series Number and a hash of the Series Instance
    UID, so names never collide and say nothing about the patient."""
    digest = hashlib.sha256(series_uid.encode("utf-8")).hexdigest()[:10]
    number = f"_s{series_number}" if series_number is not None else ""
    return f"{modality or 'OT'}{number}_{digest}"


# ------------------------------------------------------------------------------------------------
def scan_folder(folder, modality: str | None = None) -> Scan:
    """Every DICOM series under ``folder`` (recursively). ``modality`` ("CT"/"MR"): the model's;
    series of another modality are skipped. Image files with non-DICOM suffixes are ignored."""
    from ..contract import is_image_file

    pydicom = _pydicom()
    scan = Scan()
    groups = defaultdict(list)   # key -> [(path, dataset)]
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file() or path.name.startswith(".") or is_image_file(path):
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=SCAN_TAGS)
        except Exception:  # not DICOM (pydicom raises several types): not ours to judge
            scan.non_dicom += 1
            continue
        groups[_series_key(ds)].append((path, ds))
    if scan.non_dicom:
        log.info("%s: %d file(s) are not DICOM and were ignored", folder, scan.non_dicom)
    for key, members in groups.items():
        _classify(key, members, modality, scan)
    scan.series.sort(key=lambda s: s.name)
    scan.skipped.sort(key=lambda s: (s.name, s.reason))
    return scan


def _uid(ds, keyword, meta_keyword=None) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value and meta_keyword and hasattr(ds, "file_meta"):
        # anonymisers sometimes blank the data set's UID; the file meta keeps the same value
        value = str(ds.file_meta.get(meta_keyword, "") or "").strip()
    return value


def sop_instance_uid(ds) -> str:
    return _uid(ds, "SOPInstanceUID", "MediaStorageSOPInstanceUID")


def sop_class_uid(ds) -> str:
    return _uid(ds, "SOPClassUID", "MediaStorageSOPClassUID")


def _series_number(ds):
    try:
        return int(ds.get("SeriesNumber")) if ds.get("SeriesNumber") not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _series_key(ds) -> tuple:
    uid = _uid(ds, "SeriesInstanceUID")
    if uid:
        return (uid,)
    # no Series Instance UID (over-eager anonymisers): frame of reference + number + modality
    return ("", _uid(ds, "FrameOfReferenceUID"), _series_number(ds), str(ds.get("Modality", "")))


def _file_problem(ds, modality: str | None) -> str | None:
    """Why this file is not a slice of a segmentable volume, or None."""
    sop_class = sop_class_uid(ds)
    if sop_class == DICOMDIR_CLASS:
        return "a DICOMDIR (an index of the files, not an image)"
    for prefix, reason in NON_IMAGE_CLASSES:
        if sop_class.startswith(prefix + ".") or sop_class == prefix:
            return f"{reason} ({_class_name(sop_class)})"
    if "Rows" not in ds or "Columns" not in ds:
        return f"not an image ({_class_name(sop_class)})"
    mod = str(ds.get("Modality", "")).upper()
    if mod not in SEGMENTED_MODALITIES:
        return f"modality {mod or 'not given'}: only CT and MR series are segmented"
    if modality and mod != modality.upper():
        return f"modality {mod}, but the model segments {modality.upper()}"
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        return f"a colour image ({samples} samples per pixel, {ds.get('PhotometricInterpretation')})"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        return (f"a multi-frame object ({frames} frames in one file), which this reader cannot "
                "split; export the series as single-frame images")
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return "a localiser (scout)"
    if ds.get("ImagePositionPatient") is None or ds.get("ImageOrientationPatient") is None:
        return "an image without patient position/orientation (not part of a volume)"
    return None


def _class_name(uid: str) -> str:
    if not uid:
        return "no SOP Class UID"
    from pydicom.uid import UID
    name = UID(uid).name
    return name if name and name != uid else f"SOP class {uid}"


def _classify(key, members, modality, scan: Scan) -> None:
    first = members[0][1]
    series_uid = key[0]
    number = _series_number(first)
    mod = str(first.get("Modality", "")).upper()
    if not series_uid:
        log.warning("%d DICOM file(s) without a Series Instance UID (e.g. %s): grouped by frame "
                    "of reference, series number and modality", len(members), members[0][0])
        series_uid_for_name = "|".join([str(k) for k in key] + sorted(
            sop_instance_uid(ds) for _, ds in members))
    else:
        series_uid_for_name = series_uid
    name = series_case_name(mod, number, series_uid_for_name)
    by_reason = defaultdict(list)
    images = []
    for path, ds in members:
        problem = _file_problem(ds, modality)
        (by_reason[problem].append(path) if problem else images.append((path, ds)))
    for reason, paths in by_reason.items():
        folder = os.path.commonpath([str(p.parent) for p in paths])
        scan.skipped.append(Skipped(name, series_uid, mod, len(paths), folder, reason))
        log.info("skipped %d file(s) of series %s in %s: %s", len(paths), name, folder, reason)
    if not images:
        return
    ordered, problem = _order_slices(images)
    scan.series.append(DicomSeries(
        name=name, series_uid=series_uid, study_uid=_uid(first, "StudyInstanceUID"),
        frame_of_reference_uid=_uid(first, "FrameOfReferenceUID"), series_number=number,
        modality=mod, files=tuple(str(p) for p, _ in ordered),
        sop_instance_uids=tuple(sop_instance_uid(ds) for _, ds in ordered), problem=problem))


def _order_slices(images):
    """Sort slices along their normal; return (sorted, problem or None)."""

    def floats(ds, keyword):
        return np.array([float(v) for v in ds.get(keyword)], dtype=float)

    orientations = [floats(ds, "ImageOrientationPatient") for _, ds in images]
    distinct = []
    for o in orientations:
        if not any(np.allclose(o, d, atol=ORIENTATION_TOL) for d in distinct):
            distinct.append(o)
    if len(distinct) > 1:
        return images, (f"it holds slices in {len(distinct)} different orientations (Image "
                        "Orientation (Patient)); each orientation must be its own series")
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in images}
    if len(sizes) > 1:
        return images, f"its slices have different sizes {sorted(sizes)}"
    pixel = [floats(ds, "PixelSpacing") if ds.get("PixelSpacing") else np.ones(2)
             for _, ds in images]
    if any(not np.allclose(p, pixel[0], rtol=SPACING_REL_TOL, atol=0) for p in pixel):
        return images, "its slices have different pixel spacings"
    row, col = distinct[0][:3], distinct[0][3:]
    normal = np.cross(row, col)
    positions = np.array([floats(ds, "ImagePositionPatient") for _, ds in images])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    images = [images[i] for i in order]
    along, positions = along[order], positions[order]
    if len(images) < 2:
        return images, None
    gaps = np.diff(along)
    if gaps.min() < POSITION_TOL_MM:
        at = along[1:][gaps < POSITION_TOL_MM][0]
        return images, (f"several images lie at the same slice position ({at:.2f} mm along the "
                        "normal): the series holds more than one volume (time points, echoes or "
                        "reconstructions); split it into one series per volume")
    offsets = positions - np.outer(along, normal)      # in-plane part of each position
    drift = np.linalg.norm(offsets - offsets[0], axis=1).max()
    if drift > 0.5 * float(min(pixel[0])):
        angle = np.degrees(np.arctan2(drift, along[-1] - along[0]))
        return images, (f"its slices are not stacked along their normal (shifted by {drift:.1f} "
                        f"mm, a gantry tilt of about {angle:.1f} degrees); resample it first")
    base = float(gaps.min())
    tolerance = max(POSITION_TOL_MM, SPACING_REL_TOL * base)
    multiples = np.round(gaps / base)
    if np.all(np.abs(gaps - base) <= tolerance):
        return images, None
    if np.all(np.abs(gaps - multiples * base) <= tolerance * multiples):
        big = np.nonzero(multiples >= 2)[0]
        i = int(big[0])
        return images, (f"{int(sum(multiples[big] - 1))} slice(s) are missing: the gap between "
                        f"the slices at {along[i]:.2f} and {along[i + 1]:.2f} mm is "
                        f"{gaps[i]:.2f} mm where the spacing is {base:.2f} mm ({len(big)} gap(s) "
                        "in all); export the complete series")
    values = ", ".join(f"{g:.2f}" for g in sorted(set(np.round(gaps, 2)))[:6])
    return images, (f"its slice spacing is mixed (gaps of {values} mm between neighbouring "
                    "slices); resample it to one spacing first")


# ------------------------------------------------------------------------------------------------
def read_series(series: DicomSeries) -> sitk.Image:
    """The series as one volume (k = the files' order). Refuses a series with a problem."""
    if series.problem:
        raise InputError(f"Refused {series}: {series.problem}.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
        raise InputError(f"Could not read {series} ({last}). Check that the files are complete "
                         "images (and, for compressed transfer syntaxes, readable by GDCM).") from exc
    return image


# describe()'s keys that can lead back to a patient (the folder name, the UIDs): written only
# with --keep-paths
IDENTIFYING_DICOM_KEYS = ("series_instance_uid", "study_instance_uid", "frame_of_reference_uid",
                          "folder")


def describe(series: DicomSeries) -> dict:
    """What the JSON summary records about the source (no patient name or ID; the UIDs and the
    folder are :data:`IDENTIFYING_DICOM_KEYS`)."""
    return {"series_instance_uid": series.series_uid, "study_instance_uid": series.study_uid,
            "frame_of_reference_uid": series.frame_of_reference_uid,
            "series_number": series.series_number, "modality": series.modality,
            "files": len(series.files), "folder": str(series.folder)}
