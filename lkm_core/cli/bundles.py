"""``lkm-segment info`` and ``bundle init / verify / precision``: describe, make and check model
bundles."""

from __future__ import annotations

import json
from pathlib import Path

from ..contract import EXIT_FAILED, EXIT_OK, META_FILE
from .common import UsageError, comma_list

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
    init.add_argument("--mirror-axes", default="", metavar="A[,A...]",
                      help="axes the model may be mirrored along at test time (default: none)")
    init.set_defaults(func=cmd_bundle_init)
    verify = bsub.add_parser("verify", help="check model.json and the weights' checksums")
    verify.add_argument("bundle")
    verify.set_defaults(func=cmd_bundle_verify)
    precision = bsub.add_parser(
        "precision", help="show whether bf16 keeps the model's labels on these images (and, "
        "with --record, let --precision auto use bf16 for it)")
    precision.add_argument("bundle", help="a bundle folder (a .zip can be checked, not recorded)")
    precision.add_argument("inputs", nargs="+", metavar="IMAGE",
                           help="images, DICOM series or folders of them, like the model's data")
    precision.add_argument("--min-dice", type=float, default=0.99)
    precision.add_argument("--min-volume-ml", type=float, default=1.0,
                           help="structures smaller than this in fp32 are shown, not judged")
    precision.add_argument("--quick", action="store_true", help="compare in quick mode")
    precision.add_argument("--threads", type=int, default=None)
    precision.add_argument("--record", action="store_true",
                           help="write the outcome into model.json (inference.cpu_precision)")
    precision.set_defaults(func=cmd_bundle_precision)
    return bsub


def cmd_info(args) -> int:
    from ..bundle import NO_ORIENTATION_WARNING, load_bundle
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
             else "  WARNING: " + NO_ORIENTATION_WARNING.format(name=bundle.name),
             "  labels:"]
    lines += [f"    {lab.value:3d}  {lab.name}" for lab in bundle.labels]
    print("\n".join(line for line in lines if line is not None))
    return EXIT_OK


def cmd_bundle_init(args) -> int:
    from ..bundle import untrained_bundle, write_bundle
    from ..network.presets import PRESET_NAMES

    if args.preset not in PRESET_NAMES:
        raise UsageError(f"Unknown preset {args.preset!r}; choose one of {', '.join(PRESET_NAMES)}.")
    names = comma_list(args.labels)
    if not names or len(set(names)) != len(names):
        raise UsageError("--labels needs distinct, comma-separated structure names.")
    try:
        spacing = [float(v) for v in args.spacing.split(",")] if args.spacing else None
    except ValueError:
        raise UsageError(f"--spacing needs comma-separated numbers, not {args.spacing!r}.") from None
    try:
        mirror_axes = [int(a) for a in comma_list(args.mirror_axes)]
    except ValueError:
        raise UsageError(f"--mirror-axes needs axis numbers like 0,1,2, not {args.mirror_axes!r}.") from None
    try:
        meta, weights = untrained_bundle(args.preset, names, modality=args.modality,
                                         spacing=spacing, folds=args.folds, seed=args.seed,
                                         name=args.name, mirror_axes=mirror_axes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = write_bundle(args.output, meta, weights)
    print(f"wrote an untrained {args.preset} bundle to {out}")
    return EXIT_OK


def cmd_bundle_verify(args) -> int:
    from ..bundle import verify_bundle
    bundle = verify_bundle(args.bundle)
    print(f"OK: {bundle.name} {bundle.version}, {len(bundle.folds)} weights file(s) match "
          "their checksums")
    return EXIT_OK


def cmd_bundle_precision(args) -> int:
    import datetime

    from ..bundle import load_bundle, record_cpu_precision
    from ..inference.predictor import cpu_supports_bf16
    from ..inputs.images import expand_inputs, read_image, validate_image
    from ..outputs.precision_proof import bf16_holds, compare_precisions

    if not 0 < args.min_dice <= 1:
        raise UsageError(f"--min-dice must be in (0, 1], not {args.min_dice}.")
    if args.min_volume_ml < 0:
        raise UsageError(f"--min-volume-ml cannot be negative ({args.min_volume_ml}).")
    if args.record and not Path(args.bundle, META_FILE).is_file():
        raise UsageError("--record needs a bundle folder: unzip the bundle, record in the folder, "
                         "and zip it again.")
    bundle = load_bundle(args.bundle)
    if not cpu_supports_bf16():
        print("note: this CPU has no bf16 units; bf16 runs emulated (slow), the labels are what "
              "a CPU with them would give")
    cases = ((name, validate_image(read_image(path), path, bundle.dimension))
             for name, path in expand_inputs(args.inputs, bundle.modality))
    results = compare_precisions(bundle, cases, threads=args.threads, quick=args.quick,
                                 min_volume_ml=args.min_volume_ml)
    for case in results:
        print(f"{case.case}: network fp32 {case.fp32_network_s:.1f} s, bf16 "
              f"{case.bf16_network_s:.1f} s (ran {case.bf16_ran})")
        for s in case.structures:
            mark = ("" if s.judged else "  (absent)" if s.voxels_differing == 0 and not s.fp32_ml
                    else "  (too small to judge)")
            print(f"  {s.name:<28} {s.fp32_ml:9.2f} mL  Dice {s.dice:.4f}  "
                  f"{s.voxels_differing} voxel(s) differ{mark}")
    holds = bf16_holds(results, args.min_dice)
    worst = min((c.min_judged_dice for c in results), default=1.0)
    print(f"bf16 {'keeps' if holds else 'does NOT keep'} the labels: lowest judged Dice "
          f"{worst:.4f} over {len(results)} case(s) (needs {args.min_dice})")
    if args.record:
        evidence = {"cases": len(results), "min_dice": round(worst, 4),
                    "required_dice": args.min_dice, "min_volume_ml": args.min_volume_ml,
                    "quick": args.quick,
                    "date": datetime.date.today().isoformat()}
        record_cpu_precision(args.bundle, "bf16" if holds else "fp32", evidence)
        print(f"recorded cpu_precision {'bf16' if holds else 'fp32'} in "
              f"{Path(args.bundle, META_FILE)}")
    return EXIT_OK if holds else EXIT_FAILED
