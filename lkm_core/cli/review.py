"""``lkm-segment review``: rank a finished batch, least confident cases first."""

from __future__ import annotations

from pathlib import Path

from ..batch.review import collect, table, write_csv, write_overview
from ..contract import EXIT_OK


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "review", help="rank a finished batch: least confident cases and structures first",
        description="Rank the cases of a predict output folder by the model's own confidence "
                    "(least sure first): a table here, a CSV and a PNG of the worst cases.")
    p.add_argument("folder", metavar="OUTDIR", help="output folder of lkm-segment predict")
    p.add_argument("--csv", default=None, help="CSV path (default OUTDIR/review.csv)")
    p.add_argument("--png", default=None, help="overview picture (default OUTDIR/review.png)")
    p.add_argument("--worst", type=int, default=3, help="cases in the picture (default 3)")
    p.set_defaults(func=cmd_review)


def cmd_review(args) -> int:
    out_dir = Path(args.folder)
    cases, unscored = collect(out_dir)
    print(table(cases))
    if unscored:
        print(f"No confidence scores in the summaries of: {', '.join(unscored)} "
              "(written by an older lkm-segment; run predict again with --overwrite).")
    csv_path = write_csv(cases, args.csv or out_dir / "review.csv")
    print(f"Wrote {csv_path}")
    if cases and args.worst > 0:
        png = write_overview(cases, args.png or out_dir / "review.png", args.worst)
        if png is not None:
            print(f"Wrote {png}")
    return EXIT_OK
