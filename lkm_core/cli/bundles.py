"""``lkm-segment info`` and ``bundle init / verify / speedups``: describe, make and check model
bundles."""

from __future__ import annotations

import json
from pathlib import Path

from ..contract import EXIT_OK, META_FILE
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
    speedups = bsub.add_parser(
        "speedups", help="show whether bf16, the fitted tiling and the body crop keep the model's "
        "labels on these images, and what they save (with --record, let auto use those that pay)")
    speedups.add_argument("bundle", help="a bundle folder (a .zip can be checked, not recorded)")
    speedups.add_argument("inputs", nargs="+", metavar="IMAGE",
                          help="images, DICOM series or folders of them, like the model's data")
    speedups.add_argument("--only", default=None, metavar="NAME[,NAME...]",
                          help="check only these: precision, tiling, crop (default: all the "
                          "model can take; crop needs a CT model)")
    speedups.add_argument("--min-dice", type=float, default=0.99)
    speedups.add_argument("--min-volume-ml", type=float, default=1.0,
                          help="structures smaller than this in both runs are shown, not judged")
    speedups.add_argument("--max-time-ratio", type=float, default=0.9,
                          help="--record takes a speed-up only if its network time is at most "
                          "this share of the reference's")
    speedups.add_argument("--quick", action="store_true", help="compare in quick mode")
    speedups.add_argument("--threads", type=int, default=None)
    speedups.add_argument("--record", action="store_true",
                          help="write into model.json what auto runs: each speed-up that keeps "
                          "the labels and pays, else nnU-Net's exact path")
    speedups.set_defaults(func=cmd_bundle_speedups)
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
             f"  auto runs: tiling {bundle.tiling}, crop {bundle.crop}, on CPUs with bf16 units "
             f"{bundle.cpu_precision} (bundle speedups --record sets these)",
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


def cmd_bundle_speedups(args) -> int:
    import datetime

    from ..bundle import INFERENCE_CHOICES, load_bundle, record_inference_choices
    from ..inference.predictor import cpu_supports_bf16
    from ..inputs.images import expand_inputs, read_image, validate_image
    from ..outputs import speedup_check as check

    if not 0 < args.min_dice <= 1:
        raise UsageError(f"--min-dice must be in (0, 1], not {args.min_dice}.")
    if args.max_time_ratio <= 0:
        raise UsageError(f"--max-time-ratio must be positive, not {args.max_time_ratio}.")
    if args.min_volume_ml < 0:
        raise UsageError(f"--min-volume-ml cannot be negative ({args.min_volume_ml}).")
    if args.record and not Path(args.bundle, META_FILE).is_file():
        raise UsageError("--record needs a bundle folder: unzip the bundle, record in the folder, "
                         "and zip it again.")
    bundle = load_bundle(args.bundle)
    possible = check.applicable(bundle)
    chosen = comma_list(args.only) if args.only else possible
    unknown = [name for name in chosen if name not in check.SPEEDUPS]
    if unknown or not chosen:
        raise UsageError(f"--only takes {', '.join(check.SPEEDUPS)}, not {args.only!r}.")
    if "crop" in chosen and "crop" not in possible:
        raise UsageError("The body crop finds the patient by CT intensities, and this model does "
                         "not take CT: leave crop out of --only.")
    has_units = cpu_supports_bf16()
    if "precision" in chosen and not has_units:
        if args.record:
            raise UsageError("Recording bf16 needs a CPU with bf16 units (AVX512-BF16 or AMX): "
                             "whether it pays can only be measured there. Use --only tiling,crop "
                             "here.")
        print("note: this CPU has no bf16 units; bf16 runs emulated (slow), the labels are what "
              "a CPU with them would give")
    cases = ((name, validate_image(read_image(path), path, bundle.dimension))
             for name, path in expand_inputs(args.inputs, bundle.modality))
    found = check.compare(bundle, cases, chosen, threads=args.threads, quick=args.quick,
                          min_volume_ml=args.min_volume_ml)
    choices, evidence = {}, {}
    today = datetime.date.today().isoformat()
    for speedup, results in found.items():
        option, _, value = check.SPEEDUPS[speedup]
        print(f"{speedup} ({value} against {INFERENCE_CHOICES[option][1]}):")
        for case in results:
            print(f"  {case.case}: network {case.reference_network_s:.1f} s -> "
                  f"{case.network_s:.1f} s{'' if case.ran else f' ({value} did not run)'}")
            for s in case.structures:
                mark = ("" if s.judged else "  (absent)" if s.voxels_differing == 0
                        and not s.reference_ml else "  (too small to judge)")
                print(f"    {s.name:<28} {s.reference_ml:9.2f} mL  Dice {s.dice:.4f}  "
                      f"{s.voxels_differing} voxel(s) differ{mark}")
        keeps = check.keeps_labels(results, args.min_dice)
        print(f"  {value} {'keeps' if keeps else 'does NOT keep'} the labels (lowest judged Dice "
              f"{check.lowest_dice(results):.4f}, needs {args.min_dice}); network time "
              f"{check.time_ratio(results):.2f}x the reference's")
        pays = check.pays(results, args.min_dice, args.max_time_ratio)
        choices[option] = value if pays else INFERENCE_CHOICES[option][1]
        evidence[option] = check.evidence(results, args.min_dice, args.min_volume_ml,
                                          args.max_time_ratio, args.quick, today)
    if args.record:
        record_inference_choices(args.bundle, choices, evidence)
        print("recorded in " + str(Path(args.bundle, META_FILE)) + ": "
              + ", ".join(f"{k} {v}" for k, v in choices.items()))
    return EXIT_OK
