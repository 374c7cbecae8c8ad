"""The default model: a small 3D LKM-UNet trained on the sample CT, on the CPU.

One command reproduces the bundle shipped in ``lkm_core/models/default``::

    python -m lkm_core.training.default_model -o lkm_core/models/default

What it does (all seeded, fixed iteration count, so the run is repeatable on one machine):

* data: the sample CT (``lkm_core.inputs.sample_data.fetch_sample_ct``: TotalSegmentator 2.18.0's
  public test CT, 3 mm) and its reference labelmap, which is itself TotalSegmentator's
  prediction. Nine organs are kept (:data:`ORGANS`); every other label is background.
* normalisation: nnU-Net's CTNormalization computed on the organ (foreground) voxels: clip to
  their 0.5/99.5 percentiles, subtract their mean, divide by their std. The numbers are written
  to model.json, and the Predictor applies exactly them.
* network: LKM-UNet with PiM + PaM + bidirectional Mamba in every stage, 5 stages, widths
  8-128 (:data:`NETWORK_KWARGS`); deep supervision during training only.
* sampling: one patch per step, centred with probability 2/3 on a voxel of a randomly chosen
  organ (class-balanced), else anywhere; heavy augmentation since there is one case: rotation
  (+-20 deg axial, +-8 deg otherwise), scaling 0.8-1.25, per-axis stretch, intensity
  multiply/contrast/gamma, Gaussian noise and blur, simulated low resolution. No mirroring:
  left and right organs (kidneys, liver/spleen) must keep their sides.
* loss CE + soft Dice (batch Dice over the foreground classes, as nnU-Net), AdamW with linear
  warm-up then poly decay, gradient clipping.

Training uses the project's autograd selective scan (no mamba_ssm), so it runs anywhere; a
CPU step is dominated by the stage-0 PiM scan, which is why the network is narrow there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Our label values, in this order; values of the reference labelmap in sample_data.REFERENCE_LABELS
ORGANS = ("liver", "spleen", "kidney_right", "kidney_left", "stomach", "gallbladder",
          "pancreas", "aorta", "inferior_vena_cava")

PATCH_SIZE = (32, 64, 64)
NETWORK_KWARGS = dict(
    n_stages=5,
    features_per_stage=[8, 16, 32, 64, 128],
    kernel_sizes=[[3, 3, 3]] * 5,
    strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
    n_blocks_per_stage=[1, 1, 2, 2, 2],
    n_conv_per_stage_decoder=[1, 1, 1, 1],
    # PiM windows per stage (feature maps of a 32x64x64 patch: 32x64x64 ... 2x4x4)
    window_sizes=[[8, 8, 8], [8, 8, 8], [4, 8, 8], [2, 4, 4], [2, 4, 4]],
    # PaM pooling (official code's decreasing factors): 256 pooled tokens per patch at stages
    # 0-3, i.e. global context across the patch; stage 4 is small enough to scan whole
    pool_sizes=[[8, 8, 8], [4, 4, 4], [2, 2, 2], [1, 1, 1], [1, 1, 1]],
)
DEFAULTS = dict(iterations=450, seed=20241126, lr=3e-3, weight_decay=3e-5, warmup=15,
                threads=1, foreground_fraction=0.67)
BUNDLE_NAME = "lkm-default-abdomen-ct-3mm"
BUNDLE_VERSION = "0.1.0"


# --------------------------------------------------------------------------------------------
def network_config(num_classes: int = len(ORGANS) + 1, deep_supervision: bool = False) -> dict:
    from ..network.presets import preset_config
    return preset_config("3d_small", 1, num_classes, deep_supervision=deep_supervision,
                         **NETWORK_KWARGS)


def load_training_case(sample=None):
    """(image array float32 (z, y, x), label array uint8 with our values, SimpleITK image)."""
    import SimpleITK as sitk
    from ..inputs.sample_data import REFERENCE_LABELS, fetch_sample_ct

    sample = sample or fetch_sample_ct()
    image = sitk.ReadImage(str(sample.image), sitk.sitkFloat32)
    ref = sitk.ReadImage(str(sample.reference_labels))
    if image.GetSize() != ref.GetSize():
        raise RuntimeError("sample CT and its labels have different grids")
    ref_arr = sitk.GetArrayFromImage(ref)
    labels = np.zeros(ref_arr.shape, np.uint8)
    for value, organ in enumerate(ORGANS, start=1):
        labels[ref_arr == REFERENCE_LABELS[organ]] = value
    return sitk.GetArrayFromImage(image).astype(np.float32), labels, image


def ct_normalization(image: np.ndarray, labels: np.ndarray) -> dict:
    """nnU-Net's CTNormalization statistics from the foreground voxels."""
    fg = image[labels > 0].astype(np.float64)
    lo, hi = np.percentile(fg, [0.5, 99.5])
    return {"scheme": "ct", "clip": [round(float(lo), 3), round(float(hi), 3)],
            "mean": round(float(fg.mean()), 4), "std": round(float(fg.std()), 4)}


# --------------------------------------------------------------------------------------------
class PatchSampler:
    """Random augmented patches from one volume (numpy RNG for every random choice)."""

    def __init__(self, image: np.ndarray, labels: np.ndarray, patch, rng, foreground_fraction):
        import torch
        self.torch = torch
        self.image = torch.from_numpy(np.ascontiguousarray(image))[None, None]
        self.labels = torch.from_numpy(labels.astype(np.float32))[None, None]
        self.shape = np.array(image.shape)
        self.patch = np.array(patch)
        self.rng = rng
        self.fg = foreground_fraction
        self.class_voxels = {c: np.argwhere(labels == c) for c in range(1, int(labels.max()) + 1)}
        self.class_voxels = {c: v for c, v in self.class_voxels.items() if len(v)}
        self.vmin, self.vmax = float(image.min()), float(image.max())

    def _centre(self):
        rng = self.rng
        if rng.random() < self.fg:
            c = rng.choice(sorted(self.class_voxels))
            vox = self.class_voxels[c]
            centre = vox[rng.integers(len(vox))].astype(float)
            centre += rng.uniform(-0.25, 0.25, 3) * self.patch  # organ not always in the middle
        else:
            centre = rng.uniform(0, 1, 3) * (self.shape - 1)
        return centre

    def _matrix(self):
        """Voxel-offset -> voxel-offset linear map (array axes z, y, x): rotation and scale."""
        rng = self.rng
        m = np.eye(3)
        if rng.random() < 0.7:
            # rotation in the axial plane (y, x) mostly; small tilts about the other axes
            a = np.deg2rad(rng.uniform(-20, 20))
            b = np.deg2rad(rng.uniform(-8, 8))
            g = np.deg2rad(rng.uniform(-8, 8))
            rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
            ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
            rx = np.array([[np.cos(g), -np.sin(g), 0], [np.sin(g), np.cos(g), 0], [0, 0, 1]])
            m = rz @ ry @ rx
        if rng.random() < 0.7:
            scale = rng.uniform(0.8, 1.25) * rng.uniform(0.92, 1.08, 3)  # zoom + mild stretch
            m = m @ np.diag(scale)
        return m

    def sample(self):
        """(image (1, 1, *patch) float32, labels (1, *patch) int64)."""
        torch = self.torch
        F = torch.nn.functional
        centre, m = self._centre(), self._matrix()
        axes = [np.arange(p) - (p - 1) / 2 for p in self.patch]
        offsets = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        coords = offsets @ m.T + centre                       # voxel coordinates (z, y, x)
        norm = 2 * coords / (self.shape - 1) - 1              # align_corners=True
        grid = torch.from_numpy(norm[:, ::-1].copy()).float()  # grid_sample wants (x, y, z)
        grid = grid.reshape(1, *self.patch, 3)
        img = F.grid_sample(self.image, grid, mode="bilinear", padding_mode="border",
                            align_corners=True)
        lab = F.grid_sample(self.labels, grid, mode="nearest", padding_mode="border",
                            align_corners=True)
        img = self._intensity(img)
        return img, lab[:, 0].round().long()

    def _intensity(self, x):
        torch, rng = self.torch, self.rng
        F = torch.nn.functional
        if rng.random() < 0.2:                                # Gaussian blur (separable)
            sigma = rng.uniform(0.5, 1.0)
            k = torch.arange(-2, 3, dtype=torch.float32)
            k = torch.exp(-0.5 * (k / sigma) ** 2)
            k = k / k.sum()
            for axis in range(3):
                shape = [1, 1, 1, 1, 1]
                shape[2 + axis] = 5
                pad = [0] * 6
                pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = 2
                x = F.conv3d(F.pad(x, pad, mode="replicate"), k.reshape(shape))
        if rng.random() < 0.3:                                # simulated low resolution
            f = rng.uniform(0.5, 1.0)
            size = [max(1, int(round(p * f))) for p in x.shape[2:]]
            x = F.interpolate(F.interpolate(x, size=size, mode="nearest"), size=x.shape[2:],
                              mode="trilinear", align_corners=False)
        if rng.random() < 0.3:                                # brightness (multiplicative)
            x = x * rng.uniform(0.75, 1.25)
        if rng.random() < 0.3:                                # contrast
            mean = x.mean()
            lo, hi = x.min(), x.max()
            x = ((x - mean) * rng.uniform(0.75, 1.25) + mean).clamp(lo, hi)
        if rng.random() < 0.3:                                # gamma, nnU-Net style
            lo, hi = x.min(), x.max()
            span = (hi - lo).clamp_min(1e-6)
            x = ((x - lo) / span) ** rng.uniform(0.7, 1.5) * span + lo
        if rng.random() < 0.2:                                # Gaussian noise
            x = x + torch.randn_like(x) * math.sqrt(rng.uniform(0, 0.1))
        return x.contiguous()


def dice_ce_loss(logits, target, num_classes):
    """CE + (1 - mean soft Dice over the foreground classes), batch Dice (nnU-Net style)."""
    import torch
    F = torch.nn.functional
    ce = F.cross_entropy(logits, target)
    probs = logits.softmax(1)
    onehot = F.one_hot(target, num_classes).movedim(-1, 1).to(probs.dtype)
    dims = (0, *range(2, logits.dim()))
    inter = (probs * onehot).sum(dims)[1:]
    denom = probs.sum(dims)[1:] + onehot.sum(dims)[1:]
    dice = (2 * inter + 1e-5) / (denom + 1e-5).clamp_min(1e-8)
    return ce + (1 - dice.mean()), ce.detach(), dice.detach()


def deep_supervision_targets(target, n_outputs):
    """Nearest-neighbour label maps for each decoder level (full resolution first)."""
    out = [target]
    for _ in range(1, n_outputs):
        out.append(out[-1][:, ::2, ::2, ::2])
    return out


# --------------------------------------------------------------------------------------------
def train(out_dir, iterations, seed, lr, weight_decay, warmup, threads, foreground_fraction,
          checkpoint_every=50, log_every=10, evaluate=True, command=None,
          stop_after=None) -> Path:
    """Train and write the bundle. ``stop_after`` ends the run early (the learning-rate schedule
    still assumes ``iterations``); the run is then identical to its first steps of a full one,
    and to the checkpoint saved at that step."""
    import torch
    from ..network import build_network, count_parameters

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)

    image, labels, itk_image = load_training_case()
    norm = ct_normalization(image, labels)
    from ..inference.preprocessing import normalize
    normalize(image, norm)
    sampler = PatchSampler(image, labels, PATCH_SIZE, rng, foreground_fraction)
    num_classes = len(ORGANS) + 1

    net = build_network(network_config(num_classes, deep_supervision=True))
    net.apply(net.initialize)
    n_params = count_parameters(net)
    log.info("network: %d parameters; patch %s; normalisation %s", n_params, PATCH_SIZE, norm)
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (no_decay if p.dim() <= 1 or name.endswith(("A_log", ".D")) else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)

    def lr_at(it):
        if it < warmup:
            return lr * (it + 1) / warmup
        return lr * (1 - (it - warmup) / max(1, iterations - warmup)) ** 0.9

    ds_weights = None
    started = time.time()
    t_last = time.perf_counter()
    running = None
    from ..files import cache_dir
    scratch = cache_dir() / "default_model_training"   # checkpoints, outside the package
    scratch.mkdir(parents=True, exist_ok=True)
    net.train()
    steps = min(iterations, stop_after or iterations)
    for it in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(it)
        x, y = sampler.sample()
        outputs = net(x)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        if ds_weights is None:  # nnU-Net: 1/2^k, lowest resolution off, normalised
            w = np.array([1 / 2 ** k for k in range(len(outputs))])
            if len(w) > 1:
                w[-1] = 0
            ds_weights = (w / w.sum()).tolist()
        targets = deep_supervision_targets(y, len(outputs))
        loss = 0.0
        for wk, out, tgt in zip(ds_weights, outputs, targets):
            if wk:
                term, ce, dice = dice_ce_loss(out, tgt, num_classes)
                loss = loss + wk * term
                if out is outputs[0]:
                    top = (ce, dice)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        opt.step()
        value = float(loss.detach())
        running = value if running is None else 0.9 * running + 0.1 * value
        if (it + 1) % log_every == 0 or it == 0:
            now = time.perf_counter()
            log.info("iter %d/%d loss %.4f (avg %.4f) ce %.4f dice/class %s lr %.2e %.1fs/it "
                     "elapsed %.1f min", it + 1, iterations, value, running, float(top[0]),
                     " ".join(f"{d:.2f}" for d in top[1].tolist()), lr_at(it),
                     (now - t_last) / (1 if it == 0 else log_every),
                     (time.time() - started) / 60)
            t_last = now
        if checkpoint_every and (it + 1) % checkpoint_every == 0:
            _save_checkpoint(net, scratch / f"checkpoint_{it + 1:04d}.safetensors", it + 1,
                             seconds=round(time.time() - started, 1), loss_avg=round(running, 4))
    seconds = time.time() - started
    net.decoder.deep_supervision = False
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    info = {"iterations": steps, "schedule_iterations": iterations, "seconds": round(seconds, 1), "parameters": n_params,
            "seed": seed, "lr": lr, "weight_decay": weight_decay, "warmup": warmup,
            "threads": threads, "foreground_fraction": foreground_fraction,
            "final_loss_avg": round(float(running), 4)}
    bundle = write_default_bundle(out_dir, state, norm, itk_image, info, command)
    if evaluate:
        _record_dice(bundle, threads)
    return Path(bundle)


def bundle_from_checkpoint(args, command) -> Path:
    """The bundle of a checkpoint saved by :func:`train` at step N: the same weights a run with
    ``--stop-after N`` writes (the command recorded says so)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(args.from_checkpoint, framework="pt") as f:
        steps = int(f.metadata()["iteration"])
        meta = dict(f.metadata())
    state = load_file(args.from_checkpoint)
    image, labels, itk_image = load_training_case()
    norm = ct_normalization(image, labels)
    info = {"iterations": steps, "schedule_iterations": args.iterations,
            "seconds": _number(meta.get("seconds")), "parameters": sum(
                v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")),
            "seed": args.seed, "lr": args.lr, "weight_decay": args.weight_decay,
            "warmup": args.warmup, "threads": args.threads,
            "foreground_fraction": args.foreground_fraction,
            "final_loss_avg": _number(meta.get("loss_avg"))}
    command = (command.split(" --from-checkpoint")[0] + f" --stop-after {steps}").strip()
    bundle = write_default_bundle(args.output, state, norm, itk_image, info, command)
    if not args.no_evaluate:
        _record_dice(bundle, args.threads)
    return Path(bundle)


def _number(text):
    """A float from checkpoint metadata, or None (JSON has no NaN) when it was not recorded."""
    return float(text) if text not in (None, "", "nan") else None


def _record_dice(bundle, threads):
    dice = evaluate_bundle(bundle, threads=threads)
    meta_path = Path(bundle) / "model.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["provenance"]["dice_on_training_ct"] = {k: round(v, 4) for k, v in dice.items()}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("Dice on the training CT: %s", dice)
    return dice


def _save_checkpoint(net, path, iteration, **extra):
    from safetensors.torch import save_file
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    tmp = path.with_suffix(".partial")
    save_file(state, str(tmp), metadata={"iteration": str(iteration),
                                         **{k: str(v) for k, v in extra.items()}})
    os.replace(tmp, path)


def write_default_bundle(out_dir, state, norm, itk_image, info, command=None) -> Path:
    import SimpleITK as sitk
    import torch
    from ..bundle import write_bundle
    from ..inputs.sample_data import SOURCE_PACKAGE, SOURCE_SHA256
    from ..terminology import label_entry

    spacing_zyx = [round(float(s), 4) for s in itk_image.GetSpacing()[::-1]]
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        itk_image.GetDirection())
    today = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = {
        "name": BUNDLE_NAME,
        "version": BUNDLE_VERSION,
        "description": ("Small demonstration LKM-UNet (3D, PiM + PaM + bidirectional Mamba) for "
                        "nine abdominal organs on CT at 3 mm, trained on ONE public example CT "
                        "whose labels are themselves predictions of another model "
                        "(TotalSegmentator). For trying the software; NOT for clinical or "
                        "research use."),
        "licence": "Apache-2.0",
        "modality": "CT",
        "dimension": "3d",
        "input_channels": 1,
        "spacing": spacing_zyx,
        "patch_size": list(PATCH_SIZE),
        "transpose": [0, 1, 2],
        "orientation": orientation,
        "quick_spacing": 3.0,
        "normalization": [norm],
        "network": network_config(len(ORGANS) + 1, deep_supervision=False),
        "labels": [label_entry(i, name) for i, name in enumerate(ORGANS, start=1)],
        "inference": {"step": 0.5, "mirror_axes": []},
        "provenance": {
            "trained": True,
            "data": {
                "source": f"tests/reference_files/example_ct.nii.gz of the source distribution "
                          f"of {SOURCE_PACKAGE} (sha256 {SOURCE_SHA256})",
                "licence": "Apache-2.0",
                "cases": 1,
                "labels": ("tests/reference_files/example_seg_fast_force_split.nii.gz: "
                           "TotalSegmentator's own (fast, 3 mm) prediction, not manual ground "
                           "truth; its values "
                           + ", ".join(f"{o}={v}" for o, v in _reference_values().items())
                           + " kept, all other labels mapped to background"),
            },
            "trainer": "lkm_core.training.default_model (own training loop, CPU)",
            "command": command or "python -m lkm_core.training.default_model -o "
                                  "lkm_core/models/default",
            "training": info,
            "augmentation": "rotation, scaling, stretch, blur, low resolution, brightness, "
                            "contrast, gamma, noise; no mirroring",
            "torch": torch.__version__,
            "machine": f"{platform.machine()} CPU, {info.get('threads')} threads",
            "date": today,
            "note": ("Trained on a single case; evaluated mainly on that same case. Expect poor "
                     "results on other scans, especially small organs (pancreas, "
                     "gallbladder). Not for clinical use."),
        },
    }
    return write_bundle(out_dir, meta, {"fold_0": state})


def _reference_values():
    from ..inputs.sample_data import REFERENCE_LABELS
    return {o: REFERENCE_LABELS[o] for o in ORGANS}


# --------------------------------------------------------------------------------------------
def evaluate_bundle(bundle_path, threads=2, sample=None) -> dict:
    """Dice of the bundle's prediction on the sample CT against its reference labels."""
    import SimpleITK as sitk
    from ..bundle import load_bundle
    from ..outputs.reading import organ_dice
    from ..inference.predictor import Predictor
    from ..inputs.sample_data import fetch_sample_ct

    sample = sample or fetch_sample_ct()
    bundle = load_bundle(bundle_path)
    result = Predictor(bundle, device="cpu", threads=threads).predict_file(sample.image)
    reference = sitk.ReadImage(str(sample.reference_labels))
    return organ_dice(result.labels, reference, {lab.value: lab.name for lab in bundle.labels})


def benchmark(iterations: int, threads: int, seed: int) -> float:
    """Seconds per training step (after one warm-up step)."""
    import torch
    from ..network import build_network
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    image, labels, _ = load_training_case()
    normalize_stats = ct_normalization(image, labels)
    from ..inference.preprocessing import normalize
    normalize(image, normalize_stats)
    sampler = PatchSampler(image, labels, PATCH_SIZE, np.random.default_rng(seed), 0.67)
    net = build_network(network_config(len(ORGANS) + 1, deep_supervision=True))
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    times = []
    for it in range(iterations + 1):
        t0 = time.perf_counter()
        x, y = sampler.sample()
        outs = net(x)
        loss = dice_ce_loss(outs[0], y, len(ORGANS) + 1)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        log.info("benchmark step %d: %.2f s", it, times[-1])
    return float(np.mean(times[1:])) if len(times) > 1 else times[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lkm_core.training.default_model",
        description="Train the default LKM-UNet bundle on the sample CT (CPU).")
    p.add_argument("-o", "--output", default="lkm_core/models/default", help="bundle folder")
    p.add_argument("--iterations", type=int, default=DEFAULTS["iterations"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"])
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"])
    p.add_argument("--foreground-fraction", type=float, default=DEFAULTS["foreground_fraction"])
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop after N steps (the LR schedule still spans --iterations)")
    p.add_argument("--from-checkpoint", metavar="FILE", default=None,
                   help="write the bundle from a checkpoint of an earlier run instead of training "
                        "(give the same options as that run)")
    p.add_argument("--no-evaluate", action="store_true", help="skip the Dice check at the end")
    p.add_argument("--benchmark", type=int, default=0, metavar="N",
                   help="only time N training steps and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    if args.benchmark:
        sec = benchmark(args.benchmark, args.threads, args.seed)
        print(f"{sec:.2f} s per step ({args.threads} threads, patch {PATCH_SIZE})")
        return 0
    command = "python -m lkm_core.training.default_model " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    if args.from_checkpoint:
        out = bundle_from_checkpoint(args, command.strip())
    else:
        out = train(args.output, args.iterations, args.seed, args.lr, args.weight_decay,
                    args.warmup, args.threads, args.foreground_fraction,
                    evaluate=not args.no_evaluate, command=command.strip(),
                    stop_after=args.stop_after)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
