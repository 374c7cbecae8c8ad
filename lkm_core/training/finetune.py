"""Bundle -> what nnU-Net needs to fine-tune it.

``nnUNetv2_train ... -pretrained_weights FILE`` reads ``torch.load(FILE)['network_weights']`` and
copies every tensor whose name and shape match, except the segmentation heads (``.seg_layers.``),
so the label set may change. It requires the network of the new configuration to have the same
architecture. Fine-tuning also has to see the images exactly as the model did: same spacing,
transpose and intensity normalisation (CT: the *original* dataset's clip values, mean and std).

So :func:`bundle_to_checkpoint` writes the weights in checkpoint form and, given the new
dataset's plans (``nnUNetv2_plan_and_preprocess -d NEW --no_pp`` makes them), writes a separate
plans file (default identifier ``nnUNetPlans_lkmft``) whose LKM configuration carries the
bundle's network, spacing, patch size, transpose and normalisation statistics, with a data
identifier of its own. Then::

    nnUNetv2_preprocess -d NEW -plans_name nnUNetPlans_lkmft -c 3d_fullres_lkm
    nnUNetv2_train NEW 3d_fullres_lkm 0 -p nnUNetPlans_lkmft -pretrained_weights ft.pth
    lkm-segment bundle export $nnUNet_results/DatasetNEW/nnUNetTrainer__nnUNetPlans_lkmft__3d_fullres_lkm \
        -o new_bundle --version 1.1.0 --parent NAME@VERSION
"""

from __future__ import annotations

import json
import logging
import os
from copy import deepcopy
from pathlib import Path

from ..errors import InputError, ModelError
from .plans import BASE_CONFIG, IMPORT_KEYS, NETWORK_CLASS, find_plans_file, resolve_configuration

log = logging.getLogger(__name__)

FT_PLANS = "nnUNetPlans_lkmft"
_SCHEME_TO_NNUNET = {"ct": "CTNormalization", "zscore": "ZScoreNormalization", "none": "NoNormalization"}
_NOT_ARCH_KWARGS = ("input_channels", "num_classes", "deep_supervision")


def checkpoint_dict(state_dict: dict, **extra) -> dict:
    """The minimal checkpoint nnU-Net's load_pretrained_weights reads."""
    return {"network_weights": dict(state_dict), **extra}


def plans_from_bundle(target_plans: dict, bundle, name: str | None = None,
                      plans_name: str = FT_PLANS) -> tuple[dict, str]:
    """A copy of ``target_plans`` (the new dataset's, from nnU-Net's planner) with a standalone
    configuration reproducing the bundle's network and preprocessing. Returns (plans, name)."""
    meta = bundle.meta
    dim = meta["dimension"]
    base_name = BASE_CONFIG[dim]
    name = name or f"{base_name}_lkm"
    if meta["network"].get("class") != "LKMUNet":
        raise ModelError(f"The bundle's network is {meta['network'].get('class')!r}, not LKMUNet.")
    base = resolve_configuration(target_plans, base_name)
    norm = bundle.normalization
    if len(norm) != len(base["normalization_schemes"]):
        raise InputError(f"The bundle takes {len(norm)} channel(s), the new dataset has "
                         f"{len(base['normalization_schemes'])}.")

    kwargs = {k: v for k, v in meta["network"]["kwargs"].items() if k not in _NOT_ARCH_KWARGS}
    for key in IMPORT_KEYS:  # nnU-Net imports these by dotted path; bundles may say "Conv3d"
        if isinstance(kwargs.get(key), str) and "." not in kwargs[key]:
            kwargs[key] = f"torch.nn.{kwargs[key]}"
    config = deepcopy(base)
    config.update({
        "data_identifier": f"{plans_name}_{name}",
        "patch_size": [int(p) for p in meta["patch_size"]],
        "spacing": [float(s) for s in meta["spacing"]],
        "normalization_schemes": [_SCHEME_TO_NNUNET[n["scheme"]] for n in norm],
        "use_mask_for_norm": [bool(n.get("use_mask", False)) for n in norm],
        "architecture": {"network_class_name": NETWORK_CLASS, "arch_kwargs": kwargs,
                         "_kw_requires_import": [k for k in IMPORT_KEYS if k in kwargs]},
    })
    plans = deepcopy(target_plans)
    plans["plans_name"] = plans_name
    transpose = [int(t) for t in meta["transpose"]]
    plans["transpose_forward"] = transpose
    plans["transpose_backward"] = [transpose.index(i) for i in range(len(transpose))]
    props = deepcopy(plans.get("foreground_intensity_properties_per_channel", {}))
    for i, n in enumerate(norm):
        if n["scheme"] == "ct":
            entry = props.get(str(i), {})
            entry.update({"percentile_00_5": float(n["clip"][0]), "percentile_99_5": float(n["clip"][1]),
                          "mean": float(n["mean"]), "std": float(n["std"])})
            props[str(i)] = entry
    plans["foreground_intensity_properties_per_channel"] = props
    plans["configurations"] = {name: config}
    plans["lkm_source_bundle"] = {"name": bundle.name, "version": bundle.version}
    return plans, name


def bundle_to_checkpoint(bundle_path, output, *, fold: str | None = None, plans=None, name: str | None = None,
                         plans_name: str = FT_PLANS) -> tuple[Path, tuple | None]:
    """Write one fold's weights as an nnU-Net checkpoint; with ``plans`` (the new dataset: id,
    name, folder or plans .json) also write the fine-tuning plans next to them.
    Returns (checkpoint path, (plans file, configuration name) or None)."""
    import torch

    from ..bundle import load_bundle

    bundle = load_bundle(bundle_path)
    fold = fold or bundle.folds[0]
    if not str(fold).startswith("fold_") and f"fold_{fold}" in bundle.folds:
        fold = f"fold_{fold}"
    state = bundle.load_state_dict(fold)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint_dict(state, source_bundle={"name": bundle.name, "version": bundle.version,
                                                      "fold": fold}), str(output))
    if plans is None:
        return output, None
    target_file = find_plans_file(plans)
    target = json.loads(target_file.read_text(encoding="utf-8"))
    new_plans, config_name = plans_from_bundle(target, bundle, name, plans_name)
    _warn_label_mismatch(bundle, target_file.parent / "dataset.json")
    out_file = target_file.parent / f"{plans_name}.json"
    tmp = out_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(new_plans, indent=4), encoding="utf-8")
    os.replace(tmp, out_file)
    return output, (out_file, config_name)


def _warn_label_mismatch(bundle, dataset_json_path: Path) -> None:
    try:
        labels = json.loads(dataset_json_path.read_text(encoding="utf-8"))["labels"]
    except (OSError, ValueError, KeyError):
        return
    new = {int(v): k for k, v in labels.items() if not isinstance(v, list) and int(v) > 0 and k != "ignore"}
    old = {lab.value: lab.name for lab in bundle.labels}
    if new != old:
        log.warning("The new dataset's labels %s differ from the bundle's %s: the segmentation heads "
                    "start from scratch (nnU-Net skips .seg_layers. when loading pretrained weights).",
                    new, old)
