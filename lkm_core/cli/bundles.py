"""``lkm-segment info`` and ``bundle init / verify``: describe, make and check model bundles."""

from __future__ import annotations

import datetime
import json

from ..contract import EXIT_OK
from .common import UsageError

PRESET_SPACING = {"3d_paper": [2.5, 0.8, 0.8], "2d_paper": [1.5, 1.5],
                  "3d_small": [3.0, 3.0, 3.0], "2d_small": [3.0, 3.0]}
CT_NORMALIZATION = {"scheme": "ct", "clip": [-958.0, 327.0], "mean": 82.0, "std": 136.0}


def register(sub):
    """Add ``info`` and ``bundle``; returns the ``bundle`` subparsers (training adds to them)."""
    info = sub.add_parser("info", help="describe a model bundle")
    info.add_argument("bundle")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    b = sub.add_parser("bundle", help="make or check model bundles")
    bsub = b.add_subparsers(dest="bundle_command", required=True)
    init = bsub.add_parser("init", help="an UNTRAINED bundle (random weights) for tests and benchmarks")
    init.add_argument("--preset", required=True)
    init.add_argument("--labels", required=True, help="comma-separated structure names")
    init.add_argument("-o", "--output", required=True, metavar="DIR")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--name", default=None)
    init.add_argument("--modality", default="CT", choices=["CT", "MR"])
    init.add_argument("--spacing", default=None, help="comma-separated mm, nnU-Net axis order")
    init.add_argument("--folds", type=int, default=1)
    init.set_defaults(func=cmd_bundle_init)
    verify = bsub.add_parser("verify", help="check model.json and the weights' checksums")
    verify.add_argument("bundle")
    verify.set_defaults(func=cmd_bundle_verify)
    return bsub


def cmd_info(args) -> int:
    from ..bundle import load_bundle
    bundle = load_bundle(args.bundle)
    info = bundle.summary()
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    lines = [f"{bundle.name} {bundle.version}" + ("" if bundle.trained else
                                                 "  (UNTRAINED: random weights, for testing only)"),
             f"  {bundle.description}" if bundle.description else None,
             f"  modality {bundle.modality or '?'}, {bundle.dimension}, network "
             f"{info['network']}, folds {', '.join(bundle.folds)}",
             f"  spacing {info['spacing']} mm, patch {info['patch_size']}, "
             f"transpose {info['transpose']}",
             f"  licence {bundle.licence or 'not stated'}",
             f"  orientation {bundle.orientation}: inputs are reoriented to it" if bundle.orientation
             else "  WARNING: no orientation recorded: the model sees each input in its storage "
                  "order, so its results (left/right!) depend on how the input is stored",
             "  labels:"]
    lines += [f"    {lab.value:3d}  {lab.name}" for lab in bundle.labels]
    print("\n".join(line for line in lines if line is not None))
    return EXIT_OK


def cmd_bundle_init(args) -> int:
    import torch
    from ..bundle import write_bundle
    from ..network import build_network
    from ..network.presets import PRESET_NAMES, preset_config, preset_patch_size
    from ..terminology import label_entry

    if args.preset not in PRESET_NAMES:
        raise UsageError(f"Unknown preset {args.preset!r}; choose one of {', '.join(PRESET_NAMES)}.")
    names = [n.strip() for n in args.labels.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise UsageError("--labels needs distinct, comma-separated structure names.")
    patch = list(preset_patch_size(args.preset))
    dimension = "3d" if len(patch) == 3 else "2d"
    spacing = ([float(v) for v in args.spacing.split(",")] if args.spacing
               else PRESET_SPACING.get(args.preset, [1.0] * len(patch)))
    if len(spacing) != len(patch):
        raise UsageError(f"--spacing needs {len(patch)} values for a {dimension} preset.")
    config = preset_config(args.preset, 1, len(names) + 1)
    weights = {}
    for fold in range(args.folds):
        torch.manual_seed(args.seed + fold)
        weights[f"fold_{fold}"] = build_network(config).state_dict()
    meta = {
        "name": args.name or f"untrained-{args.preset}",
        "version": "0.0.0",
        "description": f"UNTRAINED LKM-UNet ({args.preset} preset) with random weights, for "
                       "tests and benchmarks. Its segmentations are meaningless.",
        "licence": "Apache-2.0",
        "modality": args.modality,
        "dimension": dimension,
        "input_channels": 1,
        "spacing": spacing,
        "patch_size": patch,
        "transpose": [0, 1, 2],
        "orientation": None,
        "normalization": [CT_NORMALIZATION if args.modality == "CT" else {"scheme": "zscore"}],
        "network": config,
        "labels": [label_entry(i + 1, n) for i, n in enumerate(names)],
        "inference": {"step": 0.5, "mirror_axes": list(range(len(patch)))},
        "provenance": {"trained": False, "trainer": None, "data": None, "seed": args.seed,
                       "preset": args.preset,
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "note": "random initial weights from `lkm-segment bundle init`"},
    }
    out = write_bundle(args.output, meta, weights)
    print(f"wrote an untrained {args.preset} bundle to {out}")
    return EXIT_OK


def cmd_bundle_verify(args) -> int:
    from ..bundle import verify_bundle
    bundle = verify_bundle(args.bundle)
    print(f"OK: {bundle.name} {bundle.version}, {len(bundle.folds)} weights file(s) match "
          "their checksums")
    return EXIT_OK
