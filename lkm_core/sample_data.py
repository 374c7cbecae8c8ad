"""The sample CT: a public abdomen-pelvis CT and its reference labels.

They come from the source distribution of ``totalsegmentator==2.18.0`` (Apache-2.0), fetched
once with pip, checked against a known sha256 and extracted into a user cache folder.
The reference labels are TotalSegmentator's own predictions, not manual ground truth.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ResourceError

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
}

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
    licence: str = LICENCE
    origin: str = f"tests/reference_files of the source distribution of {SOURCE_PACKAGE}"


def cache_dir() -> Path:
    """Where the sample lives: $LKM_CACHE_DIR, else $XDG_CACHE_HOME/lkm_segment, else ~/.cache."""
    if os.environ.get("LKM_CACHE_DIR"):
        return Path(os.environ["LKM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lkm_segment"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    if all(p.exists() for p in wanted.values()):
        return SampleCT(wanted["example_ct.nii.gz"], wanted["example_seg_fast_force_split.nii.gz"])

    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / SOURCE_ARCHIVE
    if not archive.exists():
        log.info("Downloading the sample CT (%s, 38 MB)", SOURCE_PACKAGE)
        archive = _download_archive(folder)
    actual = _sha256(archive)
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
    (folder / "SOURCE.json").write_text(json.dumps({
        "package": SOURCE_PACKAGE, "sha256": SOURCE_SHA256, "licence": LICENCE,
        "files": {name: MEMBER_PREFIX + m for name, m in FILES.items()},
        "note": "Reference labels are predictions of TotalSegmentator, not manual ground truth.",
    }, indent=2), encoding="utf-8")
    archive.unlink()  # 38 MB we no longer need
    return SampleCT(wanted["example_ct.nii.gz"], wanted["example_seg_fast_force_split.nii.gz"])
