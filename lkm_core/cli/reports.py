"""``lkm-segment report merge``: one CSV from the batch reports of a batch's parts."""

from __future__ import annotations

from pathlib import Path

from ..contract import EXIT_OK


def register(sub) -> None:
    report = sub.add_parser("report", help="batch reports")
    rsub = report.add_subparsers(dest="report_command", required=True)
    merge = rsub.add_parser("merge", help="merge the batch reports of a batch's parts into one CSV")
    merge.add_argument("reports", nargs="+", metavar="REPORT_OR_FOLDER",
                       help="batch_report*.csv files, or folders to search for them")
    merge.add_argument("-o", "--output", required=True, metavar="MERGED.csv")
    merge.set_defaults(func=cmd_report_merge)


def cmd_report_merge(args) -> int:
    from ..batch.report import find_reports, merge_reports
    paths = find_reports(args.reports)
    counts = merge_reports(paths, args.output)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no rows"
    print(f"merged {len(paths)} report(s) into {Path(args.output).absolute()}: {summary}")
    return EXIT_OK
