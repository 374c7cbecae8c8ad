"""lkm_core's predictor against nnU-Net's nnUNetPredictor: CPU wall time and peak RSS, one run.

Both predict the same image with the same trained model (an nnU-Net results folder and the bundle
exported from it), each in a child process of its own, so that each one's peak RSS is its own;
the children run one after the other with the same torch thread count. Timings: ``total`` from
process start (imports, model loading, reading, preprocessing, sliding window, writing the label
map to memory), and ``predict`` for the prediction call alone. nnU-Net is run in-process
(``predict_single_npy_array``: no worker pool), without mirroring, like lkm_core's default.

Without --results/--bundle a model is trained first: the CPU smoke run of
lkm_core.training.smoke (tiny LKM-UNet, a few iterations on crops of the sample CT).

    PYTHONPATH=. python Testing/benchmarks/vs_nnunet.py [--workdir DIR] [--image CT] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

T0 = time.perf_counter()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(kind: str, args) -> dict:
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    if kind == "ours":
        from lkm_core.bundle import load_bundle
        from lkm_core.inference.predictor import Predictor

        predictor = Predictor(load_bundle(args.bundle), device="cpu", threads=args.threads, tta=args.tta)
        t = time.perf_counter()
        labels = predictor.predict_file(args.image).labels
    else:
        from lkm_core.training.smoke import nnunet_predict

        t = time.perf_counter()
        labels = nnunet_predict(args.results, args.image, folds=(args.fold,), mirroring=args.tta,
                                threads=args.threads)
    predict = time.perf_counter() - t
    total = time.perf_counter() - T0
    sitk.WriteImage(labels, args.out)
    return {"kind": kind, "total_s": round(total, 2), "predict_s": round(predict, 2),
            "peak_rss_mb": round(_peak_rss_mb(), 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None, help="where to train the smoke model (default: a temp folder)")
    p.add_argument("--results", help="nnU-Net results folder (Trainer__Plans__Configuration)")
    p.add_argument("--bundle", help="the bundle exported from it")
    p.add_argument("--fold", default="0")
    p.add_argument("--image", help="image to segment (default: the whole sample CT)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tta", action="store_true", help="mirroring in both")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat, alternating which one runs first; the best time of each is reported")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", choices=["ours", "nnunet"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return 0

    if not (args.results and args.bundle):
        import tempfile

        from lkm_core.training import smoke

        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="vs_nnunet_"))
        bundle = workdir / "bundle"
        results = Path(smoke.nnunet_env(workdir)["nnUNet_results"]) / smoke.DATASET / \
            f"nnUNetTrainer__nnUNetPlans__{smoke.CONFIG}"
        if not (bundle / "model.json").is_file():
            print(f"training the smoke model in {workdir} ...", flush=True)
            smoke.build(workdir)
        args.results, args.bundle = str(results), str(bundle)
    if not args.image:
        from lkm_core.inputs.sample_data import fetch_sample_ct

        args.image = str(fetch_sample_ct().image)

    import numpy as np
    import SimpleITK as sitk

    from lkm_core.training.smoke import dice_per_label

    out_dir = Path(args.workdir or Path(args.bundle).parent)
    rows, arrays = [], {}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               nnUNet_def_n_proc="1", nnUNet_n_proc_DA="0")
    env.setdefault("nnUNet_raw", str(out_dir))
    env.setdefault("nnUNet_preprocessed", str(out_dir))
    env.setdefault("nnUNet_results", str(out_dir))
    load_before = os.getloadavg()
    runs = {"nnunet": [], "ours": []}
    for r in range(args.rounds):
        for kind in (("nnunet", "ours") if r % 2 == 0 else ("ours", "nnunet")):
            out = out_dir / f"vs_nnunet_{kind}.nii.gz"
            cmd = [sys.executable, __file__, "--child", kind, "--results", args.results, "--bundle", args.bundle,
                   "--fold", args.fold, "--image", args.image, "--threads", str(args.threads), "--out", str(out)]
            if args.tta:
                cmd.append("--tta")
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                return 1
            runs[kind].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            arrays[kind] = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    for kind in ("nnunet", "ours"):
        rows.append({"kind": kind, **{k: min(x[k] for x in runs[kind]) for k in ("total_s", "predict_s", "peak_rss_mb")},
                     "all": runs[kind]})
    image = sitk.ReadImage(args.image)
    report = {
        "image": args.image, "size": list(image.GetSize()), "spacing": list(image.GetSpacing()),
        "bundle": args.bundle, "threads": args.threads, "tta": args.tta, "runs": rows,
        "dice_ours_vs_nnunet": dice_per_label(arrays["ours"], arrays["nnunet"]),
        "voxels_differing": int((arrays["ours"] != arrays["nnunet"]).sum()),
    }
    ours, theirs = rows[1], rows[0]
    print(f"image {Path(args.image).name} {report['size']}, {args.threads} thread(s), tta={args.tta}, "
          f"best of {args.rounds} round(s); load average before: {load_before}, after: {os.getloadavg()}")
    print(f"{'':10s}{'total s':>10s}{'predict s':>11s}{'peak RSS MB':>13s}")
    for r in (theirs, ours):
        print(f"{r['kind']:10s}{r['total_s']:>10.2f}{r['predict_s']:>11.2f}{r['peak_rss_mb']:>13.1f}")
    print(f"ours/nnunet: total x{ours['total_s'] / theirs['total_s']:.2f}, "
          f"predict x{ours['predict_s'] / theirs['predict_s']:.2f}, "
          f"peak RSS x{ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}")
    print(f"Dice per label (ours vs nnU-Net): {report['dice_ours_vs_nnunet']}; "
          f"voxels differing: {report['voxels_differing']} of {int(np.prod(arrays['ours'].shape))}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
