"""The module's real widget (LKMSegment.py) on the paths a real user walks and no other test did.

Same stand-in as test_slicer_widget.py (PythonQt rules enforced, real MRML from slicer-core, the
engine really running in a child process where a run is needed). Each test names the defect of
the module it guards against.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import slicer_app_standin as standin
from slicer_fixtures import add_volume, bundle, ct_crop, new_scene, oblique_flipped_ijk_to_ras  # noqa: F401
from widget_driving import import_module_file, listed_nodes, pump, raw, segments

from LKMSegmentLib import dependencies as deps  # noqa: E402
from LKMSegmentLib.nodeattributes import MADE_BY_MODULE, MAP_ROLE  # noqa: E402
from LKMSegmentLib.process import SubprocessRunner  # noqa: E402

pytestmark = pytest.mark.slow


def open_panel(monkeypatch, tmp_path, scene, before_setup=None, app_runner=False):
    """(widget, ui, answers, app): the module's panel on ``scene``, runs in a test folder; the
    engine through the headless SubprocessRunner, or with ``app_runner`` the app's own
    QProcessRunner (QProcess of the stand-in's ``qt``)."""
    answers = standin.install(monkeypatch, scene, tmp_path / "settings")
    app = standin.ensure_application()
    module = import_module_file()
    if before_setup is not None:
        before_setup(module)
    widget = module.LKMSegmentWidget()
    widget.setup()
    if not app_runner:
        widget.logic.core.runner_factory = SubprocessRunner
    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)
    widget.logic.core.temp_root = str(runs)
    ui = {name: raw(w) for name, w in vars(widget.ui).items()}
    ui["deviceComboBox"].setCurrentText("cpu")
    return widget, ui, answers, app


def close_panel(widget, app):
    app.processEvents()
    widget.cleanup()
    assert standin.handler_errors == [], "\n".join(standin.handler_errors)
    assert standin.violations == [], standin.violations


def with_confidence_map(scene, volume, folder):
    """``volume`` with a segmentation and confidence map as a finished run leaves them."""
    from engine_outputs import engine_outputs
    from LKMSegmentLib.confidencemap import load_confidence_map
    from LKMSegmentLib.scene import import_result

    folder.mkdir()
    seg_path, _, _, map_path, _ = engine_outputs(volume, folder)
    node = import_result(scene, volume, seg_path, name=f"{volume.GetName()} segmentation").node
    return node, load_confidence_map(scene, volume, map_path, segmentation=node)


SHAPE = (10, 12, 14)


def small_volume(scene, name, seed):
    """A small random volume on an oblique, flipped grid (no engine run needs it)."""
    rng = np.random.default_rng(seed)
    return add_volume(scene, name, rng.integers(-100, 200, SHAPE).astype(np.int16),
                      oblique_flipped_ijk_to_ras((1.5, 1.2, 2.5), SHAPE))


def list_texts(widget_list):
    return [widget_list.item(i).text() for i in range(widget_list.count())]


# -- defect 1 (and 9: stale batch list) ---------------------------------------------------------
def test_confidence_maps_are_never_segmented_and_the_batch_list_follows_the_scene(monkeypatch, tmp_path):
    scene = new_scene()
    volume = small_volume(scene, "patient A", 1)
    _, confidence_map = with_confidence_map(scene, volume, tmp_path / "a")
    widget, ui, answers, app = open_panel(monkeypatch, tmp_path, scene)
    import LKMSegmentLib.logic as logic
    from LKMSegmentLib.engine import EngineJob

    written = []  # the volumes a run writes for the engine; the engine itself is not started here
    monkeypatch.setattr(logic, "write_volume", lambda volume, path: written.append(volume))
    monkeypatch.setattr(EngineJob, "start", lambda self: (_ for _ in ()).throw(RuntimeError("not started")))

    assert list_texts(ui["batchVolumesList"]) == ["patient A"], "the confidence map is offered for batch"
    ui["batchAllRadio"].setChecked(True)
    ui["batchSegmentButton"].click()
    assert written == [volume], answers.shown

    # not offered as input: the selector lists only the volume, and asked for the map by its node
    # it selects nothing (Slicer's qMRMLNodeComboBox finds no row for a hidden node)
    assert listed_nodes(ui["inputVolumeSelector"]) == [volume]
    ui["inputVolumeSelector"].setCurrentNode(confidence_map)
    assert ui["inputVolumeSelector"].currentNode() is None
    # the map as the input choice all the same (a scene saved by an earlier version): Segment
    # refuses it with a reason, nothing written
    widget._parameterNode.inputVolume = confidence_map
    ui["segmentButton"].click()
    assert written == [volume]
    assert "confidence map made by LKMSegment" in answers.of_kind("error")[-1], answers.shown

    # a closed scene leaves no stale entries; a new volume appears after Refresh
    scene.Clear(0)
    assert list_texts(ui["batchVolumesList"]) == []
    small_volume(scene, "patient B", 2)
    ui["batchRefreshButton"].click()
    assert list_texts(ui["batchVolumesList"]) == ["patient B"]
    close_panel(widget, app)


def test_a_map_made_while_the_panel_is_open_never_becomes_an_input_choice(monkeypatch, tmp_path):
    """Defect 1: a run's confidence map (added to the scene, then marked, as load_confidence_map
    does at the end of a Segment) is kept out of the input selector at once; the input stays the
    user's volume; a map the user unmarks is an ordinary volume again."""
    scene = new_scene()
    volume = small_volume(scene, "patient A", 5)
    widget, ui, answers, app = open_panel(monkeypatch, tmp_path, scene)
    selector = ui["inputVolumeSelector"]
    assert selector.currentNode() is volume

    _, confidence_map = with_confidence_map(scene, volume, tmp_path / "a")
    assert listed_nodes(selector) == [volume], "the confidence map is offered as input"
    assert selector.currentNode() is volume and widget._parameterNode.inputVolume is volume
    ui["batchRefreshButton"].click()
    assert list_texts(ui["batchVolumesList"]) == ["patient A"]

    # the user takes the module's marks off (Data module): the selector offers it again
    confidence_map.RemoveAttribute(MADE_BY_MODULE)
    assert listed_nodes(selector) == [volume], "a map marked by its role alone (earlier versions) was offered"
    confidence_map.RemoveAttribute(MAP_ROLE)
    assert listed_nodes(selector) == [volume, confidence_map]
    assert selector.currentNode() is volume
    close_panel(widget, app)


def save_scene(scene, path):
    """Save ``scene`` as the application does: each storable node to its file, then the .mrml."""
    path.parent.mkdir(parents=True)
    for node in list(scene.GetNodesByClass("vtkMRMLStorableNode")):
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        storage.SetFileName(str(path.parent / f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}"))
        assert storage.WriteData(node), node.GetName()
    scene.SetURL(str(path))
    assert scene.Commit()


def test_a_saved_scene_with_confidence_maps_loads_with_the_maps_out_of_the_input_selector(monkeypatch, tmp_path):
    """Defect 1: maps saved with a scene (their marks are node attributes, saved with it) are kept
    out of the input selector when the scene is loaded into the open panel; the batch list too."""
    import slicer

    saved = new_scene()
    for seed, name in ((6, "patient A"), (7, "patient B")):
        with_confidence_map(saved, small_volume(saved, name, seed), tmp_path / name)
    save_scene(saved, tmp_path / "saved" / "scene.mrml")

    scene = new_scene()
    scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())  # the application's Colors module does
    widget, ui, answers, app = open_panel(monkeypatch, tmp_path, scene)
    scene.SetURL(str(tmp_path / "saved" / "scene.mrml"))
    messages = slicer.vtkMRMLMessageCollection()
    assert scene.Import(messages), messages.GetAllMessagesAsString()
    volumes = {n.GetName(): n for n in scene.GetNodesByClass("vtkMRMLScalarVolumeNode")}
    assert sorted(volumes) == ["patient A", "patient A confidence", "patient B", "patient B confidence"]
    assert listed_nodes(ui["inputVolumeSelector"]) == [volumes["patient A"], volumes["patient B"]]
    assert ui["inputVolumeSelector"].currentNode() is volumes["patient A"]
    assert list_texts(ui["batchVolumesList"]) == ["patient A", "patient B"]

    scene.Clear(0)  # a closed scene: nothing is hidden that a new scene's node could be
    loaded = small_volume(scene, "patient C", 8)
    assert listed_nodes(ui["inputVolumeSelector"]) == [loaded]
    assert raw(widget.ui.inputVolumeSelector.sortFilterProxyModel()).hiddenNodeIDs == []
    close_panel(widget, app)


# -- defects 2 and 7 ------------------------------------------------------------------------------
def test_add_model_installs_the_packages_first_and_detect_reports_an_install_failure(
        monkeypatch, tmp_path, bundle):
    scene = new_scene()
    widget, ui, answers, app = open_panel(monkeypatch, tmp_path, scene)
    import slicer

    missing = {"safetensors"}  # a fresh Slicer: what `bundle verify` needs is not there yet
    monkeypatch.setattr(deps, "is_satisfied", lambda r: deps.requirement_name(r) not in missing)
    monkeypatch.setattr(deps, "nvidia_gpu_present", lambda: False)
    installs = []

    def pip_install(arguments):
        installs.append(arguments)
        missing.clear()
    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    verified = []
    verify = widget.logic.startVerifyModel
    monkeypatch.setattr(widget.logic, "startVerifyModel",
                        lambda path: verified.append(list(installs)) or verify(path))

    answers.files.append(str(bundle))
    ui["addModelButton"].menu().actions()[0].trigger()
    assert any("safetensors" in text for text in answers.of_kind("confirm")), answers.shown
    assert verified == [[installs[0]]], "the bundle was checked before the packages were installed"
    assert any("safetensors" in a for a in installs[0])
    # the engine's check runs in its own process: the click returns at once, the panel says so
    assert widget.background is not None and "Checking the model" in ui["statusLabel"].text()
    pump(app, lambda: widget.background is None)
    assert ui["modelSelector"].count() == 2, answers.shown
    assert "Model added: untrained-3d_small" in ui["statusLabel"].text()

    # Detect with everything installed: the GPU probe runs in the background too
    ui["detectDeviceButton"].click()
    assert widget.background is not None and "Looking for a GPU" in ui["deviceInfoLabel"].text()
    pump(app, lambda: widget.background is None)
    assert "PyTorch" in ui["deviceInfoLabel"].text() or "GPU:" in ui["deviceInfoLabel"].text()

    # Detect, and the install fails (no network): the user is told what happened and what to do
    missing.add("psutil")

    def no_network(arguments):
        raise RuntimeError("Could not find a version that satisfies the requirement psutil>=5.9")
    monkeypatch.setattr(slicer.util, "pip_install", no_network)
    ui["detectDeviceButton"].click()
    errors = answers.of_kind("error")
    assert len(errors) == 1 and "psutil>=5.9" in errors[0] and "try again" in errors[0]
    assert "could not be installed" in ui["statusLabel"].text()
    assert "Not checked" in ui["deviceInfoLabel"].text()
    close_panel(widget, app)  # no traceback left in the Python console only


# -- defect 3, scene close / enter / exit during a run ----------------------------------------------
def test_output_node_deleted_during_a_run_gets_a_new_node_and_a_closed_scene_stops_the_run(
        monkeypatch, tmp_path, ct_crop):
    array, spacing = ct_crop
    scene = new_scene()
    volume = add_volume(scene, "patient A", array, oblique_flipped_ijk_to_ras(spacing, array.shape))
    mine = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my output")
    widget, ui, answers, app = open_panel(monkeypatch, tmp_path, scene)
    ui["outputSegmentationSelector"].setCurrentNode(mine)
    ui["segmentButton"].click()
    assert widget.run is not None, answers.shown
    widget.exit()  # the user looks at another module meanwhile and comes back
    widget.enter()
    scene.RemoveNode(mine)
    pump(app, lambda: widget.run is None)
    results = list(scene.GetNodesByClass("vtkMRMLSegmentationNode"))
    assert len(results) == 1 and len(segments(results[0])) == 9, "the result went into the deleted node"
    assert results[0].GetNodeReference(results[0].GetReferenceImageGeometryReferenceRole()) is volume
    assert ui["outputSegmentationSelector"].currentNode() is results[0]
    assert "was deleted during the run" in ui["logTextEdit"].toPlainText()
    assert results[0].GetName() in ui["statusLabel"].text()

    # a run going when the scene is closed: stopped, nothing left behind, the panel usable again
    ui["segmentButton"].click()
    assert widget.run is not None
    engine = widget.run.job.runner
    scene.Clear(0)
    pump(app, lambda: widget.run is None, timeout=10)  # ended in the background
    assert engine.exit_code is not None and engine.is_finished()
    assert list(scene.GetNodesByClass("vtkMRMLSegmentationNode")) == []
    assert os.listdir(tmp_path / "runs") == []
    assert not ui["stopButton"].isEnabled()
    close_panel(widget, app)


# -- defect 8 ----------------------------------------------------------------------------------
def test_an_output_under_another_transform_is_refused_before_the_run(monkeypatch, tmp_path):
    scene = new_scene()
    small_volume(scene, "patient A", 5)
    moved = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "registered work")
    moved.GetSegmentation().AddEmptySegment("", "mine")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    moved.SetAndObserveTransformNodeID(transform.GetID())
    widget, ui, answers, app = open_panel(monkeypatch, tmp_path, scene)
    ui["outputSegmentationSelector"].setCurrentNode(moved)
    ui["segmentButton"].click()
    assert widget.run is None
    errors = answers.of_kind("error")
    assert len(errors) == 1 and "'registration'" in errors[0] and "wrong place" in errors[0]
    assert segments(moved) == {"mine": moved.GetSegmentation().GetNthSegmentID(0)}
    close_panel(widget, app)


def test_an_output_moved_under_a_transform_during_the_run_gets_a_new_node(monkeypatch, tmp_path, ct_crop):
    array, spacing = ct_crop
    scene = new_scene()
    volume = add_volume(scene, "patient A", array, oblique_flipped_ijk_to_ras(spacing, array.shape))
    mine = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my work")
    mine.GetSegmentation().AddEmptySegment("", "mine")
    widget, ui, answers, app = open_panel(monkeypatch, tmp_path, scene)
    ui["outputSegmentationSelector"].setCurrentNode(mine)
    ui["segmentButton"].click()
    assert widget.run is not None, answers.shown
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    mine.SetAndObserveTransformNodeID(transform.GetID())  # the user registers it meanwhile
    pump(app, lambda: widget.run is None)
    assert list(segments(mine)) == ["mine"], "segments were written under the other transform"
    new = [n for n in scene.GetNodesByClass("vtkMRMLSegmentationNode") if n is not mine]
    assert len(new) == 1 and len(segments(new[0])) == 9
    assert new[0].GetTransformNodeID() == volume.GetTransformNodeID()
    assert "the result is in a new segmentation instead" in ui["logTextEdit"].toPlainText()
    close_panel(widget, app)


# -- defect 9 ----------------------------------------------------------------------------------
def test_saved_choice_bundled_model_removal_and_a_map_without_its_volume(monkeypatch, tmp_path):
    import slicer

    scene = new_scene()
    volume = small_volume(scene, "patient A", 3)
    result, confidence_map = with_confidence_map(scene, volume, tmp_path / "a")

    def saved_scene(module):  # what a scene saved with this module brings back
        parameters = module.LKMSegmentLogic().getParameterNode()
        parameters.inputVolume = volume
        parameters.outputSegmentation = result
    widget, ui, answers, app = open_panel(monkeypatch, tmp_path, scene, before_setup=saved_scene)
    assert ui["outputSegmentationSelector"].currentNode() is result, "the saved output choice was dropped"

    ui["modelSelector"].setCurrentIndex(0)  # the bundled default model
    ui["removeModelButton"].click()
    errors = answers.of_kind("error")
    assert len(errors) == 1 and "comes with the LKMSegment extension" in errors[0]
    assert ui["modelSelector"].count() == 1

    layers = []
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: layers.append(kw))
    other = small_volume(scene, "patient B", 4)
    scene.RemoveNode(volume)  # the map stays, the volume it was made for is gone
    ui["inputVolumeSelector"].setCurrentNode(other)
    ui["outputSegmentationSelector"].setCurrentNode(result)
    ui["showConfidenceMapButton"].click()
    assert layers and "background" not in layers[0], "the background view was emptied"
    assert layers[0]["foreground"] is confidence_map
    close_panel(widget, app)



# -- defect 4: an old torch, upgraded through the PyTorch extension's own route --------------------
PYTORCH_UTILS = '''
"""Stand-in for the PyTorch extension's module, with the real PyTorchUtilsLogic's API
(fepegar/SlicerPyTorch, PyTorchUtils/PyTorchUtils.py): the same static helpers, same arguments."""
import slicer


class PyTorchUtilsLogic:
    @staticmethod
    def torchInstalled():
        import torch  # as the real one does: this loads torch into Slicer
        return True

    def installTorch(self, askConfirmation=False, forceComputationBackend=None,
                     torchVersionRequirement=None, torchvisionVersionRequirement=None):
        raise AssertionError("installTorch imports torch at its end; the module must not call it")

    @staticmethod
    def _getPipInstallArguments(forceComputationBackend=None, torchVersionRequirement=None,
                                torchvisionVersionRequirement=None):
        args = ["install", "torch" + (torchVersionRequirement or ""),
                "torchvision" + (torchvisionVersionRequirement or "")]
        if forceComputationBackend is not None:
            args.append(f"--pytorch-computation-backend={forceComputationBackend}")
        return args

    @staticmethod
    def _installLightTheTorch():
        slicer.util.pip_install("light-the-torch>=0.5")
'''


def installed_torch(site, version):
    """A torch distribution of ``version`` as pip leaves it in ``site`` (its metadata)."""
    for old in site.glob("torch-*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    info = site / f"torch-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n", encoding="utf-8")


def test_an_old_torch_is_upgraded_through_the_pytorch_extension_without_importing_torch(
        monkeypatch, tmp_path):
    import sys

    import slicer

    site = tmp_path / "site"
    site.mkdir()
    (site / "PyTorchUtils.py").write_text(PYTORCH_UTILS, encoding="utf-8")
    installed_torch(site, "2.0.1")  # what an earlier PyTorch extension install left
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` in this process fails
    scene = new_scene()
    small_volume(scene, "patient A", 6)
    widget, ui, answers, app = open_panel(monkeypatch, tmp_path, scene)
    from LKMSegmentLib.engine import EngineJob
    starts = []
    monkeypatch.setattr(EngineJob, "start", lambda self: starts.append(1) or (_ for _ in ()).throw(
        RuntimeError("not started here")))
    pips, ltt = [], []
    monkeypatch.setattr(slicer.util, "pip_install", pips.append)
    upgrade_to = ["2.13.0"]

    def execute_python_module(module, args):
        ltt.append((module, args))
        installed_torch(site, upgrade_to[0])
    monkeypatch.setattr(slicer.util, "_executePythonModule", execute_python_module, raising=False)

    ui["segmentButton"].click()
    confirms = answers.of_kind("confirm")
    assert len(confirms) == 1 and "torch>=2.1 via the PyTorch extension" in confirms[0], answers.shown
    assert pips == ["light-the-torch>=0.5"]
    assert ltt == [("light_the_torch", ["install", "torch>=2.1", "torchvision"])]
    assert starts == [1], answers.shown  # then the run starts (here: stopped at the engine's start)
    ui["segmentButton"].click()
    assert len(answers.of_kind("confirm")) == 1, "asked again after the upgrade"
    assert starts == [1, 1]

    # the upgrade does not happen (no build for this computer): said, and no run on the old torch
    installed_torch(site, "2.0.1")
    upgrade_to[0] = "2.0.1"
    ui["segmentButton"].click()
    errors = answers.of_kind("error")
    assert "PyTorch 2.0.1 is installed but LKMSegment needs torch>=2.1" in errors[-1], answers.shown
    assert "PyTorch Utils module" in errors[-1]
    assert starts == [1, 1]
    close_panel(widget, app)


# -- the app's QProcess runner behind the panel -------------------------------------------------
def test_segment_stop_and_add_model_through_the_qprocess_runner(monkeypatch, tmp_path, ct_crop, bundle):
    array, spacing = ct_crop
    scene = new_scene()
    add_volume(scene, "patient A", array, oblique_flipped_ijk_to_ras(spacing, array.shape))
    widget, ui, answers, app = open_panel(monkeypatch, tmp_path, scene, app_runner=True)
    assert type(widget.logic.core.runner_factory()).__name__ == "QProcessRunner"
    ui["segmentButton"].click()
    assert widget.run is not None, answers.shown
    pump(app, lambda: widget.run is None)
    nodes = list(scene.GetNodesByClass("vtkMRMLSegmentationNode"))
    assert len(nodes) == 1 and len(segments(nodes[0])) == 9, ui["logTextEdit"].toPlainText()[-2000:]

    ui["segmentButton"].click()
    engine = widget.run.job.runner
    ui["stopButton"].click()
    assert widget.run is not None and "Stopping" in ui["statusLabel"].text()  # the click did not wait
    pump(app, lambda: widget.run is None, timeout=10)
    assert "Stopped" in ui["statusLabel"].text() and engine.is_finished()
    assert os.listdir(tmp_path / "runs") == [] and len(list(scene.GetNodesByClass("vtkMRMLSegmentationNode"))) == 1

    answers.files.append(str(bundle))
    ui["addModelButton"].menu().actions()[0].trigger()
    pump(app, lambda: widget.background is None)
    assert ui["modelSelector"].count() == 2, answers.shown
    close_panel(widget, app)
