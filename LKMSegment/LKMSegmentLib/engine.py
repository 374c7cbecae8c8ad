"""Running ``lkm_core predict`` in a child process and following its JSON progress.

No Qt, no MRML here: an :class:`EngineJob` owns a private work folder (inputs, outputs, the
child's own TMPDIR and the cancel file), starts the engine through a
:class:`~.process.ProcessRunner`, turns its stdout into events and knows how the run ended.
Stop asks the engine to end (the cancel file: works on every OS and through the PythonSlicer
launcher, which forwards no signal), then ends the whole process tree and deletes the folder,
so nothing is left behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .enginecontract import contract, engine_environment
from .process import ProcessRunner, SubprocessRunner, python_executable
from .protocol import EngineEvent, ProgressTracker, ProtocolParser

log = logging.getLogger(__name__)


# one contract with the engine: exit codes, formats and case names come from lkm_core.contract
EXIT_OK, EXIT_CASE_FAILED, EXIT_USAGE = contract.EXIT_OK, contract.EXIT_FAILED, contract.EXIT_USAGE
FORMATS = contract.MODULE_FORMATS
safe_case_name = contract.safe_case_name
CANCEL_FILE = "cancel"  # in the job's work folder; the engine polls it (--cancel-file)
STOP_GRACE_S = 2.0      # Stop lets the engine end by itself this long, then ends its tree


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
    confidence_map: bool = False  # also write the confidence map (CASE.confidence.nrrd)

    def arguments(self, inputs: list[str], output_dir: str, cancel_file: str | None = None) -> list[str]:
        if self.device not in contract.DEVICES:
            raise ValueError(f"device must be one of {contract.DEVICES}, not {self.device!r}")
        if self.output_format not in FORMATS:
            raise ValueError(f"output format must be one of {FORMATS}, not {self.output_format!r}")
        args = ["-m", "lkm_core", "predict", *inputs, "-o", output_dir, "--model", str(self.model),
                "--device", self.device, "--format", self.output_format, "--progress", "json"]
        if self.quick:
            args.append("--quick")
        # explicit either way: the engine's default follows the checkpoint, the panel's box decides
        args.append("--tta" if self.tta else "--no-tta")
        if self.step is not None:
            args += ["--step", f"{self.step:g}"]
        if self.subset:
            args += ["--subset", ",".join(self.subset)]
        # one core left to Slicer's GUI unless the user chose
        args += ["--threads", str(int(self.threads or max(1, (os.cpu_count() or 2) - 1)))]
        if self.confidence_map:
            args.append("--confidence-map")
        if cancel_file:
            args += ["--cancel-file", str(cancel_file)]
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
        self.cancel_file = self.workdir / CANCEL_FILE
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
        self._stop_requested_at: float | None = None  # request_stop(): when the cancel file went
        self._stop_grace_s = STOP_GRACE_S
        self._stop_signalled = False

    # -- preparation --------------------------------------------------------------------------
    def input_path(self, case: str, extension: str = ".nrrd") -> Path:
        if case in self.cases:
            raise ValueError(f"case {case!r} is already part of this run")
        self.cases.append(case)
        return self.input_dir / f"{case}{extension}"

    def command(self) -> list[str]:
        inputs = sorted(str(p) for p in self.input_dir.iterdir())
        return [self.python, *self.options.arguments(inputs, str(self.output_dir),
                                                     str(self.cancel_file))]

    def start(self):
        if not self.cases:
            raise ValueError("Nothing to segment: no input was prepared.")
        # the engine's own check, before it starts: one line (OutputFolderError) if the work
        # folder cannot be written, a warning if its disk looks too small for the results
        contract.check_output_folder(self.output_dir)
        needed = sum(contract.estimated_output_bytes(p.stat().st_size, self.options.output_format,
                                                     self.options.confidence_map)
                     for p in self.input_dir.iterdir())
        self.warnings += filter(None, [contract.free_space_warning(self.output_dir, needed)])
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
            if self._stop_requested_at is not None:
                self._stopped_or_done()
            return False
        if self._stop_requested_at is not None:
            self._escalate_stop()
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

    def request_stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop without blocking (the panel's Stop): the cancel file now; then each ``pump()``
        terminates the process tree after ``grace_s`` and kills it after twice that, and the
        job ends "stopped" once every process is gone (the work folder deleted). An engine that
        finished its work before it saw the cancel file ends "done": the result is kept."""
        if self.state != "running" or self._stop_requested_at is not None:
            return
        try:
            self.cancel_file.write_text("stop\n", encoding="utf-8")
        except OSError as exc:  # the folder is gone or read-only: ending it comes sooner
            log.warning("could not write the cancel file %s: %s", self.cancel_file, exc)
            grace_s = 0.0
        self._stop_requested_at, self._stop_grace_s = time.monotonic(), grace_s

    @property
    def stopping(self) -> bool:
        return self.state == "running" and self._stop_requested_at is not None

    def _escalate_stop(self) -> None:
        waited = time.monotonic() - self._stop_requested_at
        if waited >= 2 * self._stop_grace_s:
            self.runner.signal_stop(force=True)
        elif waited >= self._stop_grace_s and not self._stop_signalled:
            self.runner.signal_stop(force=False)
            self._stop_signalled = True

    def _stopped_or_done(self) -> None:
        """The engine has ended after a Stop: its result counts only if it was complete."""
        if self.state == "done":
            return
        self.state = "stopped"
        self.runner.signal_stop(force=True)  # an engine orphaned by its launcher's end, if any
        self.cleanup()

    def stop(self, grace_s: float = STOP_GRACE_S):
        """End the engine and everything it started; the work folder (inputs, partial outputs,
        temp files) is deleted.

        1. the cancel file: the engine stops at its next check (between patches and phases, and
           a watcher thread interrupts a long network step), writes nothing and exits;
        2. after ``grace_s``, whatever of the process tree is left is ended (the runner: psutil,
           children first found recursively, terminate, then kill);
        3. the folder is deleted.
        """
        if self.state == "running":
            try:
                self.cancel_file.write_text("stop\n", encoding="utf-8")
            except OSError as exc:  # the folder is gone or read-only: go straight to ending it
                log.warning("could not write the cancel file %s: %s", self.cancel_file, exc)
            self.runner.wait(grace_s)
            self.runner.stop(grace_s)  # terminate, then kill: all within ~2 grace periods
            self.runner.poll()
            self.state = "stopped"
            self.exit_code = self.runner.exit_code
        self.cleanup()

    def cleanup(self):
        # on Windows a file of a process that has just ended can stay locked for a moment
        for attempt in range(20):
            shutil.rmtree(self.workdir, ignore_errors=True)
            if not self.workdir.exists():
                return
            time.sleep(0.1)
        log.warning("could not delete the engine's work folder %s", self.workdir)

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

    def _case_files(self, case: str) -> list[Path]:
        files = [Path(p) for p in self.outputs.get(case, [])]
        return files or sorted(self.output_dir.glob(f"{case}.*"))

    def result_file(self, case: str) -> Path | None:
        """The segmentation file the engine wrote for a case (.seg.nrrd preferred)."""
        images = [p for p in self._case_files(case)
                  if not p.name.endswith((".json", contract.CONFIDENCE_MAP_SUFFIX))]
        for p in images:
            if p.name.endswith(".seg.nrrd"):
                return p
        return images[0] if images else None

    def confidence_map_file(self, case: str) -> Path | None:
        """The confidence map the engine wrote for a case (``--confidence-map``), or None.

        The summary names it (``confidence.map``); otherwise the case's file with the contract's
        suffix."""
        name = ((self.summaries.get(case) or {}).get("confidence") or {}).get("map")
        candidates = [self.output_dir / Path(name).name] if name else []
        candidates += [p for p in self._case_files(case) if p.name == case + contract.CONFIDENCE_MAP_SUFFIX]
        candidates.append(self.output_dir / f"{case}{contract.CONFIDENCE_MAP_SUFFIX}")
        return next((p for p in candidates if p.is_file()), None)
