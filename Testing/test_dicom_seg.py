"""DICOM SEG out: written with highdicom, read back with highdicom and with pydicom alone, frames
matched to the source slices through the referenced SOP instances and compared with the labels
voxel for voxel, and checked by dicom3tools' dciodvfy (no errors).

Sources: the sample's real CT series (its blanked Study/Series UIDs restored, as a PACS export
has them) segmented by the default model, and an MR series written with SimpleITK from the
sample's real MR volume, segmented through the command line by an untrained MR bundle."""

import json
import sys

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_helpers import dciodvfy, masks_by_source_instance, restore_uids, write_series
from engine_helpers import run_cli
from lkm_core import cli, contract
from lkm_core.bundle import default_bundle_path, load_bundle
from lkm_core.outputs.dicom_seg import write_dicom_seg
from lkm_core.inputs.dicom_series import scan_folder
from lkm_core.inference.predictor import Predictor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ct_seg(sample_ct, tmp_path_factory):
    """The default model on the real CT series; its labels and the SEG written from them."""
    root = tmp_path_factory.mktemp("ctseg")
    series = scan_folder(restore_uids(sample_ct.dicom_folder, root / "ct"), "CT").series[0]
    bundle = load_bundle(default_bundle_path())
    result = Predictor(bundle, device="cpu", threads=1).predict_file(series, series.name)
    path = write_dicom_seg(result.labels, result.label_list, root / "ct.seg.dcm", series, bundle,
                           result.confidence)
    return {"series": series, "bundle": bundle, "labels": result.labels,
            "label_list": result.label_list, "path": path, "confidence": result.confidence}


def expected_masks(labels: sitk.Image, label_list) -> dict:
    voxels = sitk.GetArrayFromImage(labels)
    return {number: voxels == lab.value for number, lab in enumerate(label_list, start=1)}


def test_ct_seg_frames_equal_the_labels_voxel_for_voxel_highdicom(ct_seg):
    series, labels = ct_seg["series"], ct_seg["labels"]
    expected = expected_masks(labels, ct_seg["label_list"])
    assert sum(m.any() for m in expected.values()) >= 3       # organs found: a real comparison
    seg = hd.seg.segread(str(ct_seg["path"]))
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(series.sop_instance_uids),   # in the volume's k order
        segment_numbers=list(expected), combine_segments=False, ignore_spatial_locations=True)
    for i, number in enumerate(expected):
        np.testing.assert_array_equal(masks[..., i].astype(bool), expected[number])


def test_ct_seg_frames_equal_the_labels_voxel_for_voxel_pydicom(ct_seg):
    series, labels = ct_seg["series"], ct_seg["labels"]
    expected = expected_masks(labels, ct_seg["label_list"])
    frames = masks_by_source_instance(ct_seg["path"])
    k_of = {uid: k for k, uid in enumerate(series.sop_instance_uids)}
    assert {uid for uid, _ in frames} <= set(k_of)              # every frame names a source slice
    for number, mask in expected.items():
        for k in range(mask.shape[0]):
            frame = frames.get((series.sop_instance_uids[k], number))
            # an omitted frame is an empty one
            np.testing.assert_array_equal(frame if frame is not None else False, mask[k])
    # and no frame is left unaccounted for (each present frame has a non-empty expected slice)
    assert all(expected[n][k_of[uid]].any() for uid, n in frames)


def test_ct_seg_references_the_source_and_describes_the_model(ct_seg):
    series, bundle = ct_seg["series"], ct_seg["bundle"]
    ds = pydicom.dcmread(str(ct_seg["path"]))
    source = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"      # Segmentation Storage
    assert ds.StudyInstanceUID == series.study_uid
    assert ds.FrameOfReferenceUID == series.frame_of_reference_uid == source.FrameOfReferenceUID
    assert ds.SeriesInstanceUID != series.series_uid and ds.SeriesNumber == 1003
    referenced = ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series.series_uid
    # the sources' data sets have blank SOP Instance UIDs; their file meta has the real ones
    meta = {pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
            for f in series.files}
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == \
        set(series.sop_instance_uids) == meta
    assert ds.SegmentationType == "BINARY"
    segments = ds.SegmentSequence
    assert [s.SegmentLabel for s in segments] == [lab.name for lab in ct_seg["label_list"]]
    for s, lab in zip(segments, ct_seg["label_list"]):
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        assert s.SegmentAlgorithmName == bundle.name
        algorithm = s.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == bundle.name and algorithm.AlgorithmVersion == bundle.version
        category = s.SegmentedPropertyCategoryCodeSequence[0]
        kind = s.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "123037004")
        assert (kind.CodingSchemeDesignator, kind.CodeValue) == ("SCT", lab.terminology["type"]["code"])
        if "modifier" in lab.terminology:
            assert kind.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == \
                lab.terminology["modifier"]["code"]
        rgb = hd.color.CIELabColor.from_dicom_value(s.RecommendedDisplayCIELabValue).to_rgb()
        assert np.allclose(rgb, [255 * c for c in lab.color], atol=2)
        scored = ct_seg["confidence"]["structures"][lab.name]   # the review score, for any viewer
        if scored["found"]:
            assert s.SegmentDescription.startswith(f"LKM confidence {scored['score']:.4f}")
            assert s.SegmentDescription.endswith("flagged for review") == scored["flagged"]
        else:
            assert s.SegmentDescription == "LKM not found, check it is absent"
    colors = [tuple(s.RecommendedDisplayCIELabValue) for s in segments]
    assert len(set(colors)) == len(colors)                       # left and right kidney differ
    assert ds.PatientID == source.PatientID                      # same patient as the source


def test_ct_seg_passes_dciodvfy(ct_seg):
    errors, output = dciodvfy(ct_seg["path"])
    assert errors == [], output
    assert "Segmentation" in output


def test_cli_mixed_folder_mr_model_writes_a_valid_seg_equal_to_the_labelmap(sample_ct, tmp_path):
    """Through the command line: a folder with a CT series, an MR series and a SEG; an MR model
    segments the MR only, and its DICOM SEG equals its labelmap (a second run) voxel for voxel."""
    bundle = tmp_path / "mr_bundle"
    assert run_cli("bundle", "init", "--preset", "3d_small", "--modality", "MR",
                   "--labels", "liver,kidney_right,kidney_left", "-o", bundle).returncode == 0
    mixed = tmp_path / "study"
    restore_uids(sample_ct.dicom_folder, mixed / "ct")
    write_series(sitk.ReadImage(str(sample_ct.mr_image)), mixed / "mr")
    (mixed / "mr" / "old.seg.dcm").write_bytes(b"")   # an empty file: not DICOM, ignored
    out = tmp_path / "out"
    done = run_cli("predict", mixed, "-o", out, "--model", bundle, "--format", "dicom-seg",
                   "--threads", "1", "--progress", "json", "--report")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    finished = [e for e in events if e["event"] == "done"]
    assert len(finished) == 1 and finished[0]["case"].startswith("MR_s7_")
    seg_path = out / f"{finished[0]['case']}.seg.dcm"
    assert finished[0]["outputs"][0] == str(seg_path)
    summary = finished[0]["summary"]
    assert summary["dicom"]["series_number"] == 7 and summary["dicom"]["files"] == 20
    rows = (out / "batch_report.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("case,series,status,seconds,device,message,liver_ml,")
    status = {r.split(",")[2]: r for r in rows[1:]}
    assert sorted(status) == ["done", "skipped"] and len(rows) == 3
    assert "model segments MR" in status["skipped"] and ",cpu," in status["done"]

    labelmap = run_cli("predict", mixed / "mr", "-o", tmp_path / "nii", "--model", bundle,
                       "--format", "nii.gz", "--threads", "1", "--progress", "none")
    assert labelmap.returncode == 0, labelmap.stderr
    labels = sitk.ReadImage(str(tmp_path / "nii" / f"{finished[0]['case']}.nii.gz"))
    voxels = sitk.GetArrayFromImage(labels)
    series = scan_folder(mixed / "mr").series[0]
    frames = masks_by_source_instance(seg_path)
    for number, value in enumerate((1, 2, 3), start=1):
        for k, uid in enumerate(series.sop_instance_uids):
            frame = frames.get((uid, number))
            np.testing.assert_array_equal(frame if frame is not None else False,
                                          voxels[k] == value)
    errors, output = dciodvfy(seg_path)
    assert errors == [], output


def test_seg_of_an_empty_result_and_of_labels_off_the_grid(sample_ct, tmp_path):
    """Nothing found: still a valid SEG (every structure described, frames present and empty).
    Labels that are not on the source's slices are refused, not written."""
    from engine_helpers import make_bundle
    from lkm_core.errors import InputError

    series = scan_folder(write_series(sitk.ReadImage(str(sample_ct.mr_image)), tmp_path / "mr"))
    series = series.series[0]
    image = sitk.ReadImage(str(sample_ct.mr_image))
    bundle = make_bundle(tmp_path / "model", labels=("liver", "spleen"))
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    path = write_dicom_seg(empty, bundle.labels, tmp_path / "empty.seg.dcm", series, bundle)
    ds = pydicom.dcmread(str(path))
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["liver", "spleen"]
    assert int(ds.NumberOfFrames) > 0 and not ds.pixel_array.any()
    errors, output = dciodvfy(path)
    assert errors == [], output
    shifted = sitk.Image(empty)
    shifted.SetOrigin([o + 1.5 for o in image.GetOrigin()])
    with pytest.raises(InputError, match="not at the position of the source slice"):
        write_dicom_seg(shifted, bundle.labels, tmp_path / "shifted.seg.dcm", series, bundle)
    assert not (tmp_path / "shifted.seg.dcm").exists()


def test_dicom_seg_needs_dicom_input_and_says_so(sample_ct, capsys):
    code = cli.main(["predict", str(sample_ct.image), "-o", "/nonexistent/out", "--format",
                     "dicom-seg", "--progress", "none"])
    assert code == contract.EXIT_USAGE
    err = capsys.readouterr().err
    assert "not a DICOM series" in err and "--format seg.nrrd" in err


def test_dicom_seg_without_highdicom_says_how_to_install(sample_ct, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "highdicom", None)   # what an environment without it does
    code = cli.main(["predict", str(sample_ct.dicom_folder), "-o", str(tmp_path), "--format",
                     "dicom-seg", "--progress", "none"])
    assert code == contract.EXIT_FAILED
    assert 'pip install "lkm_core[dicom]"' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_dicom_seg_of_a_series_whose_uids_were_blanked_is_refused(sample_ct, tmp_path, capsys):
    # the sample as published: its anonymiser blanked the Study and Series Instance UIDs
    code = cli.main(["predict", str(sample_ct.dicom_folder), "-o", str(tmp_path), "--format",
                     "dicom-seg", "--progress", "none", "--report"])
    assert code == contract.EXIT_FAILED
    err = capsys.readouterr().err
    assert "has no Study Instance UID and no Series Instance UID" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch_report.csv"]
    assert ",failed," in (tmp_path / "batch_report.csv").read_text(encoding="utf-8")
