"""The command line: ``lkm-segment`` / ``python -m lkm_core``.

    lkm-segment predict INPUT... -o OUTDIR --model BUNDLE [--device auto|cpu|cuda] [--quick]
        [--tta] [--step 0.5] [--subset NAME[,NAME...]] [--threads N] [--overwrite]
        [--format seg.nrrd|nii.gz|nrrd|dicom-seg] [--progress json|bar|none]
        [--num-parts N --part-id K] [--report] [--uncertainty] [--cancel-file PATH]
    lkm-segment info BUNDLE [--json]
    lkm-segment bundle init --preset NAME --labels liver,spleen,... -o DIR [--seed N]
    lkm-segment bundle verify BUNDLE
    lkm-segment demo [-o OUTDIR] [--device ...] [--threads N]   (sample CT, default model, Dice)
    lkm-segment report merge REPORT_OR_FOLDER... -o MERGED.csv   (the parts' batch reports)
    lkm-segment review OUTDIR [--csv F] [--png F] [--worst N]   (least confident cases first)

Exit codes: 0 every case succeeded (or was already done), 1 a case failed (or the run was
cancelled, or the model could not be loaded), 2 usage errors (bad options, unknown --subset).
With ``--progress json`` stdout carries only JSON lines (the protocol of lkm_core.contract);
anything else any library prints goes to stderr. Ctrl-C, SIGTERM or the appearance of the
``--cancel-file`` (the way that works through launchers and on Windows) stop the run; outputs are
written under temporary names and renamed, so nothing partial is left behind.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from .contract import (DEFAULT_FORMAT, DICOM_SEG_FORMAT, EXIT_FAILED, EXIT_OK, EXIT_USAGE,
                       OUTPUT_FORMATS)
from .errors import Cancelled, InputError, LKMError, ResourceError

log = logging.getLogger("lkm_core")

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
                    help="image files (NRRD, NIfTI, MHA), folders of images, or folders of DICOM "
                    "files (studies, series, nested folders: one case per CT/MR series)")
    pr.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    pr.add_argument("--model", metavar="BUNDLE", help="model bundle folder or .zip "
                    "(default: the model installed with lkm_core)")
    pr.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    pr.add_argument("--quick", action="store_true", help="coarser spacing (3 mm): fast on CPUs")
    pr.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (slower)")
    pr.add_argument("--step", type=float, default=None, help="sliding-window step as a fraction "
                    "of the patch (default 0.5)")
    pr.add_argument("--tiling", default="auto", choices=["auto", "fit", "nnunet"],
                    help="nnunet (auto): nnU-Net's exact tiling; fit: patches fitted to the "
                    "image (less work where the network allows; labels may differ)")
    pr.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="CPU: fp32 (auto) or bf16 (faster on CPUs with AVX512-BF16/AMX, "
                    "checked against fp32 at first use); GPU: fp16 (auto), bf16 or fp32")
    pr.add_argument("--subset", default=None, metavar="NAME[,NAME...]",
                    help="keep only these structures")
    pr.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ITK")
    pr.add_argument("--batch-size", type=int, default=None, help="patches per network call")
    pr.add_argument("--overwrite", action="store_true", help="redo cases whose outputs exist")
    pr.add_argument("--format", default=DEFAULT_FORMAT, choices=list(OUTPUT_FORMATS),
                    help="dicom-seg: a DICOM Segmentation per DICOM series (needs highdicom)")
    pr.add_argument("--progress", default="bar", choices=["json", "bar", "none"])
    pr.add_argument("--num-parts", type=int, default=None, help="split the cases into N parts "
                    "(default: from torchrun's WORLD_SIZE/RANK or a SLURM job array)")
    pr.add_argument("--part-id", type=int, default=None, help="run part K (0-based)")
    pr.add_argument("--report", action=argparse.BooleanOptionalAction, default=None,
                    help="write the batch report OUTDIR/batch_report[_part-K-of-N].csv "
                    "(default: only when the batch is split into parts)")
    pr.add_argument("--uncertainty", action="store_true",
                    help="also write CASE.confidence.nrrd: the model's confidence per voxel "
                    "(0-100, on the input's grid); per-structure scores are in CASE.json always")
    pr.add_argument("--cancel-file", default=None, metavar="PATH",
                    help="stop (writing nothing more) as soon as this file exists")
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

    report = sub.add_parser("report", help="batch reports")
    rsub = report.add_subparsers(dest="report_command", required=True)
    merge = rsub.add_parser("merge", help="merge the batch reports of a batch's parts into one CSV")
    merge.add_argument("reports", nargs="+", metavar="REPORT_OR_FOLDER",
                       help="batch_report*.csv files, or folders to search for them")
    merge.add_argument("-o", "--output", required=True, metavar="MERGED.csv")
    from .training.commands import register_bundle_cli, register_cli  # plan, bundle export/...
    register_cli(sub)
    register_bundle_cli(bsub)
    from .demo import register_cli as register_demo_cli
    register_demo_cli(sub)
    from .review import register_cli as register_review_cli
    register_review_cli(sub)
    return p


def _version() -> str:
    from . import __version__
    return f"lkm-segment {__version__}"


# ------------------------------------------------------------------------------------------------
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


def _resolve_shard(args):
    """The part this process runs: options, then torchrun, then SLURM (lkm_core.sharding)."""
    from .sharding import ShardError, resolve_shard
    try:
        return resolve_shard(args.num_parts, args.part_id)
    except ShardError as exc:
        raise UsageError(str(exc)) from exc


def _shard(cases: list, args, shard=None) -> list:
    shard = shard or _resolve_shard(args)
    selected = shard.select(cases)
    # implicit sharding (from the environment) is easy to miss: say so above info level
    log.log(logging.WARNING if shard.source in ("torchrun", "slurm") else logging.INFO,
            "%s", shard.describe(len(selected), len(cases)))
    return selected


def _check_dicom_seg(cases: list) -> None:
    """--format dicom-seg: highdicom importable, and every case a DICOM series (a series that
    lacks the UIDs a SEG references fails as its own case, before its network runs)."""
    from .dicom_seg import check_source, require_highdicom
    from .dicom_series import DicomSeries
    require_highdicom()
    for _, source in cases:
        if not isinstance(source, DicomSeries):
            try:
                check_source(source)
            except InputError as exc:
                raise UsageError(str(exc)) from exc


def _device(args) -> str:
    device = args.device
    if device == "auto" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        import torch
        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device


def cmd_predict(args) -> int:
    from .cancel import CancelRequest
    with CancelRequest(args.cancel_file) as cancel:
        return _predict(args, cancel)


def _predict(args, cancel) -> int:
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
        from .io import discover_inputs
        bundle = load_bundle(args.model if args.model else default_bundle_path())
        subset = [s.strip() for s in args.subset.split(",") if s.strip()] if args.subset else None
        try:
            predictor = Predictor(bundle, device=_device(args), threads=args.threads,
                                  quick=args.quick, tta=args.tta, step=args.step,
                                  tiling=args.tiling, precision=args.precision,
                                  batch_size=args.batch_size, subset=subset, progress=reporter,
                                  cancel=cancel, confidence_map=args.uncertainty)
        except InputError as exc:  # unknown --subset names, bad step: a usage error
            raise UsageError(str(exc)) from exc
        found = discover_inputs(args.inputs, bundle.modality or None)
        shard = _resolve_shard(args)
        cases = _shard(found.cases, args, shard)
        if args.format == DICOM_SEG_FORMAT:
            _check_dicom_seg(cases)
        report = _start_report(args, shard, found.skipped)
    except UsageError as exc:
        return fail(None, exc, EXIT_USAGE)
    except LKMError as exc:
        return fail(None, exc, EXIT_FAILED)
    except KeyboardInterrupt:
        return fail(None, Cancelled("Stopped by the user."), EXIT_FAILED)

    from .batch_report import volumes_from_summary
    from .dicom_seg import check_source as check_dicom_seg_source
    from .io import describe_input
    from .outputs import (output_paths, summarize, write_confidence_map, write_json,
                          write_labels)
    out_dir = Path(args.output).absolute()
    failed = 0
    log.info("model %s %s (%s), %d case(s), device %s", bundle.name, bundle.version,
             "trained" if bundle.trained else "UNTRAINED: random weights", len(cases),
             predictor.device)
    for case, path in cases:
        if cancel():
            return fail(case, Cancelled("Stopped by the user before this case."), EXIT_FAILED)
        paths = output_paths(out_dir, case, args.format, args.uncertainty)
        outputs = [str(p) for p in paths.values()]
        if not args.overwrite and all(p.exists() for p in paths.values()):
            try:
                summary = json.loads(paths["summary"].read_text(encoding="utf-8"))
            except (OSError, ValueError):
                summary = None
            reporter({"event": "done", "case": case, "outputs": outputs, "summary": summary,
                      "skipped": True})
            _report_row(report, case, path, "exists", volumes=volumes_from_summary(summary),
                        device=(summary or {}).get("device", ""))
            continue
        started = time.perf_counter()
        try:
            if args.format == DICOM_SEG_FORMAT:
                check_dicom_seg_source(path)  # before the network runs, not after
            result = predictor.predict_file(path, case)
            if cancel():
                raise Cancelled("Stopped by the user; no output was written for this case.")
            reporter({"event": "progress", "case": case, "phase": "write", "fraction": 0.0})
            t0 = time.perf_counter()
            write_labels(result.labels, result.label_list, paths["labels"], args.format,
                         source=path, bundle=bundle, confidence=result.confidence)
            try:
                summary = summarize(result, bundle, {**describe_input(path),
                                                     "quick": args.quick, "tta": args.tta})
                if "confidence_map" in paths:
                    write_confidence_map(result.confidence_map, paths["confidence_map"])
                    summary["confidence"]["map"] = paths["confidence_map"].name
                result.timings["write"] = time.perf_counter() - t0
                summary["timings"]["write"] = round(result.timings["write"], 3)
                write_json(summary, paths["summary"])
            except BaseException:  # a case is all its files, or nothing
                for p in paths.values():
                    p.unlink(missing_ok=True)
                raise
            reporter({"event": "progress", "case": case, "phase": "write", "fraction": 1.0})
            reporter({"event": "done", "case": case, "outputs": outputs, "summary": summary})
            _report_row(report, case, path, "done", seconds=time.perf_counter() - started,
                        device=result.device, volumes=volumes_from_summary(summary))
        except KeyboardInterrupt:
            exc = Cancelled("Stopped by the user; no output was written for this case.")
            fail(case, exc, 1)
            _report_failure(report, case, path, exc, started)
            return EXIT_FAILED
        except Cancelled as exc:
            fail(case, exc, 1)
            _report_failure(report, case, path, exc, started)
            return EXIT_FAILED
        except LKMError as exc:
            failed += 1
            fail(case, exc, 1)
            _report_failure(report, case, path, exc, started)
        except MemoryError:
            failed += 1
            exc = ResourceError(f"Out of memory on {path}: try --quick, fewer --threads "
                                "or close other programs.")
            fail(case, exc, 1)
            _report_failure(report, case, path, exc, started)
        except Exception as exc:  # a bug: keep the traceback for the report
            failed += 1
            traceback.print_exc(file=sys.stderr)
            err = LKMError(f"Unexpected error on {path}: {type(exc).__name__}: {exc}")
            err.kind = "internal"
            fail(case, err, 1)
            _report_failure(report, case, path, err, started)
    return EXIT_FAILED if failed else EXIT_OK


def _series_of(path) -> str:
    """The report's ``series`` column: the Series Instance UID, or the input path."""
    return getattr(path, "series_uid", None) or str(getattr(path, "folder", path))


def _start_report(args, shard, skipped):
    """This part's batch report; part 0 (or an unsplit batch) also lists skipped DICOM objects."""
    from .batch_report import BatchReport, report_path
    wanted = args.report if args.report is not None else shard.source != "none"
    report = BatchReport(report_path(args.output, shard.label) if wanted else None)
    try:
        report.write()  # an unwritable output folder shows here, before any case runs
        if shard.part == 0:
            for s in skipped:
                report.add(s.name, s.series_uid, "skipped",
                           message=f"{s.reason} ({s.files} file(s) in {s.folder})")
    except OSError as exc:
        raise ResourceError(f"Cannot write the batch report {report.path}: "
                            f"{exc.strerror or exc}. Check the output folder.") from exc
    return report


def _report_row(report, case, path, status, **row) -> None:
    try:
        report.add(case, _series_of(path), status, **row)
    except OSError as err:  # a report that cannot be written must not change a case's outcome
        log.warning("could not write the batch report %s: %s", report.path, err)


def _report_failure(report, case, path, exc, started) -> None:
    refused = getattr(path, "problem", None) and isinstance(exc, InputError)
    status = "cancelled" if isinstance(exc, Cancelled) else "refused" if refused else "failed"
    _report_row(report, case, path, status, seconds=time.perf_counter() - started,
                message=str(exc))


def cmd_report_merge(args) -> int:
    from .batch_report import find_reports, merge_reports
    paths = find_reports(args.reports)
    counts = merge_reports(paths, args.output)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no rows"
    print(f"merged {len(paths)} report(s) into {Path(args.output).absolute()}: {summary}")
    return EXIT_OK


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
        if args.command == "report":
            return cmd_report_merge(args)
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
