"""LKM configurations in nnU-Net plans, fine-tuning checkpoints, official imports (no training).

Plans are built here as nnU-Net 2.8.1's ExperimentPlanner writes them; nnU-Net's own
PlansManager and get_network_from_plans then resolve and build what `lkm-segment plan` added.
"""

import json
from copy import deepcopy

import pytest
import torch

from lkm_core.errors import InputError
from lkm_core.network.presets import preset_config, preset_patch_size
from lkm_core.training.plans import (NETWORK_CLASS, add_lkm_configuration, choose_windows, parse_sizes,
                                     plan_dataset, stage_feature_sizes)

import nnunetv2  # noqa: E402  (the train extra: CI installs it)


def nnunet_plans(patch=(40, 56, 88), strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
                 features=(32, 64, 128, 256)):
    """A plans dict shaped like nnU-Net 2.8.1's default ExperimentPlanner output."""
    n = len(strides)
    dim = len(patch)

    def config(p, s):
        return {
            "data_identifier": f"nnUNetPlans_{'3d_fullres' if len(p) == 3 else '2d'}",
            "preprocessor_name": "DefaultPreprocessor", "batch_size": 2, "patch_size": list(p),
            "median_image_size_in_voxels": [float(v) for v in p], "spacing": [3.0] * len(p),
            "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {
                    "n_stages": n, "features_per_stage": list(features),
                    "conv_op": f"torch.nn.modules.conv.Conv{len(p)}d",
                    "kernel_sizes": [[3] * len(p)] * n, "strides": [list(x[-len(p):]) for x in s],
                    "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
                    "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{len(p)}d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                    "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": False,
        }

    return {
        "dataset_name": "Dataset901_LKMTiny", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [3.0, 3.0, 3.0],
        "original_median_shape_after_transp": list(patch) if dim == 3 else [40, *patch],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"2d": config(patch[-2:], strides), "3d_fullres": config(patch, strides)},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 1288.0, "mean": 31.1, "median": 34.0, "min": -275.0, "percentile_00_5": -47.0,
            "percentile_99_5": 75.0, "std": 30.7}},
    }


# --- window choice ----------------------------------------------------------------------------
def test_paper_windows_are_kept_where_they_divide_the_paper_patches():
    cfg = preset_config("3d_paper")["kwargs"]
    sizes = stage_feature_sizes(preset_patch_size("3d_paper"), cfg["strides"])
    assert choose_windows(sizes) == [[20, 28, 24], [20, 28, 24], [10, 14, 12], [10, 14, 12], [5, 7, 6], [5, 7, 6]]
    cfg2 = preset_config("2d_paper")["kwargs"]
    sizes2 = stage_feature_sizes(preset_patch_size("2d_paper"), cfg2["strides"])
    assert [w[0] for w in choose_windows(sizes2)] == [40, 20, 20, 10, 10, 5, 5]


def test_windows_fall_back_to_the_largest_divisor_not_above_the_paper_window():
    sizes = stage_feature_sizes([40, 56, 88], [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]])
    assert sizes == [[40, 56, 88], [20, 28, 44], [10, 14, 22], [5, 7, 11]]
    windows = choose_windows(sizes)
    assert windows == [[20, 28, 22], [20, 28, 22], [10, 14, 11], [5, 7, 11]]
    for fs, w in zip(sizes, windows):
        assert all(f % v == 0 for f, v in zip(fs, w))


def test_size_lists_parse_per_stage_isotropic_or_broadcast():
    assert parse_sizes("20x28x24,10x14x12", 2, 3) == [[20, 28, 24], [10, 14, 12]]
    assert parse_sizes("40,20", 2, 2) == [[40, 40], [20, 20]]
    assert parse_sizes("4x4x4", 3, 3) == [[4, 4, 4]] * 3
    with pytest.raises(InputError, match="3 stages"):
        parse_sizes("4,4", 3, 3)
    with pytest.raises(InputError):
        parse_sizes("4xa", 1, 2)


# --- the configuration in the plans -----------------------------------------------------------
def test_lkm_configuration_inherits_nnunets_and_names_lkmunet_by_import_path():
    plans = nnunet_plans()
    name, block = add_lkm_configuration(plans, "3d")
    assert name == "3d_fullres_lkm" and block["inherits_from"] == "3d_fullres"
    arch = block["architecture"]
    assert arch["network_class_name"] == NETWORK_CLASS
    assert arch["_kw_requires_import"] == ["conv_op", "norm_op", "dropout_op", "nonlin"]
    kw = arch["arch_kwargs"]
    assert kw["n_blocks_per_stage"] == [2, 2, 2, 2] and "n_conv_per_stage" not in kw
    assert kw["window_sizes"] == kw["pool_sizes"] == [[20, 28, 22], [20, 28, 22], [10, 14, 11], [5, 7, 11]]
    json.dumps(plans)  # JSON-safe
    # nnU-Net's own machinery resolves the inheritance
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(plans).get_configuration(name)
    assert cm.patch_size == [40, 56, 88] and cm.data_identifier == "nnUNetPlans_3d_fullres"
    assert cm.network_arch_class_name == NETWORK_CLASS


def test_nnunet_builds_and_runs_the_configured_network_with_deep_supervision():
    plans = nnunet_plans(patch=(16, 32, 32), strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), features=(8, 16, 32))
    name, _ = add_lkm_configuration(plans, "3d", windows="4x4x4,4x4x4,2x4x4", n_blocks_per_stage=[1])
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(plans).get_configuration(name)
    torch.manual_seed(0)
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 1, 3, allow_init=True,
                                 deep_supervision=True)
    from lkm_core.network import LKMUNet

    assert isinstance(net, LKMUNet)
    with torch.no_grad():
        out = net(torch.randn(1, 1, 16, 32, 32))
    assert [tuple(o.shape) for o in out] == [(1, 3, 16, 32, 32), (1, 3, 8, 16, 16)]  # one per decoder level
    net.decoder.deep_supervision = False  # what nnUNetTrainer.set_deep_supervision_enabled does
    with torch.no_grad():
        assert tuple(net(torch.randn(1, 1, 16, 32, 32)).shape) == (1, 3, 16, 32, 32)


def test_2d_configuration_and_overrides():
    plans = nnunet_plans()
    name, block = add_lkm_configuration(plans, "2d", n_stages=3, features_per_stage=[8, 16, 32],
                                        patch_size=[48, 64], batch_size=4, pim_partition="strided")
    assert name == "2d_lkm" and block["inherits_from"] == "2d"
    assert block["patch_size"] == [48, 64] and block["batch_size"] == 4
    kw = block["architecture"]["arch_kwargs"]
    assert kw["n_stages"] == 3 and len(kw["strides"]) == 3 and len(kw["n_conv_per_stage_decoder"]) == 2
    assert kw["window_sizes"] == [[24, 32], [12, 16], [12, 16]] and kw["pim_partition"] == "strided"


def test_bad_windows_and_patches_are_refused_with_a_reason():
    plans = nnunet_plans()
    with pytest.raises(InputError, match="does not divide"):
        add_lkm_configuration(plans, "3d", windows="20x28x24")
    with pytest.raises(InputError, match="not divisible"):
        add_lkm_configuration(plans, "3d", patch_size=[40, 56, 90])
    with pytest.raises(InputError, match="no configuration"):
        add_lkm_configuration({"configurations": {}}, "3d")


def test_plan_command_edits_the_plans_file_in_place(tmp_path, monkeypatch):
    folder = tmp_path / "Dataset901_LKMTiny"
    folder.mkdir()
    (folder / "nnUNetPlans.json").write_text(json.dumps(nnunet_plans()), encoding="utf-8")
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    from lkm_core.cli.root import main

    assert main(["plan", "901", "--stages", "3", "--windows", "10x14x11,10x14x11,5x7x11"]) == 0
    plans = json.loads((folder / "nnUNetPlans.json").read_text(encoding="utf-8"))
    assert set(plans["configurations"]) == {"2d", "3d_fullres", "3d_fullres_lkm"}
    assert plans["configurations"]["3d_fullres_lkm"]["architecture"]["arch_kwargs"]["n_stages"] == 3
    path, name, _ = plan_dataset("Dataset901_LKMTiny", "2d")
    assert name in json.loads(path.read_text(encoding="utf-8"))["configurations"]
    assert main(["plan", "999"]) != 0  # unknown dataset: one line on stderr, non-zero exit


# --- fine-tuning: bundle -> nnU-Net checkpoint + plans ------------------------------------------
def _tiny_bundle(tmp_path, labels=("liver", "spleen")):
    from lkm_core.bundle import write_bundle
    from lkm_core.network import build_network

    plans = nnunet_plans(patch=(16, 32, 32), strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), features=(8, 16, 32))
    _, block = add_lkm_configuration(plans, "3d", windows="4x4x4,4x4x4,2x4x4", n_blocks_per_stage=[1])
    kwargs = dict(block["architecture"]["arch_kwargs"], input_channels=1, num_classes=len(labels) + 1,
                  deep_supervision=False)
    meta = {"name": "tiny", "version": "1.0.0", "dimension": "3d", "input_channels": 1,
            "spacing": [2.5, 2.0, 2.0], "patch_size": [16, 32, 32], "transpose": [0, 2, 1],
            "normalization": [{"scheme": "ct", "clip": [-100.0, 200.0], "mean": 50.0, "std": 40.0}],
            "network": {"class": "LKMUNet", "kwargs": kwargs},
            "labels": [{"value": i + 1, "name": n} for i, n in enumerate(labels)]}
    torch.manual_seed(1)
    net = build_network(meta["network"])
    return write_bundle(tmp_path / "bundle", meta, {"fold_0": net.state_dict()}), net, plans


def test_bundle_becomes_pretrained_weights_and_fine_tuning_plans(tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from lkm_core.cli.root import main

    bundle, net, target = _tiny_bundle(tmp_path)
    target = deepcopy(target)
    del target["configurations"]["3d_fullres_lkm"]
    ds = tmp_path / "pre" / "Dataset902_Corrected"
    ds.mkdir(parents=True)
    (ds / "nnUNetPlans.json").write_text(json.dumps(target), encoding="utf-8")
    (ds / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2, "stomach": 3},
                                                 "channel_names": {"0": "CT"}, "numTraining": 2,
                                                 "file_ending": ".nii.gz"}))
    ckpt = tmp_path / "ft.pth"
    assert main(["bundle", "to-nnunet", str(bundle), "-o", str(ckpt), "--plans", str(ds)]) == 0
    plans = json.loads((ds / "nnUNetPlans_lkmft.json").read_text(encoding="utf-8"))
    cm = PlansManager(plans).get_configuration("3d_fullres_lkm")
    # the bundle's preprocessing, not the new dataset's
    assert cm.spacing == [2.5, 2.0, 2.0] and cm.patch_size == [16, 32, 32]
    assert plans["transpose_forward"] == [0, 2, 1] and plans["transpose_backward"] == [0, 2, 1]
    props = plans["foreground_intensity_properties_per_channel"]["0"]
    assert (props["percentile_00_5"], props["percentile_99_5"], props["mean"], props["std"]) == (-100, 200, 50, 40)
    assert cm.data_identifier == "nnUNetPlans_lkmft_3d_fullres_lkm"
    # a new label set: 4 outputs; everything but the heads comes from the bundle
    new = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 1, 4, deep_supervision=True)
    load_pretrained_weights(new, str(ckpt))
    ref = net.state_dict()
    for k, v in new.state_dict().items():
        if ".seg_layers." not in k:
            assert torch.equal(v, ref[k]), k


# --- import of the official code's results ----------------------------------------------------
def test_official_results_folder_becomes_a_bundle_that_computes_the_same(tmp_path):
    from official_layout import FEATURES, N_STAGES, STRIDES, OfficialLayout

    from lkm_core.bundle import load_bundle
    from lkm_core.cli.root import main
    from lkm_core.network import LKMUNet
    from lkm_core.network.official_keys import convert_official_state_dict, official_network_kwargs

    torch.manual_seed(0)
    official = OfficialLayout().state_dict()
    results = tmp_path / "nnUNetTrainerLKMUNet__nnUNetPlans__2d"
    (results / "fold_all").mkdir(parents=True)
    config = {  # nnU-Net 2.1.1 plans format (no architecture block)
        "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 12,
        "patch_size": [40, 40], "median_image_size_in_voxels": [40.0, 40.0], "spacing": [1.5, 1.5],
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "UNet_class_name": "PlainConvUNet", "UNet_base_num_features": FEATURES[0],
        "n_conv_per_stage_encoder": [2] * N_STAGES, "n_conv_per_stage_decoder": [2] * (N_STAGES - 1),
        "num_pool_per_axis": [3, 3], "pool_op_kernel_sizes": STRIDES, "conv_kernel_sizes": [[3, 3]] * N_STAGES,
        "unet_max_num_features": FEATURES[-1]}
    plans = {"dataset_name": "Dataset702_AbdomenMR", "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2], "configurations": {"2d": config},
             "foreground_intensity_properties_per_channel": {"0": {}}}
    (results / "plans.json").write_text(json.dumps(plans), encoding="utf-8")
    (results / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
        "numTraining": 60, "file_ending": ".nii.gz"}))
    torch.save({"network_weights": {"module." + k: v for k, v in official.items()},
                "trainer_name": "nnUNetTrainerLKMUNet", "init_args": {"configuration": "2d", "fold": "all"},
                "current_epoch": 1000, "inference_allowed_mirroring_axes": (0, 1)},
               results / "fold_all" / "checkpoint_final.pth")

    assert main(["bundle", "import-official", str(results), "-o", str(tmp_path / "b"), "--name", "mr"]) == 0
    bundle = load_bundle(tmp_path / "b")
    assert bundle.dimension == "2d" and bundle.modality == "MR" and bundle.folds == ["fold_all"]
    assert bundle.normalization[0]["scheme"] == "zscore"
    assert bundle.network_config["kwargs"]["pim_partition"] == "strided"
    imported = bundle.load_network()
    reference = LKMUNet(1, N_STAGES, FEATURES, torch.nn.Conv2d, 3, STRIDES, 2, 3, 2, conv_bias=True,
                        norm_op=torch.nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                        **official_network_kwargs(N_STAGES, 2)).eval()
    reference.load_state_dict(convert_official_state_dict(official))
    x = torch.randn(1, 1, 40, 40)
    with torch.no_grad():
        assert torch.allclose(imported(x), reference(x), atol=1e-5)
