"""A tiny nnU-Net v2 raw dataset cut from the sample CT, for smoke tests and benchmarks.

Each case is a different crop of the same abdomen CT (3 mm) with a few of its reference organs,
so that plan -> preprocess -> train -> export -> predict can run end to end on a CPU in minutes.
It checks the machinery, not accuracy: the crops overlap and come from one patient.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..inputs.sample_data import REFERENCE_LABELS, fetch_sample_ct

# our label value -> organ name in the sample's reference labelmap
DEFAULT_ORGANS = ("liver", "spleen", "kidney_right", "kidney_left")

# crop of the sample (z, y, x ranges, SimpleITK array order) that holds those organs
_CROP_SIZE = (40, 56, 88)
_CROP_START = (64, 22, 14)
_JITTER = ((0, 0, 0), (4, 2, 4), (-4, 3, -4), (2, -3, 6), (-2, 4, -6), (6, 0, 2), (-6, -2, -2))


def make_tiny_dataset(raw_root: str | Path, dataset_id: int = 901, name: str = "LKMTiny", n_cases: int = 5,
                      organs=DEFAULT_ORGANS, sample=None) -> Path:
    """Write ``raw_root/DatasetXXX_name`` (imagesTr, labelsTr, dataset.json); return that folder."""
    if n_cases > len(_JITTER):
        raise ValueError(f"at most {len(_JITTER)} cases")
    sample = sample or fetch_sample_ct()
    image = sitk.ReadImage(str(sample.image), sitk.sitkInt16)
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(sample.reference_labels)))
    labels = np.zeros(ref.shape, np.uint8)
    for value, organ in enumerate(organs, start=1):
        labels[ref == REFERENCE_LABELS[organ]] = value
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)

    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    shape = image.GetSize()[::-1]
    for i in range(n_cases):
        start = [min(max(0, s + j), n - c) for s, j, c, n in zip(_CROP_START, _JITTER[i], _CROP_SIZE, shape)]
        index = [int(v) for v in start[::-1]]  # x, y, z for SimpleITK
        size = [int(v) for v in _CROP_SIZE[::-1]]
        case = f"tiny_{i:03d}"
        sitk.WriteImage(sitk.RegionOfInterest(image, size, index), str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(sitk.RegionOfInterest(label_image, size, index), str(folder / "labelsTr" / f"{case}.nii.gz"))
    dataset_json = {
        "name": name,
        "description": "Crops of the sample CT (TotalSegmentator test data, Apache-2.0); smoke tests only",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{organ: v for v, organ in enumerate(organs, start=1)}},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
        "licence": "Apache-2.0",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2), encoding="utf-8")
    return folder
