"""Benchmark: the body crop (``--crop body``) against nnU-Net's nonzero crop, in the same run.

A hospital CT's field of view holds air around the patient; the sample CT is cropped tight to
the body. So the benchmark puts the sample CT in a wider field of view (``--pad`` voxels of air,
-1024 HU, on each in-plane side; its reference labels padded alike) and runs the default model
(or ``--model``) on it with each crop, alternating ``--repeats`` times. Printed: the network time
of each and their ratio, the voxels the network saw, the share of the image the body box kept,
per-label Dice of body vs nonzero, and of each against the reference labels (the sample's
TotalSegmentator labels) and against the prediction on the unpadded sample CT.

    python Testing/benchmarks/crop.py                    # default model, 2 threads
    python Testing/benchmarks/crop.py --pad 0            # the sample CT as it is
    python Testing/benchmarks/crop.py --model BUNDLE --quick
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lkm_core.bundle import default_bundle_path, load_bundle  # noqa: E402
from lkm_core.inference.predictor import Predictor  # noqa: E402
from lkm_core.inputs.sample_data import REFERENCE_LABELS, fetch_sample_ct  # noqa: E402
from lkm_core.outputs.reading import dice as mask_dice  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray, value_a: int, value_b: int | None = None):
    """Dice of label ``value_a`` in ``a`` and ``value_b`` (default the same) in ``b``; None when
    neither holds it."""
    d = mask_dice(a == value_a, b == (value_a if value_b is None else value_b))
    return None if math.isnan(d) else round(d, 4)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="bundle (default: the default model)")
    p.add_argument("--pad", type=int, default=25, help="air voxels added on each in-plane side")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    sample = fetch_sample_ct()
    image = sitk.ReadImage(str(sample.image), sitk.sitkFloat32)
    reference = sitk.ReadImage(str(sample.reference_labels))
    pad = [args.pad, args.pad, 0]
    wide = sitk.ConstantPad(image, pad, pad, -1024.0)
    reference = sitk.GetArrayFromImage(sitk.ConstantPad(reference, pad, pad, 0))
    bundle = load_bundle(args.model or default_bundle_path())

    def predict(img, crop):
        predictor = Predictor(bundle, device="cpu", threads=args.threads, quick=args.quick,
                              crop=crop, confidence=False)
        result = predictor.predict_image(img, "case")
        return sitk.GetArrayFromImage(result.labels), result

    labels, network, tiling = {}, {"nonzero": [], "body": []}, {}
    for _ in range(args.repeats):
        for crop in ("nonzero", "body"):
            labels[crop], result = predict(wide, crop)
            network[crop].append(result.timings["network"])
            tiling[crop] = result.tiling
    unpadded, _ = predict(image, "nonzero")
    tight = np.zeros_like(labels["nonzero"])
    tight[(slice(None), *[slice(args.pad, tight.shape[a] - args.pad) for a in (1, 2)])] = unpadded

    names = {lab.value: lab.name for lab in bundle.labels}
    per_label = {}
    for v, name in names.items():
        ref = REFERENCE_LABELS.get(name, -1)  # the reference labelmap's own value for the organ
        row = {"body_vs_nonzero": dice(labels["body"], labels["nonzero"], v),
               "nonzero_vs_reference": dice(labels["nonzero"], reference, v, ref),
               "body_vs_reference": dice(labels["body"], reference, v, ref),
               "nonzero_vs_unpadded": dice(labels["nonzero"], tight, v),
               "body_vs_unpadded": dice(labels["body"], tight, v)}
        if any(d is not None for d in row.values()):
            per_label[name] = row
    best = {crop: min(times) for crop, times in network.items()}
    out = {"model": bundle.name, "pad": args.pad, "quick": args.quick, "threads": args.threads,
           "image_size": list(wide.GetSize()), "network_s": network,
           "body_over_nonzero_network": round(best["body"] / best["nonzero"], 3),
           "tiling": tiling, "dice": per_label}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"benchmark took {time.perf_counter() - t0:.0f} s", file=sys.stderr)
