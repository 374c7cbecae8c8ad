"""The hard peer check: lkm_core and nnU-Net's own nnUNetPredictor, same LKM-UNet weights, same
input, on the cases where pipelines really differ: inputs resampled to the model's spacing (a
crop of the sample CT at 1.5 mm and at 0.8 x 0.8 x 2.5 mm, which nnU-Net resamples across
slices apart), mirroring on and off, a volume smaller than the patch (padded), and the
training-orientation crop stored in two other orientations (nnU-Net gets the training
orientation, lkm_core the others). Per-label Dice >= 0.98, >= 0.99 without resampling.

Two real models: the default bundle's LKM-UNet, which labels organs decisively (served to
nnUNetPredictor as an nnU-Net results folder built from the bundle), over the whole matrix; and
the tiny LKM-UNet that nnU-Net's stock trainer trains in the end-to-end test (same session
fixture), on a resampled input and a small one without mirroring (its few training steps leave
its mirrored average all background). Mirroring flips z and x in both predictors (4 passes; the
default model itself declares none, it was trained without to keep its sides, and all three
axes average its organs away). The whole sample CT through this matrix: Testing/benchmarks/peer_matrix.py.
"""

import numpy as np
import pytest
import SimpleITK as sitk

import peer_cases
from lkm_core.bundle import default_bundle_path

pytestmark = pytest.mark.slow
CASES = {case.name: case for case in peer_cases.cases()}


@pytest.fixture(scope="module")
def ct(sample_ct):
    return peer_cases.read_ct(sample_ct.image)


@pytest.fixture(scope="module")
def default_results(trained_smoke, tmp_path_factory):
    plans = (trained_smoke.workdir / "nnUNet_preprocessed" / trained_smoke.results.parent.name
             / "nnUNetPlans.json")
    folder = tmp_path_factory.mktemp("default_results") / "nnUNetTrainer__nnUNetPlans__3d_lkm"
    return peer_cases.nnunet_results_for_bundle(default_bundle_path(), plans, folder)


def check(case, ct, bundle, results, tmp_path):
    theirs_in, ours_in = peer_cases.inputs(ct, case)
    path = tmp_path / "case_0000.nii.gz"
    sitk.WriteImage(theirs_in, str(path))
    ours, _ = peer_cases.run_lkm(bundle, ours_in, case.mirror)
    theirs, _ = peer_cases.run_nnunet(results, path, case.mirror)
    assert ours.GetSize() == ours_in.GetSize() and ours.GetDirection() == ours_in.GetDirection()
    dice = peer_cases.compare(ours, theirs)
    return dice, np.bincount(sitk.GetArrayViewFromImage(theirs).ravel())


@pytest.mark.parametrize("name", list(CASES))
def test_default_model_agrees_with_nnunet(name, ct, default_results, tmp_path):
    case = CASES[name]
    dice, counts = check(case, ct, default_bundle_path(), default_results, tmp_path)
    assert np.count_nonzero(counts[1:] > 100) >= 3, counts  # real organs, not an empty map
    assert all(d >= case.min_dice for d in dice.values()), dice


@pytest.mark.parametrize("name", ["1.5x1.5x1.5mm-plain", "smaller-than-patch"])
def test_nnunet_trained_model_agrees_with_nnunet(name, ct, trained_smoke, tmp_path):
    case = CASES[name]
    dice, counts = check(case, ct, trained_smoke.bundle, trained_smoke.results, tmp_path)
    assert counts[1:].sum() > 0 and dice, counts
    assert all(d >= case.min_dice for d in dice.values()), dice
