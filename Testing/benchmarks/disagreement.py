"""Benchmark: what the disagreement signal costs on a two-fold run, against the same run without it.

The default model on the sample CT, its one fold loaded twice as two "folds" (the second with
its weights perturbed by ``--perturb`` times their standard deviation, so that the folds
disagree somewhat, as real folds do). Each variant runs in its own child process (peak RSS from
wait4), alternating, ``--repeats`` times: "on" is the engine as shipped (several passes: the
per-voxel disagreement is kept and read), "off" the same run with the signal switched off in
the sliding window (the path before it). Prints, per variant, the network and postprocess
times (median), peak RSS, and the ratios on/off; "on" also the case's disagreements.

    python Testing/benchmarks/disagreement.py                 # 2 threads, 3 repeats
    python Testing/benchmarks/disagreement.py --repeats 5 --perturb 0.05
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def child(variant: str, threads: int, perturb: float) -> None:
    import resource

    import torch

    from lkm_core.bundle import default_bundle_path, load_bundle
    from lkm_core.inference import predictor as engine
    from lkm_core.inputs.sample_data import fetch_sample_ct

    if variant == "off":
        passes = engine.sliding_window_passes
        engine.sliding_window_passes = lambda *a, **k: passes(*a, **{**k, "disagreement": False})
    torch.manual_seed(0)
    bundle = load_bundle(default_bundle_path())
    first = bundle.load_network(bundle.folds[0], torch.device("cpu"))
    second = bundle.load_network(bundle.folds[0], torch.device("cpu"))
    with torch.no_grad():
        for p in second.parameters():
            if p.numel() > 1:
                p.add_(torch.randn_like(p) * p.std() * perturb)
    predictor = engine.Predictor(bundle, device="cpu", threads=threads, networks=[first, second])
    result = predictor.predict_file(fetch_sample_ct().image)
    structures = result.confidence["structures"]
    print(json.dumps({
        "network_s": result.timings["network"], "postprocess_s": result.timings["postprocess"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "grid": list(result.network_shape),
        "case_disagreement": result.confidence.get("case_disagreement"),
        "disagreement": {n: s.get("disagreement") for n, s in structures.items()},
        "flagged": sorted(n for n, s in structures.items() if s.get("flagged"))}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--perturb", type=float, default=0.05)
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads, args.perturb)
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                          if p))
    runs = {"off": [], "on": []}
    for _ in range(args.repeats):
        for variant in runs:
            out = subprocess.run([sys.executable, __file__, "--child", variant, "--threads",
                                  str(args.threads), "--perturb", str(args.perturb)],
                                 capture_output=True, text=True, env=env, check=True)
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    median = {v: {k: statistics.median(r[k] for r in rs)
                  for k in ("network_s", "postprocess_s", "peak_rss_mb")}
              for v, rs in runs.items()}
    print(f"default model, sample CT, network grid {runs['on'][0]['grid']}, 2 folds "
          f"(second perturbed x{args.perturb}), {args.threads} thread(s), "
          f"{args.repeats} repeat(s), medians:")
    for v, m in median.items():
        print(f"  {v:>3}: network {m['network_s']:.2f} s, postprocess {m['postprocess_s']:.3f} s, "
              f"peak RSS {m['peak_rss_mb']:.0f} MB")
    on, off = median["on"], median["off"]
    print(f"  ratio on/off: network {on['network_s'] / off['network_s']:.3f}, postprocess "
          f"{on['postprocess_s'] / off['postprocess_s']:.3f}, peak RSS "
          f"{on['peak_rss_mb'] / off['peak_rss_mb']:.3f}")
    last = runs["on"][-1]
    print(f"  on: case_disagreement {last['case_disagreement']}, flagged {last['flagged']}")
    print("  per structure: " + json.dumps(last["disagreement"]))


if __name__ == "__main__":
    main()
