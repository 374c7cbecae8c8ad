"""The Slicer module's logic end to end: real MRML (slicer-core), real engine in a child process.

What these tests cannot reach (the Qt panel itself) is listed in test_slicer_static.py.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_fixtures import (LABELS, add_volume, bundle, ct_crop, ijk_to_ras, new_scene,  # noqa: F401
                             oblique_flipped_ijk_to_ras, resample_itk_onto_volume, scene_snapshot)

import slicer  # noqa: E402  (slicer-core: CI installs it)

from LKMSegmentLib import LKMSegmentCore, PredictOptions, read_model_info  # noqa: E402
from LKMSegmentLib.scene import find_segment_by_name, segment_array, set_segment_array  # noqa: E402

pytestmark = pytest.mark.slow
TIMEOUT = 240


def options(bundle_path, **kw):
    return PredictOptions(model=str(bundle_path), device="cpu", threads=1, **kw)


def exported_labelmap(scene, seg_node, volume, names):
    """Slicer's own export of the named segments (values 1..n in that order) on the volume grid."""
    import vtk

    ids = vtk.vtkStringArray()
    for name in names:
        ids.InsertNextValue(find_segment_by_name(seg_node.GetSegmentation(), name))
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg_node, ids, labelmap, volume)
        assert ok
        np.testing.assert_allclose(ijk_to_ras(labelmap), ijk_to_ras(volume), atol=1e-6)
        return slicer.util.arrayFromVolume(labelmap).copy()
    finally:
        scene.RemoveNode(labelmap)


@pytest.fixture(scope="module")
def first_run(bundle, ct_crop, tmp_path_factory):
    """One Segment click on an oblique, flipped volume placed under a patient/study."""
    array, spacing = ct_crop
    scene = new_scene()
    volume = add_volume(scene, "abdomen CT", array, oblique_flipped_ijk_to_ras(spacing, array.shape))
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "Study 1")
    volume_item = sh.GetItemByDataNode(volume) or sh.CreateItem(study, volume)
    sh.SetItemParent(volume_item, study)
    outputs = tmp_path_factory.mktemp("engine_out")
    logic = LKMSegmentCore(scene, temp_root=str(tmp_path_factory.mktemp("tmp")))
    report = logic.segment(volume, options(bundle), keep_outputs_dir=str(outputs), timeout_s=TIMEOUT)
    engine_file = outputs / "abdomen_CT.seg.nrrd"
    engine_labels = resample_itk_onto_volume(sitk.ReadImage(str(engine_file)), volume)
    return dict(scene=scene, volume=volume, node=report.node, report=report, study=study, sh=sh,
                engine_labels=engine_labels, logic=logic, engine_file=engine_file)


def test_segment_gives_named_coloured_coded_segments_under_the_study(first_run, bundle):
    node, sh = first_run["node"], first_run["sh"]
    seg = node.GetSegmentation()
    assert first_run["report"].created_node
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == LABELS
    model = read_model_info(bundle)
    for lab in model.labels:
        segment = seg.GetSegment(find_segment_by_name(seg, lab.name))
        np.testing.assert_allclose(segment.GetColor(), lab.color, atol=1e-3)
        assert lab.terminology["type"]["code"] in segment.GetTerminology()
    assert "kidney" in seg.GetSegment(find_segment_by_name(seg, "kidney_right")).GetTerminology().lower()
    # reference geometry and placement
    assert node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole()) == first_run["volume"].GetID()
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == first_run["study"]


def test_segments_exported_in_volume_geometry_equal_engine_output_voxel_for_voxel(first_run):
    scene, node, volume = first_run["scene"], first_run["node"], first_run["volume"]
    engine = first_run["engine_labels"]
    assert set(np.unique(engine)) - {0}, "the engine produced no labels at all"
    exported = exported_labelmap(scene, node, volume, LABELS)
    assert exported.shape == engine.shape
    np.testing.assert_array_equal(exported, engine)


def test_rerun_into_existing_node_keeps_user_segment_and_edited_voxels(first_run, bundle):
    scene, node, volume, logic = (first_run[k] for k in ("scene", "node", "volume", "logic"))
    engine = first_run["engine_labels"]
    seg = node.GetSegmentation()

    # the user's own work: a new segment overlapping the model's output, a voxel edited in liver,
    # and spleen deleted
    lesion = np.zeros_like(engine, dtype=np.uint8)
    lesion[4:9, 10:20, 10:22] = 1
    lesion_id = seg.AddEmptySegment("", "my_lesion", (0.1, 0.9, 0.1))
    set_segment_array(node, lesion_id, lesion, volume)
    liver_id = find_segment_by_name(seg, "liver")
    liver = segment_array(node, liver_id, volume)
    edited = tuple(int(v) for v in np.argwhere((liver == 0) & (lesion == 0))[0])
    liver[edited] = 1
    set_segment_array(node, liver_id, liver, volume)
    seg.RemoveSegment(find_segment_by_name(seg, "spleen"))

    # asked to keep existing segments: only the missing spleen comes back
    report = logic.segment(volume, options(bundle), target=node, replace_existing=False, timeout_s=TIMEOUT)
    assert report.node is node and not report.created_node
    assert report.added == ["spleen"] and sorted(report.kept) == ["kidney_right", "liver"]
    np.testing.assert_array_equal(segment_array(node, liver_id, volume), liver)
    np.testing.assert_array_equal(segment_array(node, find_segment_by_name(seg, "my_lesion"), volume), lesion)
    np.testing.assert_array_equal(segment_array(node, find_segment_by_name(seg, "spleen"), volume),
                                  (engine == 2).astype(np.uint8))

    # asked to update liver only: liver is the model's again, everything else untouched
    spleen_before = segment_array(node, find_segment_by_name(seg, "spleen"), volume)
    report = logic.segment(volume, options(bundle, subset=["liver"]), target=node, timeout_s=TIMEOUT)
    assert report.replaced == ["liver"] and not report.added
    assert find_segment_by_name(seg, "liver") == liver_id  # same segment, updated in place
    np.testing.assert_array_equal(segment_array(node, liver_id, volume), (engine == 1).astype(np.uint8))
    np.testing.assert_array_equal(segment_array(node, find_segment_by_name(seg, "my_lesion"), volume), lesion)
    np.testing.assert_array_equal(segment_array(node, find_segment_by_name(seg, "spleen"), volume), spleen_before)
    assert seg.GetSegment(find_segment_by_name(seg, "my_lesion")).GetColor() == pytest.approx((0.1, 0.9, 0.1))


def test_stop_during_run_leaves_scene_unchanged_and_no_temp_files(bundle, sample_ct, tmp_path):
    scene = new_scene()
    image = sitk.ReadImage(str(sample_ct.image))  # the whole CT: the network phase takes a while
    array = sitk.GetArrayFromImage(image).astype(np.int16)
    volume = add_volume(scene, "big CT", array, oblique_flipped_ijk_to_ras(image.GetSpacing(), array.shape))
    existing = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user work")
    existing.GetSegmentation().AddEmptySegment("", "mine")
    before = scene_snapshot(scene)
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()

    events = []
    logic = LKMSegmentCore(scene, temp_root=str(temp_root))
    run = logic.start([volume], options(bundle), targets=[existing], on_event=events.append)
    assert os.listdir(temp_root), "the run has its work folder"
    pid = run.job.runner.pid
    deadline = time.monotonic() + TIMEOUT
    while not any(e.kind == "progress" and e.data.get("phase") == "network" for e in events):
        assert run.pump(), "the engine ended before it could be stopped: " + run.job.failure_message()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    run.stop()

    assert run.state == "stopped" and not run.pump()
    assert scene_snapshot(scene) == before
    assert os.listdir(temp_root) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "Stopped" in run.message()


def test_batch_segments_three_loaded_volumes_each_into_its_own_node(bundle, ct_crop, tmp_path):
    array, spacing = ct_crop
    scene = new_scene()
    straight = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    volumes = [
        add_volume(scene, "CT", array, straight),
        add_volume(scene, "CT", array[:, ::-1].copy(), oblique_flipped_ijk_to_ras(spacing, array.shape)),
        add_volume(scene, "CT 2.5", array[2:14, 4:30, 6:36].copy(), straight),
    ]
    logic = LKMSegmentCore(scene, temp_root=str(tmp_path))
    run = logic.segment_batch(volumes, options(bundle), timeout_s=TIMEOUT, show_3d=True)
    assert run.succeeded, run.message()
    assert len(run.reports) == 3
    assert run.message().count("(computed on cpu)") == 3
    nodes = [run.reports[item.case].node for item in run.items]
    assert len({n.GetID() for n in nodes}) == 3
    for volume, node in zip(volumes, nodes):
        seg = node.GetSegmentation()
        assert sorted(seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())) == sorted(LABELS)
        assert node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole()) == volume.GetID()
        assert seg.ContainsRepresentation("Closed surface")  # "show in 3D"
    assert [item.case for item in run.items] == ["CT", "CT_2", "CT_2_5"]
    assert os.listdir(tmp_path) == []


def _raw_labelmap(node, segment_id):
    """A segment's stored labelmap as it is (no resampling): matrix, extent and voxels."""
    import vtk
    from vtk.util import numpy_support

    image = node.GetSegmentation().GetSegment(segment_id).GetRepresentation("Binary labelmap")
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).copy()
    label = node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    return ([matrix.GetElement(r, c) for r in range(4) for c in range(4)], image.GetExtent(),
            values == label)


def test_import_never_resamples_a_user_segment_drawn_on_another_grid(first_run):
    """A segment made on a finer, shifted grid (another volume) stays bit-identical."""
    import vtk
    from vtk.util import numpy_support

    from LKMSegmentLib.scene import import_result

    scene, volume = first_run["scene"], first_run["volume"]
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn elsewhere")
    fine = slicer.vtkOrientedImageData()
    fine.SetExtent(0, 29, 0, 24, 0, 19)
    matrix = vtk.vtkMatrix4x4()
    for r, row in enumerate(([0.9, 0, 0, 3.3], [0, 1.1, 0, -41.7], [0, 0, 1.3, 90.1])):
        for c, v in enumerate(row):
            matrix.SetElement(r, c, v)
    fine.SetImageToWorldMatrix(matrix)
    fine.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    voxels = numpy_support.vtk_to_numpy(fine.GetPointData().GetScalars())
    voxels[:] = (np.arange(voxels.size) % 7 == 0)
    segment = slicer.vtkSegment()
    segment.SetName("fine_structure")
    segment.AddRepresentation("Binary labelmap", fine)
    node.GetSegmentation().AddSegment(segment, "fine")
    before = _raw_labelmap(node, "fine")

    report = import_result(scene, volume, first_run["engine_file"], target=node)
    assert sorted(report.added) == sorted(LABELS)
    after = _raw_labelmap(node, "fine")
    assert after[0] == before[0] and after[1] == before[1]
    np.testing.assert_array_equal(after[2], before[2])
    # and the model's segments are still exactly the engine's output
    np.testing.assert_array_equal(exported_labelmap(scene, node, volume, LABELS), first_run["engine_labels"])


def test_plain_labelmap_results_get_the_model_names_colours_and_terminology(first_run, bundle, tmp_path):
    from LKMSegmentLib.scene import import_result

    scene, volume = first_run["scene"], first_run["volume"]
    labelmap = tmp_path / "abdomen_CT.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(first_run["engine_file"])), str(labelmap))
    model = read_model_info(bundle)
    report = import_result(scene, volume, labelmap, labels=model.labels, name="from labelmap")
    seg = report.node.GetSegmentation()
    present = [lab for lab in model.labels if lab.value in np.unique(first_run["engine_labels"])]
    assert sorted(report.added) == sorted(lab.name for lab in present)
    for lab in present:
        segment = seg.GetSegment(find_segment_by_name(seg, lab.name))
        np.testing.assert_allclose(segment.GetColor(), lab.color, atol=1e-3)
        assert lab.terminology["type"]["code"] in segment.GetTerminology()
    np.testing.assert_array_equal(exported_labelmap(scene, report.node, volume, [lab.name for lab in present]),
                                  _renumber(first_run["engine_labels"], [lab.value for lab in present]))


def _renumber(labels, values):
    out = np.zeros_like(labels)
    for i, v in enumerate(values, start=1):
        out[labels == v] = i
    return out


def test_bad_model_or_unknown_structure_is_refused_before_anything_runs(first_run, bundle, tmp_path):
    scene, volume, logic = first_run["scene"], first_run["volume"], first_run["logic"]
    before = scene_snapshot(scene)
    with pytest.raises(ValueError, match="no model.json"):
        logic.start([volume], options(tmp_path))
    with pytest.raises(ValueError, match="does not produce pancreas"):
        logic.start([volume], options(bundle, subset=["pancreas"]))
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(ValueError, match="labelmaps cannot be segmented"):
        logic.start([labelmap], options(bundle))
    scene.RemoveNode(labelmap)
    assert [s[:3] for s in scene_snapshot(scene)] == [s[:3] for s in before]
