"""Reading images (SimpleITK) and checking that they can be segmented.

Every image stays a ``SimpleITK.Image``, so its geometry (origin, spacing, direction) travels
with the voxels. Supported: NRRD, NIfTI, MHA/MHD and a folder holding one DICOM series.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .contract import IMAGE_SUFFIXES, strip_image_suffix
from .errors import InputError

log = logging.getLogger(__name__)

def case_name(path) -> str:
    """File name without its image suffix (``ct.nii.gz`` -> ``ct``); a folder's own name.
    The module names its input files so that this gives back its own case names."""
    path = Path(path)
    return path.name if path.is_dir() else strip_image_suffix(path.name)


def is_image_file(path) -> bool:
    return Path(path).name.lower().endswith(IMAGE_SUFFIXES)


def dicom_series(folder) -> list:
    """The DICOM series IDs in a folder (not recursive)."""
    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError:
        return []


def expand_inputs(inputs) -> list:
    """Input arguments -> list of (case name, path). A folder holding a DICOM series is one
    case; any other folder contributes the image files directly in it."""
    cases = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            if dicom_series(path):
                cases.append((case_name(path), path))
                continue
            files = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
            if not files:
                raise InputError(f"The folder {path} holds neither a DICOM series nor image files "
                                 f"({', '.join(IMAGE_SUFFIXES)}).")
            cases.extend((case_name(p), p) for p in files)
        else:
            cases.append((case_name(path), path))
    names = [c for c, _ in cases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"Several inputs would write the same output name(s): {', '.join(dupes)}. "
                         "Rename the files or run them into separate output folders.")
    return cases


def read_image(path) -> sitk.Image:
    """Read one image (or a DICOM series folder). Raises InputError with a usable message."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"The input {path} does not exist.")
    try:
        if path.is_dir():
            series = dicom_series(path)
            if not series:
                raise InputError(f"The folder {path} holds no DICOM series. Give an image file "
                                 "or a folder with the DICOM files of one series.")
            if len(series) > 1:
                log.warning("%s holds %d DICOM series; using the one with the most files",
                            path, len(series))
            files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), s)
                         for s in series), key=len)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except InputError:
        raise
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
