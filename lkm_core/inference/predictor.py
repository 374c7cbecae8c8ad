"""The predictor: one image in, a label image on the input's exact grid out.

    predictor = Predictor(load_bundle("model.zip"), device="auto", quick=True)
    result = predictor.predict_file("ct.nii.gz")      # result.labels: SimpleITK image

Device "auto" takes CUDA when torch sees a GPU, else the CPU. On the GPU convolutions run under
autocast (the network keeps its Mamba layers in fp32); on CUDA out-of-memory the predictor halves
the batch, then keeps the results on the CPU, then runs on the CPU, and logs a warning each time.
Quick mode runs at the bundle's ``quick_spacing`` (3 mm by default) and takes the nearest
network voxel's label; a full run brings the class scores back where labels meet, as nnU-Net's
linear resampling of the scores would (see :mod:`lkm_core.inference.preprocessing`). A subset of
structures keeps only those labels (the network still sees every class, so boundaries match a
full run). ``keep_scores=True`` keeps the normalised class scores on the network grid in
``Result.scores`` (``NetworkScores.probabilities()`` gives the softmax). How sure the model is
comes from the same scores, with no second pass (:mod:`lkm_core.inference.confidence`): per structure in
``Result.confidence`` (``confidence=True``, the default), and as a voxel map on the input grid in
``Result.confidence_map`` (``confidence_map=True``).
Test-time mirroring (``tta``) follows the checkpoint exactly (:func:`mirror_axes_for`); the
plans' resampling and nnU-Net's postprocessing come from the bundle (``Bundle.resampling``,
``Bundle.postprocessing``); ``probabilities=True`` gives nnU-Net's saved probabilities on the
input grid in ``Result.probabilities``.
Progress goes to ``progress(event_dict)``; ``cancel`` (a threading.Event or a callable returning
True) stops the run between patches with :class:`~lkm_core.errors.Cancelled`.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..bundle import NO_ORIENTATION_WARNING, TILINGS, Bundle
from ..ssm.backend import backend_report, reset_backends_used
from ..errors import Cancelled, InputError, ResourceError
from ..inputs import images as lkm_io
from .preprocessing import (Prepared, postprocess_labels, prepare, probabilities_on_input_grid,
                            resolve_crop, to_input_grid)
from .sliding_window import (DeviceOutOfMemory, pad_to_patch, plan_patch, scores_to_labels,
                             sliding_window_passes, tiled_voxels)

log = logging.getLogger(__name__)



@dataclass
class Result:
    case: str
    labels: sitk.Image                 # on the input grid, uint8/uint16
    label_list: list                   # bundle Labels present in the output (subset applied)
    device: str
    timings: dict = field(default_factory=dict)
    network_shape: tuple = ()
    network_spacing: tuple = ()
    scores: "NetworkScores | None" = None   # with Predictor(keep_scores=True)
    confidence: dict | None = None          # {"case_score", "structures"}: confidence=True
    confidence_map: sitk.Image | None = None  # uint8 0-100 on the input grid: confidence_map=True
    scan_backend: str = ""                  # which selective scan ran ("numba", "torch", ...)
    probabilities: np.ndarray | None = None  # (classes, *input array shape): probabilities=True
    tiling: dict = field(default_factory=dict)  # which tiling ran, its patch, the work ratio
    precision: str = "fp32"                 # what the convolutions ran in: fp32, bf16, fp16


@dataclass
class NetworkScores:
    """Normalised class scores (classes, *network shape; transposed axes) and the geometry that
    places them: ``prepared.grid`` (untransposed network grid) and ``prepared.transpose``."""
    scores: torch.Tensor
    prepared: Prepared

    def probabilities(self) -> torch.Tensor:
        return torch.softmax(self.scores, 0)


@dataclass
class Loaded:
    """One case between the predictor's stages: read and preprocessed (``Predictor.load_*``),
    then with the network's scores (``Predictor.infer``)."""
    case: str
    image: sitk.Image                  # the validated input (float32, 3D)
    prepared: Prepared                 # the network input and the geometry to go back
    two_d_input: bool
    timings: dict
    scores: torch.Tensor | None = None
    disagreement: torch.Tensor | None = None  # per voxel, 0-1: with more than one pass only
    device: object = None
    network_shape: tuple = ()
    scan_backend: str = ""
    tiling: dict = field(default_factory=dict)  # which tiling ran, its patch, the work ratio
    precision: str = "fp32"


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is an error."""
    device = (device or "auto").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build of PyTorch" if torch.version.cuda is None else \
                f"PyTorch built for CUDA {torch.version.cuda}, but no usable GPU/driver was found"
            raise ResourceError(f"The GPU was requested (--device {device}) but this is {build}. "
                                "Use --device cpu, or install a CUDA build of PyTorch that "
                                "matches the NVIDIA driver.")
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise InputError(f"Unknown device {device!r}: use auto, cpu or cuda.")


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))


def resolve_subset(bundle: Bundle, subset: Sequence[str] | None) -> list:
    """Bundle labels for the requested names (all when subset is empty)."""
    if not subset:
        return list(bundle.labels)
    chosen, unknown = [], []
    for name in subset:
        lab = bundle.label_by_name(name)
        (chosen if lab else unknown).append(lab or name)
    if unknown:
        raise InputError(f"Unknown structure name(s) in --subset: {', '.join(unknown)}. The model "
                         f"{bundle.name} knows: {', '.join(lab.name for lab in bundle.labels)}.")
    return sorted({lab.value: lab for lab in chosen}.values(), key=lambda lab: lab.value)


def _postprocessed(label_image: sitk.Image, steps: list) -> sitk.Image:
    array = postprocess_labels(sitk.GetArrayFromImage(label_image), steps)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(label_image)
    return out


def mirror_axes_for(bundle: Bundle, tta: bool | None) -> tuple:
    """The axes test-time augmentation mirrors: exactly those the checkpoint recorded
    (``inference.mirror_axes``), never more. A model trained without mirroring has not learnt
    that left and right look alike, so mirroring it blends left and right organs.

    ``tta`` None: the recorded axes, nothing where none are recorded (nnUNetv2_predict's
    default); True: the recorded axes, refused where there are none; False: no mirroring."""
    if tta is False:
        return ()
    recorded = bundle.inference_defaults.get("mirror_axes")
    n_axes = 3 if bundle.dimension == "3d" else 2
    if recorded is None or not list(recorded):
        if tta:
            why = ("was trained without mirroring" if recorded is not None
                   else "records no mirror axes")
            raise InputError(f"Test-time mirroring (--tta) is refused: the model {bundle.name} "
                             f"{why}, and mirroring an axis it did not learn would blend left and "
                             "right structures. Run without --tta.")
        return ()
    axes = tuple(int(a) for a in recorded)
    if any(not 0 <= a < n_axes for a in axes) or len(set(axes)) != len(axes):
        raise InputError(f"The model {bundle.name} records mirror axes {list(axes)}, not distinct "
                         f"axes of a {bundle.dimension} model; re-export it.")
    return axes


def resolve_folds(bundle: Bundle, folds: Sequence | None) -> list:
    """The bundle's folds to average: all by default; ``folds`` as nnU-Net names them
    (0, "0" or "fold_0"; "all" is nnU-Net's fold_all)."""
    if not folds:
        return list(bundle.folds)
    chosen = []
    for fold in folds:
        name = str(fold).strip()
        name = name if name.startswith("fold_") else f"fold_{name}"
        if name not in bundle.folds:
            raise InputError(f"The model {bundle.name} has no fold {fold!r}; it has "
                             f"{', '.join(bundle.folds)}.")
        if name not in chosen:
            chosen.append(name)
    return chosen


PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# bf16 logits of the self-check may differ from fp32 by this much (relative L2): bf16 rounding
# through the network gives about 1 %; a wrong oneDNN kernel gives order 1
BF16_TOLERANCE = 0.1


def cpu_supports_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU has bf16 dot-product units (AVX512-BF16 or AMX-BF16). Read from the
    kernel's CPU flags; where there are none (not Linux), no: bf16 is then only on request."""
    try:
        flags = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def autocast_dtype(precision: str, device: torch.device,
                   proven_cpu_precision: str = "fp32") -> torch.dtype | None:
    """The autocast dtype for the convolutions: fp16 on GPUs (unless fp32 or bf16 is asked for).
    On CPUs, "auto" runs bf16 only where the model records it as keeping its labels and paying
    (``proven_cpu_precision``, the bundle's ``inference.cpu_precision``, which ``lkm-segment
    bundle speedups`` measures) and the CPU has bf16 units; else fp32. Both depend on the
    model: the default model kept Dice >= 0.992 but took 0.94-0.99x the time, so it records
    fp32."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "bf16":
        if not cpu_supports_bf16():
            log.warning("bf16 was asked for, but this CPU has no bf16 units (AVX512-BF16/AMX): "
                        "expect it to be slower than fp32.")
        return torch.bfloat16
    if proven_cpu_precision == "bf16" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def low_precision_agrees(network: Callable, sample: torch.Tensor, device: torch.device,
                         dtype: torch.dtype, tolerance: float = BF16_TOLERANCE) -> bool:
    """Whether ``network`` gives about the same logits on ``sample`` under autocast to ``dtype``
    as in fp32: guards against wrong low-precision kernels (oneDNN has had wrong bf16 Conv3d
    results on some shapes)."""
    def logits(**autocast):
        with torch.inference_mode(), torch.autocast(device.type, **autocast):
            y = network(sample.to(device))
        return (y[0] if isinstance(y, (list, tuple)) else y).float()

    exact, low = logits(enabled=False), logits(dtype=dtype)
    if not torch.isfinite(low).all():
        return False
    error = float((low - exact).norm() / exact.norm().clamp_min(1e-12))
    log.debug("%s self-check: relative error %.4f of the logits", dtype, error)
    return error <= tolerance


def resolve_tiling(tiling: str = "auto", recorded: str = "nnunet") -> str:
    """'auto' -> what the model records (``recorded``, Bundle.tiling): nnU-Net's exact tiling
    unless "fit" was shown to keep its labels (on the default model a patch grown along one
    axis moved Dice to 0.76)."""
    tiling = (tiling or "auto").lower()
    if tiling == "auto":
        return recorded
    if tiling not in TILINGS:
        raise InputError(f"Unknown tiling {tiling!r}: use auto, {' or '.join(TILINGS)}.")
    return tiling


class Predictor:
    def __init__(self, bundle: Bundle, *, device: str = "auto", threads: int | None = None,
                 quick: bool = False, tta: bool | None = False, step: float | None = None,
                 batch_size: int | None = None, subset: Sequence[str] | None = None,
                 folds: Sequence[str] | None = None, networks: Sequence[Callable] | None = None,
                 progress: Callable[[dict], None] | None = None, cancel=None,
                 tiling: str = "auto", precision: str = "auto", crop: str = "auto",
                 keep_scores: bool = False,
                 confidence: bool = True, confidence_map: bool = False,
                 probabilities: bool = False, postprocessing: bool = True):
        self.bundle = bundle
        set_threads(threads)
        self.device = resolve_device(device)
        self.quick = quick
        self.tiling = resolve_tiling(tiling, bundle.tiling)
        self.crop = resolve_crop(crop, bundle.normalization, bundle.crop)
        if (precision or "auto").lower() not in PRECISIONS:
            raise InputError(f"Unknown precision {precision!r}: use {', '.join(PRECISIONS)}.")
        self.precision = precision.lower()
        self._checked_dtypes = {}  # (device type, autocast dtype) -> the dtype that passed
        self.keep_scores = keep_scores
        self.confidence = confidence or confidence_map
        self.confidence_map = confidence_map
        self.probabilities = probabilities
        # nnU-Net's postprocessing where the bundle records it (on by default, as the results
        # folder's inference instructions apply it)
        self.postprocessing = bundle.postprocessing if postprocessing else []
        defaults = bundle.inference_defaults
        self.step = float(step if step is not None else defaults.get("step", 0.5))
        if not 0 < self.step <= 1:
            raise InputError(f"--step must be in (0, 1], not {self.step}.")
        self.mirror_axes = mirror_axes_for(bundle, tta)
        if bundle.orientation is None:  # on every run: the module shows it as a warning too
            log.warning("%s", NO_ORIENTATION_WARNING.format(name=bundle.name))
        self.batch_size = batch_size or (4 if self.device.type == "cuda" else 1)
        self.labels = resolve_subset(bundle, subset)
        self.progress = progress
        self.cancel = cancel
        self.folds = resolve_folds(bundle, folds)
        self._networks = list(networks) if networks is not None else None
        self._networks_device = None

    # --- helpers -----------------------------------------------------------------------------
    def _emit(self, case, phase, fraction):
        if self.progress is not None:
            self.progress({"event": "progress", "case": case, "phase": phase,
                           "fraction": round(float(fraction), 4)})

    def _should_stop(self) -> bool:
        c = self.cancel
        if c is None:
            return False
        return c.is_set() if hasattr(c, "is_set") else bool(c())

    def networks(self, device: torch.device) -> list:
        if self._networks is None or (self._networks_device is not None
                                      and self._networks_device != device):
            if self._networks is None:
                self._networks = [self.bundle.load_network(f, device) for f in self.folds]
            else:
                self._networks = [n.to(device) for n in self._networks]
            self._networks_device = device
        return self._networks

    @property
    def spacing(self) -> tuple:
        return self.bundle.quick_spacing if self.quick else self.bundle.spacing

    # --- the pipeline ------------------------------------------------------------------------
    # Three stages a batch can overlap (lkm_core.batch): load (read + preprocess, no network),
    # infer (the network) and finish (back to the input grid). predict_* run them in turn.
    def predict_file(self, path, case: str | None = None) -> Result:
        return self.finish(self.infer(self.load_file(path, case)))

    def predict_image(self, image: sitk.Image, case: str = "image",
                      timings: dict | None = None, *, two_d_input: bool | None = None) -> Result:
        """``two_d_input``: the image was read as 2D (already made a one-slice volume by
        validate_image); default: ``image`` itself is 2D."""
        return self.finish(self.infer(self.load_image(image, case, timings,
                                                      two_d_input=two_d_input)))

    def load_file(self, path, case: str | None = None) -> "Loaded":
        """Read and preprocess one input file: everything before the network."""
        case = case or lkm_io.case_name(path)
        self._emit(case, "read", 0.0)
        t0 = time.perf_counter()
        image = lkm_io.read_image(path)
        two_d_input = image.GetDimension() == 2
        image = lkm_io.validate_image(image, path, self.bundle.dimension)
        timings = {"read": time.perf_counter() - t0}
        self._emit(case, "read", 1.0)
        return self.load_image(image, case, timings, two_d_input=two_d_input)

    def load_image(self, image: sitk.Image, case: str = "image", timings: dict | None = None, *,
                   two_d_input: bool | None = None) -> "Loaded":
        timings = dict(timings or {})
        # A true 2D image (one slice, accepted by 2d models only) runs as a one-slice volume and
        # gets a 2D label image back, with its own 2D geometry: 2D in, 2D out.
        if two_d_input is None:
            two_d_input = image.GetDimension() == 2
        if image.GetPixelID() != sitk.sitkFloat32 or image.GetDimension() != 3:
            image = lkm_io.validate_image(image, case, self.bundle.dimension)
        b = self.bundle
        self._emit(case, "preprocess", 0.0)
        t0 = time.perf_counter()
        prepared = prepare(image, spacing=self.spacing, transpose=b.transpose,
                           dimension=b.dimension, normalization=b.normalization,
                           orientation=b.orientation, timings=timings,
                           num_classes=b.num_classes, patch_size=b.patch_size,
                           source=f"The image {case}", resampling=b.resampling, crop=self.crop)
        timings["preprocess"] = time.perf_counter() - t0
        self._emit(case, "preprocess", 1.0)
        return Loaded(case, image, prepared, two_d_input, timings)

    def infer(self, loaded: "Loaded") -> "Loaded":
        """Run the network on a loaded case (its network input is freed; its scores kept)."""
        case, prepared, timings = loaded.case, loaded.prepared, loaded.timings
        if self._should_stop():
            raise Cancelled("Stopped by the user.")

        t0 = time.perf_counter()
        self._emit(case, "network", 0.0)
        reset_backends_used()
        window, loaded.device, loaded.tiling, loaded.precision = self._run_network(
            prepared.array, case)
        loaded.tiling["crop"] = prepared.crop_record
        loaded.scores = window.scores
        # the passes' disagreement is a confidence signal: kept only when it will be read
        loaded.disagreement = window.disagreement if self.confidence else None
        loaded.scan_backend = backend_report()
        loaded.network_shape = tuple(prepared.array.shape[1:])
        prepared.array = None  # the network input is no longer needed: free it before the way back
        timings["network"] = time.perf_counter() - t0
        if self._should_stop():  # a cancel request that came during the last patch
            raise Cancelled("Stopped by the user.")
        return loaded

    def finish(self, loaded: "Loaded") -> Result:
        """Labels (and confidence) on the input grid from an inferred case."""
        case, prepared, image, timings = loaded.case, loaded.prepared, loaded.image, loaded.timings
        scores, b = loaded.scores, self.bundle
        t0 = time.perf_counter()
        self._emit(case, "postprocess", 0.0)
        labels = scores_to_labels(scores)
        keep = {lab.value for lab in self.labels}
        lut = None
        if len(keep) < len(b.labels):
            lut = np.zeros(b.num_classes, dtype=labels.dtype)
            for v in keep:
                lut[v] = v
        label_image = to_input_grid(labels, prepared, image, lut=lut,
                                    scores=None if self.quick else scores)
        if self.postprocessing:
            label_image = _postprocessed(label_image, self.postprocessing)
        confidence, confidence_map = None, None
        if self.confidence:
            confidence, confidence_map = self._assess(scores, labels, prepared, image,
                                                      loaded.disagreement)
        loaded.disagreement = None
        del labels
        probabilities = (probabilities_on_input_grid(scores, prepared, image)
                         if self.probabilities else None)
        if loaded.two_d_input:
            # JoinSeries put the 2D geometry in the top-left of the 3D one; slicing undoes it
            label_image = label_image[:, :, 0]
            if confidence_map is not None:
                confidence_map = confidence_map[:, :, 0]
        timings["postprocess"] = time.perf_counter() - t0
        self._emit(case, "postprocess", 1.0)
        return Result(case=case, labels=label_image, label_list=list(self.labels),
                      device=str(loaded.device), timings=timings,
                      network_shape=loaded.network_shape,
                      network_spacing=prepared.network_spacing_xyz,
                      scores=NetworkScores(scores, prepared) if self.keep_scores else None,
                      confidence=confidence, confidence_map=confidence_map,
                      scan_backend=loaded.scan_backend, probabilities=probabilities,
                      tiling=dict(loaded.tiling), precision=loaded.precision)

    def _assess(self, scores, labels, prepared, image, disagreement=None):
        """Per-structure confidence on the network grid; the voxel map on the input grid."""
        from .confidence import assess_case

        confidence, voxel_map = assess_case(
            scores, labels, self.labels, prepared.network_spacing_xyz,
            self.bundle.meta.get("volume_range_ml"), disagreement=disagreement)
        if not self.confidence_map:
            return confidence, None
        # to_input_grid fills what lies outside the network's crop with 0: carry the
        # uncertainty (100 - confidence) so that the background there reads as sure
        unsure = to_input_grid(np.subtract(100, voxel_map, dtype=np.uint8), prepared, image)
        return confidence, sitk.Cast(100 - unsure, sitk.sitkUInt8)

    def _autocast_dtype(self, device: torch.device, array: np.ndarray, patch: tuple):
        """The precision to run in, its low-precision kernels checked once per device on a
        small crop of this image; a failed check falls back to fp32 with one warning."""
        dtype = autocast_dtype(self.precision, device, self.bundle.cpu_precision)
        if dtype is None or device.type == "cuda":
            return dtype   # the GPU's fp16 path is nnU-Net's, unchecked as there
        key = (device.type, dtype)
        if key not in self._checked_dtypes:
            self._checked_dtypes[key] = dtype if self._low_precision_ok(
                device, dtype, array, patch) else None
        return self._checked_dtypes[key]

    def _low_precision_ok(self, device, dtype, array, patch) -> bool:
        divisors = self._divisors(len(self.bundle.patch_size), windows=False)
        size = [min(p, 2 * d) for p, d in zip(patch, divisors)]  # 1/26 of 3d_paper's patch
        data = torch.from_numpy(np.ascontiguousarray(array))
        start = [max(0, (n - s) // 2) for n, s in zip(data.shape[1:], size)]
        crop = data[(slice(None), *[slice(a, a + s) for a, s in zip(start, size)])]
        sample = pad_to_patch(crop, size)[0][None]
        if size[0] == 1 and self.bundle.dimension == "2d":
            sample = sample[:, :, 0]
        if low_precision_agrees(self.networks(device)[0], sample, device, dtype):
            return True
        log.warning("%s convolutions gave wrong results on this CPU (self-check on a small "
                    "patch): running in fp32 instead (slower). --precision fp32 skips the check.",
                    PRECISION_NAMES[dtype])
        return False

    def _divisors(self, n_axes: int, windows: bool = True) -> tuple:
        """Per-axis size that inputs must be a multiple of so that no stage pads: the product
        of the strides down to each stage times that stage's PiM window and PaM pool (a window
        the feature map does not fill is zero-padded inside the network, which changes the
        labels); ``windows=False``: the strides' product only (what the network runs at).
        Unknown networks: the patch itself (no fitting)."""
        kwargs = self.bundle.network_config.get("kwargs", {})
        strides = kwargs.get("strides")
        if not strides:
            return tuple(self.bundle.patch_size) if n_axes == 3 else (1, *self.bundle.patch_size)

        def per_axis(value):
            return [int(value)] * n_axes if isinstance(value, int) else [int(v) for v in value]

        mamba = windows and (kwargs.get("use_pim", True) or kwargs.get("use_pam", True))
        windows = (kwargs.get("window_sizes") if mamba else None) or [None] * len(strides)
        pools = (kwargs.get("pool_sizes") if mamba else None) or windows
        factors, needed = [1] * n_axes, [1] * n_axes
        for stride, window, pool in zip(strides, windows, pools):
            factors = [f * s for f, s in zip(factors, per_axis(stride))]
            for size in (window, pool):
                if size is not None:
                    needed = [math.lcm(n, f * w) for n, f, w in zip(needed, factors, per_axis(size))]
        needed = [math.lcm(n, f) for n, f in zip(needed, factors)]
        return tuple(needed) if n_axes == 3 else (1, *needed)

    def _run_network(self, array: np.ndarray, case: str):
        b = self.bundle
        patch = tuple(b.patch_size) if b.dimension == "3d" else (1, *b.patch_size)
        shape = array.shape[1:]
        steps = (1.0 if b.dimension == "2d" else self.step, self.step, self.step)
        if self.tiling == "fit":
            fitted = plan_patch(patch, shape, self._divisors(len(b.patch_size)), steps)
            if fitted != patch:
                log.info("patch %s fitted to the image %s: %s", patch, tuple(shape), fitted)
                patch = fitted
        tiling = {"mode": self.tiling, "patch": list(patch),
                            "work_ratio": round(tiled_voxels(shape, patch, steps)
                                                / float(np.prod(shape)), 3)}
        mirror = tuple(a + 1 for a in self.mirror_axes) if b.dimension == "2d" else self.mirror_axes
        device = self.device
        attempts = [(device, device)]
        if device.type == "cuda":
            attempts += [(device, torch.device("cpu")), (torch.device("cpu"), torch.device("cpu"))]
        for n, (dev, results_dev) in enumerate(attempts):
            try:
                autocast = self._autocast_dtype(dev, array, patch)
                window = sliding_window_passes(
                    self.networks(dev), array, patch, b.num_classes, step=self.step,
                    mirror_axes=mirror, batch_size=self.batch_size if dev.type == "cuda" else 1,
                    device=dev, results_device=results_dev,
                    autocast_dtype=autocast,
                    progress=lambda f: self._emit(case, "network", f),
                    should_stop=self._should_stop, disagreement=self.confidence)
                # per case, not on the predictor: pipelined cases overlap
                return window, dev, tiling, PRECISION_NAMES[autocast]
            except RuntimeError as exc:
                if not isinstance(exc, (DeviceOutOfMemory, torch.cuda.OutOfMemoryError)):
                    if dev.type == "cpu" and "can't allocate memory" in str(exc):
                        raise ResourceError(
                            "Out of memory on the CPU while running the network. Use --quick, "
                            "fewer --threads, or close other programs.") from exc
                    raise
                if n + 1 == len(attempts):
                    raise ResourceError("Out of memory even on the CPU. Use --quick, close other "
                                        "programs, or use a machine with more memory.") from exc
                torch.cuda.empty_cache()
                nxt = attempts[n + 1]
                if nxt[0].type == "cpu":
                    log.warning("CUDA out of memory: continuing on CPU (slower)")
                else:
                    log.warning("CUDA out of memory: keeping the results on the CPU and retrying")
                self.batch_size = 1
        raise AssertionError("unreachable")
