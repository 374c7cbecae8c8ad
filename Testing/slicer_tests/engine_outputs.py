"""The engine's outputs for a volume, written here the way the engine writes them: a .seg.nrrd by
lkm_core.outputs.labels.write_seg_nrrd with confidence tags added through slicerio, a labelmap, a
summary in the engine's form and a uint8 confidence map on the input's grid."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicerio

import slicer_fixtures  # noqa: F401  (puts LKMSegment/ on sys.path)
from lkm_core.contract import CONFIDENCE_MAP_SUFFIX, CONFIDENCE_TAG, FLAGGED_TAG, label_records
from lkm_core.outputs.labels import write_seg_nrrd
from LKMSegmentLib.scene import write_volume  # noqa: E402

SCORES = {"liver": (0.9312, False), "spleen": (0.4101, True), "kidney_right": (0.0, True)}



def _grid(volume, tmp_path):
    """The volume as the engine reads its input (the module writes it the same way)."""
    path = tmp_path / f"{volume.GetID()}.nrrd"
    write_volume(volume, path)
    return sitk.ReadImage(str(path))


def engine_outputs(volume, tmp_path, case="abdomen_CT", tags=True):
    """(seg.nrrd, labelmap .nii.gz, summary, map) as the engine writes them for ``volume``."""
    grid = _grid(volume, tmp_path)
    labels = np.zeros(sitk.GetArrayViewFromImage(grid).shape, np.uint8)
    labels[2:6, 3:9, 4:10] = 1
    labels[7:10, 10:14, 2:6] = 2  # kidney_right (3) not found
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(grid)
    records = label_records({"labels": [{"value": 1, "name": "liver"}, {"value": 2, "name": "spleen"},
                                        {"value": 3, "name": "kidney_right"}]})
    seg_path = write_seg_nrrd(image, records, tmp_path / f"{case}.seg.nrrd")
    if tags:
        segmentation = slicerio.read_segmentation(str(seg_path))
        for segment in segmentation["segments"]:
            score, flagged = SCORES[segment["name"]]
            segment.setdefault("tags", {})[CONFIDENCE_TAG] = f"{score:.4f}"
            segment["tags"][FLAGGED_TAG] = "1" if flagged else "0"
        slicerio.write_segmentation(str(seg_path), segmentation)
    labelmap_path = tmp_path / f"{case}.nii.gz"
    sitk.WriteImage(image, str(labelmap_path))
    percent = np.full(labels.shape, 99, np.uint8)
    percent[labels == 2] = 40
    percent[0, 0, :4] = [0, 50, 80, 95]
    confidence_map = sitk.GetImageFromArray(percent)
    confidence_map.CopyInformation(grid)
    map_path = tmp_path / f"{case}{CONFIDENCE_MAP_SUFFIX}"
    sitk.WriteImage(confidence_map, str(map_path))
    summary = {"case": case, "confidence": {
        "case_score": min(s for s, _ in SCORES.values()), "map": map_path.name,
        "structures": {name: {"found": name != "kidney_right", "score": s, "flagged": f}
                       for name, (s, f) in SCORES.items()}}}
    return seg_path, labelmap_path, summary, map_path, percent
