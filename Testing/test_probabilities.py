"""--save-probabilities: the class probabilities on the input's grid, in nnU-Net's .npz form
(the comparison with nnU-Net's own is in test_nnunet_results_options.py)."""

import numpy as np
import SimpleITK as sitk

from engine_helpers import ThresholdNet, make_bundle, sphere_image
from lkm_core.inference.predictor import Predictor
from lkm_core.outputs.labels import output_paths, write_probabilities

FLIPPED = np.diag([-1.0, -1.0, 1.0])


def test_probabilities_sit_on_the_input_grid_and_agree_with_the_labels(tmp_path):
    # anisotropic, resampled, stored flipped and reoriented to RAS by the bundle
    image, mask = sphere_image(size=(30, 26, 12), spacing=(0.8, 0.9, 2.5), direction=FLIPPED,
                               radius_mm=7, background=-1.0)
    bundle = make_bundle(tmp_path / "b", spacing=(2.0, 1.2, 1.2), patch=(8, 16, 16),
                         orientation="RAS", labels=("liver", "spleen"))
    result = Predictor(bundle, device="cpu", networks=[ThresholdNet(3)],
                       probabilities=True).predict_image(image)
    probs = result.probabilities
    assert probs.dtype == np.float32 and probs.shape == (3, 12, 26, 30)   # (c, z, y, x)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    labels = sitk.GetArrayFromImage(result.labels)
    assert (probs.argmax(0) == labels).mean() > 0.999   # ties at the boundary may differ
    # the stand-in's logits (0.5, 1, -1) inside, (0.5, -1, -1) outside: softmax 0.57 and 0.15
    assert (labels == 1).sum() and probs[1][mask].mean() > 0.5 and probs[1][~mask].mean() < 0.2


def test_the_npz_holds_nnunets_one_key(tmp_path):
    paths = output_paths(tmp_path, "case", probabilities=True)
    assert paths["probabilities"].name == "case.npz"
    data = np.random.default_rng(0).random((2, 3, 4, 5))
    write_probabilities(data, paths["probabilities"])
    with np.load(paths["probabilities"]) as npz:
        assert list(npz.keys()) == ["probabilities"]
        np.testing.assert_allclose(npz["probabilities"], data.astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.npz"]  # no temporary left
