"""The sample data: a public abdomen-pelvis CT and its reference labels, a CT DICOM series and a
small MR volume.

They come from the source distribution of ``totalsegmentator==2.18.0`` (Apache-2.0), fetched
once with pip, checked against a known sha256 and extracted into a user cache folder.
The reference labels are TotalSegmentator's own predictions, not manual ground truth. The DICOM
series (20 axial slices of a PET/CT's CT, JPEG 2000 lossless) was anonymised by blanking its
Study, Series and SOP Instance UIDs in the data sets (the file meta keeps the SOP Instance UIDs).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ResourceError
from ..files import cache_dir, sha256

log = logging.getLogger(__name__)

SOURCE_PACKAGE = "totalsegmentator==2.18.0"
SOURCE_ARCHIVE = "totalsegmentator-2.18.0.tar.gz"
SOURCE_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
LICENCE = "Apache-2.0"
MEMBER_PREFIX = "totalsegmentator-2.18.0/tests/reference_files/"

# name in the cache -> member of the archive (relative to MEMBER_PREFIX)
FILES = {
    "example_ct.nii.gz": "example_ct.nii.gz",
    "example_seg_fast_force_split.nii.gz": "example_seg_fast_force_split.nii.gz",
    "example_mr_sm.nii.gz": "example_mr_sm.nii.gz",
}
# a folder member: every file under it is extracted into the cache folder of the same name
DICOM_FOLDER = "example_ct_dicom"
DICOM_SLICES = 20

# Values of the reference labelmap for the organs this project cares about.
REFERENCE_LABELS = {
    "spleen": 1,
    "kidney_right": 2,
    "kidney_left": 3,
    "gallbladder": 4,
    "liver": 5,
    "stomach": 6,
    "pancreas": 7,
    "aorta": 52,
    "inferior_vena_cava": 63,
}


@dataclass(frozen=True)
class SampleCT:
    image: Path
    reference_labels: Path
    dicom_folder: Path | None = None   # the CT DICOM series (one file per slice)
    mr_image: Path | None = None       # a small MR volume (117 x 91 x 20 at 3 mm)
    licence: str = LICENCE
    origin: str = f"tests/reference_files of the source distribution of {SOURCE_PACKAGE}"


def _download_archive(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-q", SOURCE_PACKAGE, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    archive = dest / SOURCE_ARCHIVE
    if result.returncode != 0 or not archive.exists():
        raise ResourceError(
            f"Could not download the sample data ({SOURCE_PACKAGE}) with pip: "
            f"{result.stderr.strip()[-400:] or 'no archive produced'}. "
            "Check the network connection to the Python package index, or place "
            f"{SOURCE_ARCHIVE} in {dest} by hand.")
    return archive


def fetch_sample_ct(folder: Path | None = None) -> SampleCT:
    """Return the sample CT, downloading and verifying it on first use."""
    folder = Path(folder) if folder else cache_dir() / "sample"
    wanted = {name: folder / name for name in FILES}
    dicom = folder / DICOM_FOLDER

    def sample():
        return SampleCT(wanted["example_ct.nii.gz"], wanted["example_seg_fast_force_split.nii.gz"],
                        dicom_folder=dicom, mr_image=wanted["example_mr_sm.nii.gz"])

    if all(p.exists() for p in wanted.values()) and _complete_dicom(dicom):
        return sample()

    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / SOURCE_ARCHIVE
    if not archive.exists():
        log.info("Downloading the sample CT (%s, 38 MB)", SOURCE_PACKAGE)
        archive = _download_archive(folder)
    actual = sha256(archive)
    if actual != SOURCE_SHA256:
        archive.unlink()
        raise ResourceError(
            f"The sample archive {archive} has sha256 {actual}, expected {SOURCE_SHA256}; "
            "it was deleted. Run again to download it afresh.")

    with tarfile.open(archive, "r:gz") as tar:
        for name, member in FILES.items():
            source = tar.extractfile(MEMBER_PREFIX + member)
            if source is None:
                raise ResourceError(f"{member} is missing from {archive}")
            # write to a temporary name first so an interrupted run leaves no half file
            with tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp:
                tmp.write(source.read())
            os.replace(tmp.name, wanted[name])
        _extract_folder(tar, MEMBER_PREFIX + DICOM_FOLDER + "/", dicom)
    if not _complete_dicom(dicom):
        raise ResourceError(f"{archive} did not hold the {DICOM_SLICES} files of {DICOM_FOLDER}.")
    (folder / "SOURCE.json").write_text(json.dumps({
        "package": SOURCE_PACKAGE, "sha256": SOURCE_SHA256, "licence": LICENCE,
        "files": {name: MEMBER_PREFIX + m for name, m in FILES.items()},
        "folders": {DICOM_FOLDER: MEMBER_PREFIX + DICOM_FOLDER},
        "note": "Reference labels are predictions of TotalSegmentator, not manual ground truth.",
    }, indent=2), encoding="utf-8")
    archive.unlink()  # 38 MB we no longer need
    return sample()


def _complete_dicom(folder: Path) -> bool:
    return folder.is_dir() and sum(1 for p in folder.iterdir() if p.is_file()) == DICOM_SLICES


def _extract_folder(tar, prefix: str, dest: Path) -> None:
    """Every regular file directly under ``prefix`` into ``dest`` (a fresh folder swapped in,
    so an interrupted run leaves no half series)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    for member in tar.getmembers():
        name = member.name[len(prefix):]
        if not member.name.startswith(prefix) or not member.isfile() or "/" in name or not name:
            continue
        (staging / name).write_bytes(tar.extractfile(member).read())
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)
