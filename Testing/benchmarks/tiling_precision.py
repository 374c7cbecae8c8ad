"""Benchmark: the fitted tiling and bf16 against today's path (nnU-Net tiling, fp32).

Per case, runs the Predictor once per variant in this process and prints, against the first
variant (the reference, today's path): per-label Dice on the input grid, the network phase's
time and its ratio, and the work ratio (voxels through the network / voxels of the grid).

Cases: the default (trained) model on the sample CT, as is, re-oriented (axes permuted and
flipped) and anisotropic (0.8 x 0.8 x 5 mm); an untrained 3d_paper bundle (fixed seed) on the
quick clinical CT that Testing/benchmarks/predict.py makes (457 x 379 x 224 at 0.8 x 0.8 x
1.5 mm).

    python Testing/benchmarks/tiling_precision.py                       # all cases, 2 threads
    python Testing/benchmarks/tiling_precision.py --cases default,paper_quick
    python Testing/benchmarks/tiling_precision.py --variants nnunet:fp32,fit:fp32,fit:bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from predict import ORGANS, clinical_ct, make_bundle  # noqa: E402

from lkm_core.outputs.reading import dice  # noqa: E402


def dice_per_label(a: np.ndarray, b: np.ndarray, labels) -> dict:
    """{label name: Dice of a and b}, 1.0 where neither has the label."""
    out = {}
    for lab in labels:
        value = dice(a == lab.value, b == lab.value)
        out[lab.name] = 1.0 if np.isnan(value) else round(value, 4)
    return out


def reoriented(image: sitk.Image) -> sitk.Image:
    """The same voxels and physical positions, stored with other axes: permuted and flipped."""
    return sitk.Flip(sitk.PermuteAxes(image, [2, 0, 1]), [True, False, True])


def resampled(image: sitk.Image, spacing) -> sitk.Image:
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                         spacing, image.GetDirection(), -1024, image.GetPixelID())


def cases(names, work: Path):
    from lkm_core.bundle import default_bundle_path
    from lkm_core.inputs.sample_data import fetch_sample_ct
    sample = sitk.ReadImage(str(fetch_sample_ct().image))
    default = default_bundle_path()
    table = {
        "default": lambda: (default, sample, False),
        "default_quick": lambda: (default, sample, True),
        "default_reoriented": lambda: (default, reoriented(sample), False),
        "default_anisotropic": lambda: (default, resampled(sample, (0.8, 0.8, 5.0)), False),
        "paper_quick": lambda: (make_bundle(work, "3d_paper", ORGANS),
                                sitk.ReadImage(str(clinical_ct(work, [0.8, 0.8, 1.5], 1.0))),
                                True),
    }
    for name in names:
        yield (name, *table[name]())


def run(bundle_path, image, quick: bool, tiling: str, precision: str, threads: int):
    from lkm_core.bundle import load_bundle
    from lkm_core.inference.predictor import Predictor
    bundle = load_bundle(bundle_path)
    predictor = Predictor(bundle, device="cpu", threads=threads, quick=quick, confidence=False,
                          tiling=tiling, precision=precision)
    t0 = time.perf_counter()
    result = predictor.predict_image(sitk.Cast(image, sitk.sitkFloat32))
    wall = time.perf_counter() - t0
    return bundle, result, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="default,default_quick,default_reoriented,"
                   "default_anisotropic,paper_quick")
    p.add_argument("--variants", default="nnunet:fp32,fit:fp32",
                   help="tiling:precision, comma-separated; the first is the reference")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=None, help="folder for the made CT and bundle")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    work = Path(args.work or Path(tempfile.gettempdir()) / "lkm_benchmark")
    work.mkdir(parents=True, exist_ok=True)
    variants = [tuple(v.split(":")) for v in args.variants.split(",")]
    results = []
    for name, bundle_path, image, quick in cases(args.cases.split(","), work):
        reference = None
        for tiling, precision in variants:
            bundle, result, wall = run(bundle_path, image, quick, tiling, precision, args.threads)
            labels = sitk.GetArrayFromImage(result.labels)
            row = {"case": name, "tiling": tiling, "precision": result.precision,
                   "network_s": round(result.timings["network"], 2), "wall_s": round(wall, 2),
                   "network_grid": list(result.network_shape), **result.tiling}
            if reference is None:
                reference = (labels, row)
            else:
                dice = dice_per_label(reference[0], labels, bundle.labels)
                row["dice_vs_reference"] = dice
                row["min_dice"] = min(dice.values())
                row["network_ratio"] = round(row["network_s"] / reference[1]["network_s"], 3)
            results.append(row)
            extra = (f", network ratio {row['network_ratio']:.3f}, min Dice {row['min_dice']:.4f}"
                     if "min_dice" in row else " (reference)")
            print(f"{name:<20} {tiling}:{row['precision']:<5} grid {row['network_grid']} patch "
                  f"{row.get('patch')} work ratio {row.get('work_ratio')}: network "
                  f"{row['network_s']:.1f} s{extra}", flush=True)
            if "dice_vs_reference" in row:
                print("    Dice " + ", ".join(f"{k} {v:.4f}"
                                             for k, v in row["dice_vs_reference"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
