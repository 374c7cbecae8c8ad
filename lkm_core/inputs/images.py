"""Reading images (SimpleITK) and checking that they can be segmented.

Every image stays a ``SimpleITK.Image``, so its geometry (origin, spacing, direction) travels
with the voxels. Supported: NRRD, NIfTI, MHA/MHD and folders of DICOM files (a study, several
series, nested folders: :mod:`lkm_core.inputs.dicom_series` splits them into series, one case each).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .dicom_series import IDENTIFYING_DICOM_KEYS, DicomSeries, read_series, scan_folder
from ..contract import IMAGE_SUFFIXES, is_image_file, strip_image_suffix
from ..errors import InputError

log = logging.getLogger(__name__)

def case_name(path) -> str:
    """File name without its image suffix (``ct.nii.gz`` -> ``ct``); a folder's own name; a DICOM
    series' name (from its UID, see :func:`lkm_core.inputs.dicom_series.series_case_name`).
    The module names its input files so that this gives back its own case names."""
    if isinstance(path, DicomSeries):
        return path.name
    path = Path(path)
    return path.name if path.is_dir() else strip_image_suffix(path.name)


@dataclass
class Inputs:
    cases: list = field(default_factory=list)      # (case name, path or DicomSeries)
    skipped: list = field(default_factory=list)    # dicom_series.Skipped


def discover_inputs(inputs, modality: str | None = None) -> Inputs:
    """Input arguments -> cases. A folder contributes the image files directly in it and every
    DICOM series anywhere under it (``modality``: the model's; other series are skipped, and
    listed with the reason like every other DICOM object that is not a volume)."""
    found = Inputs()
    for item in inputs:
        path = Path(item).expanduser()
        if not path.is_dir():
            found.cases.append((case_name(path), path))
            continue
        files = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
        found.cases.extend((case_name(p), p) for p in files)
        scan = scan_folder(path, modality)
        found.cases.extend((s.name, s) for s in scan.series)
        found.skipped.extend(scan.skipped)
        if not files and not scan.series and not scan.skipped:
            raise InputError(f"The folder {path} holds neither DICOM files nor image files "
                             f"({', '.join(IMAGE_SUFFIXES)}).")
    for s in found.skipped:
        log.warning("%s", skip_message(s))
    names = [c for c, _ in found.cases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"Several inputs would write the same output name(s): {', '.join(dupes)}. "
                         "Rename the files or run them into separate output folders (a DICOM "
                         "series given twice is also counted twice).")
    return found


def skip_message(skipped) -> str:
    """One line saying what was not segmented and why (a dicom_series.Skipped)."""
    return (f"skipped {skipped.name} ({skipped.files} DICOM file(s) in {skipped.folder}): "
            f"{skipped.reason}")


def nothing_to_segment(skipped) -> str:
    """Why a batch whose every input was skipped segments nothing, and what to do."""
    reasons = sorted({s.reason for s in skipped})
    return (f"Nothing to segment: all {len(skipped)} DICOM object(s) given were skipped ("
            + "; ".join(reasons)[:300] + "). Give image files or CT/MR series the model "
            "segments (see `lkm-segment info MODEL` for its modality).")


def expand_inputs(inputs, modality: str | None = None) -> list:
    """The cases of :func:`discover_inputs` (skipped DICOM objects are logged)."""
    return discover_inputs(inputs, modality).cases


def describe_input(path, keep_paths: bool = False) -> dict:
    """What the JSON summary records about a case's source. By default nothing that may name a
    patient: no path, no folder name, no DICOM UID (hospital exports often name folders by
    patient); ``keep_paths`` (``--keep-paths``, for local use) records them."""
    if isinstance(path, DicomSeries):
        from .dicom_series import describe
        dicom = describe(path)
        if not keep_paths:
            return {"dicom": {k: v for k, v in dicom.items() if k not in IDENTIFYING_DICOM_KEYS}}
        return {"input_path": str(path.folder.absolute()), "dicom": dicom}
    return {"input_path": str(Path(path).absolute())} if keep_paths else {}


def read_image(path) -> sitk.Image:
    """Read one image, a DICOM series, or a folder holding one DICOM series. Raises InputError
    with a usable message."""
    if isinstance(path, DicomSeries):
        return read_series(path)
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"The input {path} does not exist.")
    if path.is_dir():
        scan = scan_folder(path)
        if not scan.series:
            why = "; ".join(sorted({s.reason for s in scan.skipped}))[:300]
            raise InputError(f"The folder {path} holds no DICOM image series"
                             + (f" (only: {why})" if why else "") + ". Give an image file or a "
                             "folder with the DICOM files of a CT or MR series.")
        if len(scan.series) > 1:
            log.warning("%s holds %d DICOM series; using the one with the most files",
                        path, len(scan.series))
        return read_series(max(scan.series, key=lambda s: len(s.files)))
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
        raise InputError(f"Could not read {path} as an image ({first}). Supported: NRRD, NIfTI, "
                         "MHA and DICOM series folders.") from exc
    return image


def validate_image(image: sitk.Image, path, dimension: str = "3d") -> sitk.Image:
    """Check that ``image`` is one scalar volume the model can take; return it as float32."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(a colour or vector image); the model needs one scalar volume. "
                         "Extract one channel first.")
    size = image.GetSize()
    if image.GetDimension() == 4:
        if size[3] == 1:
            image = image[:, :, :, 0]
        else:
            raise InputError(f"{path} is a 4D image ({size[3]} volumes); the model needs one 3D "
                             "volume. Split the series and run each volume separately.")
    elif image.GetDimension() == 2:
        # a 2d model takes a single slice as a one-slice volume (the predictor returns 2D labels)
        if dimension == "3d":
            raise InputError(f"{path} is a 2D image ({size[0]}x{size[1]}); this model segments 3D "
                             "volumes. Give the whole volume (or a DICOM series folder).")
        image = sitk.JoinSeries([image])
    elif image.GetDimension() != 3:
        raise InputError(f"{path} has {image.GetDimension()} dimensions; a 3D volume is needed.")
    if dimension == "3d" and sorted(image.GetSize())[0] == 1:
        raise InputError(f"{path} is a single slice ({'x'.join(map(str, image.GetSize()))}); this "
                         "model segments 3D volumes.")
    spacing = image.GetSpacing()
    if any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise InputError(f"{path} has an invalid voxel spacing {spacing}; fix the header.")
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(f"{path} has {bad} NaN or infinite voxels; the model cannot process them. "
                         "Replace them (e.g. with the background value) and run again.")
    lo, hi = float(array.min()), float(array.max())
    if lo == hi:
        what = "empty (all zero)" if lo == 0 else f"constant (every voxel is {lo:g})"
        raise InputError(f"{path} is {what}; there is nothing to segment. Check that the right "
                         "file was given.")
    return image
