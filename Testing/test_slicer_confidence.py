"""Review triage in the Slicer module, headless on real MRML (slicer-core): the engine's
confidence as segment tags that survive saving, the confidence map as a coloured overlay with a
legend, cases ranked least confident first, and the export list's order.

The engine's outputs are real files written here the way the engine writes them: a .seg.nrrd by
lkm_core.outputs.labels.write_seg_nrrd with the confidence tags added through slicerio, a summary in the
engine's form and a uint8 map on the input's grid written with SimpleITK.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from slicer_fixtures import add_volume, bundle, ct_crop, new_scene, oblique_flipped_ijk_to_ras  # noqa: F401

import slicer  # noqa: E402
import vtk  # noqa: E402

from lkm_core.contract import CONFIDENCE_MAP_SUFFIX, CONFIDENCE_TAG, FLAG_BELOW, FLAGGED_TAG, label_records  # noqa: E402
from lkm_core.outputs.labels import write_seg_nrrd  # noqa: E402
from LKMSegmentLib import confidence as conf  # noqa: E402
from LKMSegmentLib import confidencemap  # noqa: E402
from LKMSegmentLib.engine import EngineJob, PredictOptions  # noqa: E402
from lkm_core.contract import LabelRecord  # noqa: E402
from LKMSegmentLib.panel import PanelState  # noqa: E402
from LKMSegmentLib.scene import import_result, write_volume  # noqa: E402
from LKMSegmentLib.triage import ReviewPair, order_for_export, rank_cases  # noqa: E402

SCORES = {"liver": (0.9312, False), "spleen": (0.4101, True), "kidney_right": (0.0, True)}


def _volume(scene, name="abdomen CT", shape=(12, 16, 14)):
    rng = np.random.default_rng(3)
    array = rng.integers(-200, 300, size=shape).astype(np.int16)
    return add_volume(scene, name, array, oblique_flipped_ijk_to_ras((1.5, 1.2, 2.5), shape))


def _grid(volume, tmp_path):
    """The volume as the engine reads its input (the module writes it the same way)."""
    path = tmp_path / f"{volume.GetID()}.nrrd"
    write_volume(volume, path)
    return sitk.ReadImage(str(path))


def engine_outputs(volume, tmp_path, case="abdomen_CT", tags=True):
    """(seg.nrrd, labelmap .nii.gz, summary, map) as the engine writes them for ``volume``."""
    grid = _grid(volume, tmp_path)
    labels = np.zeros(sitk.GetArrayViewFromImage(grid).shape, np.uint8)
    labels[2:6, 3:9, 4:10] = 1
    labels[7:10, 10:14, 2:6] = 2  # kidney_right (3) not found
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(grid)
    records = label_records({"labels": [{"value": 1, "name": "liver"}, {"value": 2, "name": "spleen"},
                                        {"value": 3, "name": "kidney_right"}]})
    seg_path = write_seg_nrrd(image, records, tmp_path / f"{case}.seg.nrrd")
    if tags:
        segmentation = slicerio.read_segmentation(str(seg_path))
        for segment in segmentation["segments"]:
            score, flagged = SCORES[segment["name"]]
            segment.setdefault("tags", {})[CONFIDENCE_TAG] = f"{score:.4f}"
            segment["tags"][FLAGGED_TAG] = "1" if flagged else "0"
        slicerio.write_segmentation(str(seg_path), segmentation)
    labelmap_path = tmp_path / f"{case}.nii.gz"
    sitk.WriteImage(image, str(labelmap_path))
    percent = np.full(labels.shape, 99, np.uint8)
    percent[labels == 2] = 40
    percent[0, 0, :4] = [0, 50, 80, 95]
    confidence_map = sitk.GetImageFromArray(percent)
    confidence_map.CopyInformation(grid)
    map_path = tmp_path / f"{case}{CONFIDENCE_MAP_SUFFIX}"
    sitk.WriteImage(confidence_map, str(map_path))
    summary = {"case": case, "confidence": {
        "case_score": min(s for s, _ in SCORES.values()), "map": map_path.name,
        "structures": {name: {"found": name != "kidney_right", "score": s, "flagged": f}
                       for name, (s, f) in SCORES.items()}}}
    return seg_path, labelmap_path, summary, map_path, percent


def tags_of(node):
    seg = node.GetSegmentation()
    out = {}
    for i in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(i)
        values = []
        for tag in (CONFIDENCE_TAG, FLAGGED_TAG):
            value = vtk.reference("")
            values.append(str(value) if segment.GetTag(tag, value) else None)
        out[segment.GetName()] = tuple(values)
    return out


EXPECTED_TAGS = {"liver": ("0.9312", "0"), "spleen": ("0.4101", "1"), "kidney_right": ("0.0000", "1")}


def test_segment_tags_come_from_the_result_and_survive_saving_the_segmentation(tmp_path):
    scene = new_scene()
    volume = _volume(scene)
    seg_path, labelmap_path, summary, _, _ = engine_outputs(volume, tmp_path)
    report = import_result(scene, volume, seg_path)
    assert tags_of(report.node) == EXPECTED_TAGS
    # a plain labelmap carries no tags: they come from the run's summary (names from the model)
    labels = [LabelRecord(1, "liver", (1, 0, 0)), LabelRecord(2, "spleen", (0, 1, 0))]
    plain = import_result(scene, volume, labelmap_path, labels=labels, name="plain",
                          confidence=summary["confidence"]["structures"])
    assert tags_of(plain.node) == {"liver": ("0.9312", "0"), "spleen": ("0.4101", "1")}

    # save with Slicer's storage node, read back in a fresh scene: the tags are still there
    saved = tmp_path / "reviewed.seg.nrrd"
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(saved))
    assert storage.WriteData(report.node)
    fresh = new_scene()
    back = fresh.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(saved))
    assert storage.ReadData(back)
    assert tags_of(back) == EXPECTED_TAGS
    confidences = conf.node_confidences(back)
    assert [s.name for s in confidences] == ["kidney_right", "spleen", "liver"]  # least sure first
    assert [s.flagged for s in confidences] == [True, True, False]
    assert "check first" in confidences[1].text() and "not found" not in confidences[1].text()


def test_a_rerun_replaces_the_tags_and_a_users_own_segment_keeps_none(tmp_path):
    scene = new_scene()
    volume = _volume(scene)
    seg_path, _, _, _, _ = engine_outputs(volume, tmp_path)
    node = import_result(scene, volume, seg_path).node
    node.GetSegmentation().AddEmptySegment("", "my lesion")
    segmentation = slicerio.read_segmentation(str(seg_path))
    for segment in segmentation["segments"]:
        segment["tags"][CONFIDENCE_TAG] = "0.7000"
        segment["tags"][FLAGGED_TAG] = "0"
    slicerio.write_segmentation(str(seg_path), segmentation)
    import_result(scene, volume, seg_path, target=node)
    tags = tags_of(node)
    assert tags.pop("my lesion") == (None, None)
    assert set(tags.values()) == {("0.7000", "0")}
    assert conf.node_confidences(node)[-1].name == "my lesion"  # no score: listed last


def test_the_confidence_map_is_an_overlay_with_the_bands_and_a_legend_under_the_study(tmp_path):
    scene = new_scene()
    volume = _volume(scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1"), "Study 1")
    sh.SetItemParent(sh.GetItemByDataNode(volume) or sh.CreateItem(study, volume), study)
    seg_path, _, _, map_path, percent = engine_outputs(volume, tmp_path)
    node = import_result(scene, volume, seg_path).node

    overlay = confidencemap.load_confidence_map(scene, volume, map_path, segmentation=node)
    assert confidencemap.confidence_map_of(node) is overlay
    assert overlay.GetName() == "abdomen CT confidence"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(overlay), percent)
    assert overlay.GetTransformNodeID() == transform.GetID()
    assert sh.GetItemParent(sh.GetItemByDataNode(overlay)) == study
    display = overlay.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (100, 50) and not display.GetAutoWindowLevel()
    table = display.GetColorNode()
    assert table.IsA("vtkMRMLColorTableNode")
    lut = table.GetLookupTable()
    lut.SetTableRange(0, 100)  # what the display's window does

    def rgba(percent_value):
        return lut.GetTableValue(lut.GetIndex(percent_value))

    from lkm_core.outputs.pictures import CONFIDENCE_BANDS
    assert confidencemap.CONFIDENCE_BANDS is CONFIDENCE_BANDS, "one table of bands, in the contract"
    red, orange, yellow = (tuple(c) for _, c, _ in CONFIDENCE_BANDS)
    for value, (color, alpha) in {0: (red, 1), 49: (red, 1), 50: (orange, 1), 79: (orange, 1),
                                  80: (yellow, 1), 94: (yellow, 1)}.items():
        np.testing.assert_allclose(rgba(value), (*color, alpha), atol=1 / 255, err_msg=str(value))
    for value in (95, 99, 100):
        assert rgba(value)[3] == 0, value  # sure voxels stay clear
    legends = [overlay.GetNthDisplayNode(i) for i in range(overlay.GetNumberOfDisplayNodes())
               if overlay.GetNthDisplayNode(i).IsA("vtkMRMLColorLegendDisplayNode")]
    assert len(legends) == 1 and legends[0].GetVisibility()
    assert "Confidence" in legends[0].GetTitleText()

    volume_shown, shown = confidencemap.show_confidence_map(node)
    assert shown is overlay and volume_shown is volume
    # a second run of the same node: its new map replaces the old one, one colour table for all
    second = confidencemap.load_confidence_map(scene, volume, map_path, segmentation=node)
    assert confidencemap.confidence_map_of(node) is second and scene.GetNodeByID(overlay.GetID()) is None
    assert len([t for t in scene.GetNodesByClass("vtkMRMLColorTableNode")
                if t.GetName() == confidencemap.COLOR_TABLE_NAME]) == 1


def test_a_map_on_another_grid_or_unreadable_is_refused_and_changes_nothing(tmp_path):
    scene = new_scene()
    volume = _volume(scene)
    other = _volume(scene, "other", shape=(12, 16, 15))
    _, _, _, map_path, _ = engine_outputs(other, tmp_path)
    before = scene.GetNumberOfNodes()
    with pytest.raises(confidencemap.ConfidenceMapError, match="not on the grid of the volume 'abdomen CT'"):
        confidencemap.load_confidence_map(scene, volume, map_path)
    broken = tmp_path / "broken.confidence.nrrd"
    broken.write_text("not an image", encoding="utf-8")
    with pytest.raises(confidencemap.ConfidenceMapError, match="could not be read"):
        confidencemap.load_confidence_map(scene, volume, broken)
    assert scene.GetNumberOfNodes() == before
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "no map")
    with pytest.raises(confidencemap.ConfidenceMapError, match="has no confidence map"):
        confidencemap.show_confidence_map(node)


def test_cases_are_ranked_least_confident_first_and_the_export_list_follows_stored_scores(tmp_path):
    def summary(case_score, **structures):
        return {"confidence": {"case_score": case_score, "structures": {
            n: {"score": s, "flagged": s < FLAG_BELOW, "found": s > 0} for n, s in structures.items()}}}

    ranked = rank_cases([("v1", "patient A", summary(0.8, liver=0.9, spleen=0.8)),
                         ("v2", "patient B", summary(0.3, liver=0.95, spleen=0.3)),
                         ("v3", "patient C", {"case": "c"}),  # an engine without scores
                         ("v4", "patient D", summary(None, liver=0.55, spleen=0.7))])
    assert [c.label for c in ranked] == ["patient B", "patient D", "patient A", "patient C"]
    assert ranked[1].score == 0.55  # no case score: its least sure structure
    assert [s.name for s in ranked[0].flagged] == ["spleen"]
    assert ranked[0].text(1) == "1. patient B: 0.30 (least sure: spleen 0.30 ⚑, liver 0.95)"
    assert ranked[3].text(4) == "4. patient C: no confidence scores"

    scene = new_scene()
    pairs = {}
    for name, scores in (("A", (0.9, 0.8)), ("B", (0.2, 0.95)), ("C", None)):
        volume = _volume(scene, f"patient {name}")
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} segmentation")
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        for i, score in enumerate(scores or (None, None)):
            segment = node.GetSegmentation().GetSegment(node.GetSegmentation().AddEmptySegment("", f"s{i}"))
            if score is not None:
                conf.set_segment_confidence(segment, score, score < FLAG_BELOW)
        pairs[name] = (volume.GetID(), node.GetID())
    scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "belongs to no volume")
    found = conf.review_pairs(scene)
    assert len(found) == 3
    panel = PanelState(registry=None)
    order = panel.export_candidates(found)
    assert [p.label for p in order] == ["patient B — B segmentation", "patient A — A segmentation",
                                        "patient C — C segmentation"]
    assert order[0].score == 0.2 and order[0].flagged == 1 and order[2].score is None
    panel.record_export(*pairs["B"])  # exported: offered after the others
    assert [p.label[8] for p in panel.export_candidates(found)] == ["A", "C", "B"]
    panel.pick_for_export(*pairs["A"])
    assert panel.export.chosen(pairs["A"][0]) == pairs["A"][1]
    panel.node_removed(pairs["B"][1])
    assert not panel.exported
    assert order_for_export([ReviewPair("v", "s", "x", None)]) [0].text() == "x: no score"


def test_the_module_asks_for_the_map_and_finds_it_among_the_engines_outputs(tmp_path):
    options = PredictOptions(model="m", confidence_map=True)
    assert "--confidence-map" in options.arguments(["in.nrrd"], "out")
    assert "--confidence-map" not in PredictOptions(model="m").arguments(["in.nrrd"], "out")
    job = EngineJob(PredictOptions(model="m", output_format="nrrd"), temp_root=str(tmp_path))
    try:
        for name in ("case.nrrd", "case.json", f"case{CONFIDENCE_MAP_SUFFIX}"):
            (job.output_dir / name).write_text("x", encoding="utf-8")
        job.outputs["case"] = [str(job.output_dir / n) for n in ("case.json", f"case{CONFIDENCE_MAP_SUFFIX}", "case.nrrd")]
        assert job.result_file("case").name == "case.nrrd"  # never the map
        assert job.confidence_map_file("case").name == f"case{CONFIDENCE_MAP_SUFFIX}"
        job.summaries["case"] = {"confidence": {"map": f"case{CONFIDENCE_MAP_SUFFIX}"}}
        assert job.confidence_map_file("case").name == f"case{CONFIDENCE_MAP_SUFFIX}"
        assert job.confidence_map_file("other") is None
    finally:
        job.cleanup()
    assert json.dumps(PredictOptions(model="m").__dict__)  # plain data, as the panel passes it


@pytest.mark.slow
def test_a_real_run_brings_tags_the_map_and_a_ranking(bundle, ct_crop, tmp_path):  # noqa: F811
    """The engine itself (untrained 3d_small bundle, a crop of the sample CT, oblique and
    flipped): every segment scored and tagged, the map on the input's grid, cases ranked."""
    from LKMSegmentLib import LKMSegmentCore

    array, spacing = ct_crop
    scene = new_scene()
    volumes = [add_volume(scene, name, a, oblique_flipped_ijk_to_ras(spacing, array.shape))
               for name, a in (("CT one", array), ("CT two", array[:, ::-1].copy()))]
    logic = LKMSegmentCore(scene, temp_root=str(tmp_path))
    run = logic.segment_batch(volumes, PredictOptions(model=str(bundle), device="cpu", threads=1,
                                                      confidence_map=True), timeout_s=240)
    assert run.succeeded, run.message()
    for volume in volumes:
        report = next(r for r in run.reports.values() if r.node.GetNodeReferenceID(
            r.node.GetReferenceImageGeometryReferenceRole()) == volume.GetID())
        scored = conf.node_confidences(report.node)
        assert len(scored) == 3 and all(s.score is not None and 0 <= s.score <= 1 for s in scored)
        summary = run.job.summaries[next(i.case for i in run.items if i.volume.GetID() == volume.GetID())]
        for s in scored:
            assert abs(s.score - summary["confidence"]["structures"][s.name]["score"]) < 1e-4
            assert s.flagged == bool(summary["confidence"]["structures"][s.name]["flagged"])
        overlay = report.confidence_map
        assert overlay is not None and confidencemap.confidence_map_of(report.node) is overlay
        values = slicer.util.arrayFromVolume(overlay)
        assert values.shape == slicer.util.arrayFromVolume(volume).shape and values.max() <= 100
    ranked = run.ranked()
    assert [c.key for c in ranked] and {c.key for c in ranked} == {v.GetID() for v in volumes}
    scores = [c.score for c in ranked]
    assert scores == sorted(scores)


def test_an_absent_structure_is_named_apart_and_does_not_rank_its_case_first():
    """The engine gives an organ it did not find no score (absent is not uncertain): the panel
    says to check it is absent and ranks the case by what was found."""
    partial = {"confidence": {"case_score": 0.9, "absent": ["kidney_left"], "structures": {
        "liver": {"found": True, "score": 0.9, "flagged": False},
        "kidney_left": {"found": False, "score": None, "flagged": False}}}}
    unsure = {"confidence": {"case_score": 0.5, "absent": [], "structures": {
        "liver": {"found": True, "score": 0.5, "flagged": True}}}}
    ranked = rank_cases([("v1", "partial field of view", partial), ("v2", "unsure", unsure)])
    assert [c.label for c in ranked] == ["unsure", "partial field of view"]
    liver, kidney = ranked[1].structures
    assert liver.name == "liver" and kidney.text() == "kidney_left: not found, check it is really absent"
    assert not kidney.flagged and ranked[1].text(2) == "2. partial field of view: 0.90 (least sure: liver 0.90)"
