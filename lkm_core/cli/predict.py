"""``lkm-segment predict``: segment images, one case after another."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from ..contract import (DEVICE_HELP, DEFAULT_FORMAT, DICOM_SEG_FORMAT, EXIT_FAILED, EXIT_NOTHING,
                        EXIT_USAGE,
                        OUTPUT_FORMATS)
from ..errors import Cancelled, InputError, LKMError
from ..inference.memory import DEFAULT_MEMORY_MODE, MEMORY_MODES, apply_memory_mode
from .common import UsageError, comma_list, run_command


class NothingToSegment(LKMError):
    kind = "bad_input"

log = logging.getLogger("lkm_core")


def register(sub) -> None:
    pr = sub.add_parser("predict", help="segment images")
    pr.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="image files (NRRD, NIfTI, MHA), folders of images, or folders of DICOM "
                    "files (studies, series, nested folders: one case per CT/MR series)")
    pr.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    pr.add_argument("--model", metavar="BUNDLE", help="model bundle folder or .zip "
                    "(default: the model installed with lkm_core)")
    pr.add_argument("--device", default="auto", help=DEVICE_HELP)
    pr.add_argument("--quick", action="store_true", help="coarser spacing (3 mm): fast on CPUs")
    pr.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                    help="mirroring test-time augmentation along the axes the model was trained "
                    "to mirror (default: on where the model records them, as nnUNetv2_predict; "
                    "--tta refuses a model that records none; --no-tta: off, faster)")
    pr.add_argument("--folds", default=None, metavar="F[,F...]",
                    help="average only these folds of the model (e.g. 0,2; default: all)")
    pr.add_argument("--step", type=float, default=None, help="sliding-window step as a fraction "
                    "of the patch (default 0.5)")
    pr.add_argument("--tiling", default="auto", choices=["auto", "fit", "nnunet"],
                    help="nnunet (auto): nnU-Net's exact tiling; fit: patches fitted to the "
                    "image (less work where the network allows; labels may differ)")
    pr.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="CPU: fp32 (auto) or bf16 (faster on CPUs with AVX512-BF16/AMX, "
                    "checked against fp32 at first use); GPU: fp16 (auto), bf16 or fp32")
    pr.add_argument("--crop", default="auto", choices=["auto", "nonzero", "body"],
                    help="nonzero (auto): nnU-Net's crop to the nonzero voxels; body (CT models): "
                    "the network runs only on the box around the patient, not the air around it")
    pr.add_argument("--memory", default=DEFAULT_MEMORY_MODE, choices=list(MEMORY_MODES),
                    help="keep: malloc keeps freed memory in the process (Linux/glibc; faster CPU "
                         "runs, more peak memory); release: the C library's default "
                         f"(default: {DEFAULT_MEMORY_MODE})")
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
    pr.add_argument("--keep-paths", action="store_true",
                    help="record input paths, folder names and DICOM UIDs in the summaries and "
                    "the batch report (default: left out, since hospital exports often name "
                    "folders by patient); for local use only")
    pr.add_argument("--confidence-map", "--uncertainty", dest="confidence_map",  # its old name
                    action="store_true",
                    help="also write CASE.confidence.nrrd: the model's confidence per voxel "
                    "(0-100, on the input's grid); per-structure scores are in CASE.json always")
    pr.add_argument("--pipeline", default="auto", choices=["auto", "on", "off"],
                    help="read the next case and write the last one while the network runs: "
                    "auto (default: on), on, off (strictly one case after the other)")
    pr.add_argument("--postprocessing", action=argparse.BooleanOptionalAction, default=True,
                    help="apply nnU-Net's postprocessing (keep the largest component of the "
                    "structures it names) where the model records it (default: on)")
    pr.add_argument("--save-probabilities", action="store_true",
                    help="also write CASE.npz as nnUNetv2_predict --save_probabilities does: "
                    "key 'probabilities', float32 (classes, z, y, x) on the input's grid")
    pr.add_argument("--cancel-file", default=None, metavar="PATH",
                    help="stop (writing nothing more) as soon as this file exists")
    pr.add_argument("-v", "--verbose", action="store_true")
    pr.set_defaults(func=cmd_predict)


def run(argv) -> int:
    """``predict`` with these arguments (``lkm-segment predict`` without the program name): the
    demo runs the very path a user's case takes."""
    parser = argparse.ArgumentParser(prog="lkm-segment predict")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["predict", *argv])
    return run_command(args.func, args)


def _setup_logging(reporter, level) -> None:
    from ..batch.progress import ReporterLogHandler
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
    """The part this process runs: options, else SLURM arrays, torchrun, srun (lkm_core.batch.sharding)."""
    from ..batch.sharding import ShardError, resolve_shard
    try:
        return resolve_shard(args.num_parts, args.part_id)
    except ShardError as exc:
        raise UsageError(str(exc)) from exc


def _shard(cases: list, args, shard=None) -> list:
    shard = shard or _resolve_shard(args)
    selected = shard.select(cases)
    # implicit sharding (from the environment) is easy to miss: say so above info level
    log.log(logging.WARNING if shard.source not in ("options", "none") else logging.INFO,
            "%s", shard.describe(len(selected), len(cases)))
    return selected


def _check_dicom_seg(cases: list) -> None:
    """--format dicom-seg: highdicom importable, and every case a DICOM series (a series that
    lacks the UIDs a SEG references fails as its own case, before its network runs)."""
    from ..outputs.dicom_seg import check_source, require_highdicom
    from ..inputs.dicom_series import DicomSeries
    require_highdicom()
    for _, source in cases:
        if not isinstance(source, DicomSeries):
            try:
                check_source(source)
            except InputError as exc:
                raise UsageError(str(exc)) from exc


def _device(args) -> str:
    device = args.device
    # torchrun (LOCAL_RANK) or srun (SLURM_LOCALID): one GPU per process of a node
    local = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID"))
    if device == "auto" and local is not None and local.isdigit():
        import torch
        if torch.cuda.is_available():
            device = f"cuda:{int(local) % torch.cuda.device_count()}"
    return device


def cmd_predict(args) -> int:
    from ..batch.cancel import CancelRequest
    with CancelRequest(args.cancel_file) as cancel:
        return _predict(args, cancel)


def _predict(args, cancel) -> int:
    from ..batch.progress import BarReporter, JsonReporter, NullReporter

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
        # before the model and the first big tensor are allocated
        apply_memory_mode(args.memory)
        from ..bundle import default_bundle_path, load_bundle
        from ..inference.predictor import Predictor
        from ..inputs.images import discover_inputs, nothing_to_segment
        from ..batch.runner import check_output_folder_or_fail
        bundle = load_bundle(args.model if args.model else default_bundle_path())
        subset = comma_list(args.subset) or None
        try:
            predictor = Predictor(bundle, device=_device(args), threads=args.threads,
                                  quick=args.quick, tta=args.tta, step=args.step,
                                  folds=comma_list(args.folds) or None,
                                  tiling=args.tiling, precision=args.precision, crop=args.crop,
                                  batch_size=args.batch_size, subset=subset, progress=reporter,
                                  cancel=cancel, confidence_map=args.confidence_map,
                                  probabilities=args.save_probabilities,
                                  postprocessing=args.postprocessing)
        except InputError as exc:  # unknown --subset names, bad step: a usage error
            raise UsageError(str(exc)) from exc
        found = discover_inputs(args.inputs, bundle.modality or None)
        shard = _resolve_shard(args)
        cases = _shard(found.cases, args, shard)
        if args.format == DICOM_SEG_FORMAT:
            _check_dicom_seg(cases)
        # an unwritable output folder is refused here, before any case is computed
        check_output_folder_or_fail(args.output, [source for _, source in cases], args.format,
                                    args.confidence_map)
        report = _start_report(args, shard, found.skipped)
        if args.progress != "bar":  # the bar shows the log's warnings on stderr already
            _say_skipped(found.skipped)
        if not found.cases:
            raise NothingToSegment(nothing_to_segment(found.skipped))
    except NothingToSegment as exc:
        return fail(None, exc, EXIT_NOTHING)
    except UsageError as exc:
        return fail(None, exc, EXIT_USAGE)
    except LKMError as exc:
        return fail(None, exc, EXIT_FAILED)
    except KeyboardInterrupt:
        return fail(None, Cancelled("Stopped by the user."), EXIT_FAILED)

    from ..batch.runner import BatchSettings, run_batch, use_pipeline
    log.info("model %s %s (%s), %d case(s), device %s", bundle.name, bundle.version,
             "trained" if bundle.trained else "UNTRAINED: random weights", len(cases),
             predictor.device)

    def on_failure(case, error, exc_info):
        if exc_info is not None and (error.kind == "internal" or args.verbose):
            traceback.print_exception(*exc_info, file=sys.stderr)  # a bug, or asked for
        if args.progress != "bar":
            print(f"lkm-segment: {error}", file=sys.stderr)

    settings = BatchSettings(Path(args.output).absolute(), args.format, args.overwrite,
                             args.confidence_map, use_pipeline(args.pipeline),
                             {"quick": args.quick, "tta": bool(predictor.mirror_axes),
                              "mirror_axes": list(predictor.mirror_axes), "folds": predictor.folds,
                              "postprocessing": bool(predictor.postprocessing)},
                             args.keep_paths, probabilities=args.save_probabilities)
    return run_batch(cases, predictor, bundle, settings, reporter=reporter, report=report,
                     cancel=cancel, on_failure=on_failure)


def _start_report(args, shard, skipped):
    """This part's batch report; part 0 (or an unsplit batch) also lists skipped DICOM objects."""
    from ..batch.report import report_path
    from ..batch.runner import start_report
    wanted = args.report if args.report is not None else shard.source != "none"
    return start_report(report_path(args.output, shard.label) if wanted else None, skipped,
                        list_skipped=shard.part == 0, keep_paths=args.keep_paths)


def _say_skipped(skipped) -> None:
    """Every skipped input on stderr, whatever the progress display."""
    from ..inputs.images import skip_message
    for s in skipped:
        print(f"lkm-segment: {skip_message(s)}", file=sys.stderr)
