"""The module's real widget (LKMSegment.py) driven headless through a user's clicks.

The Slicer application is replaced by a STAND-IN (Testing/slicer_tests/slicer_app_standin.py): real Qt widgets
(PyQt5, offscreen) carry the module's .ui, the ctk/qMRML widgets are small stand-ins, and every
Qt call the module makes passes through a layer that enforces PythonQt's rules from
Testing/slicer_tests/pythonqt_api.json (extracted from PythonQt's own sources by Testing/slicer_tests/pythonqt_api.py).
The scene is real MRML (slicer-core) and the engine really runs, in a child process started by
the logic's headless SubprocessRunner (the app's QProcessRunner is tested on its own).

What only the in-app self test covers: Slicer's real PythonQt/CTK/qMRML, its parameter node
wrapper, QProcess through the PythonSlicer launcher.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import slicer_app_standin as standin
from slicer_fixtures import REPO, add_volume, bundle, ct_crop, new_scene, oblique_flipped_ijk_to_ras  # noqa: F401
from widget_driving import TIMEOUT, import_module_file, listed_nodes, pump, raw, segments

from LKMSegmentLib.models import ModelRegistry  # noqa: E402
from LKMSegmentLib.process import SubprocessRunner  # noqa: E402

pytestmark = pytest.mark.slow


def snapshot(node):
    """What a user's reviewed work is: segment names, IDs and the node's modification time."""
    return (tuple(segments(node).items()), node.GetMTime(), node.GetSegmentation().GetMTime())


def test_segment_two_volumes_stop_add_model_and_export_through_the_real_widget(
        monkeypatch, tmp_path, bundle, ct_crop):
    array, spacing = ct_crop
    scene = new_scene()
    answers = standin.install(monkeypatch, scene, tmp_path / "settings")
    app = standin.ensure_application()
    first = add_volume(scene, "patient A", array, oblique_flipped_ijk_to_ras(spacing, array.shape))
    # someone's work already in the scene, made for no volume of this session: never a default
    other = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "other work")
    other.GetSegmentation().AddEmptySegment("", "mine")
    other_before = snapshot(other)
    reads = []  # how often the installed models' model.json files are read
    read_models = ModelRegistry.models
    monkeypatch.setattr(ModelRegistry, "models", lambda self: reads.append(1) or read_models(self))
    module = import_module_file()

    widget = module.LKMSegmentWidget()
    widget.setup()
    widget.logic.core.runner_factory = SubprocessRunner
    temp_root = tmp_path / "runs"
    temp_root.mkdir()
    widget.logic.core.temp_root = str(temp_root)
    ui = {name: raw(w) for name, w in vars(widget.ui).items()}

    # -- after setup: the first volume, the default model and its structures ---------------------
    assert ui["inputVolumeSelector"].currentNode() is first
    assert ui["modelSelector"].count() == 1 and "lkm-default" in ui["modelSelector"].currentText()
    assert ui["structuresList"].count() == 9
    assert ui["segmentButton"].isEnabled() and not ui["stopButton"].isEnabled()
    assert ui["outputSegmentationSelector"].currentNode() is None  # "Create new segmentation"
    assert ui["exportSegmentationSelector"].currentNode() is None
    assert not ui["exportButton"].isEnabled()
    ui["deviceComboBox"].setCurrentText("cpu")
    assert widget._parameterNode.device == "cpu"

    # -- Segment: progress while it runs, a new node at the end ----------------------------------
    ui["segmentButton"].click()
    assert widget.run is not None, answers.shown
    assert ui["stopButton"].isEnabled() and not ui["segmentButton"].isEnabled()
    progress = []
    pump(app, lambda: progress.append(ui["progressBar"].value()) or widget.run is None)
    assert max(progress) > 0 and not ui["progressBar"].isVisible()
    nodes = [n for n in scene.GetNodesByClass("vtkMRMLSegmentationNode") if n is not other]
    assert len(nodes) == 1, answers.shown
    first_result = nodes[0]
    assert sorted(segments(first_result)) == sorted(
        ui["structuresList"].item(i).text() for i in range(ui["structuresList"].count()))
    assert ui["outputSegmentationSelector"].currentNode() is first_result
    assert ui["exportSegmentationSelector"].currentNode() is first_result
    assert "patient A" in ui["statusLabel"].text()
    # the model's confidence in each segment (the map was asked for by default)
    assert ui["confidenceList"].count() == ui["structuresList"].count()
    assert ui["showConfidenceMapButton"].isEnabled()
    # the run's confidence map is a volume in the scene, but never offered as the input
    maps = [n for n in scene.GetNodesByClass("vtkMRMLScalarVolumeNode") if n.GetAttribute("LKMSegment.MadeByModule")]
    assert len(maps) == 1, "no confidence map was made"
    assert listed_nodes(ui["inputVolumeSelector"]) == [first], "the confidence map is offered as input"
    assert ui["inputVolumeSelector"].currentNode() is first and widget._parameterNode.inputVolume is first
    first_before = snapshot(first_result)

    # -- a second volume: a new node for it, the first one's work untouched ----------------------
    second = add_volume(scene, "patient B", array[:, ::-1].copy(), oblique_flipped_ijk_to_ras(spacing, array.shape))
    ui["inputVolumeSelector"].setCurrentNode(second)
    assert widget._parameterNode.inputVolume is second
    assert ui["outputSegmentationSelector"].currentNode() is None, "the previous input's node was kept"
    assert ui["exportSegmentationSelector"].currentNode() is None
    ui["segmentButton"].click()
    assert widget.run is not None and widget.run.job.runner.wait(TIMEOUT)
    # the engine has ended but the panel's timer has not seen it yet: Stop keeps the result
    ui["stopButton"].click()
    pump(app, lambda: widget.run is None)
    nodes = [n for n in scene.GetNodesByClass("vtkMRMLSegmentationNode") if n is not other]
    assert len(nodes) == 2, "no node was made for the second volume"
    second_result = next(n for n in nodes if n is not first_result)
    assert second_result.GetNodeReference(second_result.GetReferenceImageGeometryReferenceRole()) is second
    assert snapshot(first_result) == first_before, "the first volume's segmentation was changed"
    assert ui["outputSegmentationSelector"].currentNode() is second_result

    # -- Stop while the engine runs: nothing changes, nothing is left ----------------------------
    second_before = snapshot(second_result)
    ui["segmentButton"].click()
    assert widget.run is not None
    ui["stopButton"].click()
    assert "Stopping" in ui["statusLabel"].text() and not ui["stopButton"].isEnabled()
    pump(app, lambda: widget.run is None, timeout=10)
    assert "Stopped" in ui["statusLabel"].text()
    assert snapshot(second_result) == second_before and os.listdir(temp_root) == []
    assert len(list(scene.GetNodesByClass("vtkMRMLSegmentationNode"))) == 3

    # back to the first volume: its own node comes back as output and export
    ui["inputVolumeSelector"].setCurrentNode(first)
    assert ui["outputSegmentationSelector"].currentNode() is first_result
    assert ui["exportSegmentationSelector"].currentNode() is first_result

    assert len(reads) == 1, "the model list was read again on a panel update"

    # -- Add model (a folder), checked by the engine ---------------------------------------------
    answers.files.append(str(bundle))
    menu = ui["addModelButton"].menu()
    menu.actions()[0].trigger()
    assert widget.background is not None and not ui["addModelButton"].isEnabled()  # checked in the background
    pump(app, lambda: widget.background is None)
    assert ui["modelSelector"].count() == 2, answers.shown
    assert ui["modelSelector"].currentData() == str(bundle.resolve())
    assert [ui["structuresList"].item(i).text() for i in range(ui["structuresList"].count())] == [
        "liver", "spleen", "kidney_right"]
    ui["modelSelector"].setCurrentIndex(0)  # back to the default model for the export
    assert ui["structuresList"].count() == 9
    assert len(reads) == 2  # once more, after the add

    # -- export: the first volume with its segmentation; another volume's is refused --------------
    dataset = tmp_path / "Dataset901_Review"
    ui["datasetPathLineEdit"].setCurrentPath(str(dataset))
    assert ui["exportButton"].isEnabled()
    ui["exportCaseNameLineEdit"].setText("case A")
    ui["exportButton"].click()
    assert "Exported case 'case_A'" in ui["exportStatusLabel"].text(), answers.shown
    assert (dataset / "imagesTr" / "case_A_0000.nii.gz").exists()
    ui["exportSegmentationSelector"].setCurrentNode(second_result)
    ui["exportButton"].click()
    refused = answers.of_kind("error")
    assert len(refused) == 1 and "'patient B'" in refused[0] and "'patient A'" in refused[0]
    assert len(list((dataset / "labelsTr").iterdir())) == 1

    assert snapshot(other) == other_before
    widget.cleanup()
    assert standin.handler_errors == [], "\n".join(standin.handler_errors)
    assert standin.violations == [], standin.violations


def test_the_panel_picture_renders(tmp_path, sample_ct):
    """Testing/slicer_tests/render_panel.py (the README's panel picture) still runs on the current panel."""
    import subprocess
    import sys

    import SimpleITK as sitk

    out = tmp_path / "panel.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, str(REPO / "Testing" / "slicer_tests" / "render_panel.py"), "-o", str(out)],
                            capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    width, height = sitk.ReadImage(str(out)).GetSize()[:2]
    assert width >= 400 and height >= 600


def test_review_controls_confidence_list_map_overlay_ranking_and_export_order(monkeypatch, tmp_path):
    """The review controls on results the engine wrote (files as in test_slicer_confidence.py):
    each segment's confidence in the panel, "Show confidence map", the batch ranking and the
    export list, least confident first; clicks go through the PythonQt stand-in."""
    import slicerio

    from engine_outputs import engine_outputs
    from lkm_core.contract import CONFIDENCE_TAG, FLAGGED_TAG
    from LKMSegmentLib.confidencemap import OVERLAY_OPACITY, confidence_map_of, load_confidence_map
    from LKMSegmentLib.scene import import_result
    from LKMSegmentLib.triage import rank_cases

    scene = new_scene()
    answers = standin.install(monkeypatch, scene, tmp_path / "settings")
    app = standin.ensure_application()
    layers = []
    import slicer
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: layers.append(kw))
    rng = np.random.default_rng(0)
    shape = (12, 16, 14)
    volumes, results, summaries = {}, {}, {}
    for name, scores in (("patient A", {"spleen": 0.41, "kidney_right": 0.30}),
                         ("patient B", {"spleen": 0.12, "kidney_right": 0.50})):
        volume = add_volume(scene, name, rng.integers(-100, 200, shape).astype(np.int16),
                            oblique_flipped_ijk_to_ras((1.5, 1.2, 2.5), shape))
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        seg_path, _, summary, map_path, _ = engine_outputs(volume, folder)
        data = slicerio.read_segmentation(str(seg_path))
        for segment in data["segments"]:  # patient B's spleen is the least sure of all
            if segment["name"] in scores:
                segment["tags"][CONFIDENCE_TAG] = f"{scores[segment['name']]:.4f}"
                segment["tags"][FLAGGED_TAG] = "1"
        slicerio.write_segmentation(str(seg_path), data)
        for structure, score in scores.items():
            summary["confidence"]["structures"][structure].update(score=score, found=True)
        summary["confidence"]["case_score"] = min(scores.values())
        node = import_result(scene, volume, seg_path, name=f"{name} segmentation").node
        load_confidence_map(scene, volume, map_path, segmentation=node)
        volumes[name], results[name], summaries[name] = volume, node, summary
    module = import_module_file()
    widget = module.LKMSegmentWidget()
    widget.setup()
    ui = {name: raw(w) for name, w in vars(widget.ui).items()}

    # the map is asked for by default
    assert ui["confidenceMapCheckBox"].isChecked() and widget.options().confidence_map
    ui["confidenceMapCheckBox"].setChecked(False)
    assert not widget.options().confidence_map
    ui["confidenceMapCheckBox"].setChecked(True)

    # no output chosen for the input yet: nothing to show
    assert ui["inputVolumeSelector"].currentNode() is volumes["patient A"]
    assert ui["confidenceList"].count() == 0 and not ui["showConfidenceMapButton"].isEnabled()
    # the export list: least confident pair first
    exports = [ui["exportCasesList"].item(i).text() for i in range(ui["exportCasesList"].count())]
    assert exports == ["patient B — patient B segmentation: 0.12, 2 flagged",
                       "patient A — patient A segmentation: 0.30, 2 flagged"]

    # the user picks patient A's segmentation as output: its segments, least sure first
    ui["outputSegmentationSelector"].setCurrentNode(results["patient A"])
    lines = [ui["confidenceList"].item(i).text() for i in range(ui["confidenceList"].count())]
    assert lines == ["kidney_right: 0.30  ⚑ check first", "spleen: 0.41  ⚑ check first", "liver: 0.93"]
    assert ui["showConfidenceMapButton"].isEnabled()
    ui["showConfidenceMapButton"].click()
    assert layers == [{"background": volumes["patient A"], "foreground": confidence_map_of(results["patient A"]),
                       "foregroundOpacity": OVERLAY_OPACITY}]

    # the batch list, least confident first; a click makes that case the input
    widget.showRanking(rank_cases((volumes[n].GetID(), n, summaries[n]) for n in volumes))
    ranking = [ui["batchRankingList"].item(i).text() for i in range(ui["batchRankingList"].count())]
    assert ranking == ["1. patient B: 0.12 (least sure: spleen 0.12 ⚑, kidney_right 0.50 ⚑)",
                       "2. patient A: 0.30 (least sure: kidney_right 0.30 ⚑, spleen 0.41 ⚑)"]
    ui["batchRankingList"].itemClicked.emit(ui["batchRankingList"].item(0))
    assert widget._parameterNode.inputVolume is volumes["patient B"]
    assert ui["outputSegmentationSelector"].currentNode() is None  # B's own choice: a new node
    assert ui["confidenceList"].count() == 0 and not ui["showConfidenceMapButton"].isEnabled()

    # the export list: a click chooses that pair (volume and its segmentation)
    ui["exportCasesList"].itemClicked.emit(ui["exportCasesList"].item(1))
    assert widget._parameterNode.inputVolume is volumes["patient A"]
    assert ui["exportSegmentationSelector"].currentNode() is results["patient A"]
    assert ui["outputSegmentationSelector"].currentNode() is results["patient A"]  # A's choice came back
    ui["exportCasesList"].itemClicked.emit(ui["exportCasesList"].item(0))
    assert widget._parameterNode.inputVolume is volumes["patient B"]
    assert ui["exportSegmentationSelector"].currentNode() is results["patient B"]
    ui["datasetPathLineEdit"].setCurrentPath(str(tmp_path / "Dataset902_Review"))
    ui["modelSelector"].setCurrentIndex(0)
    assert ui["exportButton"].isEnabled(), answers.shown
    ui["exportButton"].click()
    assert "Exported case" in ui["exportStatusLabel"].text(), answers.shown
    exports = [ui["exportCasesList"].item(i).text() for i in range(ui["exportCasesList"].count())]
    assert exports == ["patient A — patient A segmentation: 0.30, 2 flagged",
                       "patient B — patient B segmentation: 0.12, 2 flagged  (exported)"]
    app.processEvents()
    widget.cleanup()
    assert standin.handler_errors == [], "\n".join(standin.handler_errors)
    assert standin.violations == [], standin.violations
