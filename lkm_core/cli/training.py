"""Command-line parts for training: ``plan`` and the ``bundle export / import-official /
to-nnunet`` subcommands. lkm_core.cli.root calls :func:`register_cli` and :func:`register_bundle_cli`;
every handler is stored as ``func`` on its parser and returns an exit code. Errors are LKMErrors
(the CLI turns them into one line on stderr)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import comma_list


def _sizes_arg(text: str) -> list[int]:
    try:
        return [int(v) for v in text.lower().replace(",", "x").split("x") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size list: {text!r}") from None


def register_cli(subparsers) -> None:
    """Add the ``plan`` subcommand."""
    p = subparsers.add_parser(
        "plan", help="add an LKM-UNet configuration to a dataset's nnU-Net plans",
        description="Read DATASET's nnUNetPlans.json (after nnUNetv2_plan_and_preprocess) and add a "
                    "configuration (3d_fullres_lkm or 2d_lkm) that inherits nnU-Net's and trains "
                    "lkm_core.network.LKMUNet with the stock nnUNetTrainer: "
                    "nnUNetv2_train DATASET 3d_fullres_lkm FOLD.")
    p.add_argument("dataset", help="dataset id or name (looked up in $nnUNet_preprocessed), the "
                                   "preprocessed dataset folder, or a plans .json")
    p.add_argument("--config", choices=["3d", "2d"], default="3d", help="3d (from 3d_fullres) or 2d")
    p.add_argument("--base", help="base configuration to inherit from instead (e.g. 3d_lowres)")
    p.add_argument("--name", help="name of the new configuration (default: BASE_lkm)")
    p.add_argument("--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--windows", help="PiM window per stage, e.g. 20x28x24,20x28x24,10x14x12,... "
                                     "(default: the paper's, fitted to divide each stage)")
    p.add_argument("--pools", help="PaM pooling size per stage (default: the window sizes)")
    p.add_argument("--partition", choices=["window", "strided"], default="window",
                   help="PiM sequences: contiguous windows (paper) or strided (official code)")
    p.add_argument("--patch-size", type=_sizes_arg, help="override the patch size, e.g. 64x128x128")
    p.add_argument("--batch-size", type=int, help="override the batch size")
    p.add_argument("--stages", type=int, help="use only the first N stages of nnU-Net's topology")
    p.add_argument("--features", type=_sizes_arg, help="features per stage, e.g. 32,64,128,256")
    p.add_argument("--blocks", type=_sizes_arg, help="residual blocks per encoder stage")
    p.add_argument("--no-pim", action="store_true", help="ablation: no pixel-level SSM")
    p.add_argument("--no-pam", action="store_true", help="ablation: no patch-level SSM")
    p.add_argument("--unidirectional", action="store_true", help="ablation: one scan direction")
    p.set_defaults(func=run_plan)


def run_plan(args) -> int:
    from ..training.plans import describe, plan_dataset, resolve_configuration

    path, name, block = plan_dataset(
        args.dataset, args.config, plans_identifier=args.plans, base=args.base, name=args.name,
        batch_size=args.batch_size, windows=args.windows, pools=args.pools, patch_size=args.patch_size,
        n_stages=args.stages, features_per_stage=args.features, n_blocks_per_stage=args.blocks,
        pim_partition=args.partition, use_pim=not args.no_pim, use_pam=not args.no_pam,
        bidirectional=not args.unidirectional)
    plans = json.loads(Path(path).read_text(encoding="utf-8"))
    resolved = resolve_configuration(plans, name)
    dataset = plans.get("dataset_name", "DATASET")
    print(f"Added configuration {name} to {path}")
    print(describe(block, resolved["patch_size"]))
    print(f"Train it with:  nnUNet_compile=f nnUNetv2_train {dataset} {name} FOLD"
          + ("" if args.plans == "nnUNetPlans" else f" -p {args.plans}"))
    return 0


def register_bundle_cli(bundle_subparsers) -> None:
    """Add ``bundle export``, ``bundle import-official`` and ``bundle to-nnunet``."""
    p = bundle_subparsers.add_parser(
        "export", help="turn an nnU-Net results folder into a model bundle",
        description="RESULTS_FOLDER is nnU-Net's Trainer__Plans__Configuration folder (plans.json, "
                    "dataset.json, dataset_fingerprint.json, fold_*/checkpoint_final.pth).")
    p.add_argument("results", help="nnU-Net results folder of an LKM-UNet configuration")
    _bundle_out_args(p)
    p.add_argument("--description", help="one-line description")
    p.add_argument("--parent", help="bundle this model was fine-tuned from (recorded in provenance)")
    p.add_argument("--postprocessing", default="auto", metavar="FILE|auto|none",
                   help="nnU-Net's postprocessing.pkl to record (default auto: the one "
                   "nnUNetv2_find_best_configuration wrote for the exported folds, if any); "
                   "predict applies it unless --no-postprocessing")
    p.set_defaults(func=run_export)

    p = bundle_subparsers.add_parser(
        "import-official", help="import a model trained with the official LKM-UNet code",
        description="RESULTS_FOLDER is the official code's nnU-Net (2.1.1 fork) results folder, "
                    "trained with nnUNetTrainerLKMUNet; the strided PiM partition and the official "
                    "window and pooling factors are kept.")
    p.add_argument("results", help="results folder of the official code")
    _bundle_out_args(p)
    p.set_defaults(func=run_import_official)

    p = bundle_subparsers.add_parser(
        "to-nnunet", help="write a bundle's weights as an nnU-Net checkpoint (for -pretrained_weights)",
        description="Writes FOLD's weights in the form nnUNetv2_train -pretrained_weights reads, and "
                    "(with --plans) adds the bundle's network as a configuration to a dataset's plans "
                    "so that fine-tuning uses the same architecture.")
    p.add_argument("bundle", help="model bundle (folder or .zip)")
    p.add_argument("-o", "--output", required=True, help="checkpoint file to write (.pth)")
    p.add_argument("--fold", help="which fold's weights (default: the first)")
    p.add_argument("--plans", help="also add the bundle's architecture to this dataset's plans (dataset id, "
                                   "name, folder or plans .json)")
    p.add_argument("--name", help="configuration name for --plans (default: 3d_fullres_lkm / 2d_lkm)")
    p.set_defaults(func=run_to_nnunet)


def _bundle_out_args(p) -> None:
    p.add_argument("-o", "--output", required=True, help="bundle folder (or .zip) to write")
    p.add_argument("--folds", help="folds to include, e.g. 0,1,2 or all (default: every fold found)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in each fold")
    p.add_argument("--name", help="model name (default: from the dataset name)")
    p.add_argument("--version", default="1.0.0", help="model version (default 1.0.0)")
    p.add_argument("--licence", help="licence of the weights (default: unspecified)")
    p.add_argument("--data", help="provenance: what the model was trained on")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a full unpickle of checkpoints that do not load safely (your own files only)")
    p.add_argument("--orientation", default="auto", metavar="CODE|auto|none",
                   help="how the training images were stored, e.g. RAS or LPS: every input is "
                   "reoriented to it (default auto: read from nnU-Net's reader or the training "
                   "images' headers in $nnUNet_raw / $nnUNet_preprocessed; none: record none, and "
                   "every prediction warns that left/right depends on the input's storage)")


def _orientation(text: str):
    """--orientation: "auto", "none" (None) or a 3-letter code (checked by the export)."""
    low = str(text).strip().lower()
    return None if low == "none" else "auto" if low == "auto" else str(text).strip()


def _postprocessing(text: str):
    low = str(text).strip().lower()
    return None if low == "none" else "auto" if low == "auto" else Path(text)


def run_export(args) -> int:
    from ..training.bundle_export import export_results

    out = export_results(args.results, args.output, folds=comma_list(args.folds) or None, checkpoint_name=args.checkpoint,
                         name=args.name, version=args.version, description=args.description,
                         licence=args.licence, data=args.data, parent=args.parent,
                         trust_checkpoint=args.trust_checkpoint,
                         orientation=_orientation(args.orientation),
                         postprocessing=_postprocessing(args.postprocessing))
    print(f"Wrote bundle {out}")
    return 0


def run_import_official(args) -> int:
    from ..training.official import import_official

    out = import_official(args.results, args.output, folds=comma_list(args.folds) or None, checkpoint_name=args.checkpoint,
                          name=args.name, version=args.version, licence=args.licence, data=args.data,
                          trust_checkpoint=args.trust_checkpoint,
                          orientation=_orientation(args.orientation))
    print(f"Wrote bundle {out}")
    return 0


def run_to_nnunet(args) -> int:
    from ..training.finetune import bundle_to_checkpoint

    out, config = bundle_to_checkpoint(args.bundle, args.output, fold=args.fold, plans=args.plans,
                                       name=args.name)
    print(f"Wrote {out}")
    if config:
        print(f"Added configuration {config[1]} to {config[0]}")
        print(f"Fine-tune with:  nnUNet_compile=f nnUNetv2_train DATASET {config[1]} FOLD "
              f"-pretrained_weights {out}")
    return 0
