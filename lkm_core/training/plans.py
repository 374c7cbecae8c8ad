"""Add LKM-UNet configurations to an nnU-Net v2 plans file.

nnU-Net v2 (>= 2.4) builds whatever network a configuration names: the plans carry, per
configuration, ``architecture = {network_class_name, arch_kwargs, _kw_requires_import}``; the
trainer locates the class by its import path (``pydoc.locate``), imports the keywords listed in
``_kw_requires_import`` the same way, and calls
``cls(input_channels=..., num_classes=..., deep_supervision=..., **arch_kwargs)``. A configuration
may ``inherits_from`` another one; the child's keys replace the parent's (a shallow update: the
``architecture`` block is replaced as a whole, everything else - spacing, patch size, data
identifier, normalisation - is inherited). So an LKM configuration is a small block next to
nnU-Net's own, it reuses nnU-Net's preprocessed data, and the stock ``nnUNetTrainer`` trains it.

Window sizes (PiM) and pooling sizes (PaM) are chosen per stage so that every window divides that
stage's feature map (patch size divided by the cumulative strides): the paper's setting where it
fits, otherwise per axis the largest divisor of the feature map that is not larger than the
paper's window for that stage.

Nothing here imports nnunetv2: planning only reads and writes JSON.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from copy import deepcopy
from pathlib import Path
from typing import Sequence

from ..errors import InputError

log = logging.getLogger(__name__)

NETWORK_CLASS = "lkm_core.network.LKMUNet"

# The paper's window (kernel) sizes per encoder stage (section 4.2).
PAPER_WINDOWS_3D = ((20, 28, 24), (20, 28, 24), (10, 14, 12), (10, 14, 12), (5, 7, 6), (5, 7, 6))
PAPER_WINDOWS_2D = (40, 20, 20, 10, 10, 5, 5)

BASE_CONFIG = {"3d": "3d_fullres", "2d": "2d"}
IMPORT_KEYS = ["conv_op", "norm_op", "dropout_op", "nonlin"]


# ---------------------------------------------------------------------------------------------
# window arithmetic
# ---------------------------------------------------------------------------------------------
def stage_feature_sizes(patch_size: Sequence[int], strides: Sequence[Sequence[int] | int]) -> list[list[int]]:
    """Feature map size of every encoder stage for a patch (strides as in the plans)."""
    dim = len(patch_size)
    size = [int(p) for p in patch_size]
    out = []
    for s in strides:
        s = [int(s)] * dim if isinstance(s, int) else [int(v) for v in s]
        if any(a % b for a, b in zip(size, s)):
            raise InputError(
                f"The patch size {list(patch_size)} is not divisible by the network's strides "
                f"{[list(x) if not isinstance(x, int) else x for x in strides]} (stage feature map {size}, "
                f"stride {s}). Choose a patch size divisible by the product of the strides.")
        size = [a // b for a, b in zip(size, s)]
        out.append(size)
    return out


def paper_targets(dim: int, n_stages: int) -> list[tuple[int, ...]]:
    """The paper's window for each stage (its last entry repeated for deeper networks)."""
    if dim == 3:
        table = [tuple(w) for w in PAPER_WINDOWS_3D]
    elif dim == 2:
        table = [(w, w) for w in PAPER_WINDOWS_2D]
    else:
        raise InputError(f"LKM-UNet supports 2D and 3D configurations, not {dim}D.")
    return [table[min(s, len(table) - 1)] for s in range(n_stages)]


def largest_divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of n that is <= limit (at least 1)."""
    limit = max(1, min(int(limit), int(n)))
    for d in range(limit, 0, -1):
        if n % d == 0:
            return d
    return 1


def choose_windows(feature_sizes: Sequence[Sequence[int]],
                   targets: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """Per stage and axis: the target window if it divides the feature map, else the largest
    divisor of the feature map not above the target (the whole axis when it is smaller)."""
    dim = len(feature_sizes[0])
    if targets is None:
        targets = paper_targets(dim, len(feature_sizes))
    return [[largest_divisor_at_most(f, t) for f, t in zip(fs, tg)]
            for fs, tg in zip(feature_sizes, targets)]


def parse_sizes(text: str | Sequence, n_stages: int, dim: int, what: str = "--windows") -> list[list[int]]:
    """Parse per-stage sizes: ``"20x28x24,20x28x24,10x14x12"`` or ``"40,20,20"`` (isotropic) or
    ``"8x8x8"`` (one entry: every stage). Also accepts a list of ints / lists."""
    if isinstance(text, str):
        items = [t for t in re.split(r"[,;\s]+", text.strip()) if t]
        try:
            entries = [[int(v) for v in item.lower().split("x")] for item in items]
        except ValueError:
            raise InputError(f"{what}: cannot read {text!r}; write one size per stage, e.g. "
                             "'20x28x24,20x28x24,10x14x12' (3D) or '40,20,20,10' (2D).") from None
    else:
        entries = [[int(v)] if isinstance(v, int) else [int(x) for x in v] for v in text]
    if len(entries) == 1:
        entries = entries * n_stages
    if len(entries) != n_stages:
        raise InputError(f"{what}: got {len(entries)} sizes for a network with {n_stages} stages; "
                         f"give one per stage (or a single one for all stages).")
    out = []
    for e in entries:
        if len(e) == 1:
            e = e * dim
        if len(e) != dim or any(v < 1 for v in e):
            raise InputError(f"{what}: {'x'.join(map(str, e))} is not a valid {dim}D size.")
        out.append(e)
    return out


def check_divides(feature_sizes, sizes, what: str) -> None:
    for s, (fs, w) in enumerate(zip(feature_sizes, sizes)):
        if any(f % v for f, v in zip(fs, w)):
            raise InputError(
                f"{what} {'x'.join(map(str, w))} of stage {s} does not divide that stage's feature map "
                f"{'x'.join(map(str, fs))}. Choose sizes that divide it (or leave the option out and "
                f"let the planner choose).")


# ---------------------------------------------------------------------------------------------
# plans
# ---------------------------------------------------------------------------------------------
def resolve_configuration(plans: dict, name: str) -> dict:
    """A configuration with its ``inherits_from`` chain resolved (as nnU-Net's PlansManager does)."""
    configs = plans.get("configurations", {})
    if name not in configs:
        raise InputError(f"The plans have no configuration {name!r} (they have: {', '.join(configs)}). "
                         "Run nnUNetv2_plan_and_preprocess with that configuration first.")
    seen = []
    chain = []
    while name is not None:
        if name in seen:
            raise InputError(f"Circular 'inherits_from' in the plans: {' -> '.join(seen + [name])}")
        seen.append(name)
        chain.append(configs[name])
        name = configs[name].get("inherits_from")
        if name is not None and name not in configs:
            raise InputError(f"Configuration {seen[-1]!r} inherits from {name!r}, which the plans lack.")
    out: dict = {}
    for c in reversed(chain):
        out.update(deepcopy(c))
    out.pop("inherits_from", None)
    return out


def _as_list(v, n):
    if isinstance(v, (list, tuple)):
        return list(v) * n if len(v) == 1 and n > 1 else list(v)
    return [v] * n


def lkm_architecture(base_config: dict, *, windows=None, pools=None, patch_size=None, n_stages=None,
                     features_per_stage=None, n_blocks_per_stage=None, pim_partition: str = "window",
                     use_pim: bool = True, use_pam: bool = True, bidirectional: bool = True) -> tuple[dict, list[int]]:
    """Build the ``architecture`` block for LKM-UNet from a resolved nnU-Net configuration.

    Returns (architecture, patch_size)."""
    arch = base_config.get("architecture")
    if not arch or "arch_kwargs" not in arch:
        raise InputError("The base configuration has no 'architecture' block: these plans come from "
                         "nnU-Net older than 2.4. Rerun nnUNetv2_plan_and_preprocess with nnunetv2 >= 2.4.")
    kw = deepcopy(arch["arch_kwargs"])
    # PlainConvUNet plans count convolutions per stage, ResidualEncoderUNet plans count residual
    # blocks; LKM-UNet has a residual encoder and (like the official code) takes the count as blocks.
    if "n_blocks_per_stage" not in kw:
        if "n_conv_per_stage" not in kw:
            raise InputError("The base configuration names neither n_conv_per_stage nor n_blocks_per_stage.")
        kw["n_blocks_per_stage"] = kw.pop("n_conv_per_stage")
    kw.pop("n_conv_per_stage", None)
    for k in ("block", "bottleneck_channels", "stem_channels"):  # ResEnc extras LKM-UNet does not take
        kw.pop(k, None)

    n = int(kw["n_stages"])
    for key in ("features_per_stage", "kernel_sizes", "strides", "n_blocks_per_stage"):
        kw[key] = _as_list(kw[key], n)
    kw["n_conv_per_stage_decoder"] = _as_list(kw["n_conv_per_stage_decoder"], n - 1)

    if n_stages is not None:
        n_stages = int(n_stages)
        if not 2 <= n_stages <= n:
            raise InputError(f"--stages must lie between 2 and the plan's {n} stages, not {n_stages}.")
        for key in ("features_per_stage", "kernel_sizes", "strides", "n_blocks_per_stage"):
            kw[key] = kw[key][:n_stages]
        kw["n_conv_per_stage_decoder"] = kw["n_conv_per_stage_decoder"][:n_stages - 1]
        kw["n_stages"] = n = n_stages
    if features_per_stage is not None:
        kw["features_per_stage"] = [int(f) for f in _as_list(features_per_stage, n)]
        if len(kw["features_per_stage"]) != n:
            raise InputError(f"--features: give {n} values (one per stage), not {len(kw['features_per_stage'])}.")
    if n_blocks_per_stage is not None:
        kw["n_blocks_per_stage"] = [int(b) for b in _as_list(n_blocks_per_stage, n)]
        if len(kw["n_blocks_per_stage"]) != n:
            raise InputError(f"--blocks: give {n} values (one per stage).")

    patch = [int(p) for p in (patch_size if patch_size is not None else base_config["patch_size"])]
    dim = len(patch)
    if dim not in (2, 3):
        raise InputError(f"LKM-UNet supports 2D and 3D configurations, not a {dim}D patch.")
    sizes = stage_feature_sizes(patch, kw["strides"])
    if windows is None:
        win = choose_windows(sizes)
    else:
        win = parse_sizes(windows, n, dim, "window")
        check_divides(sizes, win, "The window")
    if pools is None:
        pool = [list(w) for w in win]
    else:
        pool = parse_sizes(pools, n, dim, "pool size")
        check_divides(sizes, pool, "The pooling size")
    if pim_partition not in ("window", "strided"):
        raise InputError(f"pim_partition must be 'window' or 'strided', not {pim_partition!r}.")

    kw.update(window_sizes=win, pool_sizes=pool, pim_partition=pim_partition,
              use_pim=bool(use_pim), use_pam=bool(use_pam), bidirectional=bool(bidirectional))
    requires = [k for k in arch.get("_kw_requires_import", IMPORT_KEYS) if k in kw]
    return {"network_class_name": NETWORK_CLASS, "arch_kwargs": kw, "_kw_requires_import": requires}, patch


def add_lkm_configuration(plans: dict, config: str = "3d", *, base: str | None = None, name: str | None = None,
                          batch_size: int | None = None, **arch_options) -> tuple[str, dict]:
    """Add (or replace) an LKM-UNet configuration in ``plans`` (modified in place).

    ``config`` is "3d" (base 3d_fullres) or "2d" (base 2d); ``base`` overrides the base
    configuration (e.g. 3d_lowres). Returns (name, the new configuration block)."""
    if base is None:
        if config not in BASE_CONFIG:
            raise InputError(f"--config must be one of {', '.join(BASE_CONFIG)}, not {config!r}.")
        base = BASE_CONFIG[config]
    if name is None:
        name = f"{base}_lkm"
    if name == base:
        raise InputError("The LKM configuration needs a name of its own (not the base configuration's).")
    resolved = resolve_configuration(plans, base)
    architecture, patch = lkm_architecture(resolved, **arch_options)
    block = {"inherits_from": base, "architecture": architecture}
    if list(patch) != list(resolved["patch_size"]):
        block["patch_size"] = patch
    if batch_size is not None:
        if int(batch_size) < 1:
            raise InputError("--batch-size must be at least 1.")
        block["batch_size"] = int(batch_size)
    plans.setdefault("configurations", {})[name] = block
    return name, block


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def find_plans_file(dataset: str | os.PathLike, plans_identifier: str = "nnUNetPlans",
                    preprocessed: str | os.PathLike | None = None) -> Path:
    """DATASET may be a plans .json, a preprocessed dataset folder, a dataset id (``5``, ``005``)
    or a dataset name (``Dataset005_Abdomen``) looked up in $nnUNet_preprocessed."""
    p = Path(dataset)
    if p.suffix == ".json" and p.is_file():
        return p
    if p.is_dir():
        cand = p / f"{plans_identifier}.json"
        if cand.is_file():
            return cand
        raise InputError(f"{cand} does not exist. Run nnUNetv2_plan_and_preprocess for this dataset first.")
    root = preprocessed or os.environ.get("nnUNet_preprocessed")
    if not root:
        raise InputError(f"Cannot find dataset {dataset!s}: $nnUNet_preprocessed is not set. Set it (as for "
                         "nnU-Net) or give the path of the preprocessed dataset folder or its plans .json.")
    root = Path(root)
    text = str(dataset)
    if text.isdigit():
        matches = sorted(root.glob(f"Dataset{int(text):03d}_*"))
    else:
        matches = [root / text] if (root / text).is_dir() else []
    if not matches:
        raise InputError(f"No preprocessed dataset {text!r} in {root}. Run nnUNetv2_plan_and_preprocess first.")
    if len(matches) > 1:
        raise InputError(f"Several datasets match {text!r} in {root}: {', '.join(m.name for m in matches)}.")
    cand = matches[0] / f"{plans_identifier}.json"
    if not cand.is_file():
        raise InputError(f"{cand} does not exist. Run nnUNetv2_plan_and_preprocess (with -pl for other "
                         "planners) for this dataset first.")
    return cand


def plan_dataset(dataset, config: str = "3d", *, plans_identifier: str = "nnUNetPlans",
                 preprocessed=None, **options) -> tuple[Path, str, dict]:
    """Read the plans, add the LKM configuration, write them back. Returns (file, name, block)."""
    path = find_plans_file(dataset, plans_identifier, preprocessed)
    try:
        plans = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"Cannot read the plans {path}: {e}") from e
    name, block = add_lkm_configuration(plans, config, **options)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(plans, indent=4), encoding="utf-8")
    os.replace(tmp, path)
    log.info("Added configuration %s to %s", name, path)
    return path, name, block


def describe(block: dict, patch_size: Sequence[int]) -> str:
    """Human-readable summary of an LKM configuration block (patch size: the resolved one)."""
    kw = block["architecture"]["arch_kwargs"]
    sizes = stage_feature_sizes(patch_size, kw["strides"])
    x = lambda v: "x".join(map(str, v))  # noqa: E731
    lines = [f"  patch {x(patch_size)}, stages {kw['n_stages']}, features {kw['features_per_stage']}, "
             f"blocks {kw['n_blocks_per_stage']}, PiM partition {kw['pim_partition']}"]
    for s, (f, w, p) in enumerate(zip(sizes, kw["window_sizes"], kw["pool_sizes"])):
        lines.append(f"  stage {s}: feature map {x(f)}, window {x(w)} ({math.prod(w)} tokens), "
                     f"pool {x(p)} ({math.prod(a // b for a, b in zip(f, p))} patch tokens)")
    return "\n".join(lines)
