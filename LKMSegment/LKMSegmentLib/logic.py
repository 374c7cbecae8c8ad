"""The module's logic without Qt: segment one or many volumes, export cases for retraining.

``LKMSegmentCore`` works on any MRML scene (``slicer.mrmlScene`` in the app, a fresh
``vtkMRMLScene`` in tests). A run is driven by calling ``pump()`` (a QTimer in the app) or
``run_to_end()`` (scripts, tests); the scene is modified only when the engine has finished
successfully, so Stop or a failure leaves it exactly as it was.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .confidence import node_confidences
from .confidencemap import ConfidenceMapError, load_confidence_map
from .engine import EngineJob, PredictOptions, safe_case_name
from .datasetexport import NnUNetDatasetExporter
from .models import ModelBundleError, read_model_info
from .process import SubprocessRunner
from .scene import (ImportReport, ResultImportError, check_input_volume, import_result, in_scene,
                    placement_problem, write_volume)
from .triage import rank_cases

log = logging.getLogger(__name__)


class SegmentationFailed(Exception):
    """Raised by the blocking helpers when a run did not succeed (message for the user)."""


@dataclass
class RunItem:
    case: str
    volume: object
    target: object = None  # existing segmentation node, or None for a new one
    name: str | None = None  # name for a new node


@dataclass
class SegmentationRun:
    scene: object
    job: EngineJob
    items: list[RunItem]
    labels: list = field(default_factory=list)
    replace_existing: bool = True
    show_3d: bool = False
    keep_outputs_dir: str | None = None
    reports: dict[str, ImportReport] = field(default_factory=dict)
    import_errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    finished: bool = False
    abandoned: bool = False  # its scene was closed: nothing is imported, whatever the engine did

    def pump(self) -> bool:
        """Advance the run; True while the engine still runs. Imports results at the end."""
        if self.finished:
            return False
        if self.job.pump():
            return True
        self._finish()
        return False

    def run_to_end(self, poll_s: float = 0.05, timeout_s: float | None = None) -> "SegmentationRun":
        try:
            self.job.run_to_end(poll_s, timeout_s)
        finally:
            self._finish()
        return self

    def request_stop(self, abandon: bool = False) -> None:
        """Stop without blocking (the panel): keep calling ``pump()`` until it returns False.
        A result the engine completed before it saw the Stop is kept, unless ``abandon``."""
        if self.finished:
            return
        self.abandoned = self.abandoned or abandon
        self.job.request_stop()

    @property
    def stopping(self) -> bool:
        return not self.finished and self.job.stopping

    def stop(self):
        """Stop the engine (blocking, for scripts); a run whose engine has already ended is finished instead, so a Stop
        that comes after the end (before the next timer tick) keeps the result."""
        if self.finished:
            return
        if self.job.state == "running" and self.job.runner.exit_code is not None:
            self.job.runner.wait(5)  # the engine has exited: let its last output arrive
        if not self.job.pump():
            self._finish()
            return
        self.job.stop()
        self.finished = True

    @property
    def state(self) -> str:
        if self.job.state == "done" and self.import_errors:
            return "failed"
        return self.job.state

    @property
    def succeeded(self) -> bool:
        return self.state == "done"

    def _finish(self):
        if self.finished:
            return
        self.finished = True
        try:
            if self.job.state not in ("done", "failed") or self.abandoned:
                return
            if self.keep_outputs_dir:
                dest = Path(self.keep_outputs_dir)
                dest.mkdir(parents=True, exist_ok=True)
                for path in self.job.output_dir.iterdir():
                    shutil.copy2(path, dest / path.name)
            for item in self.items:
                result = self.job.result_file(item.case)
                if result is None or item.case in self.job.errors:
                    continue
                confidence = (self.job.summaries.get(item.case) or {}).get("confidence") or {}
                if not in_scene(self.scene, item.volume):
                    self.import_errors[item.case] = (f"the volume '{item.volume.GetName()}' was deleted "
                                                     "during the run; its result was not imported")
                    continue
                target = self._target_now(item)
                try:
                    self.reports[item.case] = import_result(
                        self.scene, item.volume, result, target=target, labels=self.labels,
                        replace_existing=self.replace_existing, name=item.name,
                        show_3d=self.show_3d, confidence=confidence.get("structures"))
                except (ResultImportError, OSError) as e:
                    self.import_errors[item.case] = str(e)
                    continue
                self._load_confidence_map(item)
        finally:
            self.job.cleanup()

    def _target_now(self, item: RunItem):
        """The item's output node as the scene is now; a node deleted or moved during the run is
        replaced by a new one (with a note), so the result is never written where nobody sees it."""
        target = item.target
        if target is None:
            return None
        if not in_scene(self.scene, target):
            self.notes.append(f"The output segmentation '{target.GetName()}' was deleted during the "
                              f"run: the result of '{item.volume.GetName()}' is in a new segmentation.")
            return None
        problem = placement_problem(target, item.volume)
        if problem:
            self.notes.append(problem.split(":")[0] + ": the result is in a new segmentation instead.")
            return None
        return target

    def _load_confidence_map(self, item: RunItem):
        """The case's confidence map into the scene (before the work folder goes); a map that
        cannot be used is a note, never a failed run."""
        path = self.job.confidence_map_file(item.case)
        if path is None:
            if self.job.options.confidence_map:
                self.notes.append(f"{item.volume.GetName()}: the engine wrote no confidence map.")
            return
        report = self.reports[item.case]
        try:
            report.confidence_map = load_confidence_map(self.scene, item.volume, path,
                                                        segmentation=report.node)
        except ConfidenceMapError as e:
            self.notes.append(str(e))

    def ranked(self):
        """The run's cases, least confident first (triage.RankedCase; key: the volume's ID)."""
        return rank_cases((item.volume.GetID(), item.volume.GetName(),
                           self.job.summaries.get(item.case) or {})
                          for item in self.items if item.case in self.reports)

    def message(self) -> str:
        """Summary for the user: what was imported, what failed and why, what to check first."""
        parts = []
        for item in self.items:
            report = self.reports.get(item.case)
            if report is not None:
                device = self.job.summaries.get(item.case, {}).get("device")
                where = f" (computed on {device})" if device else ""
                parts.append(f"{item.volume.GetName()} → {report.node.GetName()}: {report.text()}{where}")
                flagged = [s for s in node_confidences(report.node) if s.flagged]
                if flagged:
                    parts.append("  least confident, check first: "
                                 + ", ".join(f"{s.name} {s.score:.2f}" for s in flagged))
        for case, text in self.import_errors.items():
            parts.append(f"{case}: the result could not be imported: {text}")
        if self.job.state != "done":
            parts.append(self.job.failure_message())
        for warning in self.job.warnings + self.notes:
            parts.append(f"Note: {warning}")
        return "\n".join(parts)


class LKMSegmentCore:
    """Segment volumes with the engine and bring the results into ``scene``."""

    def __init__(self, scene, temp_root: str | None = None, runner_factory=SubprocessRunner,
                 python: str | None = None):
        self.scene = scene
        self.temp_root = temp_root
        self.runner_factory = runner_factory
        self.python = python

    def start(self, volumes, options: PredictOptions, targets=None, replace_existing: bool = True,
              show_3d: bool = False, on_event=None, keep_outputs_dir: str | None = None,
              names=None) -> SegmentationRun:
        """Write the inputs and start the engine; returns a run to ``pump()`` or ``stop()``.

        ``targets[i]`` is an existing segmentation node for ``volumes[i]`` or None (new node).
        """
        volumes = list(volumes)
        if not volumes:
            raise ValueError("Choose at least one input volume.")
        targets = list(targets) if targets is not None else [None] * len(volumes)
        names = list(names) if names is not None else [None] * len(volumes)
        if len(targets) != len(volumes) or len(names) != len(volumes):
            raise ValueError("One output segmentation (or None) is needed per input volume.")
        for volume, target in zip(volumes, targets):
            check_input_volume(volume)
            problem = placement_problem(target, volume) if target is not None else None
            if problem:
                raise ValueError(problem)
        try:
            labels = read_model_info(options.model).labels
        except ModelBundleError as e:
            raise ValueError(str(e)) from None
        known = {lab.name for lab in labels}
        unknown = [s for s in options.subset if s not in known]
        if unknown:
            raise ValueError(f"The model does not produce {', '.join(unknown)}; "
                             f"it knows {', '.join(sorted(known))}.")

        job = EngineJob(options, runner=self.runner_factory(), temp_root=self.temp_root,
                        python=self.python, on_event=on_event)
        items, taken = [], set()
        try:
            for volume, target, name in zip(volumes, targets, names):
                case = safe_case_name(volume.GetName(), taken)
                taken.add(case)
                write_volume(volume, job.input_path(case))
                items.append(RunItem(case, volume, target, name))
            job.start()
        except Exception:
            job.cleanup()
            raise
        return SegmentationRun(self.scene, job, items, labels, replace_existing, show_3d,
                               keep_outputs_dir)

    def segment(self, volume, options: PredictOptions, target=None, timeout_s: float | None = None,
                **kwargs) -> ImportReport:
        """Blocking convenience for scripts: segment one volume, return its import report."""
        run = self.start([volume], options, targets=[target], **kwargs).run_to_end(timeout_s=timeout_s)
        if not run.succeeded:
            raise SegmentationFailed(run.message())
        return next(iter(run.reports.values()))

    def segment_batch(self, volumes, options: PredictOptions, timeout_s: float | None = None,
                      **kwargs) -> SegmentationRun:
        """Blocking: every volume into its own new segmentation node, in one engine run."""
        return self.start(volumes, options, **kwargs).run_to_end(timeout_s=timeout_s)

    @staticmethod
    def export_case(volume, seg_node, dataset_dir, model_path, case_name=None):
        """Append the volume + segmentation to an nnU-Net raw dataset (label table of the model)."""
        info = read_model_info(model_path)
        exporter = NnUNetDatasetExporter(dataset_dir, info.label_table(),
                                         channel_name=info.modality or "CT")
        return exporter.export_case(volume, seg_node, case_name)
