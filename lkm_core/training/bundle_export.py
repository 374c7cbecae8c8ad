"""nnU-Net results folder -> model bundle.

A results folder (``$nnUNet_results/DatasetXXX_Name/Trainer__Plans__Configuration``) holds
plans.json, dataset.json, dataset_fingerprint.json and fold_*/checkpoint_*.pth. Everything the
bundle needs is read from there: the network (the configuration's ``architecture`` block, which
names lkm_core.network.LKMUNet), the preprocessing (spacing, patch size, transpose_forward,
normalisation schemes with the dataset's intensity statistics), the labels (dataset.json; colours
and SNOMED CT codes from lkm_core.terminology), and provenance (trainer, plans, epochs, date).
The weights go to safetensors; nothing pickled ends up in the bundle.

The orientation the model was trained in is recorded too (:func:`training_orientation`): nnU-Net
uses each image's array in storage order, so a model learns left and right in the order its
training images were stored; the predictor reorients every input to that order.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import pickle
import re
from collections import Counter
from pathlib import Path

from ..errors import InputError, ModelError
from .plans import NETWORK_CLASS, resolve_configuration

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")


# ---------------------------------------------------------------------------------------------
def load_checkpoint(path: Path, trust: bool = False) -> dict:
    """Read an nnU-Net checkpoint. First with ``weights_only=True`` (no code can run); the
    numpy scalars nnU-Net stores in its logs are allowed explicitly. ``trust=True`` falls back to
    a full unpickle, for checkpoints written by your own training that still do not load."""
    import numpy as np
    import torch

    safe = [np.dtype, type(np.dtype("float64")), type(np.dtype("float32")), type(np.dtype("int64"))]
    try:
        safe.append(np._core.multiarray.scalar)  # numpy >= 2
    except AttributeError:
        safe.append(np.core.multiarray.scalar)
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError and friends
        if not trust:
            raise ModelError(
                f"The checkpoint {path} holds objects that cannot be loaded safely ({str(exc)[:200]}). "
                "If it comes from your own training, repeat the command with --trust-checkpoint.") from exc
        log.warning("Loading %s with a full unpickle (trusted by the user)", path)
        return torch.load(str(path), map_location="cpu", weights_only=False)


def clean_state_dict(state: dict) -> dict:
    """Strip DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def find_folds(results: Path, folds=None, checkpoint_name: str = "checkpoint_final.pth") -> dict:
    """{fold_name: checkpoint path}."""
    if folds:
        names = [f if str(f).startswith("fold_") else f"fold_{f}" for f in folds]
    else:
        names = sorted(p.name for p in results.glob("fold_*") if p.is_dir())
    out = {}
    for name in names:
        ckpt = results / name / checkpoint_name
        if ckpt.is_file():
            out[name] = ckpt
        elif folds:
            raise InputError(f"{ckpt} does not exist (has fold {name} finished training?).")
    if not out:
        raise InputError(f"No {checkpoint_name} in any fold_* folder of {results}. Finish training first, "
                         "or name another checkpoint with --checkpoint (e.g. checkpoint_best.pth).")
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} is missing: is this an nnU-Net results folder "
                         "(Trainer__Plans__Configuration)?") from None
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from exc


# ---------------------------------------------------------------------------------------------
def normalization_from_plans(plans: dict, config: dict, fingerprint: dict | None) -> list:
    """nnU-Net's normalisation schemes and intensity statistics -> bundle entries."""
    props = plans.get("foreground_intensity_properties_per_channel") \
        or plans.get("foreground_intensity_properties_by_modality") \
        or (fingerprint or {}).get("foreground_intensity_properties_per_channel") or {}
    use_mask = config.get("use_mask_for_norm") or []
    out = []
    for i, scheme in enumerate(config["normalization_schemes"]):
        if scheme == "CTNormalization":
            p = props.get(str(i)) or (fingerprint or {}).get(
                "foreground_intensity_properties_per_channel", {}).get(str(i))
            if not p:
                raise InputError(f"The plans have no intensity statistics for channel {i} "
                                 "(foreground_intensity_properties_per_channel); CT normalisation needs them.")
            out.append({"scheme": "ct", "clip": [float(p["percentile_00_5"]), float(p["percentile_99_5"])],
                        "mean": float(p["mean"]), "std": float(p["std"])})
        elif scheme == "ZScoreNormalization":
            out.append({"scheme": "zscore", "use_mask": bool(use_mask[i]) if i < len(use_mask) else False})
        elif scheme == "NoNormalization":
            out.append({"scheme": "none"})
        else:
            raise InputError(f"Channel {i} uses nnU-Net's {scheme}, which lkm_core's predictor does not "
                             "implement (it knows CTNormalization, ZScoreNormalization, NoNormalization).")
    return out


# ---------------------------------------------------------------------------------------------
def training_orientation(plans: dict, dataset_json: dict | None = None, *, raw=None,
                         preprocessed=None) -> tuple:
    """(orientation code or None, how it was found) of the model's training images.

    nnU-Net's NibabelIOWithReorient reorients every image to RAS. Other readers keep the storage
    order, read here from the headers of ``imagesTr`` in nnUNet_raw or, where those are gone, from
    the direction nnU-Net keeps per case in its preprocessed properties. A mixed dataset gives
    the dominant orientation, with a warning: nnU-Net trained on several axis orders then, and
    inputs will be brought to the most common one."""
    reader = str(plans.get("image_reader_writer", ""))
    if reader == "NibabelIOWithReorient":
        return "RAS", "NibabelIOWithReorient (nnU-Net reorients every image to RAS)"
    dataset = plans.get("dataset_name", "")
    raw = raw if raw is not None else os.environ.get("nnUNet_raw")
    preprocessed = preprocessed if preprocessed is not None else os.environ.get("nnUNet_preprocessed")
    codes, where = [], None
    if raw and (Path(raw) / dataset / "imagesTr").is_dir():
        ending = (dataset_json or {}).get("file_ending", "")
        codes = _header_orientations(Path(raw) / dataset / "imagesTr", ending)
        where = f"the headers of {Path(raw) / dataset / 'imagesTr'}"
    if not codes and preprocessed and (Path(preprocessed) / dataset).is_dir():
        codes = _properties_orientations(Path(preprocessed) / dataset)
        where = f"nnU-Net's preprocessed properties in {Path(preprocessed) / dataset}"
    if not codes:
        log.warning("The training images of %s were not found (set nnUNet_raw or "
                    "nnUNet_preprocessed): the bundle records no orientation, so its results "
                    "will depend on how each input is stored.", dataset or "this model")
        return None, "unknown"
    counts = Counter(codes)
    dominant, n = counts.most_common(1)[0]
    if len(counts) > 1:
        log.warning("The training images are stored in several orientations (%s): nnU-Net "
                    "trained on mixed axis orders; recording the dominant %s (%d of %d), to which "
                    "every input will be reoriented.",
                    ", ".join(f"{c} x{k}" for c, k in counts.most_common()), dominant, n, len(codes))
    return dominant, f"{where} ({n} of {len(codes)} images)"


VOLUME_CASES_LIMIT = 500  # enough cases for a range; bounds the time export spends reading


def training_volume_ranges(plans: dict, dataset_json: dict, labels: list, *, raw=None) -> dict:
    """{label name: [min ml, max ml]} over the training labels (nnUNet_raw labelsTr) where the
    structure is present, for the review's "volume against the range seen in training";
    {} when the labels cannot be found."""
    import numpy as np
    import SimpleITK as sitk

    raw = raw if raw is not None else os.environ.get("nnUNet_raw")
    folder = Path(raw) / plans.get("dataset_name", "") / "labelsTr" if raw else None
    if folder is None or not folder.is_dir():
        return {}
    ending = dataset_json.get("file_ending", ".nii.gz")
    names = {int(lab["value"]): lab["name"] for lab in labels if int(lab["value"]) > 0}
    seen: dict = {}
    for path in sorted(folder.glob(f"*{ending}"))[:VOLUME_CASES_LIMIT]:
        image = sitk.ReadImage(str(path))
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        counts = np.bincount(sitk.GetArrayViewFromImage(image).ravel().astype(np.int64),
                             minlength=max(names, default=0) + 1)
        for value, name in names.items():
            if value < len(counts) and counts[value]:
                seen.setdefault(name, []).append(float(counts[value]) * voxel_ml)
    return {name: [round(min(v), 3), round(max(v), 3)] for name, v in seen.items()}


def _header_orientations(folder: Path, ending: str) -> list:
    import SimpleITK as sitk
    from ..inference.preprocessing import image_orientation

    out = []
    for path in sorted(folder.iterdir()):
        first_channel = path.name.endswith(f"_0000{ending}") if ending else "_0000." in path.name
        if not first_channel or not path.is_file():
            continue
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue  # a format SimpleITK does not read (nnU-Net's other readers)
        if reader.GetDimension() == 3:
            out.append(image_orientation(reader.GetDirection()))
    return out


class _PropertiesUnpickler(pickle.Unpickler):
    """nnU-Net's per-case properties (.pkl) hold dicts, tuples, numbers and numpy arrays only;
    anything else is refused, so no code from the file can run."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED or (module.startswith("numpy") and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a properties file")


def _properties_orientations(folder: Path, limit: int = 500) -> list:
    import numpy as np
    from ..inference.preprocessing import image_orientation

    out = []
    for path in sorted(folder.glob("*/*.pkl"))[:limit]:
        try:
            with open(path, "rb") as f:
                props = _PropertiesUnpickler(f).load()
        except Exception:  # noqa: BLE001 - not a properties file we can read safely
            continue
        if "sitk_stuff" in props and len(props["sitk_stuff"].get("direction", ())) == 9:
            out.append(image_orientation(props["sitk_stuff"]["direction"]))
        elif "nibabel_stuff" in props:
            affine = np.asarray(props["nibabel_stuff"]["original_affine"], float)[:3, :3]
            lps = affine * np.array([[-1.0], [-1.0], [1.0]])  # RAS world -> LPS world
            out.append(image_orientation(lps / np.linalg.norm(lps, axis=0)))
    return out


class _PostprocessingUnpickler(_PropertiesUnpickler):
    """postprocessing.pkl: (functions, kwargs). A function comes back as its name (nothing of
    nnU-Net is imported or run); only nnU-Net's own postprocessing functions are allowed."""
    MODULE = "nnunetv2.postprocessing.remove_connected_components"

    def find_class(self, module, name):
        from ..nnunet_steps import KNOWN_POSTPROCESSING
        if module == self.MODULE and name in KNOWN_POSTPROCESSING:
            return name
        return super().find_class(module, name)


def find_postprocessing(results: Path, folds) -> Path | None:
    """The postprocessing.pkl nnUNetv2_find_best_configuration wrote for these folds
    (``crossval_results_folds_0_1_...``), or one in the results folder itself."""
    names = sorted(str(f).replace("fold_", "") for f in folds)
    for candidate in (results / f"crossval_results_folds_{'_'.join(names)}" / "postprocessing.pkl",
                      results / "postprocessing.pkl"):
        if candidate.is_file():
            return candidate
    others = sorted(results.glob("crossval_results_folds_*/postprocessing.pkl"))
    if others:
        log.warning("postprocessing was determined for other folds (%s), not for the exported "
                    "%s: not recorded; pass --postprocessing FILE to use one",
                    ", ".join(p.parent.name for p in others), ", ".join(names))
    return None


def postprocessing_from_pickle(path: Path) -> list:
    """nnU-Net's postprocessing.pkl -> model.json's ``postprocessing`` (JSON, checked)."""
    import numpy as np
    from ..nnunet_steps import check_postprocessing

    try:
        with open(path, "rb") as f:
            fns, kwargs = _PostprocessingUnpickler(f).load()
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError, OSError) as exc:
        raise InputError(f"{path} is not a postprocessing.pkl of nnU-Net's that can be read "
                         f"safely ({str(exc)[:200]}).") from None

    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return int(value) if isinstance(value, (int, np.integer)) else value

    steps = [{"function": str(fn), "kwargs": {k: plain(v) for k, v in dict(kw).items()}}
             for fn, kw in zip(fns, kwargs)]
    try:
        check_postprocessing(steps)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    return json.loads(json.dumps(steps))


def labels_from_dataset(dataset_json: dict) -> tuple[list, int]:
    """dataset.json labels -> ([{value, name}], number of network outputs)."""
    labels = dataset_json.get("labels")
    if not labels:
        raise InputError("dataset.json has no labels.")
    if dataset_json.get("regions_class_order") is not None or any(
            isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values()):
        raise InputError("This model was trained on regions (overlapping labels); lkm_core's predictor "
                         "supports plain label maps only.")
    out = []
    ignore = None
    for name, value in labels.items():
        value = int(value[0] if isinstance(value, (list, tuple)) else value)
        if name == "ignore":
            ignore = value
            continue
        if value > 0:
            out.append({"value": value, "name": str(name)})
    out.sort(key=lambda d: d["value"])
    values = [d["value"] for d in out]
    if values != list(range(1, len(values) + 1)):
        raise InputError(f"dataset.json label values must be 1..N without gaps (nnU-Net requires it); got {values}.")
    if ignore is not None and ignore != len(values) + 1:
        raise InputError("dataset.json: the ignore label must have the highest value.")
    return out, len(values) + 1


def modality_from_channels(dataset_json: dict) -> str:
    names = list((dataset_json.get("channel_names") or dataset_json.get("modality") or {}).values())
    text = " ".join(str(n).upper() for n in names)
    if "CT" in text.split() or text.strip() == "CT":
        return "CT"
    if any(t in text for t in ("MR", "T1", "T2", "FLAIR", "ADC", "DWI")):
        return "MR"
    return names[0] if len(names) == 1 else ""


def network_config(config: dict, input_channels: int, num_classes: int) -> dict:
    arch = config.get("architecture") or {}
    cls = arch.get("network_class_name", "")
    if cls != NETWORK_CLASS and cls.split(".")[-1] != "LKMUNet":
        raise InputError(f"This configuration trains {cls or 'an unknown network'}, not LKM-UNet; only "
                         "LKM-UNet models can become bundles. Add an LKM configuration with "
                         "`lkm-segment plan` and train that.")
    kwargs = dict(arch["arch_kwargs"])
    kwargs.update(input_channels=int(input_channels), num_classes=int(num_classes), deep_supervision=False)
    return {"class": "LKMUNet", "kwargs": kwargs}


def bundle_meta(plans: dict, dataset_json: dict, fingerprint: dict | None, configuration: str, *,
                name: str | None = None, version: str = "1.0.0", description: str | None = None,
                licence: str | None = None, provenance: dict | None = None,
                mirror_axes=None, orientation="auto") -> dict:
    """model.json (without folds) for an LKM configuration of these plans. ``orientation``:
    "auto" finds the training images' (:func:`training_orientation`), a code ("RAS", "LPS", ...)
    records that one (the user knows how the training images were stored), None records none."""
    config = resolve_configuration(plans, configuration)
    labels, num_classes = labels_from_dataset(dataset_json)
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {"0": "image"}
    patch = [int(p) for p in config["patch_size"]]
    dim = "3d" if len(patch) == 3 else "2d"
    dataset_name = plans.get("dataset_name", "dataset")
    meta = {
        "name": name or _slug(dataset_name),
        "version": str(version),
        "description": description or f"LKM-UNet ({configuration}) trained with nnU-Net on {dataset_name}",
        "licence": licence or "unspecified",
        "modality": modality_from_channels(dataset_json),
        "dimension": dim,
        "input_channels": len(channels),
        "spacing": [float(s) for s in config["spacing"]],
        "patch_size": patch,
        "transpose": [int(t) for t in plans.get("transpose_forward", [0, 1, 2])],
        "orientation": None,
        "normalization": normalization_from_plans(plans, config, fingerprint),
        "network": network_config(config, len(channels), num_classes),
        "labels": labels,
        "inference": {"step": 0.5},
        "resampling": resampling_from_plans(config),
        "provenance": {"trained": True, **(provenance or {})},
    }
    if mirror_axes is not None:
        meta["inference"]["mirror_axes"] = [int(a) for a in mirror_axes]
    if orientation == "auto":
        orientation, found = training_orientation(plans, dataset_json)
        meta["provenance"]["orientation_from"] = found
    elif orientation is not None:
        orientation = _orientation_option(orientation)
        meta["provenance"]["orientation_from"] = "given at export (--orientation)"
    meta["orientation"] = orientation
    ranges = training_volume_ranges(plans, dataset_json, labels)
    if ranges:  # optional: the review compares each structure's volume with it
        meta["volume_range_ml"] = ranges
    return meta


def resampling_from_plans(config: dict) -> dict:
    """The configuration's resampling_fn_data / _probabilities and kwargs, as model.json records
    them; functions or arguments the predictor cannot follow are refused here, at export."""
    from ..nnunet_steps import Resampling

    entry = {}
    for what in ("data", "probabilities"):
        fn = config.get(f"resampling_fn_{what}")
        if fn is not None:
            entry[what] = {"function": str(fn),
                           "kwargs": dict(config.get(f"resampling_fn_{what}_kwargs") or {})}
    try:
        Resampling.from_meta(entry)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return entry


def _orientation_option(code: str) -> str:
    from ..bundle import check_orientation
    try:
        return check_orientation(code, "--orientation")
    except ModelError as exc:
        raise InputError(str(exc)) from None


def _slug(text: str) -> str:
    text = re.sub(r"^Dataset\d+_", "", str(text))
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


def _nnunet_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("nnunetv2")
    except Exception:  # noqa: BLE001
        return None


def export_results(results, output, *, folds=None, checkpoint_name: str = "checkpoint_final.pth",
                   name: str | None = None, version: str = "1.0.0", description: str | None = None,
                   licence: str | None = None, data: str | None = None, parent: str | None = None,
                   trust_checkpoint: bool = False, orientation="auto",
                   postprocessing="auto") -> Path:
    """Write a bundle (folder, or .zip when ``output`` ends with .zip) from a results folder.
    ``orientation``: see :func:`bundle_meta`. ``postprocessing``: "auto" records nnU-Net's
    postprocessing.pkl for the exported folds where the results folder has one (see
    :func:`find_postprocessing`), a path records that file's, None records none."""
    results = Path(results)
    if not results.is_dir():
        raise InputError(f"{results} is not a folder; give nnU-Net's Trainer__Plans__Configuration folder.")
    plans = _read_json(results / "plans.json")
    dataset_json = _read_json(results / "dataset.json")
    fp_path = results / "dataset_fingerprint.json"
    fingerprint = _read_json(fp_path) if fp_path.is_file() else None

    found = read_folds(results, folds, checkpoint_name, trust_checkpoint)
    weights, epochs, trainer = found["weights"], found["epochs"], found["trainer"]
    configuration, mirror_axes = found["configuration"], found["mirror_axes"]
    parts = results.name.split("__")
    if configuration is None:
        if len(parts) != 3:
            raise InputError(f"Cannot tell the configuration of {results}: its checkpoints do not name it "
                             "and the folder is not called Trainer__Plans__Configuration.")
        configuration = parts[2]
    provenance = {
        "data": data or f"{plans.get('dataset_name')} ({dataset_json.get('numTraining', '?')} training cases)",
        "trainer": trainer or parts[0],
        "framework": f"nnunetv2 {_nnunet_version() or ''}".strip(),
        "plans": plans.get("plans_name", parts[1] if len(parts) == 3 else None),
        "configuration": configuration,
        "epochs": epochs,
        "date": _dt.date.today().isoformat(),
        "source": results.name,
    }
    if parent:
        provenance["fine_tuned_from"] = parent
    meta = bundle_meta(plans, dataset_json, fingerprint, configuration, name=name, version=version,
                       description=description, licence=licence, provenance=provenance,
                       mirror_axes=mirror_axes, orientation=orientation)
    pkl = find_postprocessing(results, weights) if postprocessing == "auto" else postprocessing
    if pkl is not None:
        meta["postprocessing"] = postprocessing_from_pickle(Path(pkl))
        meta["provenance"]["postprocessing_from"] = Path(pkl).name if Path(pkl).parent == results \
            else f"{Path(pkl).parent.name}/{Path(pkl).name}"
    return save_bundle(output, meta, weights)


def read_folds(results: Path, folds, checkpoint_name: str, trust: bool, convert=None) -> dict:
    """Every fold's weights (renamed by ``convert``, default: prefixes stripped) and what the
    checkpoints say about the training: {weights, epochs, trainer, configuration, mirror_axes}."""
    convert = convert or clean_state_dict
    out = {"weights": {}, "epochs": {}, "trainer": None, "configuration": None, "mirror_axes": None}
    for fold, path in find_folds(results, folds, checkpoint_name).items():
        ckpt = load_checkpoint(path, trust)
        if "network_weights" not in ckpt:
            raise ModelError(f"{path} is not an nnU-Net checkpoint (no network_weights).")
        out["weights"][fold] = convert(ckpt["network_weights"])
        out["epochs"][fold] = int(ckpt.get("current_epoch", 0))
        out["trainer"] = out["trainer"] or ckpt.get("trainer_name")
        out["configuration"] = out["configuration"] or (ckpt.get("init_args") or {}).get("configuration")
        # recorded None (nnUNetTrainerNoMirroring and friends): trained without mirroring, so
        # nnU-Net mirrors nothing; an absent key (old checkpoints) records nothing
        if out["mirror_axes"] is None and "inference_allowed_mirroring_axes" in ckpt:
            out["mirror_axes"] = [int(a) for a in ckpt["inference_allowed_mirroring_axes"] or ()]
    return out


def save_bundle(output, meta: dict, weights: dict) -> Path:
    """Check that the weights fit the network, then write a bundle folder (or a .zip)."""
    from ..bundle import write_bundle, zip_bundle

    _check_weights_fit(meta, weights)
    output = Path(output)
    if output.suffix == ".zip":
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_bundle(Path(tmp) / "bundle", meta, weights)
            output.parent.mkdir(parents=True, exist_ok=True)
            return zip_bundle(folder, output)
    return write_bundle(output, meta, weights)


def _check_weights_fit(meta: dict, weights: dict) -> None:
    """Build the network once and make sure every fold's weights load strictly."""
    from ..network import build_network

    net = build_network(meta["network"])
    expected = net.state_dict()
    for fold, state in weights.items():
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        if missing or extra or wrong:
            raise ModelError(
                f"The weights of {fold} do not fit the network the plans describe "
                f"(missing {missing[:3]}, unexpected {extra[:3]}, wrong shape {wrong[:3]}). Were they trained "
                "with another configuration or another lkm_core version?")
