"""End to end on the CPU: nnU-Net plans, preprocesses and trains LKM-UNet (stock nnUNetTrainer),
lkm-segment exports the bundle and predicts with it; nnU-Net's own predictor agrees; a bundle
becomes the starting point of a fine-tuning run whose result is a new bundle version.

Slow (about two minutes on two busy cores), but it runs by default: it is the proof that
training works without a fork of nnU-Net.
"""

import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk

import nnunetv2  # noqa: E402,F401  (the train extra: CI installs it, so this test always runs)

from lkm_core.training import smoke  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(trained_smoke):
    return trained_smoke  # trained once per session (conftest.py)


def test_nnunet_trains_the_lkm_configuration_and_the_result_exports_to_a_bundle(trained):
    plans = json.loads((trained.results / "plans.json").read_text(encoding="utf-8"))
    block = plans["configurations"][smoke.CONFIG]
    assert block["inherits_from"] == "3d_fullres"
    assert block["architecture"]["network_class_name"] == "lkm_core.network.LKMUNet"
    assert (trained.results / "fold_0" / "checkpoint_final.pth").is_file()
    log = trained.log.read_text(encoding="utf-8")
    assert "train_loss" in log and "Epoch 1" in log

    from lkm_core.bundle import load_bundle, verify_bundle

    bundle = verify_bundle(trained.bundle)
    assert bundle.dimension == "3d" and bundle.folds == ["fold_0"] and bundle.trained
    assert [(lab.value, lab.name) for lab in bundle.labels] == [
        (1, "liver"), (2, "spleen"), (3, "kidney_right"), (4, "kidney_left")]
    liver = bundle.labels[0]
    assert liver.terminology["type"]["code"] == "10200004"  # SNOMED CT: Liver
    norm = bundle.normalization[0]
    props = plans["foreground_intensity_properties_per_channel"]["0"]
    assert norm["scheme"] == "ct" and norm["clip"] == [props["percentile_00_5"], props["percentile_99_5"]]
    assert norm["mean"] == props["mean"] and norm["std"] == props["std"]
    assert list(bundle.spacing) == [3.0, 3.0, 3.0] and list(bundle.patch_size) == [24, 32, 32]
    prov = bundle.provenance
    assert prov["trainer"] == "nnUNetTrainer" and prov["configuration"] == smoke.CONFIG
    assert prov["epochs"] == {"fold_0": 2}
    assert load_bundle(trained.bundle).network_config["kwargs"]["window_sizes"][0] == [4, 4, 4]
    # the volumes seen in training, per structure, for the review's volume check
    ranges = bundle.meta["volume_range_ml"]
    liver_ml = []
    for path in sorted((trained.raw / "labelsTr").glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        n = int((sitk.GetArrayViewFromImage(image) == 1).sum())
        if n:
            liver_ml.append(n * float(np.prod(image.GetSpacing())) / 1000)
    assert ranges["liver"] == pytest.approx([min(liver_ml), max(liver_ml)], abs=1e-3)


@pytest.fixture(scope="module")
def case(trained):
    return trained.raw / "imagesTr" / "tiny_004_0000.nii.gz"


@pytest.fixture(scope="module")
def cli_prediction(trained, case, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("predict")
    smoke.run([sys.executable, "-m", "lkm_core", "predict", case, "-o", out_dir, "--model", trained.bundle,
               "--device", "cpu", "--threads", "1", "--format", "nii.gz", "--progress", "none",
               "--no-tta"],  # like for like: nnU-Net's predictor below runs without mirroring
              trained.env, trained.log)
    return sorted(out_dir.glob("*.nii.gz"))


@pytest.fixture(scope="module")
def nnunet_prediction(trained, case):
    return smoke.nnunet_predict(trained.results, case, folds=(0,), mirroring=False)


def test_lkm_core_predicts_with_the_exported_bundle_on_the_command_line(cli_prediction, case):
    assert len(cli_prediction) == 1
    labels = sitk.ReadImage(str(cli_prediction[0]))
    reference = sitk.ReadImage(str(case))
    assert labels.GetSize() == reference.GetSize() and labels.GetOrigin() == reference.GetOrigin()
    assert labels.GetDirection() == reference.GetDirection()
    assert set(np.unique(sitk.GetArrayFromImage(labels))) <= {0, 1, 2, 3, 4}


def test_lkm_core_and_nnunet_predictors_give_the_same_labels(cli_prediction, nnunet_prediction):
    """The peer check: same model, same input, Dice >= 0.98 for every label either predicts."""
    ours = sitk.ReadImage(str(cli_prediction[0]))
    dice = smoke.dice_per_label(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(nnunet_prediction))
    assert dice, "neither predictor found any organ: the model is untrained"
    assert all(d >= 0.98 for d in dice.values()), dice


def test_fine_tuning_starts_from_a_bundle_and_ends_in_a_new_bundle_version(trained, tmp_path):
    env, log, py = trained.env, trained.log, sys.executable
    ckpt = tmp_path / "pretrained.pth"
    # the corrected cases: here the same raw dataset, as the Slicer export would write it
    smoke.run([py, "-m", "lkm_core", "bundle", "to-nnunet", trained.bundle, "-o", ckpt, "--plans",
               str(smoke.DATASET_ID)], env, log)
    smoke.run([smoke.nnunet_bin("nnUNetv2_preprocess"), "-d", smoke.DATASET_ID, "-plans_name", "nnUNetPlans_lkmft",
               "-c", smoke.CONFIG, "-np", "1"], env, log)
    smoke.run([py, "-m", "lkm_core.training.short_run", str(smoke.DATASET_ID), smoke.CONFIG, "0",
               "-p", "nnUNetPlans_lkmft", "-pretrained_weights", ckpt, "--epochs", "1", "--iterations", "2",
               "--threads", "1"], env, log)
    assert "Loading pretrained weights" in log.read_text(encoding="utf-8")
    results = trained.results.parent / f"nnUNetTrainer__nnUNetPlans_lkmft__{smoke.CONFIG}"
    smoke.run([py, "-m", "lkm_core", "bundle", "export", results, "-o", tmp_path / "v2", "--version", "1.1.0",
               "--parent", "lkmtiny@1.0.0"], env, log)
    from lkm_core.bundle import load_bundle

    old, new = load_bundle(trained.bundle), load_bundle(tmp_path / "v2")
    assert new.version == "1.1.0" and new.provenance["fine_tuned_from"] == "lkmtiny@1.0.0"
    # same preprocessing and network as the parent
    assert new.meta["normalization"] == old.meta["normalization"]
    assert new.spacing == old.spacing and new.patch_size == old.patch_size
    assert new.network_config == old.network_config
