"""``python -m light_the_torch install REQUIREMENT... [--pytorch-computation-backend=B] [pip options]``
(see __init__.py): pip install with the CPU build of torch from LTT_STANDIN_CPU_WHEEL."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

BACKEND_OPTION = "--pytorch-computation-backend="


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "install":
        print("light_the_torch stand-in: only 'install' is supported", file=sys.stderr)
        return 2
    backends = [a[len(BACKEND_OPTION):] for a in argv if a.startswith(BACKEND_OPTION)]
    if any(b != "cpu" for b in backends):
        print(f"light_the_torch stand-in: only the CPU build is available here, not {backends}", file=sys.stderr)
        return 1
    wheel = Path(os.environ["LTT_STANDIN_CPU_WHEEL"])
    version = wheel.name.split("-")[1]  # torch-2.13.0+cpu-cp311-...whl
    with tempfile.TemporaryDirectory() as folder:
        # as ltt's candidate selection: only the computation backend's build of torch qualifies
        constraints = Path(folder) / "cpu-build.txt"
        constraints.write_text(f"torch=={version}\n", encoding="utf-8")
        pip_args = [a for a in argv[1:] if not a.startswith(BACKEND_OPTION)]
        return subprocess.call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                                "--find-links", str(wheel.parent), "-c", str(constraints), *pip_args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
