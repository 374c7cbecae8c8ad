"""DICOM SEG out: one DICOM Segmentation object per case, written with highdicom.

The SEG is a new series in the source's study, on its Frame of Reference, and every frame points
to the source slice it was derived from (Derivation Image Sequence: the source SOP Instance). It
is BINARY, one segment per structure of the model (label, colour, SNOMED CT category and type,
with the laterality as a type modifier), algorithm type AUTOMATIC with the model's name and
version. Frames that are empty are left out (as highdicom does by default); a structure the model
did not find is still described, with no frames. With the review scores (``confidence``) each
segment's standard Segment Description (0062,0006) says them, e.g. ``LKM confidence 0.8312``,
``LKM confidence 0.4100, flagged for review`` or ``LKM not found, check it is absent``.
Written under a temporary name and renamed.

highdicom is an optional dependency: ``pip install "lkm_core[dicom]"``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..contract import DICOM_SEG_FORMAT, OUTPUT_FORMATS
from ..inputs.dicom_series import DicomSeries, sop_class_uid, sop_instance_uid
from ..errors import InputError, ResourceError
from ..files import atomic_path

log = logging.getLogger(__name__)

FORMAT = DICOM_SEG_FORMAT                 # the --format choice
SUFFIX = OUTPUT_FORMATS[DICOM_SEG_FORMAT]  # the file written per case
MANUFACTURER = "LKMSegment"
SERIES_NUMBER_OFFSET = 1000   # SEG series number = source series number + this
POSITION_TOL_MM = 0.01


def require_highdicom():
    """Import highdicom or say how to install it."""
    try:
        import highdicom
    except ImportError as exc:
        raise ResourceError("Writing DICOM SEG needs highdicom, which is not installed: "
                            "pip install \"lkm_core[dicom]\" (or pip install highdicom).") from exc
    return highdicom


def check_source(source) -> DicomSeries:
    """The source must be a DICOM series with the UIDs a SEG references."""
    if not isinstance(source, DicomSeries):
        raise InputError(f"{source} is not a DICOM series: a DICOM SEG references its source "
                         "images, so --format dicom-seg needs DICOM input. Use --format seg.nrrd "
                         "(or nii.gz/nrrd) for other images.")
    missing = [what for what, value in (("Study Instance UID", source.study_uid),
                                        ("Series Instance UID", source.series_uid),
                                        ("Frame of Reference UID", source.frame_of_reference_uid))
               if not value]
    if not all(source.sop_instance_uids):
        missing.append("SOP Instance UIDs")
    if missing:
        raise InputError(f"{_capital(source)} has no {' and no '.join(missing)} (blanked by an "
                         "anonymiser?); a DICOM SEG must reference them. Restore them, or write "
                         "--format seg.nrrd.")
    return source


def _capital(thing) -> str:
    text = str(thing)
    return text[:1].upper() + text[1:]


def _source_datasets(source: DicomSeries) -> list:
    import pydicom
    datasets = []
    for path in source.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        # what the series scan used (the file meta's values where the data set's were blanked)
        ds.SOPInstanceUID = sop_instance_uid(ds)
        ds.SOPClassUID = sop_class_uid(ds)
        datasets.append(ds)
    return datasets


def _check_grid(labels: sitk.Image, datasets: list, source: DicomSeries) -> None:
    """The labels must lie on the source slices, k for k (they come back on the input grid)."""
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if labels.GetDimension() != 3 or tuple(labels.GetSize()) != (cols, rows, len(datasets)):
        raise InputError(f"The labels ({'x'.join(map(str, labels.GetSize()))}) do not match "
                         f"{source} ({cols}x{rows}x{len(datasets)}); cannot write a DICOM SEG.")
    direction = np.array(labels.GetDirection()).reshape(3, 3)
    row_col = np.concatenate([direction[:, 0], direction[:, 1]])   # DICOM's row, column cosines
    if not np.allclose(row_col, [float(v) for v in datasets[0].ImageOrientationPatient],
                       atol=1e-4):
        raise InputError(f"The labels are not oriented like {source}; cannot write a DICOM SEG.")
    for k, ds in enumerate(datasets):
        point = np.array(labels.TransformIndexToPhysicalPoint((0, 0, k)))
        if not np.allclose(point, [float(v) for v in ds.ImagePositionPatient],
                           atol=POSITION_TOL_MM):
            raise InputError(f"Slice {k} of the labels is not at the position of the source "
                             f"slice {Path(source.files[k]).name}; cannot write a DICOM SEG.")


def _code(entry: dict):
    from highdicom.sr import CodedConcept
    return CodedConcept(value=str(entry["code"]), scheme_designator=str(entry["scheme"]),
                        meaning=str(entry["meaning"])[:64])


def review_text(scored: dict | None) -> str | None:
    """The Segment Description text for a structure's review scores (None: not scored)."""
    if not scored:
        return None
    if scored.get("found") is False:
        return "LKM not found, check it is absent"
    if scored.get("score") is None:
        return None
    flag = ", flagged for review" if scored.get("flagged") else ""
    return f"LKM confidence {float(scored['score']):.4f}{flag}"


def segment_descriptions(label_list, bundle, confidence: dict | None = None) -> list:
    """One highdicom SegmentDescription per label, numbered 1..n in label order; ``confidence``
    (the predictor's ``Result.confidence``) puts each structure's score in its description."""
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=bundle.name[:64], family=codes.cid7162.ArtificialIntelligence,
        version=bundle.version[:64])
    out = []
    for number, lab in enumerate(label_list, start=1):
        rgb = [int(round(255 * min(max(float(c), 0.0), 1.0))) for c in lab.color]
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=lab.name[:64],
            segmented_property_category=_code(lab.terminology["category"]),
            segmented_property_type=_code(lab.terminology["type"]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*rgb))
        modifier = lab.terminology.get("modifier")
        if modifier:  # laterality: a modifier of the property type (highdicom has no argument)
            description.SegmentedPropertyTypeCodeSequence[0] \
                .SegmentedPropertyTypeModifierCodeSequence = [_code(modifier)]
        text = review_text((confidence or {}).get("structures", {}).get(lab.name))
        if text:  # a standard type 3 attribute (LO): any DICOM viewer shows it
            description.SegmentDescription = text[:64]
        out.append(description)
    return out


def build_segmentation(labels: sitk.Image, label_list, source, bundle,
                       confidence: dict | None = None):
    """The highdicom Segmentation for ``labels`` (on the source series' grid)."""
    hd = require_highdicom()
    import pydicom
    from .. import __version__

    source = check_source(source)
    if not label_list:
        raise InputError(f"No structures to write for {source}.")
    datasets = _source_datasets(source)
    _check_grid(labels, datasets, source)
    voxels = sitk.GetArrayViewFromImage(labels)             # (k, rows, cols) = frame order
    lut = np.zeros(max(int(voxels.max(initial=0)), max(lab.value for lab in label_list)) + 1,
                   dtype=np.uint8)
    for number, lab in enumerate(label_list, start=1):
        lut[lab.value] = number                              # label value -> segment number
    segments = lut[voxels]
    description = f"{bundle.name} {bundle.version}" + ("" if bundle.trained else " UNTRAINED")
    number = (source.series_number or 0) + SERIES_NUMBER_OFFSET
    for ds in datasets:
        # Slice Thickness is type 2 (may be absent or empty) but highdicom reads it for the
        # SEG's pixel measures: fall back to the slice spacing, in memory only
        if not ds.get("SliceThickness"):
            ds.SliceThickness = round(float(labels.GetSpacing()[2]), 6)
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(label_list, bundle, confidence),
        series_instance_uid=pydicom.uid.generate_uid(), series_number=number,
        sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=bundle.name[:64],
        software_versions=f"lkm_core {__version__}", device_serial_number=bundle.version[:64],
        content_label="LKMSEG", content_description=description[:64],
        series_description=f"LKM-UNet {description}"[:64],
        omit_empty_frames=bool(segments.any()),  # a SEG needs at least one frame
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian)
    return seg


def write_dicom_seg(labels: sitk.Image, label_list, path, source, bundle,
                    confidence: dict | None = None) -> Path:
    """Write the DICOM SEG of ``labels`` for the source series ``source`` to ``path``, with the
    review scores in the segment descriptions when ``confidence`` is given."""
    seg = build_segmentation(labels, label_list, source, bundle, confidence)
    path = Path(path)
    with atomic_path(path, ".dcm") as tmp:
        seg.save_as(str(tmp))
    log.info("wrote DICOM SEG %s (%d frames, %d segments)", path, int(seg.NumberOfFrames),
             len(label_list))
    return path
