"""nnU-Net's resampling and postprocessing steps as a bundle records them (model.json's
``resampling`` and ``postprocessing``), checked: what the predictor follows, and a one-line
ValueError for what it does not. Below the bundle, so that loading a bundle can refuse an
unknown step; the preprocessing carries the steps out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ANISOTROPY_THRESHOLD = 3.0  # nnU-Net's: above this spacing ratio, resample across slices apart


def separate_axis(current, new, threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The axis nnU-Net resamples apart (nearest neighbour across slices), or None: the low
    resolution axis of ``current`` if it is anisotropic, else of ``new``; none when two or
    three axes share the coarsest spacing."""
    for spacing in (current, new):
        spacing = np.asarray(spacing, dtype=float)
        if spacing.max() / spacing.min() > threshold:
            coarse = np.where(spacing.max() / spacing == 1)[0]
            return int(coarse[0]) if len(coarse) == 1 else None
    return None


KNOWN_RESAMPLING = ("resample_data_or_seg_to_shape", "resample_torch_fornnunet",
                    "no_resampling_hack")
# arguments that change nothing in the values (threads, device, memory strategy, seg flag)
_NEUTRAL_KWARGS = {"is_seg", "num_threads", "device", "memefficient_seg_resampling"}


@dataclass(frozen=True)
class ResampleStep:
    """One of nnU-Net's resampling calls: spline ``order`` (linear = 1), nearest neighbour
    across a separately resampled axis, chosen like determine_do_sep_z_and_axis."""
    resample: bool = True                 # False: no_resampling_hack
    order: int = 3
    force_separate_z: bool | None = None
    threshold: float = ANISOTROPY_THRESHOLD

    def separate_axis(self, current, new) -> int | None:
        if self.force_separate_z is None:
            return separate_axis(current, new, self.threshold)
        if not self.force_separate_z:
            return None
        spacing = np.asarray(current, dtype=float)
        coarse = np.where(spacing == spacing.max())[0]
        return int(coarse[0]) if len(coarse) == 1 else None


@dataclass(frozen=True)
class Resampling:
    """The plans' ``resampling_fn_data`` (input image) and ``resampling_fn_probabilities``
    (scores back to the input grid) with their kwargs; model.json's ``resampling`` holds them as
    nnU-Net names them: {"data": {"function": ..., "kwargs": {...}}, "probabilities": {...}}
    (absent: nnU-Net's defaults)."""
    data: ResampleStep = ResampleStep(order=3)
    probabilities: ResampleStep = ResampleStep(order=1)

    @classmethod
    def from_meta(cls, entry) -> "Resampling":
        """Raises ValueError (one line) for functions or arguments the predictor cannot follow."""
        entry = entry or {}
        data = _step(entry.get("data"), "data", (0, 1, 2, 3, 4, 5), 3)
        back = _step(entry.get("probabilities"), "probabilities", (0, 1), 1)
        if data.resample and not back.resample:
            raise ValueError("The plans resample the image but not the probabilities back "
                             "(no_resampling_hack): the scores would not fit the input's grid.")
        return cls(data, back)


def _step(spec, what: str, orders, default_order: int) -> ResampleStep:
    spec = spec or {}
    fn = spec.get("function", "resample_data_or_seg_to_shape")
    kwargs = dict(spec.get("kwargs") or {})
    where = f"resampling_fn_{what} {fn}"
    if fn not in KNOWN_RESAMPLING:
        raise ValueError(f"The plans' {where} is not one of nnU-Net's resampling functions that "
                         f"lkm_core follows ({', '.join(KNOWN_RESAMPLING)}).")
    if fn == "no_resampling_hack":
        if kwargs:
            raise ValueError(f"The plans' {where} takes no arguments, not {sorted(kwargs)}.")
        return ResampleStep(resample=False, order=default_order)
    force = kwargs.pop("force_separate_z", None)
    threshold = float(kwargs.pop("separate_z_anisotropy_threshold", ANISOTROPY_THRESHOLD))
    if force not in (None, True, False):
        raise ValueError(f"The plans' {where}: force_separate_z must be true, false or null.")
    if fn == "resample_torch_fornnunet":
        # torch's linear interpolation (align_corners=False) is the centre-aligned order-1
        # spline; 'nearest-exact' across the separate axis is the order-0 one
        mode, aniso = kwargs.pop("mode", "linear"), kwargs.pop("aniso_axis_mode", "nearest-exact")
        if mode != "linear" or aniso != "nearest-exact":
            raise ValueError(f"The plans' {where} with mode={mode!r}, aniso_axis_mode={aniso!r}: "
                             "lkm_core follows only mode 'linear' with 'nearest-exact'.")
        order = 1
    else:
        order = int(kwargs.pop("order", default_order))
        order_z = int(kwargs.pop("order_z", 0))
        if order not in orders:
            raise ValueError(f"The plans' {where} with order {order}: lkm_core follows orders "
                             f"{', '.join(map(str, orders))} here.")
        if order_z != 0:
            raise ValueError(f"The plans' {where} with order_z {order_z}: lkm_core follows only "
                             "nearest neighbour (order_z 0, nnU-Net's default) across slices.")
    unknown = sorted(set(kwargs) - _NEUTRAL_KWARGS)
    if unknown:
        raise ValueError(f"The plans' {where} has arguments lkm_core does not know: "
                         f"{', '.join(unknown)}.")
    return ResampleStep(True, order, force, threshold)


DEFAULT_RESAMPLING = Resampling()


# -- nnU-Net's postprocessing (nnUNetv2_find_best_configuration / apply_postprocessing) --
KNOWN_POSTPROCESSING = ("remove_all_but_largest_component_from_segmentation",)


def check_postprocessing(steps) -> list:
    """model.json's ``postprocessing`` (a list of {"function", "kwargs"} as nnU-Net's
    postprocessing.json names them) checked; ValueError (one line) for what is not followed."""
    out = []
    for step in steps or []:
        fn = step.get("function") if isinstance(step, dict) else None
        if fn not in KNOWN_POSTPROCESSING:
            raise ValueError(f"The postprocessing step {fn or step!r} is not one lkm_core follows "
                             f"({', '.join(KNOWN_POSTPROCESSING)}).")
        kwargs = dict(step.get("kwargs") or {})
        unknown = sorted(set(kwargs) - {"labels_or_regions", "background_label"})
        if unknown or "labels_or_regions" not in kwargs:
            raise ValueError(f"The postprocessing step {fn} needs labels_or_regions (and at most "
                             f"background_label), not {sorted(kwargs)}.")
        items = kwargs["labels_or_regions"]
        items = items if isinstance(items, list) else [items]
        regions = [tuple(int(v) for v in i) if isinstance(i, (list, tuple)) else (int(i),)
                   for i in items]
        out.append({"function": fn, "regions": regions,
                    "background_label": int(kwargs.get("background_label", 0))})
    return out
