"""A short run of nnU-Net's stock ``nnUNetTrainer``: smoke tests, CPU checks, quick demos.

``nnUNetv2_train`` always runs nnU-Net's schedule (1000 epochs of 250 iterations, or the fixed
epoch counts of the ``nnUNetTrainer_Xepochs`` variants, which still run 250 iterations each).
For a check that the whole chain works this module builds the trainer exactly as
``nnUNetv2_train`` does (``get_trainer_from_args`` + ``maybe_load_checkpoint``), then only sets the
trainer's own hyper-parameter attributes (``num_epochs``, ``num_iterations_per_epoch``,
``num_val_iterations_per_epoch``) before ``run_training()``. No trainer subclass: the checkpoint
names ``nnUNetTrainer``, so nnU-Net's own predictor and ``nnUNetv2_train --c`` read it as usual.

    python -m lkm_core.training.short_run DATASET 3d_fullres_lkm 0 --epochs 1 --iterations 5 -device cpu

Set nnUNet_raw / nnUNet_preprocessed / nnUNet_results as for nnU-Net.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lkm_core.training.short_run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset")
    p.add_argument("configuration")
    p.add_argument("fold")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("-tr", dest="trainer", default="nnUNetTrainer", help="nnU-Net trainer class")
    p.add_argument("-device", default="cpu", choices=["cpu", "cuda", "mps"])
    p.add_argument("-pretrained_weights", default=None)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--iterations", type=int, default=5, help="training iterations per epoch")
    p.add_argument("--val-iterations", type=int, default=1, help="validation iterations per epoch")
    p.add_argument("--validate", action="store_true",
                   help="run nnU-Net's final sliding-window validation of the fold afterwards")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (nnU-Net: 0.01)")
    p.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)

    os.environ.setdefault("nnUNet_compile", "f")  # torch.compile over a Python scan loop: no
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.seed is not None:
        import random

        import numpy as np
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
    fold = args.fold if args.fold == "all" else int(args.fold)
    trainer = get_trainer_from_args(args.dataset, args.configuration, fold, args.trainer, args.plans,
                                    device=torch.device(args.device))
    trainer.num_epochs = args.epochs
    trainer.num_iterations_per_epoch = args.iterations
    trainer.num_val_iterations_per_epoch = args.val_iterations
    if args.lr is not None:
        trainer.initial_lr = args.lr  # read by configure_optimizers() in initialize()
    maybe_load_checkpoint(trainer, False, False, args.pretrained_weights)
    trainer.run_training()
    if args.validate:
        trainer.perform_actual_validation(False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
