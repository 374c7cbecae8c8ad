"""The module's real widget (LKMSegment.py) driven headless through a user's clicks.

The Slicer application is replaced by a STAND-IN (Testing/slicer_app_standin.py): real Qt widgets
(PyQt5, offscreen) carry the module's .ui, the ctk/qMRML widgets are small stand-ins, and every
Qt call the module makes passes through a layer that enforces PythonQt's rules from
Testing/pythonqt_api.json (extracted from PythonQt's own sources by Testing/pythonqt_api.py).
The scene is real MRML (slicer-core) and the engine really runs, in a child process started by
the logic's headless SubprocessRunner (the app's QProcessRunner is tested on its own).

What only the in-app self test covers: Slicer's real PythonQt/CTK/qMRML, its parameter node
wrapper, QProcess through the PythonSlicer launcher.
"""

from __future__ import annotations

import importlib.util
import os
import time

import pytest

import slicer_app_standin as standin
from slicer_fixtures import REPO, add_volume, bundle, ct_crop, new_scene, oblique_flipped_ijk_to_ras  # noqa: F401

from LKMSegmentLib.models import ModelRegistry  # noqa: E402
from LKMSegmentLib.process import SubprocessRunner  # noqa: E402

pytestmark = pytest.mark.slow
TIMEOUT = 240


def import_module_file():
    spec = importlib.util.spec_from_file_location("LKMSegment", REPO / "LKMSegment" / "LKMSegment.py")
    module = importlib.util.module_from_spec(spec)
    import sys
    sys.modules["LKMSegment"] = module
    spec.loader.exec_module(module)
    return module


def pump(app, until, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not until():
        app.processEvents()
        time.sleep(0.02)
        assert time.monotonic() < deadline, "the panel did not get there in time"


def segments(node):
    seg = node.GetSegmentation()
    return {seg.GetNthSegment(i).GetName(): seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())}


def snapshot(node):
    """What a user's reviewed work is: segment names, IDs and the node's modification time."""
    return (tuple(segments(node).items()), node.GetMTime(), node.GetSegmentation().GetMTime())


def raw(wrapped):
    return standin.unwrap(wrapped)


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
    assert widget.run is None
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
    assert widget.run is None and "Stopped" in ui["statusLabel"].text()
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
    """Testing/render_panel.py (the README's panel picture) still runs on the current panel."""
    import subprocess
    import sys

    import SimpleITK as sitk

    out = tmp_path / "panel.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, str(REPO / "Testing" / "render_panel.py"), "-o", str(out)],
                            capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    width, height = sitk.ReadImage(str(out)).GetSize()[:2]
    assert width >= 400 and height >= 600
