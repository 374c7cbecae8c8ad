"""``lkm-segment demo``: segment the sample CT with the default model and show the result.

    lkm-segment demo [-o OUTDIR] [--device auto|cpu|cuda] [--threads N] [--model BUNDLE]

Fetches the sample CT (:mod:`lkm_core.inputs.sample_data`), runs the ordinary ``predict`` command on it
(same code path as any user's case), then writes a PNG picture (axial, coronal and sagittal
slices through the liver: the prediction above the sample's reference labels, in the model's
colours, with a legend) and prints the Dice of every organ
against the sample's reference labels (TotalSegmentator's own prediction) and the time taken.
Outputs in OUTDIR: ``example_ct.seg.nrrd``, ``example_ct.json`` (summary), ``example_ct.png``,
``example_ct.dice.json``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from ..contract import DEVICE_HELP, EXIT_OK
from ..outputs.reading import organ_dice, read_seg_nrrd
from . import predict

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
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ITK")
    p.add_argument("--progress", default="bar", choices=["bar", "none"],
                   help="progress bar on stderr (default) or nothing")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from ..bundle import default_bundle_path, load_bundle
    from ..errors import ModelError
    from ..inputs.sample_data import fetch_sample_ct

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
    argv = [str(sample.image), "-o", str(out_dir), "--model", str(model),
            "--device", args.device, "--overwrite", "--progress", args.progress]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    code = predict.run(argv)
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
    png = write_demo_png(image, predicted, reference, bundle.labels, out_dir / f"{case}.png",
                         f"{bundle.name} {bundle.version}")
    report = {"model": {"name": bundle.name, "version": bundle.version,
                        "path": str(bundle.source)},
              "case": str(sample.image), "reference": str(sample.reference_labels),
              "reference_note": "TotalSegmentator's prediction, not manual ground truth",
              "dice": {k: (None if math.isnan(v) else round(v, 4)) for k, v in dice.items()},
              "seconds": round(seconds, 2), "device": summary.get("device"),
              "timings": summary.get("timings")}
    from ..outputs.labels import write_json
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


def write_demo_png(image, predicted, reference, label_list, path, model_title: str,
                   focus: str = "liver") -> Path:
    """The prediction above the sample's reference labels (same slices), with a legend."""
    import SimpleITK as sitk

    from ..outputs.pictures import LegendEntry, Row, labelled_views_picture, write_png
    from ..inputs.sample_data import REFERENCE_LABELS
    from ..terminology import lookup

    def key(name):
        structure = lookup(name)
        return structure.name if structure else name

    colors = {lab.value: lab.color for lab in label_list}
    # the reference in the model's values, for the structures both know
    ref = sitk.GetArrayFromImage(reference)
    ours = np.zeros(ref.shape, np.uint16)
    for lab in label_list:
        if key(lab.name) in REFERENCE_LABELS:
            ours[ref == REFERENCE_LABELS[key(lab.name)]] = lab.value
    ref_image = sitk.GetImageFromArray(ours)
    ref_image.CopyInformation(reference)
    ref_image = sitk.Resample(ref_image, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              ref_image.GetPixelID())
    focus_values = [lab.value for lab in label_list if key(lab.name) == focus]
    picture = labelled_views_picture(
        image,
        [Row(f"Prediction: {model_title}", predicted, colors),
         Row("Reference: the sample's labels (TotalSegmentator's prediction)", ref_image, colors)],
        [LegendEntry(lab.name, lab.color) for lab in label_list], modality="CT",
        focus_values=focus_values)
    return write_png(picture, path)
