"""Bad inputs and bad models: a clear message, a non-zero exit code and no output file.

These call the CLI's ``main`` in-process (fast); test_cli_sample_ct.py runs it as a real child
process.
"""

import json
import shutil
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from engine_helpers import predict_in_process as run
from engine_helpers import sphere_image
from lkm_core.cli.root import main


def write(image, path):
    sitk.WriteImage(image, str(path))
    return path


def volume(array, spacing=(2.0, 2.0, 2.0)):
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing(spacing)
    return image


def no_outputs(folder):
    return not folder.exists() or not any(folder.iterdir())


def ct_like():
    rng = np.random.default_rng(0)
    return rng.normal(0, 100, (12, 14, 16)).astype(np.float32)


BAD_IMAGES = {
    "unreadable": (lambda p: p.write_bytes(b"this is not an image"), "Could not read"),
    "missing": (lambda p: None, "does not exist"),
    "2d": (lambda p: write(sitk.GetImageFromArray(np.random.rand(20, 20).astype(np.float32)), p),
           "2D image"),
    "4d": (lambda p: write(sitk.JoinSeries([volume(ct_like()), volume(ct_like() + 1)]), p),
           "4D image"),
    "rgb": (lambda p: write(sitk.Compose([volume(ct_like())] * 3), p), "components per voxel"),
    "empty": (lambda p: write(volume(np.zeros((8, 9, 10))), p), "empty"),
    "constant": (lambda p: write(volume(np.full((8, 9, 10), -1000.0)), p), "constant"),
    "nan": (lambda p: write(volume(np.where(np.arange(720).reshape(8, 9, 10) == 5, np.nan,
                                            ct_like()[:8, :9, :10])), p), "NaN or infinite"),
    "inf": (lambda p: write(volume(np.where(np.arange(720).reshape(8, 9, 10) == 5, np.inf,
                                            ct_like()[:8, :9, :10])), p), "NaN or infinite"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_fails_with_a_clear_message_and_no_output(tmp_path, capsys, small_bundle, case):
    make, message = BAD_IMAGES[case]
    path = tmp_path / f"{case}.nrrd"
    make(path)
    code, err = run(capsys, [path], tmp_path / "out", small_bundle)
    assert code == 1
    assert message in err and case in err  # what went wrong, and with which file
    assert no_outputs(tmp_path / "out")


def test_volume_smaller_than_the_patch_is_segmented(tmp_path, capsys, small_bundle):
    image, _ = sphere_image(size=(10, 8, 6), spacing=(6.0, 6.0, 6.0), value=300, background=-100)
    path = write(image, tmp_path / "tiny.nii.gz")
    code, err = run(capsys, [path], tmp_path / "out", small_bundle, "--format", "nii.gz")
    assert code == 0, err
    labels = sitk.ReadImage(str(tmp_path / "out" / "tiny.nii.gz"))
    assert labels.GetSize() == image.GetSize()
    summary = json.loads((tmp_path / "out" / "tiny.json").read_text(encoding="utf-8"))
    assert [entry["name"] for entry in summary["labels"]] == ["liver", "spleen"]


def test_one_failing_case_does_not_stop_the_others(tmp_path, capsys, small_bundle):
    good, _ = sphere_image(size=(10, 8, 6), spacing=(6.0, 6.0, 6.0), value=300, background=-100)
    write(good, tmp_path / "good.nrrd")
    write(volume(np.zeros((8, 9, 10))), tmp_path / "bad.nrrd")
    code, err = run(capsys, [tmp_path / "bad.nrrd", tmp_path / "good.nrrd"], tmp_path / "out",
                    small_bundle)
    assert code == 1 and "bad.nrrd is empty" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.json", "good.seg.nrrd"]


def test_unknown_subset_name_is_a_usage_error_listing_the_known_names(tmp_path, capsys,
                                                                      small_bundle):
    image, _ = sphere_image(size=(10, 8, 6), value=300, background=-100)
    path = write(image, tmp_path / "a.nrrd")
    code, err = run(capsys, [path], tmp_path / "out", small_bundle, "--subset", "liver,lungs")
    assert code == 2
    assert "lungs" in err and "liver, spleen" in err
    assert no_outputs(tmp_path / "out")


def test_options_out_of_range_are_usage_errors(tmp_path, capsys, small_bundle):
    path = write(volume(ct_like()), tmp_path / "a.nrrd")
    assert run(capsys, [path], tmp_path / "o", small_bundle, "--step", "1.5")[0] == 2
    assert run(capsys, [path], tmp_path / "o", small_bundle, "--num-parts", "2")[0] == 2
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(path), "-o", str(tmp_path / "o"), "--format", "png"])
    assert exc.value.code == 2
    assert no_outputs(tmp_path / "o")


def _broken_copy(small_bundle, tmp_path, how):
    folder = tmp_path / "broken"
    shutil.copytree(small_bundle, folder)
    if how == "missing_key":
        meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        del meta["patch_size"]
        (folder / "model.json").write_text(json.dumps(meta), encoding="utf-8")
        return folder, "patch_size"
    if how == "tampered":
        weights = folder / "fold_0.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 1
        weights.write_bytes(bytes(data))
        return folder, "checksum"
    archive = tmp_path / "escape.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in folder.iterdir():
            zf.write(p, p.name)
        zf.writestr("../../escaped.txt", "x")
    return archive, "outside the bundle"


@pytest.mark.parametrize("how", ["missing_key", "tampered", "zip_escape"])
def test_broken_model_bundle_fails_before_any_output(tmp_path, capsys, small_bundle, monkeypatch,
                                                     how):
    monkeypatch.setenv("LKM_CACHE_DIR", str(tmp_path / "cache"))
    bundle, message = _broken_copy(small_bundle, tmp_path, how)
    path = write(volume(ct_like()), tmp_path / "a.nrrd")
    code, err = run(capsys, [path], tmp_path / "out", bundle)
    assert code == 1 and message in err
    assert no_outputs(tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    assert main(["bundle", "verify", str(bundle)]) == 1
