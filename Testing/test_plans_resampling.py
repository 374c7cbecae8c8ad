"""The plans' resampling_fn_* and their kwargs: nnU-Net's shipped functions are followed (checked
against nnunetv2's own code), anything else is refused with one clear line."""

import numpy as np
import pytest
import SimpleITK as sitk

from engine_helpers import ThresholdNet, make_bundle, sphere_image
from lkm_core.bundle import load_bundle
from lkm_core.errors import InputError, ModelError
from lkm_core.inference.predictor import Predictor
from lkm_core.inference.preprocessing import resample_array
from lkm_core.nnunet_steps import Resampling
from lkm_core.training.bundle_export import resampling_from_plans


def spec(fn, **kwargs):
    return {"function": fn, "kwargs": kwargs}


def nnunet_resample(fn, array, shape, spacing, target, kwargs):
    from nnunetv2.preprocessing.resampling.utils import recursive_find_resampling_fn_by_name
    out = recursive_find_resampling_fn_by_name(fn)(array[None], shape, spacing, target, **kwargs)
    return np.asarray(out)[0]


@pytest.mark.parametrize("fn, kwargs, spacing, target", [
    ("resample_data_or_seg_to_shape",                      # nnU-Net's default
     {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
     (3.5, 0.8, 0.9), (2.0, 1.1, 1.1)),
    ("resample_data_or_seg_to_shape",                      # linear, forced apart
     {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": True},
     (1.6, 1.0, 1.0), (1.1, 1.3, 0.7)),
    ("resample_data_or_seg_to_shape",                      # anisotropic, never apart
     {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": False},
     (4.0, 0.9, 0.9), (2.0, 1.2, 1.2)),
    ("resample_data_or_seg_to_shape",                      # another anisotropy threshold
     {"order": 3, "order_z": 0, "force_separate_z": None,
      "separate_z_anisotropy_threshold": 1.5}, (2.0, 1.0, 1.0), (1.0, 1.5, 1.5)),
    ("resample_torch_fornnunet", {"is_seg": False, "force_separate_z": None},
     (3.5, 0.8, 0.9), (2.0, 1.1, 1.1)),
    ("resample_torch_fornnunet", {"is_seg": False}, (1.0, 1.0, 1.0), (1.3, 0.7, 1.2)),
])
def test_the_plans_resampling_of_the_image_is_nnunets(fn, kwargs, spacing, target):
    rng = np.random.default_rng(1)
    array = rng.normal(size=(9, 14, 13)).astype(np.float32)
    shape = tuple(max(1, int(round(s / t * n))) for n, s, t in zip(array.shape, spacing, target))
    step = Resampling.from_meta({"data": spec(fn, **kwargs)}).data
    ours = resample_array(array.copy(), shape, spacing, target, step=step)
    theirs = nnunet_resample(fn, array, shape, spacing, target, kwargs)
    assert ours.shape == theirs.shape == shape
    np.testing.assert_allclose(ours, theirs, atol=2e-4)


def test_a_plan_without_resampling_runs_the_network_at_the_images_own_spacing(tmp_path):
    image, mask = sphere_image(size=(20, 18, 10), spacing=(0.7, 0.9, 2.5), radius_mm=5,
                               background=-1.0)  # nonzero: not cropped
    bundle = make_bundle(tmp_path / "b", spacing=(1.0, 1.0, 1.0), patch=(8, 16, 16))
    bundle.meta["resampling"] = {"data": spec("no_resampling_hack"),
                                 "probabilities": spec("no_resampling_hack")}
    result = Predictor(bundle, device="cpu", networks=[ThresholdNet()]).predict_image(image)
    assert result.network_shape == (10, 18, 20)
    assert result.network_spacing == pytest.approx(image.GetSpacing())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), mask.astype(np.uint8))


def test_export_records_the_plans_resampling_and_loading_follows_it(tmp_path):
    config = {"resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                            "force_separate_z": True},
              "resampling_fn_probabilities": "resample_torch_fornnunet",
              "resampling_fn_probabilities_kwargs": {"is_seg": False}}
    recorded = resampling_from_plans(config)
    assert recorded["data"] == spec("resample_data_or_seg_to_shape", is_seg=False, order=1,
                                    order_z=0, force_separate_z=True)
    bundle = make_bundle(tmp_path / "b")
    bundle.meta["resampling"] = recorded
    step = bundle.resampling.data
    assert (step.order, step.force_separate_z) == (1, True)
    assert bundle.resampling.probabilities.order == 1


@pytest.mark.parametrize("entry, words", [
    ({"data": spec("my_resampling")}, "resampling_fn_data my_resampling is not one of nnU-Net's"),
    ({"data": spec("resample_data_or_seg_to_shape", order=3, order_z=1)}, "order_z 1"),
    ({"probabilities": spec("resample_data_or_seg_to_shape", order=3)}, "order 3"),
    ({"data": spec("resample_data_or_seg_to_shape", smooth=True)}, "does not know: smooth"),
    ({"data": spec("resample_torch_fornnunet", mode="nearest")}, "mode='nearest'"),
    ({"probabilities": spec("no_resampling_hack")}, "not the probabilities back"),
])
def test_unknown_resampling_is_refused_at_export_and_at_load(tmp_path, entry, words):
    config = {}
    for what, value in entry.items():
        config[f"resampling_fn_{what}"] = value["function"]
        config[f"resampling_fn_{what}_kwargs"] = value["kwargs"]
    with pytest.raises(InputError, match=words):
        resampling_from_plans(config)
    bundle = make_bundle(tmp_path / "b")
    meta_path = bundle.path / "model.json"
    import json
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["resampling"] = entry
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ModelError, match=words):
        load_bundle(bundle.path)
