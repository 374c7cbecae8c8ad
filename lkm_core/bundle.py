"""Model bundles: what the CLI and the Slicer module load.

A bundle is a folder (or a .zip of one) holding ``model.json`` and one safetensors file per fold.
Loading never unpickles and never runs code from the bundle: the network is built by
:func:`lkm_core.network.build_network` from an allowlisted class name and JSON keywords, and
weights are plain tensors. Every weights file's sha256 is checked before it is used.

model.json (``format_version`` 1)
---------------------------------
Required keys::

    format            "lkm-segment-bundle"
    format_version    1
    name              short identifier, e.g. "lkm-abdomen-ct"
    version           model version string, e.g. "1.0.0"
    dimension         "3d" or "2d" (a 2d model runs slice by slice along the first array axis)
    input_channels    number of image channels (the predictor supports 1)
    spacing           target voxel spacing in mm, in nnU-Net order: the axes of the SimpleITK
                      array (z, y, x) AFTER ``transpose``; 3 values for 3d, 2 (in-plane) for 2d
    patch_size        network patch, same axis order as ``spacing``
    transpose         nnU-Net's ``transpose_forward`` (a permutation of 0..2) applied to the
                      (z, y, x) array before the network; [0, 1, 2] = as stored
    normalization     a list with one dict per channel:
                      {"scheme": "ct", "clip": [lo, hi], "mean": m, "std": s}  clip, then z-score
                      with dataset statistics (nnU-Net's CTNormalization), or
                      {"scheme": "zscore", "use_mask": false}  per-image z-score (MR), or
                      {"scheme": "none"}.  nnU-Net scheme names are accepted too.
    network           {"class": "LKMUNet", "kwargs": {...}} (JSON-safe; see lkm_core.network)
    folds             [{"name": "fold_0", "file": "fold_0.safetensors", "sha256": "<hex>"}, ...]
                      several folds are averaged (logits) at prediction time
    labels            [{"value": 1, "name": "liver", "color": [r, g, b],
                        "terminology": {"category": CODE, "type": CODE, "modifier": CODE}}, ...]
                      value 0 is background and need not be listed; colours are RGB floats 0-1
                      (or 0-255, or "#rrggbb"); CODE = {"scheme": "SCT", "code": "10200004",
                      "meaning": "Liver"}; terminology may also be "SCT^code^meaning", a bare
                      SNOMED CT code or a Slicer terminology string (lkm_core.contract)

Optional keys::

    description, licence, modality ("CT" / "MR"),
    orientation       null (default: use the array as stored, like nnU-Net) or a DICOM-style
                      3-letter code ("LPS", "RAS", ...): inputs are reoriented to it (axis
                      permutation and flips only, exact) before preprocessing, and back after;
                      ``bundle export`` records the training images' (their storage order)
    quick_spacing     spacing (mm, scalar or list like ``spacing``) for quick mode; default 3.0
    inference         {"step": 0.5, "mirror_axes": [0, 1, 2]} defaults for the predictor;
                      mirror_axes are the checkpoint's (nnU-Net's inference_allowed_mirroring_axes;
                      [] = trained without mirroring): test-time mirroring never goes beyond them;
                      optional "cpu_precision" ("fp32"/"bf16"), "tiling" ("nnunet"/"fit") and
                      "crop" ("nonzero"/"body"): what ``auto`` runs for this model, recorded by
                      ``lkm-segment bundle speedups`` where the faster path kept the labels and
                      paid (bf16 only on CPUs with bf16 units); absent = nnU-Net's exact path
    resampling        the plans' resampling functions and kwargs, as nnU-Net names them:
                      {"data": {"function": "resample_data_or_seg_to_shape", "kwargs": {...}},
                       "probabilities": {...}}; absent = nnU-Net's defaults (lkm_core.inference.preprocessing)
    postprocessing    nnU-Net's postprocessing (postprocessing.pkl of the results folder, read at
                      export, kept as JSON): [{"function":
                      "remove_all_but_largest_component_from_segmentation", "kwargs":
                      {"labels_or_regions": [1, [2, 3]], "background_label": 0}}, ...]
    provenance        {"trained": bool, "data": ..., "trainer": ..., "date": ..., "note": ...}
                      ``trained: false`` marks random, untrained weights (``bundle init``)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .contract import META_FILE, BundleContractError, LabelRecord, label_records
from .errors import ModelError
from .files import atomic_path, cache_dir, sha256
from .nnunet_steps import Resampling, check_postprocessing

log = logging.getLogger(__name__)

FORMAT = "lkm-segment-bundle"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "name", "version", "dimension", "input_channels",
                 "spacing", "patch_size", "transpose", "normalization", "network", "folds", "labels")
NORMALIZATION_ALIASES = {"ct": "ct", "ctnormalization": "ct", "zscore": "zscore",
                         "zscorenormalization": "zscore", "none": "none",
                         "nonormalization": "none"}
MAX_ZIP_BYTES = 20 * 1024 ** 3  # refuse zip bombs: no real model needs more
NO_ORIENTATION_WARNING = (
    "The model {name} records no orientation: it sees each input in its storage order, so "
    "left and right in its results depend on how the input is stored. Re-export it with "
    "`lkm-segment bundle export --orientation CODE` (how its training images were stored).")


@dataclass
class Bundle:
    path: Path              # the bundle folder (the extraction folder for a zip)
    meta: dict              # model.json as loaded
    source: Path = None     # what the user gave (folder or zip)
    labels: list = field(default_factory=list)

    # --- plain views on model.json -------------------------------------------------------------
    name = property(lambda self: self.meta["name"])
    version = property(lambda self: str(self.meta["version"]))
    dimension = property(lambda self: self.meta["dimension"])
    input_channels = property(lambda self: int(self.meta["input_channels"]))
    patch_size = property(lambda self: tuple(int(v) for v in self.meta["patch_size"]))
    spacing = property(lambda self: tuple(float(v) for v in self.meta["spacing"]))
    transpose = property(lambda self: tuple(int(v) for v in self.meta["transpose"]))
    network_config = property(lambda self: self.meta["network"])
    orientation = property(lambda self: check_orientation(self.meta.get("orientation")))
    modality = property(lambda self: self.meta.get("modality", ""))
    description = property(lambda self: self.meta.get("description", ""))
    licence = property(lambda self: self.meta.get("licence", ""))
    provenance = property(lambda self: self.meta.get("provenance", {}))
    trained = property(lambda self: bool(self.meta.get("provenance", {}).get("trained", True)))
    folds = property(lambda self: [f["name"] for f in self.meta["folds"]])

    @property
    def normalization(self) -> list:
        return _normalization_list(self.meta["normalization"])

    @property
    def quick_spacing(self) -> tuple:
        q = self.meta.get("quick_spacing", 3.0)
        if isinstance(q, (int, float)):
            return tuple(max(float(q), s) for s in self.spacing)
        return tuple(float(v) for v in q)

    @property
    def resampling(self) -> Resampling:
        return _resampling(self.meta)

    @property
    def postprocessing(self) -> list:
        """nnU-Net's postprocessing recorded at export (checked steps; [] when none)."""
        return _postprocessing(self.meta)

    @property
    def inference_defaults(self) -> dict:
        return dict(self.meta.get("inference", {}))

    @property
    def cpu_precision(self) -> str:
        """What ``--precision auto`` runs on a CPU with bf16 units: "bf16" where it was shown
        to keep this model's labels and to pay, else "fp32"."""
        return _inference_choice(self.meta, "cpu_precision")

    @property
    def tiling(self) -> str:
        """What ``--tiling auto`` runs: "fit" where it was shown to keep the labels and pay."""
        return _inference_choice(self.meta, "tiling")

    @property
    def crop(self) -> str:
        """What ``--crop auto`` runs: "body" where it was shown to keep the labels and pay."""
        return _inference_choice(self.meta, "crop")

    @property
    def num_classes(self) -> int:
        return max([lab.value for lab in self.labels], default=0) + 1

    def label_by_name(self, name: str) -> LabelRecord | None:
        from .terminology import normalize_name
        key = normalize_name(name)
        for lab in self.labels:
            if normalize_name(lab.name) == key:
                return lab
        return None

    def weights_path(self, fold: str) -> Path:
        for f in self.meta["folds"]:
            if f["name"] == fold:
                return self.path / f["file"]
        raise ModelError(f"The model bundle {self.source} has no fold named {fold!r}; "
                         f"it has {', '.join(self.folds)}.")

    def load_state_dict(self, fold: str, verify: bool = True) -> dict:
        """The weights of one fold (checksum verified), as a dict of CPU tensors."""
        from safetensors.torch import load_file

        entry = next((f for f in self.meta["folds"] if f["name"] == fold), None)
        if entry is None:
            self.weights_path(fold)  # raises
        path = self.path / entry["file"]
        if verify:
            _check_weights_file(path, entry["sha256"], self.source)
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"The weights file {path} of the model bundle could not be read "
                             f"({exc}). Re-download or re-export the model.") from exc

    def build_network(self):
        """The network with random weights (built from the allowlisted config, no code loaded)."""
        from .network import build_network
        try:
            return build_network(self.network_config)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"The model bundle {self.source} describes a network that cannot be "
                             f"built ({type(exc).__name__}: {exc}). It may need a newer "
                             "lkm_core.") from exc

    def load_network(self, fold: str | None = None, device="cpu"):
        """One fold's network (default: the first fold), weights loaded, in eval mode."""
        fold = fold or self.folds[0]
        net = self.build_network()
        state = self.load_state_dict(fold)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"The weights of fold {fold!r} in {self.source} do not fit the "
                             f"network described in model.json: {str(exc)[:500]}") from exc
        if hasattr(net, "decoder") and hasattr(net.decoder, "deep_supervision"):
            net.decoder.deep_supervision = False
        return net.to(device).eval()

    def load_networks(self, device="cpu") -> list:
        return [self.load_network(f, device) for f in self.folds]

    def summary(self) -> dict:
        """What `lkm-segment info --json` prints."""
        return {
            "name": self.name, "version": self.version, "description": self.description,
            "licence": self.licence, "modality": self.modality, "dimension": self.dimension,
            "input_channels": self.input_channels, "spacing": list(self.spacing),
            "patch_size": list(self.patch_size), "transpose": list(self.transpose),
            "orientation": self.orientation, "network": self.network_config.get("class"),
            "folds": self.folds, "trained": self.trained, "provenance": self.provenance,
            "auto": {"cpu_precision": self.cpu_precision, "tiling": self.tiling,
                     "crop": self.crop},
            "labels": [{"value": lab.value, "name": lab.name, "color": list(lab.color),
                        "terminology": lab.terminology} for lab in self.labels],
            "path": str(self.source),
        }


# ---------------------------------------------------------------------------------------------
def _check_weights_file(path: Path, expected: str, source) -> None:
    if not path.is_file():
        raise ModelError(f"The weights file {path.name} listed in model.json is missing from the "
                         f"model bundle {source}. Re-download or re-export the model.")
    actual = sha256(path)
    if actual != expected:
        raise ModelError(f"The weights file {path.name} in the model bundle {source} does not "
                         f"match its checksum (sha256 {actual[:12]}..., model.json says "
                         f"{str(expected)[:12]}...): it is damaged or was modified. "
                         "Re-download or re-export the model.")


def _normalization_list(value) -> list:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        item = dict(item)
        scheme = NORMALIZATION_ALIASES.get(str(item.get("scheme", "")).lower())
        if scheme is None:
            raise ModelError(f"Unknown intensity normalisation {item.get('scheme')!r} in "
                             "model.json (expected 'ct', 'zscore' or 'none').")
        item["scheme"] = scheme
        if scheme == "ct":
            missing = [k for k in ("clip", "mean", "std") if k not in item]
            if missing:
                raise ModelError("The CT normalisation in model.json lacks "
                                 f"{', '.join(missing)}.")
        out.append(item)
    return out


def check_orientation(code, where="model.json"):
    """``code`` upper-cased if it is a 3-letter orientation (one of R/L, A/P, S/I per axis, e.g.
    LPS or RAS), None for None; else ModelError."""
    if code is None:
        return None
    text = str(code).upper()
    axes = sorted({"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}.get(c, -1) for c in text)
    if len(text) != 3 or axes != [0, 1, 2]:
        raise ModelError(f"{where}: orientation {code!r} is not a 3-letter code with one of R/L, "
                         "A/P and S/I each (e.g. LPS, RAS).")
    return text


def validate_meta(meta: dict, where="model.json") -> None:
    """Raise ModelError if model.json is incomplete or inconsistent."""
    if not isinstance(meta, dict):
        raise ModelError(f"{where} is not a JSON object.")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelError(f"{where} lacks the required key(s) {', '.join(missing)}; the bundle is "
                         "incomplete. Re-export it with lkm-segment.")
    if meta["format"] != FORMAT:
        raise ModelError(f"{where} is not an LKMSegment model bundle (format {meta['format']!r}).")
    if not isinstance(meta["format_version"], int) or meta["format_version"] > FORMAT_VERSION:
        raise ModelError(f"{where} has bundle format version {meta['format_version']}, newer than "
                         f"this lkm_core understands ({FORMAT_VERSION}). Update the extension.")
    dim = meta["dimension"]
    if dim not in ("2d", "3d"):
        raise ModelError(f"{where}: dimension must be '2d' or '3d', not {dim!r}.")
    n = 3 if dim == "3d" else 2
    for key in ("spacing", "patch_size"):
        if not isinstance(meta[key], list) or len(meta[key]) != n:
            raise ModelError(f"{where}: {key} must be a list of {n} numbers for a {dim} model.")
    if sorted(meta["transpose"]) != [0, 1, 2]:
        raise ModelError(f"{where}: transpose must be a permutation of 0, 1, 2.")
    check_orientation(meta.get("orientation"), where)
    _resampling(meta, where)
    _postprocessing(meta, where)
    for option in INFERENCE_CHOICES:
        _inference_choice(meta, option, where)
    norm = _normalization_list(meta["normalization"])
    if len(norm) != int(meta["input_channels"]):
        raise ModelError(f"{where}: {len(norm)} normalisation entries for "
                         f"{meta['input_channels']} input channel(s).")
    net = meta["network"]
    if not isinstance(net, dict) or "class" not in net or not isinstance(net.get("kwargs", {}), dict):
        raise ModelError(f"{where}: network must be {{'class': ..., 'kwargs': {{...}}}}.")
    if not meta["folds"]:
        raise ModelError(f"{where} lists no weights (folds is empty).")
    for f in meta["folds"]:
        if not all(k in f for k in ("name", "file", "sha256")):
            raise ModelError(f"{where}: every fold needs name, file and sha256.")
        _safe_relative(f["file"], where)
    _labels(meta, where)  # values, names, colours, terminology: the module's own rules


# The paths a model may run, per inference option ("fit or nnunet" reads as the CLI's choices);
# what "auto" means for a model is recorded in model.json's "inference" (absent: the reference,
# nnU-Net's exact path), by `lkm-segment bundle speedups`.
TILINGS = ("fit", "nnunet")
CROPS = ("nonzero", "body")
CPU_PRECISIONS = ("fp32", "bf16")
INFERENCE_CHOICES = {  # option: (its values, the reference)
    "cpu_precision": (CPU_PRECISIONS, "fp32"),
    "tiling": (TILINGS, "nnunet"),
    "crop": (CROPS, "nonzero"),
}


def _inference_choice(meta: dict, option: str, where="model.json") -> str:
    values, reference = INFERENCE_CHOICES[option]
    value = meta.get("inference", {}).get(option, reference)
    if value not in values:
        raise ModelError(f"{where}: inference.{option} must be {' or '.join(values)}, "
                         f"not {value!r}.")
    return value


def _resampling(meta: dict, where="model.json") -> Resampling:
    try:
        return Resampling.from_meta(meta.get("resampling"))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"{where}: {exc}") from None


def _postprocessing(meta: dict, where="model.json") -> list:
    try:
        return check_postprocessing(meta.get("postprocessing"))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"{where}: {exc}") from None


def _safe_relative(name: str, where) -> PurePosixPath:
    p = PurePosixPath(str(name).replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts or ":" in p.parts[0]:
        raise ModelError(f"{where}: the path {name!r} points outside the bundle; refusing it.")
    return p


def _labels(meta: dict, where="model.json") -> list:
    """The labels as the Slicer module reads them too (lkm_core.contract): a bundle the module
    accepts is a bundle the engine runs, and one with an unusable terminology is refused here."""
    try:
        records = label_records(meta, where)
    except BundleContractError as exc:
        raise ModelError(str(exc)) from None
    return records


# ---------------------------------------------------------------------------------------------
def bundle_cache_dir() -> Path:
    return cache_dir() / "bundles"


def extract_zip(zip_path: Path, dest_root: Path | None = None) -> Path:
    """Extract a bundle zip safely into the cache (keyed by its sha256); returns the folder
    holding model.json. Rejects absolute paths, '..', links and oversized archives."""
    zip_path = Path(zip_path)
    digest = sha256(zip_path)
    dest_root = Path(dest_root) if dest_root else bundle_cache_dir()
    final = dest_root / digest[:32]
    if (final / ".complete").exists():
        return _meta_folder(final, zip_path)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"The model bundle {zip_path} is not a readable zip file ({exc}).") from exc
    with zf:
        members = zf.infolist()
        total = 0
        for info in members:
            _safe_relative(info.filename, zip_path)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ModelError(f"The model bundle {zip_path} contains a link "
                                 f"({info.filename}); refusing to extract it.")
            total += info.file_size
        if total > MAX_ZIP_BYTES:
            raise ModelError(f"The model bundle {zip_path} would unpack to {total / 1e9:.1f} GB; "
                             "refusing it.")
        dest_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_root))
        try:
            for info in members:
                target = tmp.joinpath(*_safe_relative(info.filename, zip_path).parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            (tmp / ".complete").write_text(digest, encoding="utf-8")
            try:
                os.replace(tmp, final)
            except OSError:  # another process won the race: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return _meta_folder(final, zip_path)


def _meta_folder(folder: Path, source) -> Path:
    if (folder / META_FILE).is_file():
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir() and (p / META_FILE).is_file()]
    if len(subs) == 1:
        return subs[0]
    raise ModelError(f"The model bundle {source} has no {META_FILE}. Is it an LKMSegment model?")


def load_bundle(path, verify: bool = True) -> Bundle:
    """Load a bundle folder or .zip. Checks model.json and (with verify) every weights checksum."""
    source = Path(path).expanduser()
    if not source.exists():
        raise ModelError(f"The model bundle {source} does not exist. Give the folder or .zip of "
                         "an LKMSegment model (see `lkm-segment bundle init`).")
    if source.is_file():
        if not zipfile.is_zipfile(source):
            if source.name == META_FILE:
                source = source.parent
            else:
                raise ModelError(f"The model bundle {source} is neither a folder nor a .zip file.")
        else:
            folder = extract_zip(source)
    if source.is_dir():
        folder = _meta_folder(source, source)
    meta_path = folder / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{meta_path} could not be read as JSON ({exc}).") from exc
    validate_meta(meta, str(meta_path))
    bundle = Bundle(path=folder, meta=meta, source=source, labels=_labels(meta, str(meta_path)))
    if verify:
        for f in meta["folds"]:
            _check_weights_file(folder / f["file"], f["sha256"], source)
    return bundle


def verify_bundle(path) -> Bundle:
    """Full check (model.json, checksums, safetensors headers). Raises ModelError on problems."""
    from safetensors import safe_open
    bundle = load_bundle(path, verify=True)
    for f in bundle.meta["folds"]:
        try:
            with safe_open(str(bundle.path / f["file"]), framework="pt") as st:
                list(st.keys())
        except Exception as exc:
            raise ModelError(f"The weights file {f['file']} in {bundle.source} is not a valid "
                             f"safetensors file ({exc}).") from exc
    return bundle


# intensity normalisation of an untrained CT bundle (typical abdominal CT statistics)
CT_NORMALIZATION = {"scheme": "ct", "clip": [-958.0, 327.0], "mean": 82.0, "std": 136.0}


def untrained_bundle(preset: str, label_names, modality: str = "CT", spacing=None, folds: int = 1,
                     seed: int = 0, name: str | None = None, mirror_axes=()) -> tuple[dict, dict]:
    """(model.json, {fold: state dict}) of an UNTRAINED bundle with random weights, for tests and
    benchmarks. Raises ValueError for an unknown preset or a spacing of the wrong length."""
    import datetime

    import torch

    from .network import build_network
    from .network.presets import PRESET_SPACING, preset_config, preset_patch_size
    from .terminology import label_entry

    patch = list(preset_patch_size(preset))
    dimension = "3d" if len(patch) == 3 else "2d"
    spacing = list(spacing or PRESET_SPACING.get(preset, [1.0] * len(patch)))
    if len(spacing) != len(patch):
        raise ValueError(f"--spacing needs {len(patch)} values for a {dimension} preset.")
    if any(not 0 <= a < len(patch) for a in mirror_axes):
        raise ValueError(f"--mirror-axes: a {dimension} model has axes 0 to {len(patch) - 1}.")
    config = preset_config(preset, 1, len(label_names) + 1)
    weights = {}
    for fold in range(folds):
        torch.manual_seed(seed + fold)
        weights[f"fold_{fold}"] = build_network(config).state_dict()
    meta = {
        "name": name or f"untrained-{preset}",
        "version": "0.0.0",
        "description": f"UNTRAINED LKM-UNet ({preset} preset) with random weights, for "
                       "tests and benchmarks. Its segmentations are meaningless.",
        "licence": "Apache-2.0",
        "modality": modality,
        "dimension": dimension,
        "input_channels": 1,
        "spacing": spacing,
        "patch_size": patch,
        "transpose": [0, 1, 2],
        "orientation": None,
        "normalization": [CT_NORMALIZATION if modality == "CT" else {"scheme": "zscore"}],
        "network": config,
        "labels": [label_entry(i + 1, n) for i, n in enumerate(label_names)],
        # test-time mirroring only along axes the model was trained to mirror: none, unless given
        "inference": {"step": 0.5, "mirror_axes": list(mirror_axes)},
        "provenance": {"trained": False, "trainer": None, "data": None, "seed": seed,
                       "preset": preset,
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "note": "random initial weights from `lkm-segment bundle init`"},
    }
    return meta, weights


def write_bundle(out_dir, meta: dict, weights: dict) -> Path:
    """Write a bundle folder: one ``<fold>.safetensors`` per entry of ``weights``
    (fold name -> state_dict), and model.json = ``meta`` completed with format, folds and sha256.

    ``meta`` needs the keys of the schema above except format, format_version and folds.
    Labels may be given as names only ({"value", "name"}); colours and terminology are then
    filled in from :mod:`lkm_core.terminology`. Returns the folder.
    """
    from safetensors.torch import save_file
    from .terminology import label_entry

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads(json.dumps(meta))  # deep copy, and proof that it is JSON-safe
    meta["format"] = FORMAT
    meta["format_version"] = FORMAT_VERSION
    labels = []
    for lab in meta.get("labels", []):
        full = label_entry(lab["value"], lab["name"])
        full["name"] = lab["name"]
        full.update({k: v for k, v in lab.items() if v is not None})
        labels.append(full)
    meta["labels"] = labels
    if not weights:
        raise ModelError("write_bundle needs the weights of at least one fold.")
    folds = []
    for fold, state in weights.items():
        fname = f"{fold}.safetensors"
        _safe_relative(fname, "write_bundle")
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        tmp = out / f".{fname}.partial"
        save_file(tensors, str(tmp), metadata={"fold": str(fold), "name": str(meta.get("name"))})
        os.replace(tmp, out / fname)
        folds.append({"name": str(fold), "file": fname, "sha256": sha256(out / fname)})
    meta["folds"] = folds
    validate_meta(meta, f"{out / META_FILE} (being written)")
    _write_meta(out, meta)
    return out


def _write_meta(folder: Path, meta: dict) -> None:
    """model.json, written whole or not at all."""
    with atomic_path(folder / META_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def record_inference_choices(folder, choices: dict, evidence: dict) -> Path:
    """Set what ``auto`` runs for a bundle folder's model (``choices``: option -> value, see
    INFERENCE_CHOICES) in its model.json, with ``evidence`` (how it was shown) under
    ``provenance.speedup_check``. The weights are not touched."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file():
        raise ModelError(f"{folder} is not a bundle folder (no {META_FILE}); to record in a "
                         ".zip bundle, unzip it, record in the folder and zip it again.")
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    meta.setdefault("inference", {}).update(choices)
    meta.setdefault("provenance", {}).setdefault("speedup_check", {}).update(evidence)
    validate_meta(meta, str(folder / META_FILE))
    _write_meta(folder, meta)
    return folder


def zip_bundle(folder, zip_path) -> Path:
    """Pack a bundle folder into a .zip (model.json at the top level)."""
    folder, zip_path = Path(folder), Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                zf.write(p, p.relative_to(folder).as_posix())
    return zip_path


def default_bundle_path() -> Path:
    """The model shipped with the package (lkm_core/models/default), if there is one."""
    folder = Path(__file__).parent / "models" / "default"
    if (folder / META_FILE).is_file():
        return folder
    zips = sorted((Path(__file__).parent / "models").glob("default*.zip"))
    if zips:
        return zips[0]
    raise ModelError("No default model is installed with lkm_core (expected "
                     f"{folder / META_FILE}). Pass a model bundle with --model, or make an "
                     "untrained one for testing with `lkm-segment bundle init`.")
