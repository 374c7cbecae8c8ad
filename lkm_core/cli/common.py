"""What every command shares: the usage error (exit code 2)."""

from __future__ import annotations

import sys

from ..contract import EXIT_FAILED, EXIT_USAGE
from ..errors import LKMError


class UsageError(LKMError):
    kind = "usage"


def run_command(func, args) -> int:
    """Run one command's handler: its exit code, or one line on stderr and the code for the
    error (a traceback only for a bug)."""
    try:
        return func(args)
    except UsageError as exc:
        print(f"lkm-segment: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LKMError as exc:
        print(f"lkm-segment: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("lkm-segment: stopped", file=sys.stderr)
        return EXIT_FAILED


def comma_list(text) -> list[str]:
    """"a, b,c" -> ["a", "b", "c"]; None or "" -> []. Every comma-separated option."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]
