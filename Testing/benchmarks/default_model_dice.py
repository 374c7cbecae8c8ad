"""Benchmark: Dice of the default model on the training CT and on other public CTs.

All images and reference labels come from the source distribution of totalsegmentator==2.18.0
(Apache-2.0, ``tests/reference_files``; downloaded once with pip, sha256 checked, members
extracted into the lkm_segment cache). Every reference is a TotalSegmentator prediction, not
manual ground truth. Cases:

* ``training``: example_ct.nii.gz (3 mm) vs example_seg_fast_force_split.nii.gz, all nine
  organs. The default model was trained on exactly this case.
* ``pet_ct_dicom``: example_ct_dicom/ (20 axial DICOM slices, 0.98 x 0.98 x 2 mm, Siemens
  Biograph40 mCT low-dose CT, upper abdomen) vs example_seg_dicom.nii.gz (TotalSegmentator v2
  'total' labels on the same grid, y axis stored flipped). A different acquisition from the
  training CT (scanner geometry, resolution, field of view with arms); whether it is a
  different patient cannot be proven from the anonymised files.
* ``aorta_ct``: aorta_report/example_ct.nii.gz (233 x 167 x 191 at 1.5 mm, chest and upper
  abdomen, 55-year-old man per example_nodeinfo.json): a different scan and patient. Its only
  reference for one of our organs is aorta_report/test_result/models/aorta.nii.gz, on the grid of
  ct_cropped.nii.gz (a crop of the same CT); Dice is computed on that crop.

Not used: example_ct_sm.nii.gz (slices 82-111 of example_ct: same scan), spine_report (same
grid and patient as example_ct), pulmonary_report/models/ct_cropped.nii.gz (a crop of the aorta
CT, references only heart and pulmonary artery).

    python Testing/benchmarks/default_model_dice.py [--model BUNDLE] [--threads 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lkm_core.bundle import default_bundle_path, load_bundle  # noqa: E402
from lkm_core.outputs.reading import dice  # noqa: E402
from lkm_core.inference.predictor import Predictor  # noqa: E402
from lkm_core.inputs import images as lkm_io  # noqa: E402
from lkm_core.files import cache_dir, sha256  # noqa: E402
from lkm_core.inputs.sample_data import (MEMBER_PREFIX, REFERENCE_LABELS, SOURCE_ARCHIVE,  # noqa: E402
                                         SOURCE_SHA256, _download_archive)

MEMBERS = [
    "example_ct.nii.gz",
    "example_seg_fast_force_split.nii.gz",
    "example_seg_dicom.nii.gz",
    "aorta_report/example_ct.nii.gz",
    "aorta_report/example_nodeinfo.json",
    "aorta_report/test_result/models/aorta.nii.gz",
]
DICOM_FOLDER = "example_ct_dicom/"


def fetch_reference_files(folder: Path | None = None) -> Path:
    """Extract the members this benchmark needs (once) and return the folder."""
    folder = Path(folder) if folder else cache_dir() / "benchmark_reference_files"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / SOURCE_ARCHIVE
    if not archive.exists():
        archive = _download_archive(folder)
    if sha256(archive) != SOURCE_SHA256:
        archive.unlink()
        raise SystemExit(f"{archive}: wrong sha256; deleted, run again")
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name[len(MEMBER_PREFIX):] if member.name.startswith(MEMBER_PREFIX) else None
            if name is None or not member.isfile():
                continue
            if name in MEMBERS or name.startswith(DICOM_FOLDER):
                target = folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    archive.unlink()
    done.write_text("ok")
    return folder


def run_case(predictor, bundle, image_path, references: dict) -> tuple[dict, float]:
    """references: organ -> (reference image, value in it). Dice is computed on each
    reference's own grid (the prediction resampled onto it, nearest neighbour)."""
    t0 = time.perf_counter()
    result = predictor.predict_file(image_path)
    seconds = time.perf_counter() - t0
    out = {}
    for organ, (ref_img, value) in references.items():
        lab = bundle.label_by_name(organ)
        pred = sitk.Resample(result.labels, ref_img, sitk.Transform(), sitk.sitkNearestNeighbor,
                             0, result.labels.GetPixelID())
        out[organ] = dice(sitk.GetArrayViewFromImage(pred) == lab.value,
                          sitk.GetArrayViewFromImage(ref_img) == value)
    return out, seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="bundle (default: the installed default)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", default="training,pet_ct_dicom,aorta_ct")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    folder = fetch_reference_files()
    bundle = load_bundle(args.model or default_bundle_path())
    predictor = Predictor(bundle, device="cpu", threads=args.threads)
    organs = [lab.name for lab in bundle.labels if lab.name in REFERENCE_LABELS]
    results = {}
    cases = args.cases.split(",")
    if "training" in cases:
        ref = sitk.ReadImage(str(folder / "example_seg_fast_force_split.nii.gz"))
        results["training"] = run_case(predictor, bundle, folder / "example_ct.nii.gz",
                                       {o: (ref, REFERENCE_LABELS[o]) for o in organs})
    if "pet_ct_dicom" in cases:
        series = lkm_io.read_image(folder / DICOM_FOLDER)
        ref = sitk.ReadImage(str(folder / "example_seg_dicom.nii.gz"))
        ref = sitk.Resample(ref, series, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                            ref.GetPixelID())   # same voxels, stored with y flipped
        present = {int(v) for v in np.unique(sitk.GetArrayViewFromImage(ref))}
        results["pet_ct_dicom"] = run_case(
            predictor, bundle, folder / DICOM_FOLDER,
            {o: (ref, REFERENCE_LABELS[o]) for o in organs if REFERENCE_LABELS[o] in present})
    if "aorta_ct" in cases:
        ref = sitk.ReadImage(str(folder / "aorta_report/test_result/models/aorta.nii.gz"))
        results["aorta_ct"] = run_case(predictor, bundle, folder / "aorta_report/example_ct.nii.gz",
                                       {"aorta": (ref, 1)})

    print(f"model {bundle.name} {bundle.version} ({bundle.source}), {args.threads} thread(s)")
    print(f"{'organ':<20}" + "".join(f"{c:>14}" for c in results))
    for organ in organs:
        cells = []
        for case, (d, _) in results.items():
            v = d.get(organ)
            cells.append("-" if v is None else ("n/a" if math.isnan(v) else f"{v:.3f}"))
        print(f"{organ:<20}" + "".join(f"{c:>14}" for c in cells))
    print(f"{'seconds':<20}" + "".join(f"{s:>14.1f}" for _, s in results.values()))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"model": bundle.name, "version": bundle.version,
             "cases": {c: {"dice": {k: (None if math.isnan(v) else round(v, 4))
                                    for k, v in d.items()}, "seconds": round(s, 1)}
                       for c, (d, s) in results.items()}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
