"""Test-time mirroring follows the checkpoint exactly (never an axis it did not record, so left
and right are never blended), and --folds picks the folds that are averaged."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from engine_helpers import make_bundle
from lkm_core.errors import InputError
from lkm_core.inference.predictor import Predictor, mirror_axes_for, resolve_folds


class LeftHalfNet(torch.nn.Module):
    """A position-only model that is not mirror-symmetric: class 1 on the first half of the
    last axis (x), whatever the input. Mirroring x would average it with its mirror image and
    blend the two halves, as left and right organs blend."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        fg = torch.full_like(x[:, :1], -1.0)
        fg[..., : x.shape[-1] // 2] = 1.0
        return torch.cat([torch.zeros_like(fg), fg], 1)


def _image():
    image = sitk.Image([8, 8, 8], sitk.sitkFloat32) + 1.0  # nonzero: no cropping
    return image


def _run(bundle, tta):
    net = LeftHalfNet()
    result = Predictor(bundle, device="cpu", networks=[net], tta=tta, step=1.0,
                       confidence=False).predict_image(_image())
    return sitk.GetArrayFromImage(result.labels), net.calls


LEFT = np.zeros((8, 8, 8), np.uint8)
LEFT[:, :, :4] = 1


def test_tta_mirrors_only_the_axes_the_checkpoint_recorded(tmp_path):
    bundle = make_bundle(tmp_path / "b", patch=(8, 8, 8), mirror_axes=(0, 1))
    assert mirror_axes_for(bundle, None) == (0, 1)   # the default follows the checkpoint
    labels, calls = _run(bundle, tta=True)
    assert calls == 4                                 # z and y: 4 passes, never x
    np.testing.assert_array_equal(labels, LEFT)       # left stays left
    labels, calls = _run(bundle, tta=False)
    assert calls == 1
    np.testing.assert_array_equal(labels, LEFT)


def test_mirroring_the_left_right_axis_would_blend_the_halves(tmp_path):
    # why it matters: the same model mirrored along x (as the old fallback did) loses its
    # left/right distinction; a checkpoint recording x says the model was trained for it
    bundle = make_bundle(tmp_path / "b", patch=(8, 8, 8), mirror_axes=(2,))
    labels, calls = _run(bundle, tta=True)
    assert calls == 2
    assert not np.array_equal(labels, LEFT)


@pytest.mark.parametrize("recorded, why", [(None, "records no mirror axes"),
                                           ((), "was trained without mirroring")])
def test_tta_is_refused_where_the_checkpoint_records_no_mirror_axes(tmp_path, recorded, why):
    bundle = make_bundle(tmp_path / "b", patch=(8, 8, 8), mirror_axes=recorded)
    with pytest.raises(InputError, match=why):
        Predictor(bundle, device="cpu", networks=[LeftHalfNet()], tta=True)
    labels, calls = _run(bundle, tta=None)           # the default: mirror nothing
    assert calls == 1
    np.testing.assert_array_equal(labels, LEFT)


def test_recorded_axes_that_do_not_fit_the_model_are_refused(tmp_path):
    bundle = make_bundle(tmp_path / "b", dimension="2d", spacing=(1, 1), patch=(8, 8),
                         mirror_axes=(0, 2))
    with pytest.raises(InputError, match="not distinct axes of a 2d model"):
        mirror_axes_for(bundle, None)


def test_folds_are_chosen_by_nnunet_names(tmp_path):
    bundle = make_bundle(tmp_path / "b", patch=(8, 8, 8))
    bundle.meta["folds"] = [{"name": f"fold_{i}", "file": "x", "sha256": "0"} for i in (0, 1, 2)]
    assert resolve_folds(bundle, None) == ["fold_0", "fold_1", "fold_2"]
    assert resolve_folds(bundle, ["2", "fold_0", 2]) == ["fold_2", "fold_0"]
    with pytest.raises(InputError, match="has no fold '4'; it has fold_0, fold_1, fold_2"):
        resolve_folds(bundle, ["4"])


def test_cli_refuses_tta_and_unknown_folds_as_usage_errors(tmp_path, capsys):
    from lkm_core.cli import main

    bundle = make_bundle(tmp_path / "b", patch=(8, 8, 8))
    image = tmp_path / "x.nrrd"
    sitk.WriteImage(_image(), str(image))
    base = ["predict", str(image), "-o", str(tmp_path / "o"), "--model", str(bundle.path),
            "--progress", "none"]
    assert main(base + ["--tta"]) == 2
    assert "--tta) is refused: the model test-model records no mirror axes" in \
        capsys.readouterr().err
    assert main(base + ["--folds", "3"]) == 2
    assert "has no fold '3'; it has fold_0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
