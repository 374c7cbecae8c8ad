"""``lkm-segment demo``: segment the sample CT with the default model and show the result.

    lkm-segment demo [-o OUTDIR] [--device auto|cpu|cuda] [--threads N] [--model BUNDLE]

Fetches the sample CT (:mod:`lkm_core.sample_data`), runs the ordinary ``predict`` command on it
(same code path as any user's case), then writes a PNG picture (axial, coronal and sagittal
slices through the liver, labels overlaid in their colours) and prints the Dice of every organ
against the sample's reference labels (TotalSegmentator's own prediction) and the time taken.
Outputs in OUTDIR: ``example_ct.seg.nrrd``, ``example_ct.json`` (summary), ``example_ct.png``,
``example_ct.dice.json``.

The PNG is written by SimpleITK (no imaging library needed).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

# display window for the picture (abdomen soft tissue, HU)
WINDOW = (-160.0, 240.0)
ALPHA = 0.45


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="segment the sample CT with the default model; Dice and a picture",
        description="Fetch the public sample CT (TotalSegmentator 2.18.0 test data), segment it "
                    "with the default model (or --model), write the .seg.nrrd, the JSON summary "
                    "and a PNG picture, and print per-organ Dice against the sample's reference "
                    "labels (which are TotalSegmentator's predictions) and the time taken.")
    p.add_argument("-o", "--output", default="lkm-segment-demo", metavar="OUTDIR",
                   help="output folder (default: ./lkm-segment-demo)")
    p.add_argument("--model", metavar="BUNDLE", help="model bundle (default: the installed "
                   "default model)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ITK")
    p.add_argument("--progress", default="bar", choices=["bar", "none"],
                   help="progress bar on stderr (default) or nothing")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from .bundle import default_bundle_path, load_bundle
    from .cli import EXIT_OK, main as cli_main
    from .errors import ModelError
    from .sample_data import fetch_sample_ct

    print("Fetching the sample CT (TotalSegmentator 2.18.0 test data, Apache-2.0) ...",
          flush=True)
    sample = fetch_sample_ct()
    model = Path(args.model) if args.model else default_bundle_path()
    bundle = load_bundle(model)
    if not bundle.trained:
        print("warning: this model is UNTRAINED (random weights); its Dice will be ~0.",
              flush=True)
    out_dir = Path(args.output).absolute()
    print(f"Segmenting {sample.image.name} with {bundle.name} {bundle.version} ...", flush=True)
    argv = ["predict", str(sample.image), "-o", str(out_dir), "--model", str(model),
            "--device", args.device, "--overwrite", "--progress", args.progress]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    code = cli_main(argv)
    seconds = time.perf_counter() - t0
    if code != EXIT_OK:
        return code
    case = "example_ct"
    seg_path = out_dir / f"{case}.seg.nrrd"
    summary_path = out_dir / f"{case}.json"
    if not seg_path.is_file():
        raise ModelError(f"predict reported success but wrote no {seg_path}")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))

    import SimpleITK as sitk
    image = sitk.ReadImage(str(sample.image), sitk.sitkFloat32)
    reference = sitk.ReadImage(str(sample.reference_labels))
    predicted, names = read_seg_nrrd(seg_path, image)
    dice = organ_dice(predicted, reference, names)
    png = write_overlay_png(image, predicted, bundle.labels, out_dir / f"{case}.png")
    report = {"model": {"name": bundle.name, "version": bundle.version,
                        "path": str(bundle.source)},
              "case": str(sample.image), "reference": str(sample.reference_labels),
              "reference_note": "TotalSegmentator's prediction, not manual ground truth",
              "dice": {k: (None if math.isnan(v) else round(v, 4)) for k, v in dice.items()},
              "seconds": round(seconds, 2), "device": summary.get("device"),
              "timings": summary.get("timings")}
    from .outputs import write_json
    write_json(report, out_dir / f"{case}.dice.json")

    print(f"\nDice against the reference labels (TotalSegmentator's prediction; "
          f"{'the default model was trained on this CT' if not args.model else 'model given'}):")
    width = max(len(n) for n in dice) if dice else 10
    for organ, d in dice.items():
        print(f"  Dice {organ:<{width}}  {'n/a' if math.isnan(d) else f'{d:.3f}'}")
    valid = [d for d in dice.values() if not math.isnan(d)]
    if valid:
        print(f"  Dice {'mean':<{width}}  {sum(valid) / len(valid):.3f}")
    print(f"\nTime: {seconds:.1f} s for predict on {summary.get('device')} "
          f"(network {summary.get('timings', {}).get('network', float('nan')):.1f} s)")
    print(f"Wrote {seg_path}\n      {summary_path}\n      {png}\n      "
          f"{out_dir / (case + '.dice.json')}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
def read_seg_nrrd(path, reference_image):
    """(label image on ``reference_image``'s grid, {label value: segment name}) from a
    .seg.nrrd written by lkm_core (one layer, label values per segment)."""
    import SimpleITK as sitk
    import slicerio

    seg = slicerio.read_segmentation(str(path))
    voxels = np.asarray(seg["voxels"])
    if voxels.ndim == 4:  # several layers: never written by lkm_core, merge them in order
        voxels = voxels.max(axis=0)
    names = {int(s["labelValue"]): s["name"] for s in seg["segments"]}
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels.transpose(2, 1, 0)))
    ijk_to_lps = np.asarray(seg["ijkToLPS"], dtype=float)
    offset = np.asarray(seg.get("referenceImageExtentOffset", [0, 0, 0]), dtype=float)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / spacing
    origin = ijk_to_lps[:3, 3] + ijk_to_lps[:3, :3] @ offset
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in direction.ravel()])
    image.SetOrigin([float(v) for v in origin])
    labels = sitk.Resample(image, reference_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                           image.GetPixelID())
    return labels, names


def organ_dice(predicted, reference, names: dict) -> dict:
    """{organ: Dice} for every predicted segment name that the sample's reference labels know."""
    import SimpleITK as sitk
    from .sample_data import REFERENCE_LABELS
    from .terminology import lookup

    pred = sitk.GetArrayViewFromImage(predicted)
    ref = sitk.GetArrayViewFromImage(reference)
    out = {}
    for value, name in sorted(names.items()):
        structure = lookup(name)
        key = structure.name if structure else name
        if key not in REFERENCE_LABELS:
            continue
        out[key] = dice(pred == value, ref == REFERENCE_LABELS[key])
    return out


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    denom = int(pred.sum()) + int(ref.sum())
    return float("nan") if denom == 0 else 2.0 * int(np.logical_and(pred, ref).sum()) / denom


def _to_display(img2d, spacing_rows, spacing_cols, scale_mm=1.5):
    """Nearest-neighbour resize of a 2D array (rows, cols, ...) to square pixels of scale_mm."""
    rows = max(1, int(round(img2d.shape[0] * spacing_rows / scale_mm)))
    cols = max(1, int(round(img2d.shape[1] * spacing_cols / scale_mm)))
    ri = np.minimum((np.arange(rows) * img2d.shape[0] / rows).astype(int), img2d.shape[0] - 1)
    ci = np.minimum((np.arange(cols) * img2d.shape[1] / cols).astype(int), img2d.shape[1] - 1)
    return img2d[ri][:, ci]


def overlay_rgb(ct: np.ndarray, labels: np.ndarray, colors: dict) -> np.ndarray:
    """RGB uint8 of a CT slice (windowed grey) with labels blended in their colours."""
    lo, hi = WINDOW
    grey = np.clip((ct - lo) / (hi - lo), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for value, color in colors.items():
        mask = labels == value
        if mask.any():
            rgb[mask] = (1 - ALPHA) * rgb[mask] + ALPHA * np.asarray(color, dtype=float)
            # a crisp outline: mask voxels with a non-mask 4-neighbour
            edge = mask.copy()
            inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] \
                & mask[1:-1, 2:]
            edge[1:-1, 1:-1] &= ~inner
            rgb[edge] = np.asarray(color, dtype=float)
    return (rgb * 255 + 0.5).astype(np.uint8)


def write_overlay_png(image, labels, label_list, path, focus: str = "liver") -> Path:
    """Axial | coronal | sagittal slices (radiological display, LPS) through the centre of
    ``focus`` (or of the volume when it is absent), labels overlaid; written as PNG."""
    import SimpleITK as sitk

    ct = sitk.DICOMOrient(image, "LPS")
    lab = sitk.DICOMOrient(labels, "LPS")
    a = sitk.GetArrayFromImage(ct)       # (z: inferior->superior, y: anterior->posterior,
    m = sitk.GetArrayFromImage(lab)      #  x: right->left)
    sx, sy, sz = ct.GetSpacing()
    colors = {lab_.value: lab_.color for lab_ in label_list}
    value = next((lab_.value for lab_ in label_list if lab_.name == focus), None)
    pts = np.argwhere(m == value) if value is not None else np.empty((0, 3))
    if len(pts) == 0:
        pts = np.argwhere(m > 0)
    centre = pts.mean(0).round().astype(int) if len(pts) else np.array(a.shape) // 2
    z, y, x = (int(v) for v in centre)
    views = [
        (a[z], m[z], sy, sx),                          # axial: anterior up, patient right left
        (a[:, y, :][::-1], m[:, y, :][::-1], sz, sx),  # coronal: superior up
        (a[:, :, x][::-1], m[:, :, x][::-1], sz, sy),  # sagittal: superior up, anterior left
    ]
    panels = [_to_display(overlay_rgb(c, l_, colors), sr, sc) for c, l_, sr, sc in views]
    height = max(p.shape[0] for p in panels)
    gap = np.zeros((height, 4, 3), np.uint8)
    row = []
    for p in panels:
        pad = height - p.shape[0]
        p = np.pad(p, ((pad // 2, pad - pad // 2), (0, 0), (0, 0)))
        row += [p, gap]
    picture = np.concatenate(row[:-1], axis=1)
    path = Path(path)
    from .outputs import atomic_path
    with atomic_path(path, ".png") as tmp:
        sitk.WriteImage(sitk.GetImageFromArray(picture, isVector=True), str(tmp))
    return path


if __name__ == "__main__":  # pragma: no cover - use `lkm-segment demo`
    from .cli import main
    sys.exit(main(["demo", *sys.argv[1:]]))
