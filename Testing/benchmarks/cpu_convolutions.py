"""Benchmark: fp32 CPU convolutions through oneDNN directly vs torch's own choice of kernel.

PyTorch hands an fp32 CPU convolution to its slow native kernel when batch x channels x the
first two spatial sizes is at most 20480, which on 3D volumes catches the full-resolution
stages of small models (lkm_core.network.blocks.convolve). This runs the same network both
ways in one process, alternating (``--repeats`` times), and prints the network phase's time,
the ratio and per-label Dice against torch's path.

Cases: the default model on the sample CT (whole prediction, fp32); an untrained 3d_paper
network on one 40 x 224 x 192 patch (forward only; its channels are wide enough that torch
already picks oneDNN almost everywhere).

    python Testing/benchmarks/cpu_convolutions.py
    python Testing/benchmarks/cpu_convolutions.py --cases default --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiling_precision import dice_per_label  # noqa: E402

from lkm_core.contract import LabelRecord  # noqa: E402
from lkm_core.network import blocks  # noqa: E402

ONEDNN = blocks.convolve


def torch_choice(conv, x):
    return conv(x)


def use(path: str) -> None:
    blocks.convolve = ONEDNN if path == "onednn" else torch_choice


def default_case(threads: int):
    from lkm_core.bundle import default_bundle_path, load_bundle
    from lkm_core.inference.predictor import Predictor
    from lkm_core.inputs.sample_data import fetch_sample_ct

    bundle = load_bundle(default_bundle_path())
    image = sitk.Cast(sitk.ReadImage(str(fetch_sample_ct().image)), sitk.sitkFloat32)

    def run():
        predictor = Predictor(bundle, device="cpu", threads=threads, confidence=False,
                              precision="fp32")
        result = predictor.predict_image(image)
        return result.timings["network"], sitk.GetArrayFromImage(result.labels)
    return bundle.labels, run


def paper_patch_case(threads: int):
    from lkm_core.network import build_network, presets

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_network(presets.preset_config("3d_paper", 1, 10)).eval()
    x = torch.randn(1, 1, 40, 224, 192)

    def run():
        started = time.perf_counter()
        with torch.inference_mode():
            labels = net(x).argmax(1)[0].numpy().astype(np.uint8)
        return time.perf_counter() - started, labels
    labels = [LabelRecord(i, f"class_{i}") for i in range(1, 10)]
    return labels, run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="default,paper_patch")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    makers = {"default": default_case, "paper_patch": paper_patch_case}
    rows = []
    for name in args.cases.split(","):
        labels, run = makers[name](args.threads)
        reference = None
        for repeat in range(args.repeats):
            times = {}
            for path in ("torch", "onednn"):
                use(path)
                seconds, out = run()
                times[path] = seconds
                if reference is None:
                    reference = out
                dice = dice_per_label(reference, out, labels)
                rows.append({"case": name, "repeat": repeat, "path": path,
                             "network_s": round(seconds, 2), "min_dice_vs_torch": min(dice.values())})
            print(f"{name:<12} repeat {repeat}: torch {times['torch']:.1f} s, oneDNN "
                  f"{times['onednn']:.1f} s, ratio {times['onednn'] / times['torch']:.3f}, "
                  f"min Dice vs torch {rows[-1]['min_dice_vs_torch']:.4f}", flush=True)
        use("onednn")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
