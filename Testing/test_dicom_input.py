"""DICOM in: folders of real DICOM split into series, one case per CT/MR series of the model's
modality, everything else listed as skipped with the reason, irregular series refused.

Real data: the CT series of the sample data (20 slices, JPEG 2000, UIDs blanked by its
anonymiser), and an MR series written with SimpleITK's DICOM writer from the sample's real MR
volume (example_mr_sm.nii.gz)."""

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_helpers import restore_uids, write_series
from engine_helpers import make_bundle
from lkm_core.inputs.dicom_series import DicomSeries, read_series, scan_folder, series_case_name
from lkm_core.errors import InputError
from lkm_core.inputs.images import discover_inputs, read_image


@pytest.fixture(scope="module")
def dicom_sources(sample_ct, tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    ct = restore_uids(sample_ct.dicom_folder, root / "ct")
    mr = write_series(sitk.ReadImage(str(sample_ct.mr_image)), root / "mr")
    return {"raw_ct": sample_ct.dicom_folder, "ct": ct, "mr": mr, "mr_image": sample_ct.mr_image}


def gdcm_volume(folder) -> sitk.Image:
    """The reference reading: GDCM's own series sorting, independent of ours."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def geometry(image):
    return (image.GetSize(), np.round(image.GetOrigin(), 4).tolist(),
            np.round(image.GetSpacing(), 6).tolist(), np.round(image.GetDirection(), 6).tolist())


def test_public_ct_series_is_one_case_read_like_gdcm_reads_it(dicom_sources):
    # the raw sample: Study/Series/SOP Instance UIDs blank in the data sets, no Series Number
    found = discover_inputs([dicom_sources["raw_ct"]], "CT")
    assert len(found.cases) == 1 and found.skipped == []
    name, series = found.cases[0]
    assert isinstance(series, DicomSeries) and len(series.files) == 20
    assert all(uid.startswith("1.3.12.2.1107.5.1.4.60064.") for uid in series.sop_instance_uids)
    image, reference = read_image(series), gdcm_volume(dicom_sources["raw_ct"])
    assert geometry(image) == geometry(reference)
    assert image.GetSpacing()[2] == pytest.approx(2.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference))


def test_mr_series_from_the_real_mr_volume_round_trips(dicom_sources):
    mr = sitk.ReadImage(str(dicom_sources["mr_image"]))
    scan = scan_folder(dicom_sources["mr"], "MR")
    assert [s.modality for s in scan.series] == ["MR"]
    series = scan.series[0]
    assert series.series_number == 7
    assert series.name == series_case_name("MR", 7, series.series_uid)
    image = read_series(series)
    assert geometry(image) == geometry(mr)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mr))


def test_case_names_carry_no_patient_data_and_never_collide(dicom_sources, tmp_path):
    # two series of one patient, in a folder named after the patient
    folder = tmp_path / "Doe_Jane_1957"
    write_series(sitk.ReadImage(str(dicom_sources["mr_image"])), folder / "a", name="one",
                 series_number=5, tags={"0010|0010": "Doe^Jane", "0010|0020": "PID-424242"})
    write_series(sitk.ReadImage(str(dicom_sources["mr_image"])), folder / "b", name="two",
                 series_number=5, tags={"0010|0010": "Doe^Jane", "0010|0020": "PID-424242"})
    names = [name for name, _ in discover_inputs([folder]).cases]
    assert len(names) == 2 and len(set(names)) == 2           # same number, different UIDs
    for name in names:  # modality, series number, hash: nothing else can be in it
        assert re.fullmatch(r"MR_s5_[0-9a-f]{10}", name), name
    # stable: the same series gets the same name in another run
    assert names == [name for name, _ in discover_inputs([folder]).cases]


def test_mixed_folder_two_series_and_non_image_objects(dicom_sources, tmp_path):
    """CT + MR + a DICOM SEG + a localiser + a non-DICOM file, all in one folder."""
    import shutil

    from lkm_core.outputs.dicom_seg import write_dicom_seg

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for src in (dicom_sources["ct"], dicom_sources["mr"]):
        for f in src.iterdir():
            shutil.copy(f, mixed / f"{src.name}_{f.name}")
    # a SEG of the CT, from a real labelmap on the CT grid
    ct_series = scan_folder(dicom_sources["ct"]).series[0]
    ct = read_series(ct_series)
    labels = sitk.Cast(sitk.BinaryThreshold(ct, 200, 5000, 1, 0), sitk.sitkUInt8)
    bundle = make_bundle(tmp_path / "model", labels=("liver",))
    write_dicom_seg(labels, bundle.labels, mixed / "bone.seg.dcm", ct_series, bundle)
    # a localiser: one CT slice re-tagged as its own scout series
    scout = pydicom.dcmread(str(next(dicom_sources["ct"].iterdir())))
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.SeriesInstanceUID = pydicom.uid.generate_uid()
    scout.SOPInstanceUID = pydicom.uid.generate_uid()
    scout.save_as(str(mixed / "scout.dcm"))
    (mixed / "README.txt").write_text("not DICOM", encoding="utf-8")

    found = discover_inputs([mixed], "CT")
    assert [s.modality for _, s in found.cases] == ["CT"]
    assert len(found.cases[0][1].files) == 20
    reasons = {s.reason.split(" (")[0]: s.files for s in found.skipped}
    assert reasons == {"modality MR, but the model segments CT": 20,
                       "a segmentation or registration object": 1, "a localiser": 1}
    assert "Segmentation Storage" in next(s.reason for s in found.skipped if "segmentation" in s.reason)
    # a model of no stated modality takes both volumes
    assert sorted(s.modality for _, s in discover_inputs([mixed]).cases) == ["CT", "MR"]


def test_study_split_into_nested_folders_is_reassembled(dicom_sources, tmp_path):
    study = tmp_path / "study"
    files = sorted(dicom_sources["ct"].iterdir())
    for i, f in enumerate(files):  # slices scattered over three nested folders, out of order
        dest = study / "DICOM" / f"ST{i % 3}" / ("SE0" if i % 2 else "SE1")
        dest.mkdir(parents=True, exist_ok=True)
        (dest / f"{len(files) - i:05d}").write_bytes(f.read_bytes())
    for f in dicom_sources["mr"].iterdir():
        (study / "MR").mkdir(exist_ok=True)
        (study / "MR" / f.name).write_bytes(f.read_bytes())
    found = discover_inputs([study], "CT")
    assert len(found.cases) == 1
    series = found.cases[0][1]
    assert len(series.files) == 20 and series.folder == study / "DICOM"
    reference = gdcm_volume(dicom_sources["ct"])
    image = read_image(series)
    assert geometry(image) == geometry(reference)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference))


def edited_copy(source: Path, dest: Path, edit) -> Path:
    dest.mkdir()
    files = sorted(source.iterdir(), key=lambda f: float(pydicom.dcmread(str(f)).ImagePositionPatient[2]))
    for k, f in enumerate(files):
        ds = pydicom.dcmread(str(f))
        if edit(k, ds) is not False:
            ds.save_as(str(dest / f.name))
    return dest


@pytest.mark.parametrize("edit, words", [
    (lambda k, ds: False if k == 8 else None, "1 slice(s) are missing"),
    (lambda k, ds: setattr(ds, "ImagePositionPatient",
                           [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 0.7])
     if k >= 12 else None, "slice spacing is mixed"),
    (lambda k, ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.8660254, -0.5])
     if k == 3 else None, "2 different orientations"),
    (lambda k, ds: setattr(ds, "ImagePositionPatient",
                           [ds.ImagePositionPatient[0], float(ds.ImagePositionPatient[1]) + 2 * k,
                            ds.ImagePositionPatient[2]]), "not stacked along their normal"),
])
def test_irregular_series_are_refused_saying_which(dicom_sources, tmp_path, edit, words):
    folder = edited_copy(dicom_sources["ct"], tmp_path / "bad", edit)
    found = discover_inputs([folder], "CT")
    assert len(found.cases) == 1                 # still a case: refused when read, others go on
    with pytest.raises(InputError, match="Refused the CT series 3") as err:
        read_image(found.cases[0][1])
    assert words in str(err.value)


def test_folder_with_nothing_to_segment_says_what_it_holds(dicom_sources, tmp_path):
    only_mr = tmp_path / "only_mr"
    only_mr.mkdir()
    (only_mr / "x.dcm").write_bytes(next(dicom_sources["mr"].iterdir()).read_bytes())
    found = discover_inputs([only_mr], "CT")
    assert found.cases == [] and "model segments CT" in found.skipped[0].reason
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither DICOM files nor image files"):
        discover_inputs([tmp_path / "empty"])


def test_cli_reports_a_refused_series_and_goes_on(dicom_sources, tmp_path, capsys):
    """Through the command line (in-process): the refused series is a failed case with its
    reason, the batch report says "refused", and no output is written for it."""
    import csv

    from lkm_core import cli, contract
    study = tmp_path / "study"
    study.mkdir()
    edited_copy(dicom_sources["ct"], study / "gappy", lambda k, ds: False if k in (5, 6) else None)
    write_series(sitk.ReadImage(str(dicom_sources["mr_image"])), study / "mr")
    out = tmp_path / "out"
    code = cli.main(["predict", str(study), "-o", str(out), "--progress", "none", "--report"])
    assert code == contract.EXIT_FAILED
    err = capsys.readouterr().err
    assert "2 slice(s) are missing" in err
    assert "lkm-segment: skipped MR_" in err and "model segments CT" in err  # said, not only logged
    with open(out / "batch_report.csv", newline="", encoding="utf-8") as f:
        rows = {r["status"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["refused", "skipped"]            # the default model segments CT
    assert rows["refused"]["case"].startswith("CT_s3_") and "missing" in rows["refused"]["message"]
    assert "model segments CT" in rows["skipped"]["message"]
    assert sorted(p.name for p in out.iterdir()) == ["batch_report.csv"]


def test_summaries_and_reports_name_no_path_folder_or_uid_unless_asked(dicom_sources, tmp_path,
                                                                        capsys):
    """Hospital exports name folders by patient: by default neither the case summary's input
    description nor the batch report holds a path, a folder name or a DICOM UID; --keep-paths
    (local use) puts them back."""
    import csv

    from lkm_core import cli
    from lkm_core.inputs.images import describe_input

    study = tmp_path / "Doe_Jane_1957"
    study.mkdir()
    edited_copy(dicom_sources["ct"], study / "gappy", lambda k, ds: False if k in (5, 6) else None)
    write_series(sitk.ReadImage(str(dicom_sources["mr_image"])), study / "mr")
    found = discover_inputs([study], "CT")
    series = found.cases[0][1]
    uids = {series.series_uid, series.study_uid, series.frame_of_reference_uid} - {None, ""}
    assert uids   # the copy has its UIDs restored: something to leak

    def leaks(text: str) -> list:
        return [w for w in ("Doe_Jane_1957", str(tmp_path), *uids) if w in text]

    private = describe_input(series)
    assert leaks(repr(private)) == [] and private["dicom"]["series_number"] == 3
    assert describe_input(dicom_sources["mr_image"]) == {}
    kept = describe_input(series, keep_paths=True)
    assert kept["input_path"] == str(series.folder.absolute())
    assert kept["dicom"]["series_instance_uid"] == series.series_uid

    for keep, out in ((False, tmp_path / "out"), (True, tmp_path / "kept")):
        cli.main(["predict", str(study), "-o", str(out), "--progress", "none", "--report"]
                 + (["--keep-paths"] if keep else []))
        capsys.readouterr()
        text = (out / "batch_report.csv").read_text(encoding="utf-8")
        with open(out / "batch_report.csv", newline="", encoding="utf-8") as f:
            rows = {r["status"]: r for r in csv.DictReader(f)}
        assert sorted(rows) == ["refused", "skipped"] and "missing" in rows["refused"]["message"]
        if keep:
            assert "Doe_Jane_1957" in text and series.series_uid in text
        else:
            assert leaks(text) == [], text


@pytest.mark.parametrize("progress", ["none", "bar", "json"])
def test_cli_with_every_input_skipped_says_each_skip_and_exits_nothing_to_segment(
        dicom_sources, tmp_path, capfd, progress):
    """An MR series given to a CT model: no output, every skip on stderr, exit code 3 (the JSON
    protocol carries it as a warning for the panel, and an error event)."""
    import json

    from lkm_core import cli
    from lkm_core.contract import EXIT_NOTHING

    out = tmp_path / "out"
    code = cli.main(["predict", str(dicom_sources["mr"]), "-o", str(out), "--progress", progress])
    assert code == EXIT_NOTHING == 3
    captured = capfd.readouterr()  # the JSON lines go to file descriptor 1 itself
    assert "skipped MR_" in captured.err and "modality MR, but the model segments CT" in captured.err
    assert "Nothing to segment: all 1 DICOM object(s) given were skipped" in captured.err
    assert not out.exists() or not any(out.iterdir())
    if progress == "json":
        events = [json.loads(line) for line in captured.out.splitlines()]
        assert any(e["event"] == "log" and e["level"] == "warning" and "skipped MR_" in e["message"]
                   for e in events)
        assert events[-1]["event"] == "error" and "Nothing to segment" in events[-1]["message"]
