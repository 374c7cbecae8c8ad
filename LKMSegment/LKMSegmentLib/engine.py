"""Running ``lkm_core predict`` in a child process and following its JSON progress.

No Qt, no MRML here: an :class:`EngineJob` owns a private work folder (inputs, outputs and the
child's own TMPDIR), starts the engine through a :class:`~.process.ProcessRunner`, turns its
stdout into events and knows how the run ended. Stop kills the child and deletes the folder, so
nothing is left behind.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .process import ProcessRunner, SubprocessRunner, python_executable
from .protocol import EngineEvent, ProgressTracker, ProtocolParser

log = logging.getLogger(__name__)

EXIT_OK, EXIT_CASE_FAILED, EXIT_USAGE = 0, 1, 2
DEVICES = ("auto", "cuda", "cpu")
FORMATS = ("seg.nrrd", "nii.gz", "nrrd")


def engine_search_path() -> str | None:
    """The folder that holds the ``lkm_core`` package, for the child's PYTHONPATH.

    Installed extension: lkm_core is packaged next to LKMSegment.py (the scripted-module folder).
    Source tree (additional module path = <repo>/LKMSegment): it is in the repository root.
    Returns None when lkm_core is importable anyway (pip-installed).
    """
    here = Path(__file__).resolve().parent.parent  # the folder of LKMSegment.py
    for folder in (here, here.parent):
        if (folder / "lkm_core" / "__init__.py").is_file():
            return str(folder)
    return None


def engine_environment(tmpdir: str | None = None, extra: dict | None = None) -> dict:
    """Environment for the child: lkm_core on PYTHONPATH, unbuffered output, private TMPDIR."""
    env = dict(os.environ)
    path = engine_search_path()
    if path:
        parts = [path] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != path]
        env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    if tmpdir:
        for key in ("TMPDIR", "TEMP", "TMP"):
            env[key] = tmpdir
    env.update(extra or {})
    return env


def engine_available() -> bool:
    return engine_search_path() is not None or importlib.util.find_spec("lkm_core") is not None


_CASE_RE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_case_name(name: str, taken=()) -> str:
    """A file-system safe, unique case name from a node name ('CT 1.5mm' -> 'CT_1_5mm')."""
    base = _CASE_RE.sub("_", name or "").strip("_") or "case"
    candidate, n = base, 2
    taken = set(taken)
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    return candidate


@dataclass
class PredictOptions:
    """What the user chose in the panel (or a script passes); turned into CLI arguments."""

    model: str
    device: str = "auto"
    quick: bool = False
    tta: bool = False
    step: float | None = None
    subset: list[str] = field(default_factory=list)
    threads: int | None = None
    output_format: str = "seg.nrrd"

    def arguments(self, inputs: list[str], output_dir: str) -> list[str]:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {self.device!r}")
        if self.output_format not in FORMATS:
            raise ValueError(f"output format must be one of {FORMATS}, not {self.output_format!r}")
        args = ["-m", "lkm_core", "predict", *inputs, "-o", output_dir, "--model", str(self.model),
                "--device", self.device, "--format", self.output_format, "--progress", "json"]
        if self.quick:
            args.append("--quick")
        if self.tta:
            args.append("--tta")
        if self.step is not None:
            args += ["--step", f"{self.step:g}"]
        if self.subset:
            args += ["--subset", ",".join(self.subset)]
        if self.threads:
            args += ["--threads", str(int(self.threads))]
        return args


class EngineJob:
    """One run of the engine over one or more input files.

    Use: ``input_path(case)`` for each case (write the image there), ``start()``, then call
    ``pump()`` regularly until it returns False (or ``run_to_end()``), then read ``state``,
    ``outputs``, ``errors``. ``stop()`` at any time. ``cleanup()`` deletes the work folder.
    """

    def __init__(self, options: PredictOptions, runner: ProcessRunner | None = None,
                 temp_root: str | None = None, python: str | None = None,
                 on_event=None, extra_env: dict | None = None):
        self.options = options
        self.runner = runner or SubprocessRunner()
        self.python = python or python_executable()
        self.on_event = on_event  # callable(EngineEvent), called from pump()
        self.extra_env = extra_env
        self.workdir = Path(tempfile.mkdtemp(prefix="lkmsegment-", dir=temp_root))
        self.input_dir = self.workdir / "input"
        self.output_dir = self.workdir / "output"
        self.tmp_dir = self.workdir / "tmp"
        for d in (self.input_dir, self.output_dir, self.tmp_dir):
            d.mkdir()
        self.cases: list[str] = []
        self.state = "ready"  # ready, running, done, failed, stopped
        self.outputs: dict[str, list[str]] = {}
        self.summaries: dict[str, dict] = {}
        self.errors: dict[str, str] = {}
        self.warnings: list[str] = []
        self.log_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self.exit_code: int | None = None
        self.tracker = ProgressTracker([])
        self._parser = ProtocolParser()
        self.started_at = None

    # -- preparation --------------------------------------------------------------------------
    def input_path(self, case: str, extension: str = ".nrrd") -> Path:
        if case in self.cases:
            raise ValueError(f"case {case!r} is already part of this run")
        self.cases.append(case)
        return self.input_dir / f"{case}{extension}"

    def command(self) -> list[str]:
        inputs = sorted(str(p) for p in self.input_dir.iterdir())
        return [self.python, *self.options.arguments(inputs, str(self.output_dir))]

    def start(self):
        if not self.cases:
            raise ValueError("Nothing to segment: no input was prepared.")
        self.tracker = ProgressTracker(self.cases)
        cmd = self.command()
        log.info("Starting the engine: %s", " ".join(cmd))
        self.runner.start(cmd[0], cmd[1:], env=engine_environment(str(self.tmp_dir), self.extra_env),
                          cwd=str(self.workdir))
        self.state = "running"
        self.started_at = time.monotonic()

    # -- while running -----------------------------------------------------------------------
    def _handle(self, event: EngineEvent):
        self.tracker.update(event)
        if event.kind == "done":
            self.outputs[event.case] = list(event.data.get("outputs", []))
            self.summaries[event.case] = event.data.get("summary", {}) or {}
        elif event.kind == "error":
            where = f"{event.case}: " if event.case else ""
            self.errors[event.case or ""] = f"{where}{event.message}"
            self.log_lines.append(f"ERROR {where}{event.message}")
        elif event.kind == "log":
            level = event.data.get("level", "info")
            self.log_lines.append(f"{level.upper()} {event.message}")
            if level == "warning":
                self.warnings.append(event.message)
        if self.on_event:
            self.on_event(event)

    def pump(self) -> bool:
        """Process what arrived; returns True while the job is still running."""
        if self.state != "running":
            return False
        for stream, text in self.runner.poll():
            if stream == "stdout":
                for event in self._parser.feed(text):
                    self._handle(event)
            else:
                self.stderr_lines.append(text.rstrip("\n"))
                del self.stderr_lines[:-200]
        if self.runner.is_finished():
            for event in self._parser.flush():
                self._handle(event)
            self.exit_code = self.runner.exit_code
            ok = self.exit_code == EXIT_OK and set(self.outputs) >= set(self.cases)
            self.state = "done" if ok else "failed"
            return False
        return True

    def run_to_end(self, poll_s: float = 0.05, timeout_s: float | None = None) -> str:
        """Block until the engine ends (headless use). Returns the final state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.pump():
            if deadline is not None and time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"The engine did not finish within {timeout_s:.0f} s.")
            time.sleep(poll_s)
        return self.state

    def stop(self):
        """Kill the engine; the work folder (inputs, partial outputs, temp files) is deleted."""
        if self.state == "running":
            self.runner.stop()
            self.runner.poll()
            self.state = "stopped"
            self.exit_code = self.runner.exit_code
        self.cleanup()

    def cleanup(self):
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- after the run -----------------------------------------------------------------------
    @property
    def progress(self) -> float:
        return self.tracker.overall

    @property
    def progress_text(self) -> str:
        return self.tracker.text

    def failure_message(self) -> str:
        """A message for the user when the run did not succeed (with the engine's log tail)."""
        if self.state == "stopped":
            return "Stopped by the user; the scene was left as it was."
        parts = []
        if self.errors:
            parts.append("The engine reported:\n" + "\n".join(self.errors.values()))
        if self.exit_code == EXIT_USAGE:
            parts.append("The engine refused its command line (exit code 2); this is a bug in the "
                         "module or an engine of another version.")
        elif not self.errors:
            parts.append(f"The engine stopped unexpectedly (exit code {self.exit_code}).")
        missing = [c for c in self.cases if c not in self.outputs and c not in self.errors]
        if missing:
            parts.append("No result for: " + ", ".join(missing))
        tail = [line for line in self.stderr_lines if line.strip()][-15:]
        if tail:
            parts.append("Engine log (last lines):\n" + "\n".join(tail))
        return "\n\n".join(parts)

    def result_file(self, case: str) -> Path | None:
        """The segmentation file the engine wrote for a case (.seg.nrrd preferred)."""
        files = [Path(p) for p in self.outputs.get(case, [])]
        if not files:
            files = sorted(self.output_dir.glob(f"{case}.*"))
        images = [p for p in files if not p.name.endswith(".json")]
        for p in images:
            if p.name.endswith(".seg.nrrd"):
                return p
        return images[0] if images else None
