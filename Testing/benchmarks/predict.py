"""Benchmark: the CLI on a clinical-size CT, per-phase wall time and peak RSS.

Makes a clinical-size CT by resampling the sample CT (3 mm) to 0.8 x 0.8 x 1.5 mm
(457 x 379 x 224 voxels), an untrained bundle of the chosen preset, then runs
``python -m lkm_core predict`` in a child process per mode and reports the phase timings from
its summary, its total wall time (with start-up and model loading) and its peak RSS (wait4).

    python Testing/benchmarks/predict.py                      # 3d_paper, quick mode, 2 threads
    python Testing/benchmarks/predict.py --modes quick,full   # also the full-resolution figure
    python Testing/benchmarks/predict.py --preset 2d_paper    # the paper's 2D model (issue 7)
    python Testing/benchmarks/predict.py --preset 3d_paper,2d_paper   # both, one after the other
    python Testing/benchmarks/predict.py --preset 3d_small --crop 0.5   # a small variant
    python Testing/benchmarks/predict.py --baseline 80b17ed   # also today's engine at that commit,
                                                              # alternating, and the ratio
    python Testing/benchmarks/predict.py --tiling nnunet --precision fp32   # the path before issue 18

A 2D preset (2d_paper: 7 stages, 320x320, 1.5 mm in-plane; quick mode 3 mm in-plane) runs the
same CT slice by slice along its first array axis (z, 1.5 mm, never resampled).
Measured (2026-11-26, 2 shared CPU cores also running an nnU-Net training, torch CPU, 2 threads):
2d_paper untrained, quick mode: network grid 224 x 101 x 122 at 3.0 x 3.0 x 1.5 mm (one 128 x 128
tile per slice), total wall 1316 s (network 1310 s, everything else < 2 s + 4.4 s start-up),
peak RSS 1.42 GB. One 128 x 128 forward pass takes ~4.5 s on one thread; batching slices on the
CPU does not help (4.7 s per slice at batch 4).

Goals (issue 3, 2 cores): quick mode <= 120 s, <= 4 GB peak RSS, all but the network <= 15 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

ORGANS = "liver,spleen,kidney_right,kidney_left,gallbladder,stomach,pancreas,aorta,inferior_vena_cava"


def clinical_ct(work: Path, spacing, crop: float) -> Path:
    from lkm_core.inputs.sample_data import fetch_sample_ct
    name = f"ct_{'x'.join(str(s) for s in spacing)}_crop{crop:g}.nii.gz"
    path = work / name
    if path.exists():
        return path
    image = sitk.ReadImage(str(fetch_sample_ct().image))
    if crop < 1:
        size = image.GetSize()
        keep = [max(8, int(round(n * crop))) for n in size]
        start = [(n - k) // 2 for n, k in zip(size, keep)]
        image = sitk.RegionOfInterest(image, keep, start)
    old_spacing, old_size = image.GetSpacing(), image.GetSize()
    size = [int(round(n * s / t)) for n, s, t in zip(old_size, old_spacing, spacing)]
    ref = sitk.Image(size, sitk.sitkInt16)
    ref.SetSpacing(spacing)
    ref.SetDirection(image.GetDirection())
    # same physical box: the first voxel centre moves by half the spacing change
    import numpy as np
    direction = np.array(image.GetDirection()).reshape(3, 3)
    shift = (np.array(spacing) - np.array(old_spacing)) / 2
    ref.SetOrigin([float(v) for v in np.array(image.GetOrigin()) + direction @ shift])
    out = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, -1024, sitk.sitkInt16)
    sitk.WriteImage(out, str(path), useCompression=True)
    return path


def make_bundle(work: Path, preset: str, labels: str) -> Path:
    folder = work / f"bundle_{preset}"
    if not (folder / "model.json").exists():
        from lkm_core.cli.root import main
        assert main(["bundle", "init", "--preset", preset, "--labels", labels,
                     "-o", str(folder)]) == 0
    return folder


def export_commit(work: Path, commit: str) -> Path:
    """lkm_core as it was at a commit, exported into work/ (the baseline engine)."""
    folder = work / f"engine_{commit}"
    if not (folder / "lkm_core").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "lkm_core"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def run_mode(ct: Path, bundle: Path, out: Path, mode: str, args, engine: Path = REPO) -> dict:
    cmd = [sys.executable, "-m", "lkm_core", "predict", str(ct), "-o", str(out), "--model",
           str(bundle), "--device", args.device, "--threads", str(args.threads), "--overwrite",
           "--progress", "json", "--format", args.format]
    if mode == "quick":
        cmd.append("--quick")
    if args.step:
        cmd += ["--step", str(args.step)]
    if engine == REPO:  # a baseline commit may not know these switches
        cmd += ["--tiling", args.tiling, "--precision", args.precision]
    path = os.pathsep.join(p for p in (str(engine), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=path)
    t0 = time.perf_counter()
    # run from the engine's folder: `python -m` puts the working directory first on sys.path,
    # ahead of PYTHONPATH, so from the repository a baseline would run today's lkm_core
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=str(engine))
    events = [json.loads(line) for line in proc.stdout]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done = [e for e in events if e["event"] == "done"]
    if not done:
        errors = [e for e in events if e["event"] == "error"]
        raise SystemExit(f"{mode}: the run failed: {errors or status}")
    summary = done[0]["summary"]
    t = summary["timings"]
    phases = {"read": t["read"], "resample": t.get("resample", 0.0),
              "normalize": t.get("normalize", 0.0), "network": t["network"],
              "postprocess": t["postprocess"], "write": t["write"]}
    phases["startup+model load"] = max(0.0, wall - sum(phases.values()))
    non_network = sum(v for k, v in phases.items() if k not in ("network", "startup+model load"))
    return {"mode": mode, "wall_s": round(wall, 2), "phases_s": {k: round(v, 2) for k, v in phases.items()},
            "non_network_share": round(non_network / max(1e-9, sum(phases.values()) - phases["startup+model load"]), 4),
            "peak_rss_gb": round(usage.ru_maxrss / 1024 ** 2, 3),
            "network_grid": summary["network_grid"], "input_size": summary["input"]["size"],
            "device": summary["device"], "tiling": summary.get("tiling"),
            "precision": summary.get("precision", "fp32")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="3d_paper",
                   help="bundle init preset(s), comma-separated: 3d_paper, 2d_paper, 3d_small, 2d_small")
    p.add_argument("--ct-spacing", default="0.8,0.8,1.5", help="x,y,z mm of the made CT")
    p.add_argument("--crop", type=float, default=1.0, help="centre-crop fraction per axis")
    p.add_argument("--modes", default="quick", help="comma-separated: quick, full")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--step", type=float, default=None)
    p.add_argument("--tiling", default="auto", help="auto, fit or nnunet (today's: nnunet)")
    p.add_argument("--precision", default="auto", help="auto, fp32 or bf16 (today's: fp32)")
    p.add_argument("--labels", default=ORGANS)
    p.add_argument("--format", default="seg.nrrd")
    p.add_argument("--work", default=None, help="folder for the CT, bundle and outputs")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--baseline", default=None, metavar="COMMIT",
                   help="also run the engine of this git commit, alternating with ours; print the ratio")
    args = p.parse_args()

    work = Path(args.work or Path(tempfile.gettempdir()) / "lkm_benchmark")
    work.mkdir(parents=True, exist_ok=True)
    spacing = [float(v) for v in args.ct_spacing.split(",")]
    ct = clinical_ct(work, spacing, args.crop)
    runs = []
    for preset in [v.strip() for v in args.preset.split(",") if v.strip()]:
        bundle = make_bundle(work, preset, args.labels)
        print(f"CT {ct.name}: {sitk.ReadImage(str(ct)).GetSize()} voxels; preset {preset}; "
              f"{args.threads} thread(s) on {args.device}", flush=True)
        results = []
        for mode in args.modes.split(","):
            if args.baseline:
                base = run_mode(ct, bundle, work / f"out_{preset}_{mode}_base", mode, args,
                                export_commit(work, args.baseline))
            r = run_mode(ct, bundle, work / f"out_{preset}_{mode}", mode, args)
            if args.baseline:
                r["baseline"] = {"commit": args.baseline, **base}
                r["wall_ratio_vs_baseline"] = round(r["wall_s"] / base["wall_s"], 3)
                r["network_ratio_vs_baseline"] = round(r["phases_s"]["network"] / base["phases_s"]["network"], 3)
            results.append(r)
            print(f"\n{preset} {mode}: network grid {r['network_grid']['shape']} at "
                  f"{r['network_grid']['spacing']} mm, device {r['device']}, precision "
                  f"{r['precision']}")
            if r["tiling"]:
                t = r["tiling"]
                print(f"  tiling {t['mode']}: patch {t['patch']}, work ratio (network voxels / "
                      f"grid voxels) {t['work_ratio']:.2f}")
            for k, v in r["phases_s"].items():
                print(f"  {k:<20} {v:9.2f} s")
            print(f"  {'total wall':<20} {r['wall_s']:9.2f} s")
            print(f"  non-network share of the pipeline: {100 * r['non_network_share']:.1f} %")
            print(f"  peak RSS: {r['peak_rss_gb']:.2f} GB", flush=True)
            if args.baseline:
                b = r["baseline"]
                print(f"  baseline engine ({args.baseline}): wall {b['wall_s']:.2f} s, network "
                      f"{b['phases_s']['network']:.2f} s, peak RSS {b['peak_rss_gb']:.2f} GB; ratio ours/baseline: "
                      f"wall {r['wall_ratio_vs_baseline']:.2f}, network {r['network_ratio_vs_baseline']:.2f}", flush=True)
        runs.append({"preset": preset, "threads": args.threads, "ct": str(ct), "results": results})
    if args.json:
        # one preset: the same object as before; several: a list of them
        Path(args.json).write_text(json.dumps(runs[0] if len(runs) == 1 else runs, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
