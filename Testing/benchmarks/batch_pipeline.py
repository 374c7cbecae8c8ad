"""Benchmark: a batch, sequential vs pipelined (``--pipeline off|on``), in the same run.

Makes N clinical-size CTs (the sample CT resampled to 0.8 x 0.8 x 1.5 mm, as
Testing/benchmarks/predict.py does, each a different centre crop so the cases differ), an
untrained bundle of the chosen preset (default 3d_small: the fastest model), then runs
``python -m lkm_core predict`` over the whole batch in a child process per mode, alternating the
modes ``--repeats`` times. Reported per run: wall time of the batch (start-up and model loading
excluded: from the first progress event to the last ``done``), the sum of the network phases from
the summaries, their ratio (1.0 = the network never waits) and the child's peak RSS (wait4).

    python Testing/benchmarks/batch_pipeline.py                   # 8 cases, CPU, 2 threads
    python Testing/benchmarks/batch_pipeline.py --device cuda     # on a GPU
    python Testing/benchmarks/batch_pipeline.py --cases 4 --crop 0.5  # a quick look

Measured (2026-12-07, quiet 2-core machine, load < 2; 3d_small untrained, quick mode; 8 clinical-size
cases, crops 0.70-1.00, 320 x 265 x 157 to 457 x 379 x 224 voxels: ``--cases 8 --quick --repeats 2``;
results/batch_pipeline_3d_small_quick_8clinical_cpu2threads.json): sequential 150.6 s and 143.9 s for
network sums of 122.7 s and 117.3 s (wall / network 1.23), pipelined 145.4 s and 123.3 s (1.03):
pipelined / sequential 0.965 and 0.857; peak RSS 1.81-1.87 -> 2.39-2.45 GB.

Earlier (2026-12-07, 2 CPU cores shared with other jobs, load 9-14; 3d_small untrained, full
mode; 8 cases cropped 0.30-0.45 of the clinical-size CT, 139-206 x 112-169 x 68-100 voxels:
``--cases 8 --crop 0.3 --largest-crop 0.45``; results/batch_pipeline_3d_small_cpu*.json):

- 2 threads: sequential 305 s for a network sum of 122 s (wall / network 2.50), pipelined 80 s
  for 78 s (1.03): pipelined / sequential wall 0.26; peak RSS 0.98 -> 1.22 GB.
- 1 thread: sequential 135 s / 53 s (2.57), pipelined 71 s / 69 s (1.03): ratio 0.52; peak RSS
  0.99 -> 1.22 GB.

Most of the sequential loss is the postprocess (to the input grid), 10-22 s a case on the main
thread but about 1-3 s on the export thread of the same process (seen directly too: 4-22 s vs
0.7 s for one case, the main thread fast again with torch.set_num_threads(1)); the pipeline
hides it behind the network either way. One full clinical-size case (412 x 341 x 202) took
250 s network + 257 s postprocess sequentially, which is why the full 8-case run did not fit.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from predict import ORGANS, REPO, clinical_ct, make_bundle  # noqa: E402


def make_cases(work: Path, n: int, crop: float, largest: float = 1.0) -> list:
    """n CTs of different sizes: crops from ``crop`` up to ``largest`` of the clinical-size CT."""
    crops = [round(crop + (largest - crop) * i / max(1, n - 1), 3) for i in range(n)]
    return [clinical_ct(work, (0.8, 0.8, 1.5), c) for c in crops]


def run_batch(cases, bundle: Path, out: Path, pipeline: str, args) -> dict:
    cmd = [sys.executable, "-m", "lkm_core", "predict", *map(str, cases), "-o", str(out),
           "--model", str(bundle), "--device", args.device, "--threads", str(args.threads),
           "--overwrite", "--progress", "json", "--pipeline", pipeline]
    if args.quick:
        cmd.append("--quick")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", ""))
                                          if p))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    first = last = None
    done = []
    for line in proc.stdout:
        event = json.loads(line)
        now = time.perf_counter()
        if event["event"] == "progress" and first is None:
            first = now
        if event["event"] == "done":
            done.append(event["summary"])
            last = now
        if event["event"] == "error":
            raise SystemExit(f"{pipeline}: a case failed: {event}")
    _, status, usage = os.wait4(proc.pid, 0)
    if len(done) != len(cases):
        raise SystemExit(f"{pipeline}: {len(done)} of {len(cases)} cases done (status {status})")
    network = sum(s["timings"]["network"] for s in done)
    other = {k: round(sum(s["timings"].get(k, 0.0) for s in done), 2)
             for k in ("read", "preprocess", "postprocess", "write")}
    wall = last - first
    return {"pipeline": pipeline, "batch_wall_s": round(wall, 2), "network_sum_s": round(network, 2),
            "wall_over_network": round(wall / network, 3), "other_phases_sum_s": other,
            "peak_rss_gb": round(usage.ru_maxrss / 1024 ** 2, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="3d_small")
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--crop", type=float, default=0.7, help="smallest centre-crop fraction")
    p.add_argument("--largest-crop", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="predict --quick (3 mm, nearest label)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--work", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="lkm-batch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cases = make_cases(work, args.cases, args.crop, args.largest_crop)
    bundle = make_bundle(work, args.preset, ORGANS)
    runs = []
    for r in range(args.repeats):
        for mode in ("off", "on"):
            result = run_batch(cases, bundle, work / f"out_{mode}", mode, args)
            runs.append(result)
            print(json.dumps(result), flush=True)
    by_mode = {m: [x for x in runs if x["pipeline"] == m] for m in ("off", "on")}
    best = {m: min(x["batch_wall_s"] for x in xs) for m, xs in by_mode.items()}
    summary = {"preset": args.preset, "cases": len(cases), "device": args.device,
               "quick": args.quick, "crops": [args.crop, args.largest_crop],
               "threads": args.threads, "runs": runs,
               "pipelined_over_sequential_wall": round(best["on"] / best["off"], 3)}
    print(f"pipelined / sequential batch wall: {summary['pipelined_over_sequential_wall']}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
