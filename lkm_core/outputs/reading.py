"""Reading results back: a .seg.nrrd onto an image's grid, and Dice against reference labels."""

from __future__ import annotations

import numpy as np


def read_seg_nrrd(path, reference_image):
    """(label image on ``reference_image``'s grid, {label value: segment name}) from a
    .seg.nrrd written by lkm_core (one layer, label values per segment)."""
    import SimpleITK as sitk
    import slicerio

    seg = slicerio.read_segmentation(str(path))
    voxels = np.asarray(seg["voxels"])
    if voxels.ndim == 4:  # several layers: never written by lkm_core, merge them in order
        voxels = voxels.max(axis=0)
    names = {int(s["labelValue"]): s["name"] for s in seg["segments"]}
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels.transpose(2, 1, 0)))
    ijk_to_lps = np.asarray(seg["ijkToLPS"], dtype=float)
    offset = np.asarray(seg.get("referenceImageExtentOffset", [0, 0, 0]), dtype=float)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / spacing
    origin = ijk_to_lps[:3, 3] + ijk_to_lps[:3, :3] @ offset
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in direction.ravel()])
    image.SetOrigin([float(v) for v in origin])
    labels = sitk.Resample(image, reference_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                           image.GetPixelID())
    return labels, names


def organ_dice(predicted, reference, names: dict) -> dict:
    """{organ: Dice} for every predicted segment name that the sample's reference labels know."""
    import SimpleITK as sitk
    from ..inputs.sample_data import REFERENCE_LABELS
    from ..terminology import lookup

    pred = sitk.GetArrayViewFromImage(predicted)
    ref = sitk.GetArrayViewFromImage(reference)
    out = {}
    for value, name in sorted(names.items()):
        structure = lookup(name)
        key = structure.name if structure else name
        if key not in REFERENCE_LABELS:
            continue
        out[key] = dice(pred == value, ref == REFERENCE_LABELS[key])
    return out


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    denom = int(pred.sum()) + int(ref.sum())
    return float("nan") if denom == 0 else 2.0 * int(np.logical_and(pred, ref).sum()) / denom
