"""The hard peer check's matrix on the whole sample CT: lkm_core vs nnU-Net's nnUNetPredictor,
same LKM-UNet weights, wall time and peak RSS side by side, per-label Dice.

Cases (Testing/peer_cases.py): the CT resampled to 1.5 mm and to 0.8 x 0.8 x 2.5 mm, mirroring
off and on (z and x); the training orientation stored as LPS and as SAR (lkm_core gets those,
nnU-Net the original). Every prediction runs in a child process of its own (its peak RSS is its
own), one after the other, with the same thread count; times are the prediction call (reading
the image and loading the model excluded for both).

Models: ``default`` (the default bundle, served to nnUNetPredictor as an nnU-Net results folder)
or ``tiny`` (the smoke model trained by nnU-Net's stock trainer). Both need a smoke work folder
(its plans are the base of the served results folder); it is trained there when missing.

    PYTHONPATH=. python Testing/benchmarks/peer_matrix.py [--model default] [--threads 2]
        [--workdir DIR] [--cases 1.5x1.5x1.5mm-plain,stored-LPS]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import peer_cases  # noqa: E402


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(args) -> dict:
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    case = {c.name: c for c in peer_cases.cases(crop=None, small=peer_cases.SMALL_CROP,
                                                mirror_crop=None)}[args.case]
    if args.child == "lkm":
        image = peer_cases.read_ct(args.input)
        labels, seconds = peer_cases.run_lkm(args.bundle, image, case.mirror, args.threads)
    else:
        labels, seconds = peer_cases.run_nnunet(args.results, Path(args.input), case.mirror,
                                                args.threads)
    sitk.WriteImage(labels, args.out)
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(_peak_rss_mb(), 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None, help="smoke work folder (trained there when missing)")
    p.add_argument("--model", choices=["default", "tiny"], default="default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    p.add_argument("--child", choices=["lkm", "nnunet"], help=argparse.SUPPRESS)
    for hidden in ("--case", "--input", "--out", "--bundle", "--results"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0

    import tempfile

    import SimpleITK as sitk

    from lkm_core.bundle import default_bundle_path
    from lkm_core.inputs.sample_data import fetch_sample_ct
    from lkm_core.training import smoke

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="peer_matrix_"))
    if not (workdir / "bundle" / "model.json").is_file():
        print(f"training the smoke model in {workdir} ...", flush=True)
        smoke.build(workdir)
    results = Path(smoke.nnunet_env(workdir)["nnUNet_results"]) / smoke.DATASET / \
        f"nnUNetTrainer__nnUNetPlans__{smoke.CONFIG}"
    bundle = workdir / "bundle"
    if args.model == "default":
        bundle = default_bundle_path()
        results = peer_cases.nnunet_results_for_bundle(
            bundle, workdir / "nnUNet_preprocessed" / smoke.DATASET / "nnUNetPlans.json",
            workdir / "served_default" / "nnUNetTrainer__nnUNetPlans__3d_lkm")
    ct = peer_cases.read_ct(fetch_sample_ct().image)
    cases = [c for c in peer_cases.cases(crop=None, small=peer_cases.SMALL_CROP, mirror_crop=None)
             if c.name != "smaller-than-patch"]
    if args.cases:
        cases = [c for c in cases if c.name in args.cases.split(",")]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               nnUNet_def_n_proc="1", nnUNet_n_proc_DA="0")
    print(f"model {args.model}, whole sample CT {ct.GetSize()}, {args.threads} thread(s); "
          f"load average {os.getloadavg()}", flush=True)
    print(f"{'case':24s}{'input size':>18s}{'nnU-Net s':>11s}{'lkm s':>8s}{'x':>6s}"
          f"{'nnU-Net MB':>12s}{'lkm MB':>9s}{'x':>6s}  min Dice (labels)")
    report = []
    for case in cases:
        theirs_in, ours_in = peer_cases.inputs(ct, case)
        paths = {"nnunet": workdir / "matrix_nnunet_0000.nii.gz", "lkm": workdir / "matrix_lkm.nii.gz"}
        sitk.WriteImage(theirs_in, str(paths["nnunet"]))
        sitk.WriteImage(ours_in, str(paths["lkm"]))
        row = {"case": case.name, "size": list(theirs_in.GetSize())}
        for kind in ("nnunet", "lkm"):
            out = workdir / f"matrix_{kind}_labels.nii.gz"
            cmd = [sys.executable, __file__, "--child", kind, "--case", case.name, "--input",
                   str(paths[kind]), "--out", str(out), "--bundle", str(bundle), "--results",
                   str(results), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-4000:], file=sys.stderr)
                return 1
            row[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        dice = peer_cases.compare(sitk.ReadImage(str(workdir / "matrix_lkm_labels.nii.gz")),
                                  sitk.ReadImage(str(workdir / "matrix_nnunet_labels.nii.gz")))
        row["dice"] = dice
        report.append(row)
        n, o = row["nnunet"], row["lkm"]
        print(f"{case.name:24s}{'x'.join(map(str, row['size'])):>18s}{n['seconds']:>11.1f}"
              f"{o['seconds']:>8.1f}{o['seconds'] / n['seconds']:>6.2f}{n['peak_rss_mb']:>12.0f}"
              f"{o['peak_rss_mb']:>9.0f}{o['peak_rss_mb'] / n['peak_rss_mb']:>6.2f}  "
              f"{min(dice.values()) if dice else float('nan'):.4f} ({len(dice)})", flush=True)
    (workdir / f"peer_matrix_{args.model}.json").write_text(json.dumps(report, indent=2),
                                                            encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
