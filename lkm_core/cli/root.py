"""The command line: ``lkm-segment`` / ``python -m lkm_core``.

    lkm-segment predict INPUT... -o OUTDIR --model BUNDLE [--device auto|cpu|cuda] [--quick]
        [--tta] [--step 0.5] [--subset NAME[,NAME...]] [--threads N] [--overwrite]
        [--format seg.nrrd|nii.gz|nrrd|dicom-seg] [--progress json|bar|none]
        [--num-parts N --part-id K] [--report] [--keep-paths] [--confidence-map] [--cancel-file PATH]
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

from . import bundles, demo, predict, reports, review, training
from .common import run_command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lkm-segment",
                                description="LKM-UNet organ segmentation (CT/MR) from the command line.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)
    predict.register(sub)
    bundle_commands = bundles.register(sub)
    reports.register(sub)
    training.register_cli(sub)           # plan
    training.register_bundle_cli(bundle_commands)  # bundle export / import-official / to-nnunet
    demo.register_cli(sub)
    review.register_cli(sub)
    return p


def _version() -> str:
    from .. import __version__
    return f"lkm-segment {__version__}"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    return run_command(args.func, args)
