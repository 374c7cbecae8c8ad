"""The hard peer check's cases: lkm_core and nnU-Net's nnUNetPredictor on inputs where pipelines
really differ (resampling, mirroring, a volume smaller than the patch, other storage orders).

Shared by Testing/test_peer_check_hard.py (small crops) and
Testing/benchmarks/peer_matrix.py (the whole sample CT)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

# crops of the 3 mm sample CT, SimpleITK array order (z, y, x): start, size
TEST_CROP = ((72, 24, 22), (28, 36, 60))        # liver, both kidneys: one default patch
SMALL_CROP = ((80, 28, 60), (20, 28, 30))       # smaller than both models' patches
MIRROR_CROP = ((76, 26, 46), (24, 32, 40))      # liver, right kidney: one patch of the default


@dataclass(frozen=True)
class Case:
    name: str
    spacing: tuple | None = None     # resample the crop to this (x, y, z) spacing first
    mirror: bool = False
    stored_as: str | None = None     # lkm_core gets the image in this orientation
    crop: tuple | None = TEST_CROP   # None: the whole image
    min_dice: float = 0.98


def cases(crop=TEST_CROP, small=SMALL_CROP, mirror_crop=MIRROR_CROP) -> list:
    """The matrix. Dice >= 0.99 where no resampling happens (both then run nnU-Net's
    preprocessing on the same grid), >= 0.98 where the image is resampled. Mirroring multiplies
    the network's work by 8: those cases use ``mirror_crop``."""
    out = []
    for spacing in ((1.5, 1.5, 1.5), (0.8, 0.8, 2.5)):
        for mirror in (False, True):
            label = "x".join(f"{s:g}" for s in spacing)
            out.append(Case(f"{label}mm-{'mirror' if mirror else 'plain'}", spacing, mirror,
                            crop=mirror_crop if mirror else crop))
    out.append(Case("smaller-than-patch", crop=small, min_dice=0.99))
    for orientation in ("LPS", "SAR"):
        out.append(Case(f"stored-{orientation}", stored_as=orientation, crop=crop, min_dice=0.99))
    return out


def read_ct(path) -> sitk.Image:
    return sitk.ReadImage(str(path), sitk.sitkFloat32)


def cut(image: sitk.Image, crop) -> sitk.Image:
    if crop is None:
        return image
    start, size = crop
    return sitk.RegionOfInterest(image, [int(v) for v in size[::-1]], [int(v) for v in start[::-1]])


def resample(image: sitk.Image, spacing) -> sitk.Image:
    """The same physical box at another spacing, cubic B-spline (a scanner-like finer grid)."""
    spacing = np.asarray(spacing, float)
    size = np.maximum(1, np.round(np.array(image.GetSize()) * image.GetSpacing() / spacing))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2 for n in image.GetSize()]))
    grid = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    grid.SetSpacing([float(v) for v in spacing])
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin([float(v) for v in centre - direction @ (spacing * (size - 1) / 2)])
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkBSpline, -1024.0, sitk.sitkFloat32)


def inputs(ct: sitk.Image, case: Case) -> tuple:
    """(image for nnU-Net, image for lkm_core); nnU-Net always gets the training orientation."""
    image = cut(ct, case.crop)
    if case.spacing is not None:
        image = resample(image, case.spacing)
    ours = sitk.DICOMOrient(image, case.stored_as) if case.stored_as else image
    return image, ours


MIRROR_AXES = (0, 2)  # mirroring on: z and x (4 passes), for both predictors


def run_lkm(bundle_path, image: sitk.Image, mirror: bool, threads: int = 1) -> tuple:
    """(label image, seconds) with lkm_core's Predictor."""
    from lkm_core.bundle import load_bundle
    from lkm_core.inference.predictor import Predictor

    t0 = time.perf_counter()
    bundle = load_bundle(bundle_path)
    bundle.meta.setdefault("inference", {})["mirror_axes"] = list(MIRROR_AXES)
    result = Predictor(bundle, device="cpu", threads=threads, tta=mirror).predict_image(image)
    return result.labels, time.perf_counter() - t0


def run_nnunet(results, path: Path, mirror: bool, threads: int = 1) -> tuple:
    """(label image, seconds) with nnU-Net's nnUNetPredictor on the file."""
    from lkm_core.training import smoke

    t0 = time.perf_counter()
    labels = smoke.nnunet_predict(results, path, folds=(0,), mirroring=mirror, threads=threads)
    return labels, time.perf_counter() - t0


def compare(ours: sitk.Image, theirs: sitk.Image) -> dict:
    """Per-label Dice in physical space: ours is brought to theirs' storage order (exact)."""
    from lkm_core.inference.preprocessing import image_orientation
    from lkm_core.training.smoke import dice_per_label

    ours = sitk.DICOMOrient(ours, image_orientation(theirs))
    assert ours.GetSize() == theirs.GetSize()
    assert np.allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-3)
    return dice_per_label(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))


def nnunet_results_for_bundle(bundle_path, target_plans_file, output) -> Path:
    """An nnU-Net results folder (plans.json, dataset.json, fold_0/checkpoint_final.pth) that
    makes nnUNetPredictor run a bundle's LKM-UNet with nnU-Net's own pipeline: the plans from
    lkm_core.training.finetune.plans_from_bundle (the bundle's network, spacing, patch,
    transpose and normalisation statistics on top of ``target_plans_file``), the labels from the
    bundle, the weights in checkpoint form."""
    import json

    import torch

    from lkm_core.bundle import load_bundle
    from lkm_core.training.finetune import plans_from_bundle

    bundle = load_bundle(bundle_path)
    target = json.loads(Path(target_plans_file).read_text(encoding="utf-8"))
    plans, config = plans_from_bundle(target, bundle, plans_name="nnUNetPlans")
    arch = plans["configurations"][config]["architecture"]
    imports = [arch["arch_kwargs"][k] for k in arch["_kw_requires_import"]]
    assert all(v is None or "." in v for v in imports), imports  # dotted paths nnU-Net imports
    output = Path(output)
    (output / "fold_0").mkdir(parents=True, exist_ok=True)
    (output / "plans.json").write_text(json.dumps(plans, indent=2), encoding="utf-8")
    dataset = {"channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "numTraining": 1,
               "labels": {"background": 0, **{lab.name: lab.value for lab in bundle.labels}}}
    (output / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    torch.save({"network_weights": bundle.load_state_dict(bundle.folds[0]),
                "trainer_name": "nnUNetTrainer", "init_args": {"configuration": config},
                "inference_allowed_mirroring_axes": MIRROR_AXES, "current_epoch": 0},
               str(output / "fold_0" / "checkpoint_final.pth"))
    return output
