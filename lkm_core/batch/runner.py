"""The batch loop: every case read, run through the network and written, one outcome each.

Each case goes through three stages: *load* (read + preprocess), *infer* (the network) and
*export* (back to the input grid, then the files). Sequentially they run in turn. Pipelined
(``pipeline=True``) the next case is loaded and the previous one exported in two background
threads while the network runs, bounded to one case ahead and one behind, so the accelerator
does not wait for the disk; outputs are the same bytes either way.

What holds in both modes:

- a case is all its files or none (atomic writes; a failed or cancelled export removes its files);
- one case's failure is its own (reported, the batch goes on), except when the operating system
  refuses a write that every later case would meet too (a full or read-only disk, a removed
  output folder): then the batch stops before computing another case (pipelined: the network
  already running on the next case stops at its next patch), the cases not finished are
  reported ``not done`` with the reason, and the message says how much room the next case needs;
- a cancel request stops at once: the read-ahead is abandoned (it writes nothing), an export in
  progress removes what it wrote;
- outcomes (``done``/``error`` events, report rows) come in case order, and each case's
  progress events in phase order.

Nothing here parses options: the CLI hands over plain values and callbacks.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .report import BatchReport, columns_from_summary, private_row
from ..contract import (DEFAULT_FORMAT, DICOM_SEG_FORMAT, EXIT_FAILED, EXIT_OK,
                        OutputFolderError, check_output_folder, estimated_output_bytes,
                        format_bytes, free_space_warning)
from ..errors import (Cancelled, InputError, LKMError, ResourceError, StorageError,
                      stops_the_batch, storage_error)

log = logging.getLogger(__name__)

PIPELINE_MODES = ("auto", "on", "off")


@dataclass
class BatchSettings:
    out_dir: Path
    fmt: str = DEFAULT_FORMAT
    overwrite: bool = False
    confidence_map: bool = False
    pipeline: bool = False
    summary_extra: dict = field(default_factory=dict)   # added to every case's JSON summary
    keep_paths: bool = False  # input paths and DICOM UIDs in summaries and reports (local use)
    probabilities: bool = False  # CASE.npz as nnUNetv2_predict --save_probabilities writes


def use_pipeline(mode: str) -> bool:
    """``auto`` is pipelined, on the CPU too: on 2 cores, 8 clinical-size CTs in quick mode took
    0.86-0.97 of the sequential wall time and smaller CTs in full mode 0.26 (2 torch threads) and
    0.52 (1 thread), the network hardly ever waiting (Testing/benchmarks/batch_pipeline.py); an
    accelerator waits for the disk even more."""
    if mode not in PIPELINE_MODES:
        raise ValueError(f"pipeline must be one of {PIPELINE_MODES}, not {mode!r}")
    return mode != "off"


# -- before the first case --------------------------------------------------------------------
def input_bytes(source) -> int:
    """The size on disk of one case's input (a file, or every file of a DICOM series)."""
    files = getattr(source, "files", None) or [source]
    total = 0
    for f in files:
        try:
            total += os.path.getsize(f)
        except (OSError, TypeError):
            pass
    return total


def check_output_folder_or_fail(out_dir, sources, fmt: str, confidence_map: bool) -> None:
    """Refuse an output folder that cannot be written (before any case is computed); warn when
    its disk has less room than a conservative estimate of the batch's outputs."""
    try:
        check_output_folder(out_dir)
    except OutputFolderError as exc:
        raise StorageError(str(exc), getattr(exc.__cause__, "errno", None), str(out_dir)) from exc
    needed = sum(estimated_output_bytes(input_bytes(s), fmt, confidence_map) for s in sources)
    warning = free_space_warning(out_dir, needed)
    if warning:
        log.warning("%s", warning)


def start_report(path, skipped=(), list_skipped: bool = True, keep_paths: bool = False) -> BatchReport:
    """The batch report (``path`` None: rows kept in memory only); lists skipped DICOM objects
    when ``list_skipped`` (part 0 of a split batch). Without ``keep_paths`` no folder or UID."""
    report = BatchReport(path, keep_paths)
    try:
        report.write()
        if list_skipped:
            for s in skipped:
                where = f" in {s.folder}" if keep_paths else ""
                report.add(s.name, s.series_uid if keep_paths else "", "skipped",
                           message=f"{s.reason} ({s.files} file(s){where})")
    except OSError as exc:
        raise storage_error(exc, "write", str(report.path)) from exc
    return report


# -- the loop ---------------------------------------------------------------------------------
def run_batch(cases, predictor, bundle, settings: BatchSettings, *, reporter, report,
              cancel, on_failure) -> int:
    """Run every ``(case, source)`` into ``settings.out_dir`` (which must exist:
    :func:`check_output_folder_or_fail` makes it); returns the exit code. ``reporter(event)`` gets the
    progress protocol's ``done``/``error`` events, ``on_failure(case, error, exc_info)`` each
    failure (``exc_info`` set for errors that are not the user's: bugs)."""
    return _Batch(list(cases), predictor, bundle, settings, reporter, report, cancel,
                  on_failure).run()


class _Stop(Exception):
    """The batch ends here (cancelled, or a disk that refuses every further write)."""


class _Background:
    """One stage's work in a daemon thread; ``result()`` waits without blocking Ctrl-C."""

    def __init__(self, function, *args):
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(function, *args), daemon=True,
                                        name="lkm-batch-stage")
        self._thread.start()

    def _run(self, function, *args):
        try:
            self._value = function(*args)
        except BaseException as exc:  # handed to the main thread by result()
            self._error = exc

    def result(self):
        while self._thread.is_alive():
            self._thread.join(0.1)  # short waits: a KeyboardInterrupt gets through
        if self._error is not None:
            raise self._error
        return self._value


class _Batch:
    def __init__(self, cases, predictor, bundle, settings, reporter, report, cancel, on_failure):
        self.cases = cases
        self.predictor = predictor
        self.bundle = bundle
        self.settings = settings
        self.reporter = reporter
        self.report = report
        self.cancel = cancel
        self.on_failure = on_failure
        self.failed = 0
        self.ahead = None    # (index, _Background loading it)
        self.behind = None   # (index, started, _Background exporting it)
        # set by an export that met a full or read-only disk: the network in flight stops at
        # its next patch instead of computing a case that could not be written
        self.halt = threading.Event()

    # -- outputs of one case ------------------------------------------------------------------
    def paths(self, case):
        from ..outputs.labels import output_paths
        return output_paths(self.settings.out_dir, case, self.settings.fmt,
                            self.settings.confidence_map, self.settings.probabilities)

    def already_done(self, case) -> bool:
        return not self.settings.overwrite and all(p.exists() for p in self.paths(case).values())

    def report_existing(self, case, source):
        paths = self.paths(case)
        try:
            summary = json.loads(paths["summary"].read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = None
        self.reporter({"event": "done", "case": case, "outputs": [str(p) for p in paths.values()],
                       "summary": summary, "skipped": True})
        self.row(case, source, "exists", volumes=columns_from_summary(summary),
                 device=(summary or {}).get("device", ""))

    # -- the stages ---------------------------------------------------------------------------
    def load(self, case, source):
        if self.cancel():
            raise Cancelled("Stopped by the user before this case.")
        if self.settings.fmt == DICOM_SEG_FORMAT:
            from ..outputs.dicom_seg import check_source
            check_source(source)  # before the network runs, not after
        try:
            return self.predictor.load_file(source, case)
        except OSError as exc:
            raise storage_error(exc, "read", str(source)) from exc

    def export(self, case, source, loaded):
        """Back to the input grid and into files; all of a case's files or none of them."""
        from ..inputs.images import describe_input
        from ..outputs.labels import (summarize, write_confidence_map, write_json, write_labels,
                                     write_probabilities)
        result = self.predictor.finish(loaded)
        paths = self.paths(case)
        out_dir = Path(self.settings.out_dir)
        if not out_dir.is_dir():  # removed under the run: writing would quietly recreate it
            raise storage_error(FileNotFoundError(errno.ENOENT, "the folder was removed",
                                                  str(out_dir)), "write")
        if self.cancel():
            raise Cancelled("Stopped by the user; no output was written for this case.")
        self.reporter({"event": "progress", "case": case, "phase": "write", "fraction": 0.0})
        t0 = time.perf_counter()
        try:
            write_labels(result.labels, result.label_list, paths["labels"], self.settings.fmt,
                         source=source, bundle=self.bundle, confidence=result.confidence)
            described = describe_input(source, self.settings.keep_paths)
            summary = summarize(result, self.bundle, {**described, **self.settings.summary_extra})
            if "confidence_map" in paths:
                write_confidence_map(result.confidence_map, paths["confidence_map"])
                summary["confidence"]["map"] = paths["confidence_map"].name
            if "probabilities" in paths:
                write_probabilities(result.probabilities, paths["probabilities"])
            result.timings["write"] = time.perf_counter() - t0
            summary["timings"]["write"] = round(result.timings["write"], 3)
            if self.cancel():
                raise Cancelled("Stopped by the user; no output was written for this case.")
            write_json(summary, paths["summary"])
        except BaseException as exc:  # a case is all its files, or nothing
            for p in paths.values():
                p.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise storage_error(exc, "write") from exc
            raise
        self.reporter({"event": "progress", "case": case, "phase": "write", "fraction": 1.0})
        return result, summary

    # -- outcomes -----------------------------------------------------------------------------
    def row(self, case, source, status, **row):
        series, row["message"] = private_row(case, source, row.get("message", ""),
                                             self.settings.keep_paths)
        try:
            self.report.add(case, series, status, **row)
        except OSError as err:  # a report that cannot be written must not change an outcome
            log.warning("could not write the batch report %s: %s", self.report.path, err)

    def settle(self, index, started, outcome):
        """A case's outcome: ``(result, summary)`` or the exception that ended it. Raises
        _Stop when the batch cannot go on."""
        case, source = self.cases[index]
        if not isinstance(outcome, BaseException):
            result, summary = outcome
            self.reporter({"event": "done", "case": case,
                           "outputs": [str(p) for p in self.paths(case).values()],
                           "summary": summary})
            self.row(case, source, "done", seconds=time.perf_counter() - started,
                     device=result.device, volumes=columns_from_summary(summary))
            return
        error, exc_info = _as_user_error(outcome, source)
        if stops_the_batch(error):
            room = format_bytes(estimated_output_bytes(input_bytes(source), self.settings.fmt,
                                                       self.settings.confidence_map))
            error = StorageError(f"{error} The batch stopped; the next case needs about {room} "
                                 "in the output folder.", error.errno, error.path)
            stop = True
        else:
            stop = False
        self.on_failure(case, error, exc_info)
        self.reporter({"event": "error", "case": case, "kind": error.kind, "message": str(error)})
        refused = getattr(source, "problem", None) and isinstance(error, InputError)
        status = ("cancelled" if isinstance(error, Cancelled) else "refused" if refused
                  else "failed")
        self.row(case, source, status, seconds=time.perf_counter() - started,
                 message=str(error))
        if isinstance(error, Cancelled):
            raise _Stop(error)
        self.failed += 1
        if stop:
            raise _Stop(error)

    def not_done(self, first, reason):
        for case, source in self.cases[first:]:
            self.row(case, source, "not done", message=f"not done: {reason}")

    # -- running ------------------------------------------------------------------------------
    def run(self) -> int:
        asked = self.predictor.cancel
        self.predictor.cancel = lambda: self.halt.is_set() or _is_set(asked)
        try:
            return self._run()
        finally:
            self.predictor.cancel = asked

    def _run(self) -> int:
        pipelined = self.settings.pipeline
        log.info("%d case(s), %s", len(self.cases), "pipelined" if pipelined else "sequential")
        index = 0
        try:
            for index, (case, source) in enumerate(self.cases):
                if self.cancel():
                    raise Cancelled("Stopped by the user before this case.")
                loading = self.ahead is not None and self.ahead[0] == index
                if not loading and self.already_done(case):
                    self.report_existing(case, source)
                    continue
                started = time.perf_counter()
                try:
                    loaded = self.take_loaded(index) if pipelined else self.load(case, source)
                    if pipelined:
                        self.load_ahead(index + 1)
                    loaded = self.predictor.infer(loaded)
                except KeyboardInterrupt:
                    raise Cancelled("Stopped by the user; no output was written for this case.")
                except BaseException as exc:
                    self.settle_behind()
                    self.settle(index, started, exc)
                    continue
                self.settle_behind()
                if pipelined:
                    self.behind = (index, started, _Background(self.export_or_error, case, source,
                                                               loaded))
                else:
                    self.settle(index, started, self.export_or_error(case, source, loaded))
            self.settle_behind()
        except KeyboardInterrupt:
            return self.stop(index, Cancelled("Stopped by the user; no output was written for "
                                              "this case."))
        except Cancelled as exc:
            return self.stop(index, exc)
        except _Stop as stop:
            return self.stopped(stop.args[0])
        return EXIT_FAILED if self.failed else EXIT_OK

    def export_or_error(self, case, source, loaded):
        try:
            return self.export(case, source, loaded)
        except KeyboardInterrupt:
            return Cancelled("Stopped by the user; no output was written for this case.")
        except BaseException as exc:  # settled in case order by the main thread
            if stops_the_batch(exc):
                self.halt.set()
            return exc

    def take_loaded(self, index):
        case, source = self.cases[index]
        if self.ahead is not None and self.ahead[0] == index:
            _, loading = self.ahead
            self.ahead = None
            return loading.result()
        self.ahead = None  # a case skipped between: abandon (it writes nothing)
        return self.load(case, source)

    def load_ahead(self, first):
        """Start loading the next case that needs computing (one case ahead at most)."""
        for index in range(first, len(self.cases)):
            case, source = self.cases[index]
            if self.already_done(case):
                continue
            self.ahead = (index, _Background(self.load, case, source))
            return

    def settle_behind(self):
        if self.behind is None:
            return
        index, started, exporting = self.behind
        self.behind = None
        self.settle(index, started, exporting.result())

    def stop(self, index, cancelled: Cancelled) -> int:
        """Cancelled: the export in flight finishes or removes its files; the case in hand is
        reported cancelled; the read-ahead is abandoned."""
        self.cancel_set()
        self.ahead = None
        try:
            self.settle_behind()
            self.settle(index, time.perf_counter(), cancelled)
        except _Stop:
            pass
        return EXIT_FAILED

    def cancel_set(self):
        setter = getattr(self.cancel, "set", None)
        if setter is not None:
            setter("interrupted")

    def stopped(self, error) -> int:
        """A disk that refuses writes: report every case not finished as not done."""
        self.ahead = None
        try:
            self.settle_behind()
        except _Stop:
            pass
        done = {row["case"] for row in self.report.rows}
        first = next((i for i, (case, _) in enumerate(self.cases) if case not in done),
                     len(self.cases))
        if not isinstance(error, Cancelled):
            self.not_done(first, str(error))
        return EXIT_FAILED


def _is_set(cancel) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if hasattr(cancel, "is_set") else bool(cancel())


def _as_user_error(exc: BaseException, source):
    """(the error to report, exc_info or None): OS errors and known errors are the user's, the
    rest are bugs and keep their traceback."""
    if isinstance(exc, KeyboardInterrupt):
        return Cancelled("Stopped by the user; no output was written for this case."), None
    if isinstance(exc, StorageError):
        return exc, (type(exc), exc, exc.__traceback__)
    if isinstance(exc, LKMError):
        return exc, None
    if isinstance(exc, OSError):
        error = storage_error(exc, "use")
        return error, (type(exc), exc, exc.__traceback__)
    if isinstance(exc, MemoryError):
        return ResourceError(f"Out of memory on {source}: try --quick, fewer --threads or close "
                             "other programs."), None
    error = LKMError(f"Unexpected error on {source}: {type(exc).__name__}: {exc}")
    error.kind = "internal"
    return error, (type(exc), exc, exc.__traceback__)
