"""What a real nnU-Net results folder (trained by nnU-Net's stock trainer, the session's
trained_smoke) brings into a bundle and a prediction: the checkpoint's mirror axes, an
orientation given at export, the folds, probabilities saved as nnU-Net saves them, and
nnU-Net's postprocessing."""

import json

import pytest

from lkm_core.bundle import load_bundle
from lkm_core.cli import main
from lkm_core.training.bundle_export import export_results, load_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(trained_smoke):
    return trained_smoke  # trained once per session (conftest.py)


def test_the_bundle_records_the_checkpoints_mirror_axes(trained):
    ckpt = load_checkpoint(trained.results / "fold_0" / "checkpoint_final.pth")
    bundle = load_bundle(trained.bundle)
    assert bundle.inference_defaults["mirror_axes"] == \
        [int(a) for a in ckpt["inference_allowed_mirroring_axes"]] == [0, 1, 2]



def test_the_bundle_records_the_plans_resampling(trained):
    plans = json.loads((trained.results / "plans.json").read_text(encoding="utf-8"))
    config = plans["configurations"]["3d_fullres"]        # the LKM configuration inherits it
    recorded = load_bundle(trained.bundle).meta["resampling"]
    for what in ("data", "probabilities"):
        assert recorded[what] == {"function": config[f"resampling_fn_{what}"],
                                  "kwargs": config[f"resampling_fn_{what}_kwargs"]}


def test_a_checkpoint_trained_without_mirroring_records_none_and_refuses_tta(trained, tmp_path):
    # what nnUNetTrainerNoMirroring writes: the key, set to None
    import shutil
    import torch

    results = tmp_path / trained.results.name
    shutil.copytree(trained.results, results)
    path = results / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    ckpt["inference_allowed_mirroring_axes"] = None
    torch.save(ckpt, str(path))
    out = export_results(results, tmp_path / "bundle", orientation=None)
    bundle = load_bundle(out)
    assert bundle.inference_defaults["mirror_axes"] == []
    image = next((trained.raw / "imagesTr").iterdir())
    code = main(["predict", str(image), "-o", str(tmp_path / "o"), "--model", str(out), "--tta",
                 "--progress", "none"])
    assert code == 2


@pytest.mark.parametrize("option, recorded, source", [
    ("LPS", "LPS", "given at export (--orientation)"),
    ("ras", "RAS", "given at export (--orientation)"),
    ("none", None, None),
])
def test_bundle_export_records_the_orientation_given(trained, tmp_path, monkeypatch, option,
                                                     recorded, source):
    # the training images are gone (no nnUNet_raw / nnUNet_preprocessed): only the option knows
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    out = tmp_path / "bundle"
    assert main(["bundle", "export", str(trained.results), "-o", str(out),
                 "--orientation", option]) == 0
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert meta["orientation"] == recorded
    assert meta["provenance"].get("orientation_from") == source


def test_bundle_export_refuses_a_bad_orientation(trained, tmp_path, capsys):
    assert main(["bundle", "export", str(trained.results), "-o", str(tmp_path / "b"),
                 "--orientation", "RAX"]) == 1
    assert "not a 3-letter code" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_saved_probabilities_are_those_nnunet_saves(trained, tmp_path):
    """--save-probabilities against nnUNetPredictor's own (same checkpoint, no mirroring): the
    same key, shape, axis order and dtype, and values within interpolation rounding."""
    import numpy as np
    import SimpleITK as sitk

    from lkm_core.training import smoke

    image = sorted((trained.raw / "imagesTr").iterdir())[0]
    out = tmp_path / "o"
    assert main(["predict", str(image), "-o", str(out), "--model", str(trained.bundle),
                 "--no-tta", "--threads", "1", "--progress", "none", "--format", "nii.gz",
                 "--save-probabilities"]) == 0
    (npz_path,) = out.glob("*.npz")
    with np.load(npz_path) as npz:
        assert list(npz.keys()) == ["probabilities"]
        ours = npz["probabilities"]
    _, theirs = smoke.nnunet_predict(trained.results, image, probabilities=True)
    assert ours.shape == theirs.shape == (theirs.shape[0], *sitk.ReadImage(str(image)).GetSize()[::-1])
    assert ours.dtype == theirs.dtype == np.float32
    difference = np.abs(ours - theirs)
    assert difference.mean() < 0.01 and np.percentile(difference, 99.9) < 0.1, \
        (difference.mean(), difference.max())
    (labels,) = out.glob("*.nii.gz")
    assert (ours.argmax(0) == sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))).mean() > 0.999


def test_export_records_the_postprocessing_nnunet_determined_for_the_folds(trained, tmp_path):
    import shutil

    from batchgenerators.utilities.file_and_folder_operations import save_pickle
    from nnunetv2.postprocessing.remove_connected_components import \
        remove_all_but_largest_component_from_segmentation as nnunet_fn

    results = tmp_path / trained.results.name
    shutil.copytree(trained.results, results)
    (results / "crossval_results_folds_0").mkdir()
    save_pickle(([nnunet_fn], [{"labels_or_regions": [1, 2]}]),
                str(results / "crossval_results_folds_0" / "postprocessing.pkl"))
    out = tmp_path / "bundle"
    assert main(["bundle", "export", str(results), "-o", str(out), "--orientation", "none"]) == 0
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert meta["postprocessing"] == [{"function": nnunet_fn.__name__,
                                       "kwargs": {"labels_or_regions": [1, 2]}}]
    assert meta["provenance"]["postprocessing_from"] == "crossval_results_folds_0/postprocessing.pkl"
    assert list(out.glob("*.pkl")) == []
    out_none = tmp_path / "bundle-none"
    assert main(["bundle", "export", str(results), "-o", str(out_none), "--orientation", "none",
                 "--postprocessing", "none"]) == 0
    assert "postprocessing" not in json.loads((out_none / "model.json").read_text(encoding="utf-8"))
