"""Benchmark: malloc keeping freed memory (``--memory keep``) against glibc's default (release).

Each run is a child process (mallopt applies per process), the two modes alternating, 2 threads:
- ``network``: the untrained 3d_paper network (seed 0) on one 40x224x192 patch;
- ``quick_ct``: ``lkm-segment predict --quick`` with an untrained 3d_paper bundle on the quick
  clinical CT of Testing/benchmarks/predict.py (457 x 379 x 224 at 0.8 x 0.8 x 1.5 mm).
Prints, per case, keep/release ratios (best of each mode) of the network time, the CPU seconds
(user + system, and system alone; getrusage of the children: on a shared machine the CPU
seconds are steadier than the time), the peak RSS (the child's ru_maxrss), and whether the
labels are bit-identical.

    python Testing/benchmarks/allocator.py [--cases network,quick_ct] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("release", "keep")
RESULTS = REPO / "Testing" / "benchmarks" / "results" / "allocator.json"


def child_network(mode: str, threads: int) -> dict:
    """One forward of the untrained 3d_paper network, in this (child) process."""
    from lkm_core.inference.memory import apply_memory_mode
    applied = apply_memory_mode(mode)  # before the first big allocation
    import torch
    from lkm_core.network import build_network, presets
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_network(presets.preset_config("3d_paper", 1, 14)).eval()
    x = torch.randn(1, 1, *presets.preset_patch_size("3d_paper"))
    with torch.inference_mode():
        start = time.perf_counter()
        logits = net(x)
        seconds = time.perf_counter() - start
    labels = logits.argmax(1).to(torch.uint8).numpy()
    return {"applied": applied, "network_s": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "labels_sha1": hashlib.sha1(labels.tobytes()).hexdigest()}


def run_child(case: str, mode: str, args, work: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    if case == "network":
        cmd = [sys.executable, __file__, "--child", mode, "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    else:
        result = quick_ct(mode, args, work)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update(mode=mode, wall_s=time.perf_counter() - start,
                  system_s=after.ru_stime - before.ru_stime, user_s=after.ru_utime - before.ru_utime)
    result["cpu_s"] = result["system_s"] + result["user_s"]  # less sensitive to load than time
    return result  # peak_rss_mb: the child's own ru_maxrss (RUSAGE_CHILDREN's is the max of all)


def quick_ct(mode: str, args, work: Path) -> dict:
    import SimpleITK as sitk
    from predict import ORGANS, clinical_ct, make_bundle
    ct = clinical_ct(work, [0.8, 0.8, 1.5], 1.0)
    bundle = make_bundle(work, "3d_paper", ORGANS)
    out = work / f"out_{mode}"
    argv = ["predict", str(ct), "-o", str(out), "--model", str(bundle), "--device", "cpu",
            "--threads", str(args.threads), "--quick", "--overwrite", "--progress", "json",
            "--memory", mode, "--format", "nii.gz"]
    peak_file = work / f"peak_rss_{mode}.json"
    proc = subprocess.run([sys.executable, __file__, "--child-cli", str(peak_file), *argv],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"predict failed ({mode}): {proc.stderr[-2000:]}")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    network_s = _network_seconds(lines)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(next(out.glob("*.nii.gz")))))
    return {"network_s": network_s, "peak_rss_mb": json.loads(peak_file.read_text())["peak_rss_mb"],
            "labels_sha1": hashlib.sha1(labels.tobytes()).hexdigest()}


def child_cli(peak_file: str, argv) -> int:
    """The real command line in this (child) process, then its own peak RSS into ``peak_file``
    (in --progress json mode stdout belongs to the progress lines)."""
    from lkm_core.cli.root import main
    code = main(argv)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(peak_file).write_text(json.dumps({"peak_rss_mb": peak}), encoding="utf-8")
    return code


def _network_seconds(lines) -> float:
    done = [line for line in lines if line.get("event") == "done"][-1]
    timings = done.get("summary", {}).get("timings", {})
    return float(timings.get("network", float("nan")))


def summarise(case: str, runs: list) -> dict:
    def best(mode, key):
        return min(r[key] for r in runs if r["mode"] == mode)
    keys = ("network_s", "cpu_s", "system_s", "peak_rss_mb")
    summary = {k: {m: round(best(m, k), 2) for m in MODES} for k in keys}
    ratios = {k: round(best("keep", k) / best("release", k), 3) for k in keys}
    same = len({r["labels_sha1"] for r in runs}) == 1
    print(f"{case}: keep/release network time {ratios['network_s']:.3f}x "
          f"({summary['network_s']['keep']} s vs {summary['network_s']['release']} s), "
          f"CPU time (user + system) {ratios['cpu_s']:.3f}x ({summary['cpu_s']['keep']} s vs "
          f"{summary['cpu_s']['release']} s), "
          f"system CPU {ratios['system_s']:.3f}x ({summary['system_s']['keep']} s vs "
          f"{summary['system_s']['release']} s), peak RSS {ratios['peak_rss_mb']:.3f}x "
          f"({summary['peak_rss_mb']['keep']:.0f} MB vs {summary['peak_rss_mb']['release']:.0f}"
          f" MB), labels {'bit-identical' if same else 'DIFFERENT'}")
    return {"best": summary, "ratios_keep_over_release": ratios, "labels_identical": same,
            "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="network,quick_ct")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--child-cli", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args()
    if args.child_cli:
        return child_cli(args.child_cli[0], args.child_cli[1:])
    if args.child:
        print(json.dumps(child_network(args.child, args.threads)))
        return 0
    report = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "rounds": args.rounds, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            runs = []
            for round_ in range(args.rounds):
                # alternate which mode goes first, so neither always meets a warmer machine
                for mode in (MODES if round_ % 2 == 0 else MODES[::-1]):
                    runs.append(run_child(case, mode, args, Path(tmp)))
                    print(f"  {case} {mode}: network {runs[-1]['network_s']:.1f} s, CPU "
                          f"{runs[-1]['cpu_s']:.1f} s (system {runs[-1]['system_s']:.1f} s), peak RSS "
                          f"{runs[-1]['peak_rss_mb']:.0f} MB", flush=True)
            report["cases"][case] = summarise(case, runs)
            # after each case: a later case that fails keeps what the earlier ones measured
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
