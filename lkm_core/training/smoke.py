"""The whole training loop in miniature, on the CPU: a check that an installation works.

    python -m lkm_core.training.smoke WORKDIR

1. a tiny nnU-Net raw dataset cut from the sample CT (:mod:`.tiny_dataset`),
2. ``nnUNetv2_plan_and_preprocess`` (nnU-Net's own planner and preprocessing),
3. ``lkm-segment plan`` adds a small LKM configuration (few stages, few features, small windows),
4. a short run of the stock ``nnUNetTrainer`` (:mod:`.short_run`),
5. ``lkm-segment bundle export`` to a bundle,
and, for comparisons, nnU-Net's own predictor on the same model (:func:`nnunet_predict`).
Every step is the command a user would type, run as a child process with nnU-Net's
environment variables pointing into WORKDIR.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DATASET_ID = 901
DATASET = f"Dataset{DATASET_ID:03d}_LKMTiny"
CONFIG = "3d_fullres_lkm"
# small enough for 2 busy CPU cores: 3 stages, 8-32 features, windows of 64 voxels
PLAN_ARGS = ["--stages", "3", "--features", "8,16,32", "--blocks", "1", "--patch-size", "24x32x32",
             "--windows", "4x4x4,4x4x4,2x4x4", "--pools", "8x8x8,4x4x4,2x4x4", "--batch-size", "2"]


@dataclass
class SmokeRun:
    workdir: Path
    env: dict
    raw: Path
    results: Path          # nnU-Net's Trainer__Plans__Configuration folder
    bundle: Path
    log: Path


def nnunet_env(workdir: Path, threads: int = 1) -> dict:
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(workdir / "nnUNet_raw"),
        "nnUNet_preprocessed": str(workdir / "nnUNet_preprocessed"),
        "nnUNet_results": str(workdir / "nnUNet_results"),
        "nnUNet_n_proc_DA": "0",          # augmentation in the main process
        "nnUNet_def_n_proc": "1",
        "nnUNet_compile": "f",
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
    })
    return env


def run(cmd: list, env: dict, log: Path, timeout: float = 900) -> None:
    """Run one step; its output goes to ``log``; a failure raises with the log's tail."""
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(map(str, cmd))}\n")
        f.flush()
        proc = subprocess.run([str(c) for c in cmd], env=env, stdout=f, stderr=subprocess.STDOUT,
                              timeout=timeout)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8")[-3000:]
        raise RuntimeError(f"step failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")


def nnunet_bin(name: str) -> str:
    """An nnU-Net console script of this interpreter's environment."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


def build(workdir, *, epochs: int = 2, iterations: int = 10, threads: int = 1, seed: int = 0,
          lr: float | None = None) -> SmokeRun:
    from .tiny_dataset import make_tiny_dataset

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = nnunet_env(workdir, threads)
    log = workdir / "smoke.log"
    raw = make_tiny_dataset(env["nnUNet_raw"], DATASET_ID, "LKMTiny", n_cases=5)
    py = sys.executable
    # nnU-Net's planner sets torch threads from nnUNet_n_proc_DA and needs it >= 1
    run([nnunet_bin("nnUNetv2_plan_and_preprocess"), "-d", DATASET_ID, "-c", "3d_fullres", "-np", "1",
         "-npfp", "1", "--verify_dataset_integrity"], dict(env, nnUNet_n_proc_DA="1"), log)
    run([py, "-m", "lkm_core", "plan", str(DATASET_ID), *PLAN_ARGS], env, log)
    train = [py, "-m", "lkm_core.training.short_run", str(DATASET_ID), CONFIG, "0", "-device", "cpu",
             "--epochs", epochs, "--iterations", iterations, "--threads", threads, "--seed", seed]
    if lr is not None:
        train += ["--lr", lr]
    run(train, env, log)
    results = Path(env["nnUNet_results"]) / DATASET / f"nnUNetTrainer__nnUNetPlans__{CONFIG}"
    bundle = workdir / "bundle"
    run([py, "-m", "lkm_core", "bundle", "export", results, "-o", bundle, "--licence", "Apache-2.0",
         "--data", "crops of the sample CT (smoke test)"], env, log)
    return SmokeRun(workdir, env, raw, results, bundle, log)


def nnunet_predict(results, image_path, folds=(0,), mirroring: bool = False, threads: int = 1,
                   probabilities: bool = False):
    """nnU-Net's own nnUNetPredictor on one image file -> SimpleITK label image (input grid);
    with ``probabilities``: (labels, nnU-Net's probabilities as --save_probabilities saves them)."""
    import SimpleITK as sitk
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(threads)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(results), use_folds=tuple(folds),
                                                   checkpoint_name="checkpoint_final.pth")
    data, props = SimpleITKIO().read_images([str(image_path)])
    seg = predictor.predict_single_npy_array(data, props, None, None, probabilities)
    seg, probs = seg if probabilities else (seg, None)
    out = sitk.GetImageFromArray(seg.astype("uint8"))
    out.CopyInformation(sitk.ReadImage(str(image_path)))
    return (out, probs) if probabilities else out


def dice_per_label(a, b) -> dict:
    """{label: Dice} for every label present in either array."""
    import numpy as np

    out = {}
    for v in sorted(set(np.unique(a)) | set(np.unique(b))):
        if v == 0:
            continue
        x, y = a == v, b == v
        out[int(v)] = float(2 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lkm_core.training.smoke", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    r = build(args.workdir, epochs=args.epochs, iterations=args.iterations, threads=args.threads)
    print(json.dumps({"bundle": str(r.bundle), "results": str(r.results), "log": str(r.log)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
