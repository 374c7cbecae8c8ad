"""GPU check, for a machine with CUDA: parity of the GPU paths with the CPU path, speed, memory.

1. Parity: the Mamba layer and a small LKM-UNet on CUDA (Triton scan, and the torch loop)
   against the same weights on the CPU; the Mamba layer against transformers' MambaMixer.
2. Scan speed on the GPU: Triton kernel vs the torch step loop vs the materialising
   reference, same inputs, same run (ratios).
3. Inference of the 3D paper preset on one 40x224x192 patch: fp32 and autocast fp16 (Mamba
   stays fp32), time and peak GPU memory, and the ratio to the conv-only network.
4. One training step (forward + backward) of the small preset and the paper preset.

    PYTHONPATH=. python Testing/benchmarks/gpu_check.py [--out results.json] [--budget 400]
"""

from __future__ import annotations

import argparse
import json
import time
import traceback

import torch

from lkm_core.network import build_network, presets
from lkm_core.ssm import Mamba, kernels_available, selective_scan, selective_scan_reference
from lkm_core.ssm.triton_scan import triton_available

results: dict = {}
START = time.perf_counter()


def section(name):
    def wrap(fn):
        def run(*a, **k):
            print(f"\n== {name}", flush=True)
            try:
                results[name] = fn(*a, **k)
            except Exception as exc:  # keep going: one failing check must not hide the others
                traceback.print_exc()
                results[name] = {"error": repr(exc)}
            print(json.dumps(results[name], indent=1), flush=True)
        return run
    return wrap


def cuda_time(fn, repeats=3):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def time_and_peak_memory(fn, repeats):
    """Seconds per call (best of repeats) and peak GPU memory, after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    seconds = cuda_time(fn, repeats)
    return {"seconds": seconds, "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20}


@section("environment")
def environment():
    return {"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
            "mamba_ssm_kernels": kernels_available(), "triton": triton_available(torch.device("cuda"))}


@section("parity")
def parity():
    torch.manual_seed(0)
    out = {}
    layer = Mamba(64).eval()
    x = torch.randn(4, 500, 64)
    with torch.no_grad():
        cpu = layer(x)
        gpu_layer = layer.cuda()
        import lkm_core.ssm.mamba as mamba_module
        for backend in ("triton", "torch"):
            # the layer calls the time-major scan; force its backend for this comparison
            original = mamba_module.selective_scan_time_major
            mamba_module.selective_scan_time_major = lambda *a, **k: original(*a, **k, backend=backend)
            try:
                out[f"mamba_layer_{backend}_vs_cpu_max_abs"] = (gpu_layer(x.cuda()).cpu() - cpu).abs().max().item()
            finally:
                mamba_module.selective_scan_time_major = original
        try:
            from transformers import MambaConfig
            from transformers.models.mamba.modeling_mamba import MambaMixer
            peer = MambaMixer(MambaConfig(hidden_size=64, state_size=16, conv_kernel=4, expand=2,
                                          time_step_rank="auto", use_bias=False, use_conv_bias=True), 0)
            peer.load_state_dict(layer.state_dict())
            peer = peer.cuda().eval()
            ref = peer(x.cuda())
            ref = ref[0] if isinstance(ref, tuple) else ref
            out["mamba_layer_vs_transformers_cuda_max_abs"] = (gpu_layer(x.cuda()) - ref).abs().max().item()
        except Exception as exc:
            out["transformers_peer"] = repr(exc)
        net = build_network(presets.preset_config("3d_small", 1, 3)).eval()
        xin = torch.randn(1, 1, *presets.preset_patch_size("3d_small"))
        cpu_logits = net(xin)
        gpu_logits = net.cuda()(xin.cuda()).cpu()
        out["3d_small_logits_max_abs"] = (gpu_logits - cpu_logits).abs().max().item()
        out["3d_small_argmax_agreement"] = (gpu_logits.argmax(1) == cpu_logits.argmax(1)).float().mean().item()
        with torch.autocast("cuda", dtype=torch.float16):
            amp = net(xin.cuda()).float().cpu()
        out["3d_small_autocast_fp16_argmax_agreement"] = (amp.argmax(1) == cpu_logits.argmax(1)).float().mean().item()
    return out


@section("scan_speed")
def scan_speed():
    out = {}
    for (b, d, n, l) in [(64, 96, 16, 400), (64, 96, 16, 1600), (1, 384, 16, 13440), (128, 64, 16, 13440)]:
        g = torch.Generator(device="cuda").manual_seed(0)
        r = lambda *s: torch.randn(*s, device="cuda", generator=g)
        x = dict(u=r(b, d, l), delta=r(b, d, l) * 0.5, A=-torch.rand(d, n, device="cuda", generator=g),
                 B=r(b, n, l), C=r(b, n, l), D=r(d), z=r(b, d, l), delta_bias=r(d) * 0.5)
        row = {}
        with torch.no_grad():
            ref_out = selective_scan(**x, delta_softplus=True, backend="torch")
            row["triton_ms"] = cuda_time(lambda: selective_scan(**x, delta_softplus=True, backend="triton")) * 1e3
            row["triton_max_abs_vs_torch"] = (selective_scan(**x, delta_softplus=True, backend="triton")
                                              - ref_out).abs().max().item()
            row["torch_loop_ms"] = cuda_time(lambda: selective_scan(**x, delta_softplus=True, backend="torch"), 1) * 1e3
            if b * d * n * l <= 64 * 96 * 16 * 1600:
                row["reference_ms"] = cuda_time(lambda: selective_scan_reference(**x, delta_softplus=True), 1) * 1e3
                row["reference_over_triton"] = row["reference_ms"] / row["triton_ms"]
            row["torch_loop_over_triton"] = row["torch_loop_ms"] / row["triton_ms"]
        out[str((b, d, n, l))] = row
    return out


def forward_stats(preset, use_mamba, amp):
    torch.manual_seed(0)
    net = build_network(presets.preset_config(preset, 1, 14, use_pim=use_mamba, use_pam=use_mamba)).cuda().eval()
    x = torch.randn(1, 1, *presets.preset_patch_size(preset), device="cuda")

    def run():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            return net(x)
    return time_and_peak_memory(run, 3)


@section("inference_3d_paper")
def inference():
    out = {}
    for amp in (False, True):
        tag = "fp16_autocast" if amp else "fp32"
        full = forward_stats("3d_paper", True, amp)
        conv = forward_stats("3d_paper", False, amp)
        out[tag] = {"full": full, "conv_only": conv, "ratio_full_over_conv": full["seconds"] / conv["seconds"]}
    return out


def train_step(preset, batch):
    torch.manual_seed(0)
    net = build_network(presets.preset_config(preset, 1, 14)).cuda().train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    patch = presets.preset_patch_size(preset)
    x = torch.randn(batch, 1, *patch, device="cuda")
    y = torch.randint(0, 14, (batch, *patch), device="cuda")

    def step():
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        loss.backward()
        opt.step()
    return time_and_peak_memory(step, 1)


@section("training_step")
def training(budget):
    out = {"3d_small_batch2": train_step("3d_small", 2)}
    if time.perf_counter() - START < budget * 0.5:
        out["3d_paper_batch2"] = train_step("3d_paper", 2)
    else:
        out["3d_paper_batch2"] = "skipped: time budget"
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--budget", type=float, default=400.0, help="seconds; later parts are skipped past it")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU")
    torch.backends.cudnn.benchmark = True
    environment()
    parity()
    scan_speed()
    inference()
    training(args.budget)
    results["total_seconds"] = time.perf_counter() - START
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(f"\ntotal {results['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
