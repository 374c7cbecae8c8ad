"""nnU-Net's postprocessing (postprocessing.pkl from nnUNetv2_find_best_configuration): read
safely at export into model.json as JSON, applied at prediction as nnU-Net applies it."""

import os
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import binary_dilation

from engine_helpers import ThresholdNet, make_bundle
from lkm_core.errors import InputError
from lkm_core.inference.predictor import Predictor
from lkm_core.inference.preprocessing import postprocess_labels
from lkm_core.nnunet_steps import check_postprocessing
from lkm_core.training.bundle_export import postprocessing_from_pickle

FN = "remove_all_but_largest_component_from_segmentation"


def blobs(seed=0, shape=(20, 24, 22), labels=3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, np.uint8)
    for value in range(1, labels + 1):
        seeds = rng.random(shape) < 0.004
        out[binary_dilation(seeds, iterations=2) & (out == 0)] = value
    return out


@pytest.mark.parametrize("kwargs", [
    {"labels_or_regions": 2},
    {"labels_or_regions": [1, 3]},
    {"labels_or_regions": [(1, 2)], "background_label": 0},
])
def test_postprocessing_is_nnunets(kwargs):
    from nnunetv2.postprocessing.remove_connected_components import \
        remove_all_but_largest_component_from_segmentation as nnunet_fn
    seg = blobs()
    theirs = nnunet_fn(seg, **kwargs)
    steps = check_postprocessing([{"function": FN, "kwargs": kwargs}])
    ours = postprocess_labels(seg.copy(), steps)
    assert (theirs != seg).any()                       # the step did remove something
    np.testing.assert_array_equal(ours, theirs)


def test_nnunets_pickle_becomes_json_and_nothing_else_is_unpickled(tmp_path):
    from batchgenerators.utilities.file_and_folder_operations import save_pickle
    from nnunetv2.postprocessing.remove_connected_components import \
        remove_all_but_largest_component_from_segmentation as nnunet_fn

    path = tmp_path / "postprocessing.pkl"   # as determine_postprocessing writes it
    save_pickle(([nnunet_fn, nnunet_fn], [{"labels_or_regions": [1, 2]},
                                          {"labels_or_regions": [np.int64(3)]}]), str(path))
    assert postprocessing_from_pickle(path) == [
        {"function": FN, "kwargs": {"labels_or_regions": [1, 2]}},
        {"function": FN, "kwargs": {"labels_or_regions": [3]}}]

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps(([Evil()], [{}])))
    with pytest.raises(InputError, match="can be read safely"):
        postprocessing_from_pickle(bad)
    assert not (tmp_path / "ran").exists()


def test_predict_keeps_the_largest_component_unless_told_not_to(tmp_path):
    array = np.zeros((16, 16, 24), np.float32) - 1.0
    array[3:11, 3:11, 2:10] = 1.0          # the large one
    array[5:8, 5:8, 16:20] = 1.0           # a small stray one
    image = sitk.GetImageFromArray(array)
    bundle = make_bundle(tmp_path / "b", patch=(16, 16, 16))
    bundle.meta["postprocessing"] = [{"function": FN, "kwargs": {"labels_or_regions": [1]}}]

    def run(**kwargs):
        result = Predictor(bundle, device="cpu", networks=[ThresholdNet()],
                           **kwargs).predict_image(image)
        return sitk.GetArrayFromImage(result.labels)

    np.testing.assert_array_equal(run(), (array > 0) & (np.arange(24) < 12))
    np.testing.assert_array_equal(run(postprocessing=False), array > 0)


def test_unknown_postprocessing_in_model_json_is_refused():
    with pytest.raises(ValueError, match="not one lkm_core follows"):
        check_postprocessing([{"function": "fill_holes", "kwargs": {}}])
    with pytest.raises(ValueError, match="needs labels_or_regions"):
        check_postprocessing([{"function": FN, "kwargs": {"labels": [1]}}])
