"""Import a model trained with the official LKM-UNet code (github wjh892521292/LKM-UNet).

The official code is a fork of nnU-Net 2.1.1 with the trainer ``nnUNetTrainerLKMUNet``; its
results folder looks like nnU-Net's (plans.json in the pre-2.4 format without an
``architecture`` block, dataset.json, fold_*/checkpoint_final.pth). Its network is rebuilt here
from the plans the way the fork's ``get_lkmunet_from_plans`` does (features
``min(UNet_base_num_features * 2**s, unet_max_num_features)``, ``n_conv_per_stage_encoder`` residual
blocks per stage, InstanceNorm, LeakyReLU, conv bias), with the *strided* PiM partition and the
official per-stage strides and pooling factors (:func:`lkm_core.network.official_keys.official_network_kwargs`).

The official layers fall back to one global sequence over the whole feature map when a stage's
map is not divisible by their stride or pooling factor. Sliding-window inference always feeds the
plan's patch size, so whether a stage falls back is fixed by the plans; those stages get stride 1
(strided partition with stride 1 = the whole map in raster order) or pooling 1 here, which is
exactly what the official code computes (and as costly).

Weights: :func:`lkm_core.network.official_keys.convert_official_state_dict` renames the Mamba
parts and drops duplicates.
"""

from __future__ import annotations

import datetime as _dt
import logging
from copy import deepcopy
from pathlib import Path

from ..errors import InputError
from .bundle_export import _read_json, bundle_meta, read_folds, save_bundle
from .plans import IMPORT_KEYS, NETWORK_CLASS, resolve_configuration, stage_feature_sizes

log = logging.getLogger(__name__)


def official_architecture(config: dict) -> dict:
    """The ``architecture`` block (LKMUNet, strided) for a resolved official configuration."""
    from ..network.official_keys import official_network_kwargs

    if "architecture" in config and "arch_kwargs" in config["architecture"]:
        kw = deepcopy(config["architecture"]["arch_kwargs"])
        if "n_blocks_per_stage" not in kw:
            kw["n_blocks_per_stage"] = kw.pop("n_conv_per_stage")
        n = int(kw["n_stages"])
        dim = len(kw["kernel_sizes"][0])
    else:
        try:
            kernels = config["conv_kernel_sizes"]
            n = len(kernels)
            dim = len(kernels[0])
            base, cap = int(config["UNet_base_num_features"]), int(config["unet_max_num_features"])
            conv = "Conv3d" if dim == 3 else "Conv2d"
            kw = {
                "n_stages": n,
                "features_per_stage": [min(base * 2 ** s, cap) for s in range(n)],
                "conv_op": f"torch.nn.modules.conv.{conv}",
                "kernel_sizes": kernels,
                "strides": config["pool_op_kernel_sizes"],
                "n_blocks_per_stage": config["n_conv_per_stage_encoder"],
                "n_conv_per_stage_decoder": config["n_conv_per_stage_decoder"],
                "conv_bias": True,
                "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
            }
        except KeyError as exc:
            raise InputError(f"The official plans lack {exc}; is this a results folder of the official "
                             "LKM-UNet code (nnU-Net 2.1.1 fork)?") from None
    lkm = official_network_kwargs(n, dim)
    sizes = stage_feature_sizes(config["patch_size"], kw["strides"])
    for s, fs in enumerate(sizes):
        if any(f % w for f, w in zip(fs, lkm["window_sizes"][s])):
            log.warning("Stage %d (%s): the official code uses one global PiM sequence here", s, fs)
            lkm["window_sizes"][s] = [1] * dim
        if any(f % p for f, p in zip(fs, lkm["pool_sizes"][s])):
            lkm["pool_sizes"][s] = [1] * dim
    kw.update(lkm, use_pim=True, use_pam=True, bidirectional=True)
    return {"network_class_name": NETWORK_CLASS, "arch_kwargs": kw,
            "_kw_requires_import": [k for k in IMPORT_KEYS if k in kw]}


def import_official(results, output, *, folds=None, checkpoint_name: str = "checkpoint_final.pth",
                    name: str | None = None, version: str = "1.0.0", licence: str | None = None,
                    data: str | None = None, trust_checkpoint: bool = False,
                    orientation="auto") -> Path:
    """Official results folder -> bundle (folder, or .zip when ``output`` ends with .zip);
    ``orientation`` as in :func:`lkm_core.training.bundle_export.bundle_meta`."""
    from ..network.official_keys import convert_official_state_dict

    results = Path(results)
    if not results.is_dir():
        raise InputError(f"{results} is not a folder; give the official code's results folder "
                         "(nnUNetTrainerLKMUNet__nnUNetPlans__CONFIGURATION).")
    plans = _read_json(results / "plans.json")
    dataset_json = _read_json(results / "dataset.json")
    fp = results / "dataset_fingerprint.json"
    fingerprint = _read_json(fp) if fp.is_file() else None

    found = read_folds(results, folds, checkpoint_name, trust_checkpoint, convert_official_state_dict)
    weights, epochs, trainer = found["weights"], found["epochs"], found["trainer"]
    configuration, mirror = found["configuration"], found["mirror_axes"]
    parts = results.name.split("__")
    configuration = configuration or (parts[2] if len(parts) == 3 else None)
    if configuration is None:
        raise InputError(f"Cannot tell the configuration of {results}; name the folder "
                         "Trainer__Plans__Configuration as nnU-Net does.")
    if trainer and "LKM" not in trainer:
        log.warning("The checkpoints were written by %s, not nnUNetTrainerLKMUNet", trainer)

    config = resolve_configuration(plans, configuration)
    config["architecture"] = official_architecture(config)
    plans = deepcopy(plans)
    plans["configurations"] = {configuration: config}
    provenance = {
        "data": data or f"{plans.get('dataset_name')} ({dataset_json.get('numTraining', '?')} training cases)",
        "trainer": f"{trainer or 'nnUNetTrainerLKMUNet'} (official LKM-UNet code, nnU-Net 2.1.1 fork)",
        "configuration": configuration,
        "epochs": epochs,
        "date": _dt.date.today().isoformat(),
        "source": results.name,
        "note": "imported with lkm-segment bundle import-official (strided PiM as in the official code)",
    }
    meta = bundle_meta(plans, dataset_json, fingerprint, configuration, name=name, version=version,
                       description=f"LKM-UNet ({configuration}) trained with the official code on "
                                   f"{plans.get('dataset_name', 'its dataset')}",
                       licence=licence, provenance=provenance, mirror_axes=mirror,
                       orientation=orientation)
    return save_bundle(output, meta, weights)
