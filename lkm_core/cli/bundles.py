"""``lkm-segment info`` and ``bundle init / verify``: describe, make and check model bundles."""

from __future__ import annotations

import json

from ..contract import EXIT_OK
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
