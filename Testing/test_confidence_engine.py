"""The engine's confidence: maps on the input's exact grid, scores in the summary, review.

A model-independent threshold "network" (logits (0.5, x)) makes the confidence a known function
of the input: 92 % where the input is 3 (the core of a ball), 62 % where the network saw 1 or 0,
and 100 % outside the box the image is cropped to before the network (nnU-Net's crop to the
nonzero region: there the label is background by construction). So the map must show the core
on the same physical voxels as the input, whatever its orientation.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from engine_helpers import (ThresholdNet, make_bundle, oblique_direction, run_cli,
                            same_geometry, sphere_image)
from lkm_core.contract import CONFIDENCE_TAG, FLAGGED_TAG
from lkm_core.inference.predictor import Predictor

ORIENTATIONS = {"flipped": np.diag([-1.0, -1.0, 1.0]), "oblique": oblique_direction(25),
                "permuted": np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=float)}


def _ball_with_core(**kwargs):
    """(image, core mask): 1 inside a ball of 9 mm, 3 inside its 5 mm core, 0 outside."""
    ball, _ = sphere_image(radius_mm=9, **kwargs)
    core, core_mask = sphere_image(radius_mm=5, value=2.0, **kwargs)
    image = ball + core
    return image, core_mask


def _assert_core_on_the_same_voxels(conf_map, image, core):
    array = sitk.GetArrayFromImage(conf_map)
    values = sitk.GetArrayFromImage(image)
    assert np.all(array[core] == 92)
    assert np.all(array[(values > 0) & ~core] == 62)
    assert set(np.unique(array[values == 0])) <= {62, 100}


def _predict(bundle, image, **kwargs):
    net = ThresholdNet(bundle.num_classes)
    return Predictor(bundle, device="cpu", networks=[net], confidence_map=True,
                     **kwargs).predict_image(image, case="ball")


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_confidence_map_lies_on_the_inputs_exact_grid(tmp_path, orientation):
    spacing = (0.9, 1.1, 2.0)
    image, core = _ball_with_core(size=(30, 26, 14), spacing=spacing, origin=(-12.5, 40.0, 7.25),
                                  direction=ORIENTATIONS[orientation])
    bundle = make_bundle(tmp_path / "b", spacing=spacing[::-1], patch=(8, 16, 16))
    result = _predict(bundle, image)
    conf = result.confidence_map
    assert conf.GetPixelID() == sitk.sitkUInt8 and same_geometry(conf, image)
    _assert_core_on_the_same_voxels(conf, image, core)
    liver = result.confidence["structures"]["liver"]
    assert liver["found"] and 0 < liver["score"] <= 1 and liver["components"] == 1


def test_confidence_map_of_a_2d_model_slice_by_slice_and_of_a_2d_image(tmp_path):
    image, core = _ball_with_core(size=(30, 28, 6), spacing=(1.0, 1.0, 4.0),
                                  direction=np.diag([-1.0, -1.0, 1.0]))
    bundle = make_bundle(tmp_path / "b", dimension="2d", spacing=(1.0, 1.0), patch=(16, 16))
    result = _predict(bundle, image)
    assert same_geometry(result.confidence_map, image)
    _assert_core_on_the_same_voxels(result.confidence_map, image, core)
    # a single 2D image gives a 2D map with the image's own geometry
    slice_2d = image[:, :, 3]
    result = _predict(bundle, slice_2d)
    assert result.confidence_map.GetDimension() == 2
    assert result.confidence_map.GetSize() == slice_2d.GetSize()
    assert np.allclose(result.confidence_map.GetOrigin(), slice_2d.GetOrigin())
    _assert_core_on_the_same_voxels(result.confidence_map, slice_2d, core[3])


def test_scores_are_stable_for_a_deterministic_network_and_cost_no_map_unless_asked(tmp_path):
    image, _ = _ball_with_core(size=(30, 26, 14), spacing=(1.0, 1.0, 2.0))
    bundle = make_bundle(tmp_path / "b", spacing=(2.0, 1.0, 1.0), patch=(8, 16, 16))
    first, second = _predict(bundle, image), _predict(bundle, image)
    assert first.confidence == second.confidence
    plain = Predictor(bundle, device="cpu", networks=[ThresholdNet(2)]).predict_image(image)
    assert plain.confidence == first.confidence and plain.confidence_map is None
    off = Predictor(bundle, device="cpu", networks=[ThresholdNet(2)], confidence=False)
    assert off.predict_image(image).confidence is None


def test_cli_writes_scores_tags_and_map_and_review_ranks_the_batch(tmp_path):
    import slicerio

    bundle = tmp_path / "model"
    proc = run_cli("bundle", "init", "--preset", "3d_small", "--labels", "liver,spleen",
                   "-o", str(bundle))
    assert proc.returncode == 0, proc.stderr
    inputs = []
    for n, radius in enumerate((8.0, 14.0)):
        image, _ = sphere_image(size=(40, 40, 32), spacing=(3.0, 3.0, 3.0), radius_mm=radius * 3,
                                value=200.0, background=-100.0)
        path = tmp_path / f"case{n}.nii.gz"
        sitk.WriteImage(image, str(path))
        inputs.append(str(path))
    out = tmp_path / "out"
    proc = run_cli("predict", *inputs, "-o", str(out), "--model", str(bundle), "--device", "cpu",
                   "--threads", "1", "--uncertainty", "--progress", "none", "--report",
                   "--keep-paths")  # the review picture reads the inputs again
    assert proc.returncode == 0, proc.stderr
    with open(out / "batch_report.csv", encoding="utf-8") as f:
        report = {r["case"]: r for r in csv.DictReader(f)}
    for n in range(2):
        summary = json.loads((out / f"case{n}.json").read_text(encoding="utf-8"))
        confidence = summary["confidence"]
        assert confidence["map"] == f"case{n}.confidence.nrrd"
        assert set(confidence["structures"]) == {"liver", "spleen"}
        conf_map = sitk.ReadImage(str(out / confidence["map"]))
        assert conf_map.GetSize() == (40, 40, 32) and conf_map.GetPixelID() == sitk.sitkUInt8
        segments = {s["name"]: s for s in slicerio.read_segmentation(
            str(out / f"case{n}.seg.nrrd"), skip_voxels=True)["segments"]}
        row = report[f"case{n}"]   # the batch report carries the same scores
        assert row["case_score"] == f"{confidence['case_score']:.4f}"
        assert row["absent"] == " ".join(confidence["absent"])
        for name, scores in confidence["structures"].items():
            tags = segments[name]["tags"]
            if scores["score"] is None:   # absent: an empty segment without a score
                assert CONFIDENCE_TAG not in tags and row[f"{name}_score"] == ""
                continue
            assert abs(float(tags[CONFIDENCE_TAG]) - scores["score"]) < 1e-4
            assert tags[FLAGGED_TAG] == ("1" if scores["flagged"] else "0")
            assert row[f"{name}_score"] == f"{scores['score']:.4f}"

    proc = run_cli("review", str(out), "--worst", "2")
    assert proc.returncode == 0, proc.stderr
    with open(out / "review.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["structure"] for r in rows} == {"liver", "spleen"}
    ranked = [float(r["case_score"]) for r in rows]
    assert ranked == sorted(ranked)  # least confident case first
    assert (out / "review.png").stat().st_size > 1000
    assert "least sure structures" in proc.stdout


def test_review_of_a_folder_without_summaries_is_one_clear_error(tmp_path):
    proc = run_cli("review", str(tmp_path))
    assert proc.returncode == 1
    assert "holds no case summaries" in proc.stderr and "Traceback" not in proc.stderr


def test_review_ranks_by_what_was_found_and_lists_absent_structures_apart(tmp_path):
    """A case missing an organ (partial field of view) is not ranked first for it; the absent
    organ is named apart; a summary without input path (the private default) still ranks, and
    the overview picture says how to get it."""
    def summary(case, found: dict, absent=()):
        structures = {n: {"found": True, "score": s, "flagged": s < 0.6} for n, s in found.items()}
        structures.update({n: {"found": False, "score": None, "flagged": False} for n in absent})
        return {"case": case, "labels": [], "model": {"name": "m"},
                "confidence": {"case_score": min(found.values()), "absent": list(absent),
                               "structures": structures}}

    cases = {"partial_fov": summary("partial_fov", {"liver": 0.9}, absent=("kidney_left",)),
             "unsure": summary("unsure", {"liver": 0.5, "kidney_left": 0.7})}
    for name, data in cases.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")
    proc = run_cli("review", str(tmp_path), "--worst", "1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1].split()[1] == "unsure" and lines[2].split()[1] == "partial_fov"
    assert "absent: kidney_left" in lines[2]
    assert "--keep-paths" in proc.stderr and not (tmp_path / "review.png").exists()
    with open(tmp_path / "review.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["case"] == "partial_fov"]
    assert [(r["structure"], r["score"], r["found"]) for r in rows] == [
        ("liver", "0.9", "True"), ("kidney_left", "", "False")]
