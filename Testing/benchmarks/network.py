"""One forward pass of the 3D paper preset on the CPU: time, peak RSS, and the Mamba parts' cost.

Runs the full network (PiM + PaM) and the same network with use_pim=use_pam=False, each in
its own child process so that peak RSS is per variant, alternating the variants over a few
rounds (best of each), and prints the ratio full/conv-only measured in the same run, the same
ratio estimated inside the full network's own process (less sensitive to load), plus where the full network's time goes (stem+convs, PiM, PaM,
decoder) from forward hooks.

    python Testing/benchmarks/network.py [--preset 3d_paper] [--threads 2] [--repeats 1] [--json FILE]

The scan backend is the engine's choice (LKM_SCAN_BACKEND, see lkm_core/ssm/backend.py); each
child reports which ran.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict

import torch

from lkm_core.network import build_network, count_parameters, presets
from lkm_core.ssm import backend_report


def run_variant(preset, use_mamba, threads, repeats):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = presets.preset_config(preset, 1, 14, use_pim=use_mamba, use_pam=use_mamba)
    net = build_network(config).eval()
    x = torch.randn(1, 1, *presets.preset_patch_size(preset))
    spent = defaultdict(float)
    starts = {}

    def hook_pair(name):
        def pre(module, inputs):
            starts[name] = time.perf_counter()

        def post(module, inputs, output):
            spent[name] += time.perf_counter() - starts[name]
        return pre, post

    parts = {"encoder convs": list(net.encoder.stages) + [net.encoder.stem], "PiM": list(net.encoder.pim),
             "PaM": list(net.encoder.pam), "decoder": [net.decoder]}
    for name, modules in parts.items():
        for m in modules:
            pre, post = hook_pair(name)
            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": min(times), "peak_rss_mb": peak_mb, "parameters": count_parameters(net),
            "parts": {k: v / repeats for k, v in spent.items()}, "scan_backend": backend_report()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="3d_paper", choices=presets.PRESET_NAMES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="forward passes per child process")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternate the two variants this many times and keep each one's best, "
                             "so a burst of load on the machine does not land on one variant only")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--child", choices=["full", "conv"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.preset, args.child == "full", args.threads, args.repeats)))
        return
    results = {}
    for _ in range(args.rounds):
        for variant in ("conv", "full"):
            out = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--threads", str(args.threads),
                                  "--repeats", str(args.repeats), "--child", variant],
                                 capture_output=True, text=True, check=True)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            if variant not in results or run["seconds"] < results[variant]["seconds"]:
                results[variant] = run
    patch = "x".join(map(str, presets.preset_patch_size(args.preset)))
    print(f"{args.preset}, patch {patch}, torch {torch.__version__}, {args.threads} threads, "
          f"scan backend: {results['full']['scan_backend']}")
    for variant, label in (("full", "LKM-UNet (PiM + PaM)"), ("conv", "same without PiM/PaM")):
        r = results[variant]
        print(f"  {label:24} {r['seconds']:7.2f} s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
              f"{r['parameters'] / 1e6:6.2f} M parameters")
    print(f"  ratio full / conv-only: {results['full']['seconds'] / results['conv']['seconds']:.2f}")
    parts = results["full"]["parts"]
    mamba = parts.get("PiM", 0) + parts.get("PaM", 0)
    total = results["full"]["seconds"]
    print(f"  within the full forward, PiM + PaM take {mamba:.2f} s of {total:.2f} s: "
          f"ratio to the same process's convolutions {total / (total - mamba):.2f}")
    print("  where the full forward's time goes:")
    for part, seconds in results["full"]["parts"].items():
        print(f"    {part:14} {seconds:7.2f} s  ({seconds / results['full']['seconds']:.0%})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"preset": args.preset, "patch": patch, "threads": args.threads, "torch": torch.__version__,
                       "load_average": os.getloadavg(), "rounds": args.rounds, **results,
                       "ratio_full_vs_conv": results["full"]["seconds"] / results["conv"]["seconds"],
                       "ratio_in_process": total / (total - mamba)}, f, indent=2)


if __name__ == "__main__":
    main()
