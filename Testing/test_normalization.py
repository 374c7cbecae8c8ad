"""lkm_core's preprocessing gives the array nnU-Net's own DefaultPreprocessor gives.

nnU-Net's real code runs on the same file (SimpleITKIO reads it; DefaultPreprocessor.run_case_npy
transposes, crops to the nonzero box, normalises and resamples it). Its plans are given as the
configuration dict nnU-Net reads them from (ConfigurationManager); the plans manager is a plain
namespace holding the two plans entries run_case_npy reads (transpose_forward and the intensity
statistics), not a stand-in for any behaviour.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from lkm_core.bundle import _normalization_list
from lkm_core.inference.preprocessing import normalize, prepare

CT_STATS = {"mean": 40.0, "std": 60.0, "percentile_00_5": -150.0, "percentile_99_5": 250.0,
            "median": 40.0, "min": -1000.0, "max": 1500.0}


def ct_like(size, spacing, seed=0, zero_border=0, hole=False, mr=False):
    """A smooth CT-like volume (HU) with organs of different densities; optionally a zero frame,
    MR-like (positive body, 0 outside it) and a zero hole inside the body."""
    rng = np.random.default_rng(seed)
    shape = size[::-1]
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (x ** 2 + y ** 2) < 0.8
    array = np.where(body, 30.0, -1000.0)
    for _ in range(6):
        c = rng.uniform(-0.6, 0.6, 3)
        r = rng.uniform(0.15, 0.35)
        array[((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < r ** 2] = rng.uniform(-80, 300)
    array += rng.normal(0, 15, shape)
    if zero_border:
        b = zero_border
        frame = np.ones(shape, bool)
        frame[b:-b, b:-b, b:-b] = False
        array[frame] = 0
        array[~frame] += 1100.0   # MR-like: positive inside
    if mr:
        array = np.where(body, array + 1100.0, 0.0)
    if hole:
        array[tuple(n // 2 for n in shape)] = 0
        array[shape[0] // 2, shape[1] // 2 + 1, shape[2] // 2] = 0
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    return image


def nnunet_preprocess(path, spacing, scheme, use_mask, transpose):
    data, props = SimpleITKIO().read_images([str(path)])
    config = ConfigurationManager({
        "architecture": {"network_class_name": "unused", "arch_kwargs": {},
                         "_kw_requires_import": []},
        "spacing": list(spacing), "normalization_schemes": [scheme],
        "use_mask_for_norm": [use_mask],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                      "force_separate_z": None},
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0,
                                     "force_separate_z": None},
    })
    plans = SimpleNamespace(transpose_forward=list(transpose),
                            foreground_intensity_properties_per_channel={"0": CT_STATS})
    out, _, _ = DefaultPreprocessor(verbose=False).run_case_npy(data, None, props, plans, config,
                                                                {"labels": {"background": 0}})
    return out


CASES = {
    # (size xyz, spacing xyz, target in nnU-Net order, scheme, use_mask, transpose)
    "CT anisotropic (separate z) to 1.5 mm": ((48, 40, 14), (0.8, 0.8, 2.5), (1.5, 1.5, 1.5),
                                               "CTNormalization", False, (0, 1, 2)),
    "CT isotropic, transposed": ((30, 26, 22), (1.2, 1.2, 1.2), (2.0, 1.7, 1.9),
                                 "CTNormalization", False, (2, 0, 1)),
    "CT coarse to fine": ((20, 18, 12), (3.0, 3.0, 3.0), (1.5, 1.5, 1.5), "CTNormalization",
                          False, (0, 1, 2)),
    "z-score with mask, zero frame and hole": ((36, 30, 24), (0.7, 0.7, 0.7), (1.0, 1.0, 1.0),
                                               "ZScoreNormalization", True, (0, 1, 2)),
    "z-score without mask": ((36, 30, 24), (0.9, 0.9, 3.0), (2.0, 1.0, 1.0),
                             "ZScoreNormalization", False, (0, 1, 2)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_prepared_array_equals_nnunets_preprocessed_array(tmp_path, case):
    size, spacing, target, scheme, use_mask, transpose = CASES[case]
    zero = scheme == "ZScoreNormalization"
    image = ct_like(size, spacing, zero_border=3 if zero else 0, hole=use_mask, mr=zero)
    path = tmp_path / "case_0000.nii.gz"
    sitk.WriteImage(image, str(path))
    expected = nnunet_preprocess(path, target, scheme, use_mask, transpose)

    norm = {"scheme": scheme, "use_mask": use_mask, "clip": [CT_STATS["percentile_00_5"],
            CT_STATS["percentile_99_5"]], "mean": CT_STATS["mean"], "std": CT_STATS["std"]}
    ours = prepare(sitk.ReadImage(str(path), sitk.sitkFloat32), spacing=target,
                   transpose=transpose, dimension="3d", normalization=_normalization_list(norm))
    assert ours.array.shape == expected.shape
    np.testing.assert_allclose(ours.array, expected, rtol=0, atol=2e-4)


def test_use_mask_zscore_matches_nnunet_and_keeps_the_background_at_zero():
    image = ct_like((32, 28, 20), (1.0, 1.0, 1.0), seed=3, zero_border=4, hole=True, mr=True)
    array = sitk.GetArrayFromImage(image)[None].astype(np.float32)
    cropped, seg, _ = crop_to_nonzero(array.copy())
    expected = ZScoreNormalization(use_mask_for_norm=True, intensityproperties={}).run(
        cropped[0].copy(), seg[0])
    ours = normalize(cropped[0].copy(), {"scheme": "zscore", "use_mask": True})
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)
    outside = seg[0] < 0
    assert outside.any() and np.all(ours[outside] == 0)
    hole = cropped[0] == 0
    assert np.any(hole & ~outside)  # the filled hole is inside the mask: normalised, not 0
    assert np.all(ours[hole & ~outside] != 0)
