"""LKMSegment: LKM-UNet organ segmentation in 3D Slicer.

This file is deliberately thin: the module description, the panel (widget) and the self test.
Everything that can run without Qt lives in LKMSegmentLib/ and is tested headless with the
slicer-core package (Testing/slicer_tests/test_slicer_*.py in the repository).
"""

import logging
import os
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from LKMSegmentLib import LKMSegmentCore, ModelBundleError, ModelRegistry, PredictOptions
from LKMSegmentLib import dependencies
from LKMSegmentLib.confidence import node_confidences, review_pairs
from LKMSegmentLib.confidencemap import (OVERLAY_OPACITY, ConfidenceMapError, confidence_map_of,
                                         show_confidence_map)
from LKMSegmentLib.datasetexport import ExportError
from LKMSegmentLib.enginecontract import contract, engine_available, engine_environment, engine_search_path
from LKMSegmentLib.models import start_verify, verify_outcome
from LKMSegmentLib.panel import PanelState, controls
from LKMSegmentLib.process import python_executable
from LKMSegmentLib.scene import module_volume_ids, scene_volumes, segmentable_volumes


class LKMSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LKM Segment")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LKMSegment developers"]
        self.parent.helpText = _(
            "Segment organs in CT/MR volumes with LKM-UNet (Large-Kernel Mamba U-Net). Pick a "
            "volume and a model, click Segment; the result arrives as a segmentation, ready for "
            "review in Segment Editor. Reviewed cases can be exported as an nnU-Net dataset for "
            "retraining.")
        self.parent.acknowledgementText = _(
            "LKM-UNet: Wang et al., 'LKM-UNet: Large Kernel Vision Mamba UNet for Medical Image "
            "Segmentation', MICCAI 2024.")


@parameterNodeWrapper
class LKMSegmentParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    exportSegmentation: vtkMRMLSegmentationNode
    modelPath: str = ""
    device: Annotated[str, Choice(list(contract.DEVICES))] = "auto"
    quick: bool = False
    tta: bool = False
    replaceExisting: bool = True
    show3D: bool = False
    # asked for by default: the map comes from the same network pass (little extra time)
    confidenceMap: bool = True
    datasetFolder: Path = Path()


class LKMSegmentLogic(ScriptedLoadableModuleLogic):
    """The app-side logic: LKMSegmentCore on slicer.mrmlScene, QProcess runner, model list."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        from LKMSegmentLib.qtprocess import QProcessRunner

        self.core = LKMSegmentCore(slicer.mrmlScene, runner_factory=QProcessRunner)
        engine_root = engine_search_path()
        settings_dir = Path(slicer.app.slicerUserSettingsFilePath).parent / "LKMSegment"
        self.registry = ModelRegistry(
            [Path(engine_root) / "lkm_core" / "models"] if engine_root else [],
            settings_dir / "models.json")

    def getParameterNode(self):
        return LKMSegmentParameterNode(super().getParameterNode())

    def startVerifyModel(self, path):
        """The engine's check of a bundle, in the engine's environment, not waited for."""
        return start_verify(path, runner=self.core.runner_factory(), engine_env=engine_environment())

    def ensureDependencies(self, confirm=True, log=logging.info) -> bool:
        """Install what the engine needs, after asking. False if the user declined; raises
        (RuntimeError, pip's errors) when something required could not be installed."""
        plan = dependencies.make_plan()
        if not plan.needed:
            return True
        if confirm and not slicer.util.confirmOkCancelDisplay(plan.text(), _("LKMSegment: install packages")):
            return False
        with slicer.util.WaitCursor():
            for note in dependencies.install_in_slicer(plan, log=logging.info):
                log(note)  # an optional speed-up that did not install: the engine goes on without it
        return True

    def startDeviceProbe(self):
        return dependencies.start_device_probe(python_executable(), runner=self.core.runner_factory(),
                                               env=engine_environment())


class LKMSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.panel = None  # LKMSegmentLib.panel.PanelState: what the panel decides, without Qt
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._applyingChoices = False
        self._confidenceLines = None  # what confidenceList shows, to refill it only on a change
        self.run = None
        self.runIsBatch = False
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.timeout.connect(self.onTimer)
        # a short engine command (model check, GPU probe) with what to do with its answer
        self.background = None
        self.backgroundTimer = qt.QTimer()
        self.backgroundTimer.setInterval(100)
        self.backgroundTimer.timeout.connect(self.onBackgroundTimer)

    # -- setup -------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LKMSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LKMSegmentLogic()
        self.panel = PanelState(self.logic.registry)

        self.ui.progressBar.setVisible(False)
        self.ui.progressBar.setRange(0, 100)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneImported)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)
        for volume in scene_volumes(slicer.mrmlScene):
            self.observeVolume(volume)
        self.hideModuleVolumes()

        self.ui.modelSelector.currentIndexChanged.connect(self.onModelChanged)
        addMenu = qt.QMenu(self.ui.addModelButton)
        addMenu.addAction(_("Model folder…"), lambda: self.onAddModel(folder=True))
        addMenu.addAction(_("Model .zip file…"), lambda: self.onAddModel(folder=False))
        self.ui.addModelButton.setMenu(addMenu)
        self.ui.removeModelButton.clicked.connect(self.onRemoveModel)
        self.ui.structuresAllRadio.toggled.connect(self.updateGUI)
        self.ui.structuresList.itemChanged.connect(self.updateGUI)
        self.ui.detectDeviceButton.clicked.connect(self.onDetectDevice)
        self.ui.segmentButton.clicked.connect(self.onSegment)
        self.ui.stopButton.clicked.connect(self.onStop)
        self.ui.batchRefreshButton.clicked.connect(self.refreshBatchList)
        self.ui.batchSegmentButton.clicked.connect(self.onBatchSegment)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.showConfidenceMapButton.clicked.connect(self.onShowConfidenceMap)
        self.ui.batchRankingList.itemClicked.connect(self.onRankedCaseClicked)
        self.ui.exportCasesList.itemClicked.connect(self.onExportCaseClicked)

        self.refreshModels()
        self.refreshBatchList()
        self.initializeParameterNode()
        self.refreshExportCases()

    def cleanup(self):
        if self.run is not None:
            self.run.stop()
        if self.background is not None:
            self.background[0].stop()
        self.timer.stop()
        self.backgroundTimer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)

    def onSceneStartClose(self, caller, event):
        if self.run is not None:  # ends in the background (the timer); nothing comes into a new scene
            self.run.request_stop(abandon=True)
        self.setParameterNode(None)
        self.panel.scene_closed()
        self.ui.batchRankingList.clear()

    def onSceneEndClose(self, caller, event):
        self.hideModuleVolumes()
        if self.parent.isEntered:
            self.initializeParameterNode()
        self.refreshBatchList()
        self.refreshExportCases()

    def onSceneImported(self, caller, event):
        self.hideModuleVolumes()
        self.refreshBatchList()
        self.refreshExportCases()

    # -- the module's own volumes (confidence maps) are never offered as the input --------------
    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node):
        if node.IsA("vtkMRMLVolumeNode"):
            self.observeVolume(node)
            self.hideModuleVolumes()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeRemoved(self, caller, event, node):
        if self.hasObserver(node, vtk.vtkCommand.ModifiedEvent, self.hideModuleVolumes):
            self.removeObserver(node, vtk.vtkCommand.ModifiedEvent, self.hideModuleVolumes)  # lets it go
            self.hideModuleVolumes()

    def observeVolume(self, volume):
        # a map is marked just after it is added, and a user may take the mark off (Data module)
        self.addObserver(volume, vtk.vtkCommand.ModifiedEvent, self.hideModuleVolumes)

    def hideModuleVolumes(self, *_args):
        """The selector's filter hides the maps by ID; unlike HideFromEditors they stay in the Data
        module. Setting the same IDs again changes nothing (qMRMLSortFilterProxyModel)."""
        self.ui.inputVolumeSelector.sortFilterProxyModel().hiddenNodeIDs = module_volume_ids(slicer.mrmlScene)

    def initializeParameterNode(self):
        parameterNode = self.logic.getParameterNode()
        # a saved scene's choices are the user's: the panel starts from them
        self.panel.adopt(self._nodeID(parameterNode.inputVolume), self._nodeID(parameterNode.outputSegmentation),
                         self._nodeID(parameterNode.exportSegmentation))
        self.setParameterNode(parameterNode)
        if not self._parameterNode.inputVolume:
            volumes = segmentable_volumes(slicer.mrmlScene)  # never the module's confidence maps
            if volumes:
                self._parameterNode.inputVolume = volumes[0]

    def setParameterNode(self, parameterNode):
        if self._parameterNode and self._parameterNodeGuiTag is not None:  # not already let go by exit()
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            index = self.ui.modelSelector.findData(self._parameterNode.modelPath)
            if index >= 0:
                self.ui.modelSelector.setCurrentIndex(index)
        self.updateGUI()

    # -- models ------------------------------------------------------------------------------
    def refreshModels(self, select=None):
        """Fill the model list from the panel's model list (read once, re-read on add/remove)."""
        self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        for info in self.panel.models.models:
            self.ui.modelSelector.addItem(info.list_entry(), str(info.path))  # says 2D or 3D
        self.ui.modelSelector.blockSignals(False)
        index = self.ui.modelSelector.findData(str(select)) if select else 0
        self.ui.modelSelector.setCurrentIndex(max(index, 0))
        self.onModelChanged()

    def currentModel(self):
        return self.panel.models.find(self.ui.modelSelector.currentData)

    def onModelChanged(self, *_args):
        info = self.currentModel()
        self.ui.structuresList.clear()
        if info is None:
            self.ui.modelDetailsLabel.text = _("No model installed. Use 'Add model…' to add a bundle.")
        else:
            self.ui.modelDetailsLabel.text = info.summary()
            for name in info.label_names:
                item = qt.QListWidgetItem(name)
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                item.setCheckState(qt.Qt.Checked)
                self.ui.structuresList.addItem(item)
            if self._parameterNode:
                self._parameterNode.modelPath = str(info.path)
        self.updateGUI()

    def onAddModel(self, folder=True):
        if folder:
            path = qt.QFileDialog.getExistingDirectory(None, _("Model bundle folder (with model.json)"))
        else:
            path = qt.QFileDialog.getOpenFileName(None, _("Model bundle"), "", _("Model bundle (*.zip)"))
        if not path or not self.dependenciesReady():  # the engine's check needs the packages
            return
        try:
            command = self.logic.startVerifyModel(path)
        except (ModelBundleError, OSError) as e:
            self.reportFailure(str(e), _("Model not added"))
            return

        def checked(command):
            try:
                info = self.panel.models.add(path, verifier=lambda p: verify_outcome(p, command))
            except ModelBundleError as e:
                self.reportFailure(str(e), _("Model not added"))
                return
            self.ui.statusLabel.text = _("Model added: ") + info.name
            self.refreshModels(select=info.path)
        self.startBackground(command, _("Checking the model…"), checked)

    def startBackground(self, command, status, done):
        """Run a short engine command without blocking the panel; ``done(command)`` at its end."""
        self.background = (command, done)
        self.ui.statusLabel.text = status
        self.backgroundTimer.start()
        self.updateGUI()

    def onBackgroundTimer(self):
        command, done = self.background
        if command.pump():
            return
        self.backgroundTimer.stop()
        self.background = None
        done(command)
        self.updateGUI()

    def onRemoveModel(self):
        info = self.currentModel()
        if info is None:
            return
        try:
            self.panel.models.remove(info.path)
        except ModelBundleError as e:
            self.reportFailure(str(e), _("Model not removed"))
            return
        self.refreshModels()

    def chosenStructures(self):
        if self.ui.structuresAllRadio.checked:
            return []
        items = [self.ui.structuresList.item(i) for i in range(self.ui.structuresList.count)]
        return [it.text() for it in items if it.checkState() == qt.Qt.Checked]

    # -- state -------------------------------------------------------------------------------
    @staticmethod
    def _nodeID(node):
        return node.GetID() if node is not None else None

    def _node(self, nodeID):
        node = slicer.mrmlScene.GetNodeByID(nodeID) if nodeID else None
        if nodeID and node is None:
            self.panel.node_removed(nodeID)
        return node

    def _applyChoices(self, outputID, exportID):
        """Show the output and export segmentation the panel chose for the input volume."""
        p = self._parameterNode
        self._applyingChoices = True
        try:
            if self._nodeID(p.outputSegmentation) != outputID:
                p.outputSegmentation = self._node(outputID)
            if self._nodeID(p.exportSegmentation) != exportID:
                p.exportSegmentation = self._node(exportID)
        finally:
            self._applyingChoices = False

    def updateGUI(self, *_args):
        p = self._parameterNode
        if p is not None and not self._applyingChoices:
            # the output/export selectors follow the input volume (see LKMSegmentLib/panel.py)
            outputID, exportID = self.panel.follow(self._nodeID(p.inputVolume), self._nodeID(p.outputSegmentation),
                                                   self._nodeID(p.exportSegmentation))
            self._applyChoices(outputID, exportID)
        allStructures = self.ui.structuresAllRadio.checked
        state = controls(has_volume=bool(p and p.inputVolume), model=self.currentModel(),
                         all_structures=allStructures,
                         chosen_structures=[] if allStructures else self.chosenStructures(),
                         running=self.run is not None, stopping=bool(self.run and self.run.stopping),
                         has_export_segmentation=bool(p and p.exportSegmentation),
                         dataset_folder=str(p.datasetFolder) if p else "")
        self.ui.structuresList.enabled = state.structures_list
        self.ui.segmentButton.enabled = state.segment
        self.ui.batchSegmentButton.enabled = state.batch
        self.ui.stopButton.enabled = state.stop
        self.ui.ttaCheckBox.enabled = state.tta
        idle = self.background is None  # one model check or GPU probe at a time
        self.ui.addModelButton.enabled = idle
        self.ui.detectDeviceButton.enabled = idle
        self.ui.exportButton.enabled = state.export
        self.showConfidence(p.outputSegmentation if p else None)

    def options(self):
        p = self._parameterNode
        model = self.currentModel()
        # a model without recorded mirror axes gets no test-time mirroring (the box is greyed)
        return PredictOptions(model=str(model.path), device=p.device, quick=p.quick,
                              tta=p.tta and bool(model.mirror_axes), subset=self.chosenStructures(),
                              confidence_map=p.confidenceMap)

    def appendLog(self, text):
        self.ui.logTextEdit.appendPlainText(text)

    # -- segment / stop ----------------------------------------------------------------------
    def reportFailure(self, text, title):
        """A failure the user must see: in the status line, the log and a message box."""
        self.ui.statusLabel.text = text.splitlines()[0]
        self.appendLog(text)
        slicer.util.errorDisplay(text, windowTitle=title)

    def dependenciesReady(self) -> bool:
        """The engine's Python packages, installed after asking; False (the user told why) if not."""
        try:
            return self.logic.ensureDependencies(log=self.appendLog)
        except Exception as e:  # pip, the PyTorch extension, the network: any of them can fail
            self.reportFailure(_("The Python packages LKMSegment needs could not be installed: ") + str(e)
                               + _("\nCheck the network connection and try again, or install them from "
                                   "the Python console (see the log)."), _("Installation failed"))
            return False

    def onDetectDevice(self):
        if not self.dependenciesReady():
            self.ui.deviceInfoLabel.text = _("Not checked: the Python packages are missing.")
            return
        try:
            command = self.logic.startDeviceProbe()
        except OSError as e:
            self.reportFailure(_("Could not start Python to look for a GPU: ") + str(e), _("Detect failed"))
            return

        def found(command):
            self.ui.deviceInfoLabel.text = dependencies.describe_devices(dependencies.device_probe_result(command))
            self.ui.statusLabel.text = ""
        self.ui.deviceInfoLabel.text = _("Looking for a GPU…")
        self.startBackground(command, _("Looking for a GPU…"), found)

    def start(self, volumes, targets, batch=False):
        if not engine_available():
            slicer.util.errorDisplay(_("The engine (lkm_core) is missing from this installation; "
                                       "reinstall the LKMSegment extension."))
            return
        if not self.dependenciesReady():
            return
        try:
            self.ui.logTextEdit.clear()
            p = self._parameterNode
            self.run = self.logic.core.start(volumes, self.options(), targets=targets,
                                             replace_existing=p.replaceExisting, show_3d=p.show3D,
                                             on_event=self.onEngineEvent)
        except Exception as e:
            slicer.util.errorDisplay(_("Could not start: ") + str(e))
            return
        self.runIsBatch = batch
        self.appendLog(" ".join(self.run.job.command()))
        self.ui.progressBar.value = 0
        self.ui.progressBar.setVisible(True)
        self.ui.statusLabel.text = _("Starting the engine…")
        self.timer.start()
        self.updateGUI()

    def onSegment(self):
        volume = self._parameterNode.inputVolume
        # the node chosen for this volume (or None: a new one), never another input's node
        self.start([volume], [self._node(self.panel.run_target(volume.GetID()))])

    def onStop(self):
        """Never waits: the engine is asked to stop, the timer sees it end (a result it completed
        before it saw the Stop is kept)."""
        if self.run is not None:
            self.run.request_stop()
            self.ui.statusLabel.text = _("Stopping…")
            self.updateGUI()

    def onEngineEvent(self, event):
        if event.kind in ("log", "error"):
            self.appendLog(f"{event.data.get('level', event.kind)}: {event.message}")
        elif event.kind == "done":
            self.appendLog(f"done: {event.case}")

    def onTimer(self):
        if self.run is None:
            self.timer.stop()
            return
        running = self.run.pump()
        self.ui.progressBar.value = int(100 * self.run.job.progress)
        if not self.run.stopping:
            self.ui.statusLabel.text = self.run.job.progress_text
        if not running:
            self.finish()

    def finish(self):
        self.timer.stop()
        run, self.run = self.run, None
        self.ui.progressBar.setVisible(False)
        message = run.message()
        self.ui.statusLabel.text = message.splitlines()[0] if message else run.state
        self.appendLog(message)
        for line in run.job.stderr_lines[-50:]:
            self.appendLog(line)
        results = {item.volume.GetID(): run.reports[item.case].node.GetID()
                   for item in run.items if item.case in run.reports}
        self.panel.run_finished(results)
        p = self._parameterNode
        if p and p.inputVolume:
            volumeID = p.inputVolume.GetID()
            self._applyChoices(self.panel.output.chosen(volumeID), self.panel.export.chosen(volumeID))
        if self.runIsBatch and run.reports:
            self.showRanking(run.ranked())
        self.refreshExportCases()
        if run.state not in ("done", "stopped"):
            self.ui.logCollapsibleButton.collapsed = False
            slicer.util.errorDisplay(_("Segmentation failed."), detailedText=message)
        self.updateGUI()

    # -- review: the model's confidence --------------------------------------------------------
    def showConfidence(self, segmentation):
        """The output segmentation's segments with their confidence, least sure first."""
        confidences = node_confidences(segmentation)
        lines = [c.text() for c in confidences] if any(c.score is not None for c in confidences) else []
        if lines != self._confidenceLines:
            self._confidenceLines = lines
            self.ui.confidenceList.clear()
            for line in lines:
                self.ui.confidenceList.addItem(line)
        self.ui.showConfidenceMapButton.enabled = confidence_map_of(segmentation) is not None

    def onShowConfidenceMap(self):
        try:
            volume, overlay = show_confidence_map(self._parameterNode.outputSegmentation)
        except ConfidenceMapError as e:
            slicer.util.errorDisplay(str(e))
            return
        # setSliceViewerLayers exists only in the application (it sets every slice view's layers);
        # without the map's volume (deleted) the background stays as it is, never emptied
        layers = {"background": volume} if volume is not None else {}
        slicer.util.setSliceViewerLayers(**layers, foreground=overlay, foregroundOpacity=OVERLAY_OPACITY)

    def showRanking(self, ranked):
        """The batch's cases, least confident first (LKMSegmentLib/triage.py)."""
        self.ui.batchRankingList.clear()
        for rank, case in enumerate(ranked, 1):
            item = qt.QListWidgetItem(case.text(rank))
            item.setData(qt.Qt.UserRole, case.key)
            item.setToolTip("\n".join(s.text() for s in case.structures))
            self.ui.batchRankingList.addItem(item)

    def onRankedCaseClicked(self, item):
        volume = slicer.mrmlScene.GetNodeByID(item.data(qt.Qt.UserRole))
        if volume is not None:
            self._parameterNode.inputVolume = volume

    def refreshExportCases(self, *_args):
        """The export list: (volume, segmentation) pairs, least confident first."""
        self.ui.exportCasesList.clear()
        for pair in self.panel.export_candidates(review_pairs(slicer.mrmlScene)):
            exported = (pair.volume_id, pair.segmentation_id) in self.panel.exported
            item = qt.QListWidgetItem(pair.text(exported))
            item.setData(qt.Qt.UserRole, pair.volume_id)
            item.setData(qt.Qt.UserRole + 1, pair.segmentation_id)
            self.ui.exportCasesList.addItem(item)

    def onExportCaseClicked(self, item):
        volume = slicer.mrmlScene.GetNodeByID(item.data(qt.Qt.UserRole))
        segmentation = slicer.mrmlScene.GetNodeByID(item.data(qt.Qt.UserRole + 1))
        if volume is None or segmentation is None:
            self.refreshExportCases()  # one of them has left the scene
            return
        p = self._parameterNode
        self.panel.pick_for_export(volume.GetID(), segmentation.GetID())
        if self._nodeID(p.inputVolume) == volume.GetID():
            p.exportSegmentation = segmentation
        else:
            p.inputVolume = volume  # the selectors follow: this volume's export is the pick

    # -- batch -------------------------------------------------------------------------------
    def refreshBatchList(self, *_args):
        self.ui.batchVolumesList.clear()
        for volume in segmentable_volumes(slicer.mrmlScene):  # not the module's confidence maps
            item = qt.QListWidgetItem(volume.GetName())
            item.setData(qt.Qt.UserRole, volume.GetID())
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Unchecked)
            self.ui.batchVolumesList.addItem(item)

    def onBatchSegment(self):
        self.refreshBatchList() if self.ui.batchAllRadio.checked else None
        items = [self.ui.batchVolumesList.item(i) for i in range(self.ui.batchVolumesList.count)]
        if self.ui.batchSelectedRadio.checked:
            items = [it for it in items if it.checkState() == qt.Qt.Checked]
        volumes = [slicer.mrmlScene.GetNodeByID(it.data(qt.Qt.UserRole)) for it in items]
        volumes = [v for v in volumes if v is not None]
        if not volumes:
            slicer.util.warningDisplay(_("No volume to segment."))
            return
        self.start(volumes, [None] * len(volumes), batch=True)

    # -- export ------------------------------------------------------------------------------
    def onExport(self):
        p = self._parameterNode
        try:
            report = self.logic.core.export_case(p.inputVolume, p.exportSegmentation, str(p.datasetFolder),
                                                 self.currentModel().path,
                                                 case_name=self.ui.exportCaseNameLineEdit.text or None)
        except (ExportError, ModelBundleError, ValueError, OSError) as e:
            slicer.util.errorDisplay(str(e), windowTitle=_("Export failed"))
            return
        self.ui.exportStatusLabel.text = report.text()
        self.panel.record_export(p.inputVolume.GetID(), p.exportSegmentation.GetID())
        self.refreshExportCases()


class LKMSegmentTest(ScriptedLoadableModuleTest):
    """In-app self test: sample CT -> Segment with the default model -> check -> export a case."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentAndExport()

    def _sampleCT(self):
        import subprocess

        code = "from lkm_core.inputs.sample_data import fetch_sample_ct; print(fetch_sample_ct().image)"
        out = subprocess.run([python_executable(), "-c", code], capture_output=True, text=True,
                             env=engine_environment(), check=True)
        return out.stdout.strip().splitlines()[-1]

    def _model(self, logic, tmp):
        models = logic.registry.models()
        if models:
            return models[0]
        # no default model packaged yet: an untrained bundle still exercises the whole path
        import subprocess

        from LKMSegmentLib.models import read_model_info
        folder = os.path.join(tmp, "untrained")
        subprocess.run([python_executable(), "-m", "lkm_core", "bundle", "init", "--preset", "3d_small",
                        "--labels", "liver,spleen,kidney_right", "-o", folder],
                       env=engine_environment(), check=True, capture_output=True)
        self.delayDisplay("No default model installed: using an untrained test bundle")
        return read_model_info(folder)

    def test_SegmentAndExport(self):
        import tempfile

        self.delayDisplay("Starting the LKMSegment self test")
        logic = LKMSegmentLogic()
        self.assertTrue(logic.ensureDependencies(confirm=False))
        volume = slicer.util.loadVolume(self._sampleCT())
        tmp = tempfile.mkdtemp(prefix="LKMSegmentTest-")
        model = self._model(logic, tmp)

        run = logic.core.start([volume], PredictOptions(model=str(model.path), quick=True, confidence_map=True))
        while run.pump():
            slicer.app.processEvents()
            qt.QThread.msleep(100)
        self.assertEqual(run.state, "done", run.message())
        node = next(iter(run.reports.values())).node
        segmentation = node.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(sorted(names), sorted(model.label_names))
        self.assertEqual(node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole()), volume.GetID())
        self.delayDisplay("Segmented: " + ", ".join(names))
        # the model's confidence: a score on every segment, the map as an overlay
        self.assertTrue(all(c.score is not None for c in node_confidences(node)))
        self.assertIsNotNone(confidence_map_of(node))
        show_confidence_map(node)

        dataset = os.path.join(tmp, "Dataset999_LKMSelfTest")
        report = logic.core.export_case(volume, node, dataset, model.path)
        self.assertTrue(report.image.exists() and report.label.exists())
        self.assertTrue(os.path.exists(os.path.join(dataset, "dataset.json")))
        self.delayDisplay("Self test passed")
