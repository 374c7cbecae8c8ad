"""Selective scan speed: our no-grad CPU path against the materialising reference algorithm.

The reference is mamba_ssm's ``selective_scan_ref`` algorithm (exp(delta*A) and delta*u*B built
for the whole sequence, then a loop), measured in the same run on the same inputs, so the
ratio is meaningful on a noisy machine even when absolute times wander.

    python Testing/benchmarks/scan.py [--threads 2] [--repeats 3] [--autograd]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lkm_core.ssm import selective_scan, selective_scan_reference

SIZES = [(64, 96, 16, 400), (64, 96, 16, 1600), (1, 384, 16, 13440)]


def inputs(b, d, n, l):
    g = torch.Generator().manual_seed(0)
    return dict(u=torch.randn(b, d, l, generator=g), delta=torch.randn(b, d, l, generator=g) * 0.5,
                A=-torch.rand(d, n, generator=g) * 2, B=torch.randn(b, n, l, generator=g),
                C=torch.randn(b, n, l, generator=g), D=torch.randn(d, generator=g),
                z=torch.randn(b, d, l, generator=g), delta_bias=torch.randn(d, generator=g) * 0.5)


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--autograd", action="store_true", help="also time forward+backward of the autograd path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}")
    print(f"{'(b, d, n, l)':>22} {'ours ms':>9} {'ref ms':>9} {'ratio':>7} {'max|diff|':>10}")
    for size in SIZES:
        x = inputs(*size)
        with torch.no_grad():
            ours_t, ours = timed(lambda: selective_scan(**x, delta_softplus=True), args.repeats)
            ref_t, ref = timed(lambda: selective_scan_reference(**x, delta_softplus=True), max(1, args.repeats - 1))
        diff = (ours - ref).abs().max().item()
        print(f"{str(size):>22} {ours_t * 1e3:9.1f} {ref_t * 1e3:9.1f} {ref_t / ours_t:6.1f}x {diff:10.2e}")
        if args.autograd:
            xg = {k: v.clone().requires_grad_(True) for k, v in x.items()}
            grad_t, _ = timed(lambda: selective_scan(**xg, delta_softplus=True).sum().backward(), 1)
            print(f"{'':>22} autograd forward+backward: {grad_t * 1e3:.0f} ms "
                  f"({grad_t / ours_t:.1f}x the no-grad forward)")


if __name__ == "__main__":
    main()
