"""The command line: ``lkm-segment`` / ``python -m lkm_core``.

    lkm-segment predict INPUT... -o OUTDIR --model BUNDLE [--device auto|cpu|cuda] [--quick]
        [--tta] [--step 0.5] [--subset NAME[,NAME...]] [--threads N] [--overwrite]
        [--format seg.nrrd|nii.gz|nrrd] [--progress json|bar|none] [--num-parts N --part-id K]
    lkm-segment info BUNDLE [--json]
    lkm-segment bundle init --preset NAME --labels liver,spleen,... -o DIR [--seed N]
    lkm-segment bundle verify BUNDLE
    lkm-segment demo [-o OUTDIR] [--device ...] [--threads N]   (sample CT, default model, Dice)

Exit codes: 0 every case succeeded (or was already done), 1 a case failed (or the run was
cancelled, or the model could not be loaded), 2 usage errors (bad options, unknown --subset).
With ``--progress json`` stdout carries only JSON lines (DESIGN §10); anything else any library
prints goes to stderr. Ctrl-C / SIGTERM stop the run; outputs are written under temporary names
and renamed, so nothing partial is left behind.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from .errors import Cancelled, InputError, LKMError, ResourceError

log = logging.getLogger("lkm_core")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

PRESET_SPACING = {"3d_paper": [2.5, 0.8, 0.8], "2d_paper": [1.5, 1.5],
                  "3d_small": [3.0, 3.0, 3.0], "2d_small": [3.0, 3.0]}
CT_NORMALIZATION = {"scheme": "ct", "clip": [-958.0, 327.0], "mean": 82.0, "std": 136.0}


class UsageError(LKMError):
    kind = "usage"


# ------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lkm-segment",
                                description="LKM-UNet organ segmentation (CT/MR) from the command line.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("predict", help="segment images")
    pr.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="image files (NRRD, NIfTI, MHA), DICOM series folders, or folders of images")
    pr.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    pr.add_argument("--model", metavar="BUNDLE", help="model bundle folder or .zip "
                    "(default: the model installed with lkm_core)")
    pr.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    pr.add_argument("--quick", action="store_true", help="coarser spacing (3 mm): fast on CPUs")
    pr.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (slower)")
    pr.add_argument("--step", type=float, default=None, help="sliding-window step as a fraction "
                    "of the patch (default 0.5)")
    pr.add_argument("--subset", default=None, metavar="NAME[,NAME...]",
                    help="keep only these structures")
    pr.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ITK")
    pr.add_argument("--batch-size", type=int, default=None, help="patches per network call")
    pr.add_argument("--overwrite", action="store_true", help="redo cases whose outputs exist")
    pr.add_argument("--format", default="seg.nrrd", choices=["seg.nrrd", "nii.gz", "nrrd"])
    pr.add_argument("--progress", default="bar", choices=["json", "bar", "none"])
    pr.add_argument("--num-parts", type=int, default=None, help="split the cases into N parts")
    pr.add_argument("--part-id", type=int, default=None, help="run part K (0-based)")
    pr.add_argument("-v", "--verbose", action="store_true")

    info = sub.add_parser("info", help="describe a model bundle")
    info.add_argument("bundle")
    info.add_argument("--json", action="store_true")

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
    verify = bsub.add_parser("verify", help="check model.json and the weights' checksums")
    verify.add_argument("bundle")
    from .training.commands import register_bundle_cli, register_cli  # plan, bundle export/...
    register_cli(sub)
    register_bundle_cli(bsub)
    from .demo import register_cli as register_demo_cli
    register_demo_cli(sub)
    return p


def _version() -> str:
    from . import __version__
    return f"lkm-segment {__version__}"


# ------------------------------------------------------------------------------------------------
def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _setup_logging(reporter, level) -> None:
    from .progress import ReporterLogHandler
    for h in list(log.handlers):
        log.removeHandler(h)
    log.addHandler(ReporterLogHandler(reporter, level))
    log.setLevel(level)
    log.propagate = False


def _json_stdout():
    """Keep the real stdout for JSON lines only; route fd 1 and sys.stdout to stderr."""
    sys.stdout.flush()
    real = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return real


def _shard(cases: list, args) -> list:
    parts, part = args.num_parts, args.part_id
    if parts is None and part is None and "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        parts, part = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if parts is None and part is None:
        return cases
    if parts is None or part is None or parts < 1 or not 0 <= part < parts:
        raise UsageError("--num-parts N and --part-id K go together, with 0 <= K < N.")
    return cases[part::parts]


def _device(args) -> str:
    device = args.device
    if device == "auto" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        import torch
        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device


def cmd_predict(args) -> int:
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _predict(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _predict(args) -> int:
    from .progress import BarReporter, JsonReporter, NullReporter

    if args.progress == "json":
        reporter = JsonReporter(_json_stdout())
    elif args.progress == "bar":
        reporter = BarReporter(sys.stderr)
    else:
        reporter = NullReporter()
    level = logging.DEBUG if args.verbose else (logging.INFO if args.progress == "json"
                                               else logging.WARNING)
    _setup_logging(reporter, level)

    def fail(case, exc, code):
        reporter({"event": "error", "case": case, "kind": getattr(exc, "kind", "error"),
                  "message": str(exc)})
        if args.progress != "bar":
            print(f"lkm-segment: {exc}", file=sys.stderr)
        return code

    # --- set-up errors: no case can run ----------------------------------------------------
    try:
        if args.step is not None and not 0 < args.step <= 1:
            raise UsageError(f"--step must be in (0, 1], not {args.step}.")
        if args.threads is not None and args.threads < 1:
            raise UsageError("--threads must be at least 1.")
        from .bundle import default_bundle_path, load_bundle
        from .inference import Predictor
        from .io import expand_inputs
        bundle = load_bundle(args.model if args.model else default_bundle_path())
        subset = [s.strip() for s in args.subset.split(",") if s.strip()] if args.subset else None
        try:
            predictor = Predictor(bundle, device=_device(args), threads=args.threads,
                                  quick=args.quick, tta=args.tta, step=args.step,
                                  batch_size=args.batch_size, subset=subset, progress=reporter)
        except InputError as exc:  # unknown --subset names, bad step: a usage error
            raise UsageError(str(exc)) from exc
        cases = _shard(expand_inputs(args.inputs), args)
    except UsageError as exc:
        return fail(None, exc, EXIT_USAGE)
    except LKMError as exc:
        return fail(None, exc, EXIT_FAILED)
    except KeyboardInterrupt:
        return fail(None, Cancelled("Stopped by the user."), EXIT_FAILED)

    from .outputs import output_paths, summarize, write_json, write_labels
    out_dir = Path(args.output).absolute()
    failed = 0
    log.info("model %s %s (%s), %d case(s), device %s", bundle.name, bundle.version,
             "trained" if bundle.trained else "UNTRAINED: random weights", len(cases),
             predictor.device)
    for case, path in cases:
        paths = output_paths(out_dir, case, args.format)
        outputs = [str(paths["labels"]), str(paths["summary"])]
        if not args.overwrite and all(p.exists() for p in paths.values()):
            try:
                summary = json.loads(paths["summary"].read_text(encoding="utf-8"))
            except (OSError, ValueError):
                summary = None
            reporter({"event": "done", "case": case, "outputs": outputs, "summary": summary,
                      "skipped": True})
            continue
        try:
            result = predictor.predict_file(path, case)
            reporter({"event": "progress", "case": case, "phase": "write", "fraction": 0.0})
            t0 = time.perf_counter()
            write_labels(result.labels, result.label_list, paths["labels"], args.format)
            try:
                result.timings["write"] = time.perf_counter() - t0
                summary = summarize(result, bundle, {"input_path": str(Path(path).absolute()),
                                                     "quick": args.quick, "tta": args.tta})
                write_json(summary, paths["summary"])
            except BaseException:  # a case is its two files, or nothing
                paths["labels"].unlink(missing_ok=True)
                raise
            reporter({"event": "progress", "case": case, "phase": "write", "fraction": 1.0})
            reporter({"event": "done", "case": case, "outputs": outputs, "summary": summary})
        except KeyboardInterrupt:
            fail(case, Cancelled("Stopped by the user; no output was written for this case."), 1)
            return EXIT_FAILED
        except Cancelled as exc:
            fail(case, exc, 1)
            return EXIT_FAILED
        except LKMError as exc:
            failed += 1
            fail(case, exc, 1)
        except MemoryError:
            failed += 1
            fail(case, ResourceError(f"Out of memory on {path}: try --quick, fewer --threads "
                                     "or close other programs."), 1)
        except Exception as exc:  # a bug: keep the traceback for the report
            failed += 1
            traceback.print_exc(file=sys.stderr)
            err = LKMError(f"Unexpected error on {path}: {type(exc).__name__}: {exc}")
            err.kind = "internal"
            fail(case, err, 1)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_info(args) -> int:
    from .bundle import load_bundle
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
    from .bundle import write_bundle
    from .network import build_network
    from .network.presets import PRESET_NAMES, preset_config, preset_patch_size
    from .terminology import label_entry

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
    from .bundle import verify_bundle
    bundle = verify_bundle(args.bundle)
    print(f"OK: {bundle.name} {bundle.version}, {len(bundle.folds)} weights file(s) match "
          "their checksums")
    return EXIT_OK


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "func", None) is not None:  # subcommands of lkm_core.training
            return args.func(args)
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "info":
            return cmd_info(args)
        if args.bundle_command == "init":
            return cmd_bundle_init(args)
        return cmd_bundle_verify(args)
    except UsageError as exc:
        print(f"lkm-segment: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LKMError as exc:
        print(f"lkm-segment: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("lkm-segment: stopped", file=sys.stderr)
        return EXIT_FAILED
