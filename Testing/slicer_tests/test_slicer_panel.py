"""The panel's decisions (LKMSegmentLib/panel.py), without Qt: model list, per-volume output and
export choices, enabled controls; and Stop after the end of a run (real engine, real MRML)."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from slicer_fixtures import LABELS, add_volume, bundle, ct_crop, new_scene, oblique_flipped_ijk_to_ras  # noqa: F401

from LKMSegmentLib.models import ModelRegistry, read_model_info  # noqa: E402
from LKMSegmentLib.panel import ModelList, PanelState, PerVolumeChoice, controls  # noqa: E402


class CountingRegistry(ModelRegistry):
    """A real registry that counts how often it reads every model.json."""

    reads = 0

    def models(self):
        self.reads += 1
        return super().models()


def test_the_model_list_is_read_once_and_refreshed_on_add_and_remove(bundle, tmp_path):
    defaults = tmp_path / "models"
    shutil.copytree(bundle, defaults / "default")
    registry = CountingRegistry([defaults], tmp_path / "models.json")
    models = ModelList(registry)
    for _ in range(20):  # the panel updates on every parameter change
        assert [m.path for m in models.models] == [defaults / "default"]
        assert models.find(defaults / "default").name == "untrained-3d_small"
    assert registry.reads == 1
    added = models.add(bundle, verifier=read_model_info)  # the engine's check is tested elsewhere
    assert registry.reads == 2 and models.find(added.path) is not None
    assert [m.path for m in models.models] == [defaults / "default", bundle.resolve()]
    models.remove(bundle)
    assert registry.reads == 3 and models.find(bundle.resolve()) is None
    assert models.find("") is None and models.find(tmp_path / "elsewhere") is None


def test_each_input_volume_has_its_own_output_and_never_the_previous_ones():
    choice = PerVolumeChoice()
    assert choice.follow("vol1", None) is None
    assert choice.follow("vol1", "segA") == "segA"  # the user picks a node for vol1
    assert choice.chosen("vol1") == "segA"
    # another input: the selector goes back to "Create new segmentation", whatever it showed
    assert choice.follow("vol2", "segA") is None
    assert choice.chosen("vol2") is None and choice.chosen("vol1") == "segA"
    assert choice.follow("vol2", None) is None
    assert choice.follow("vol1", None) == "segA"  # back to vol1: its choice returns
    assert choice.follow("vol1", None) is None and choice.chosen("vol1") is None  # user: new
    choice.set("vol1", "segB")
    choice.forget_node("segB")
    assert choice.chosen("vol1") is None
    assert choice.follow(None, "segX") is None and choice.chosen(None) is None


def test_a_run_makes_its_result_the_output_and_the_export_of_its_own_volume_only():
    panel = PanelState(registry=None)
    assert panel.follow("vol1", None, None) == (None, None)
    assert panel.run_target("vol1") is None  # a new node
    panel.run_finished({"vol1": "seg1"})
    assert panel.follow("vol1", None, None) == (None, None)  # the widget shows the result next
    panel.run_finished({"vol1": "seg1"})
    assert panel.run_target("vol1") == "seg1" and panel.export.chosen("vol1") == "seg1"
    assert panel.follow("vol2", "seg1", "seg1") == (None, None)
    assert panel.run_target("vol2") is None
    panel.node_removed("seg1")
    assert panel.run_target("vol1") is None and panel.export.chosen("vol1") is None
    panel.run_finished({"vol1": "seg2", "vol2": "seg3"})  # a batch run
    panel.scene_closed()
    assert panel.run_target("vol1") is None and panel.run_target("vol2") is None


def test_enabled_controls_follow_volume_model_structures_and_run(bundle):
    model = read_model_info(bundle)
    idle = dict(has_volume=True, model=model, all_structures=True, chosen_structures=[],
                running=False, has_export_segmentation=True, dataset_folder="/data/Dataset901")
    c = controls(**idle)
    assert c.segment and c.batch and c.export and not c.stop and not c.structures_list and not c.progress
    c = controls(**dict(idle, running=True))
    assert c.stop and c.progress and not (c.segment or c.batch or c.export or c.structures_list)
    assert not controls(**dict(idle, has_volume=False)).segment
    assert not controls(**dict(idle, model=None)).segment and not controls(**dict(idle, model=None)).batch
    subset_none = controls(**dict(idle, all_structures=False))
    assert subset_none.structures_list and not subset_none.segment and not subset_none.batch
    assert controls(**dict(idle, all_structures=False, chosen_structures=["liver"])).segment
    for folder in ("", ".", "  "):
        assert not controls(**dict(idle, dataset_folder=folder)).export
    assert not controls(**dict(idle, has_export_segmentation=False)).export
    # test-time mirroring only for a model trained to be mirrored (the engine refuses it otherwise)
    assert model.mirror_axes == [] and not controls(**idle).tta
    mirrored = dataclasses.replace(model, raw={**model.raw, "inference": {"mirror_axes": [0, 1, 2]}})
    assert controls(**dict(idle, model=mirrored)).tta
    assert not controls(**dict(idle, model=mirrored, running=True)).tta


@pytest.mark.slow
def test_stop_after_the_engine_ended_keeps_the_result(bundle, ct_crop, tmp_path):
    from LKMSegmentLib import LKMSegmentCore, PredictOptions

    array, spacing = ct_crop
    scene = new_scene()
    volume = add_volume(scene, "CT", array, oblique_flipped_ijk_to_ras(spacing, array.shape))
    logic = LKMSegmentCore(scene, temp_root=str(tmp_path))
    run = logic.start([volume], PredictOptions(model=str(bundle), device="cpu", threads=1))
    assert run.job.runner.wait(240), "the engine did not end"
    run.stop()  # the user clicks Stop before the panel's timer saw the end
    assert run.state == "done", run.message()
    seg = next(iter(run.reports.values())).node.GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == LABELS
    assert list(tmp_path.iterdir()) == []
