"""Benchmark: is the model's confidence worth ranking by? And what does it cost?

On every labelled CT this project can reach (the cases of ``default_model_dice.py``: the
training CT, the PET/CT DICOM series and the aorta CT, all from the totalsegmentator 2.18.0
source distribution; their references are TotalSegmentator's predictions, not manual labels):

* which pairs count: the default model was trained on ``training`` (in-sample: its figures are
  printed but never pooled into the reported ones); ``pet_ct_dicom`` and ``aorta_ct`` are other
  scans (held-out). Only held-out pairs give the reported figures. A structure the model did not
  find has no score (absent is not uncertain) and is counted apart (how often absent really
  means a miss);
* structure level, on held-out pairs the model found: Spearman's rank correlation between each
  structure's score (``CASE.json`` ``confidence.structures[*].score``) and its Dice against the
  reference; the AUROC of "score below t" for finding structures with Dice < 0.7; the area under
  the risk-coverage curve (AURC, risk = 1 - Dice, structures accepted most confident first, with
  the AURC of an oracle and of a random order for scale); the flag threshold that best separates
  them on these pairs (Youden's J), or why there is none. Bootstrap 95 % intervals (pairs
  resampled); with few pairs they are wide: read them;
* voxel level: the AUROC of the confidence map for finding wrong voxels (the predicted label
  differs from the reference, on the reference's grid, for the structures both know), with a
  95 % interval from a bootstrap over axial slices (neighbouring voxels are not independent),
  in two regions: ``inside predicted`` (voxels the model labelled as a structure: is a labelled
  voxel wrong?) and ``missed`` region included (also reference voxels the model called
  background, errors it is sure of by nature: a confidence map cannot point at organ it never
  saw);
* cost (``--overhead``): wall time and peak RSS of a plain run (no confidence), the default run
  (summary scores) and ``--confidence-map`` (voxel map too), each in its own process, same run.

    python Testing/benchmarks/confidence_vs_dice.py [--model BUNDLE ...] [--smoke-model]
        [--threads 2] [--overhead | --overhead-only] [--rounds 2] [--json OUT]

``--smoke-model`` also trains the small model of ``lkm_core.training.smoke`` (the nnU-Net
training the test suite runs, a few minutes on a CPU) and measures it too. So few cases make
a weak test: read the intervals.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from default_model_dice import DICOM_FOLDER, fetch_reference_files  # noqa: E402

IN_SAMPLE = {"training"}  # the default model's only training case
BAD_DICE = 0.7            # a structure needing correction
from lkm_core.bundle import default_bundle_path, load_bundle  # noqa: E402
from lkm_core.outputs.reading import dice  # noqa: E402
from lkm_core.inference.predictor import Predictor  # noqa: E402
from lkm_core.inputs import images as lkm_io  # noqa: E402
from lkm_core.inputs.sample_data import REFERENCE_LABELS  # noqa: E402
from lkm_core.terminology import lookup  # noqa: E402

BOOTSTRAP = 2000
RNG = np.random.default_rng(20261201)


def _key(name: str) -> str:
    structure = lookup(name)
    return structure.name if structure else name


def cases(folder: Path) -> list:
    """(name, image path, {organ key: (reference image, value)})."""
    out = []
    ref = sitk.ReadImage(str(folder / "example_seg_fast_force_split.nii.gz"))
    out.append(("training", folder / "example_ct.nii.gz",
                {k: (ref, v) for k, v in REFERENCE_LABELS.items()}))
    series = lkm_io.read_image(folder / DICOM_FOLDER)
    ref = sitk.Resample(sitk.ReadImage(str(folder / "example_seg_dicom.nii.gz")), series,
                        sitk.Transform(), sitk.sitkNearestNeighbor)
    present = {int(v) for v in np.unique(sitk.GetArrayViewFromImage(ref))}
    out.append(("pet_ct_dicom", folder / DICOM_FOLDER,
                {k: (ref, v) for k, v in REFERENCE_LABELS.items() if v in present}))
    ref = sitk.ReadImage(str(folder / "aorta_report/test_result/models/aorta.nii.gz"))
    out.append(("aorta_ct", folder / "aorta_report/example_ct.nii.gz", {"aorta": (ref, 1)}))
    return out


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def auroc_from_histograms(wrong: np.ndarray, right: np.ndarray) -> float:
    """AUROC of 'low confidence means wrong' from counts per confidence level 0..100."""
    n_wrong, n_right = wrong.sum(), right.sum()
    if n_wrong == 0 or n_right == 0:
        return float("nan")
    # P(conf_wrong < conf_right) + 0.5 P(equal)
    right_below = np.cumsum(right) - right  # right voxels with a lower confidence
    right_above = n_right - right_below - right
    return float((wrong * (right_above + 0.5 * right)).sum() / (n_wrong * n_right))


def voxel_histograms(conf: np.ndarray, wrong: np.ndarray, region: np.ndarray) -> list:
    """Per axial slice: (histogram of confidence on wrong voxels, on right voxels)."""
    out = []
    for z in range(conf.shape[0]):
        m = region[z]
        c, w = conf[z][m], wrong[z][m]
        out.append((np.bincount(c[w], minlength=101), np.bincount(c[~w], minlength=101)))
    return out


def bootstrap_auroc(hists: list) -> tuple:
    wrong = np.stack([h[0] for h in hists])
    right = np.stack([h[1] for h in hists])
    values = []
    for _ in range(BOOTSTRAP):
        idx = RNG.integers(0, len(hists), len(hists))
        v = auroc_from_histograms(wrong[idx].sum(0), right[idx].sum(0))
        if not math.isnan(v):
            values.append(v)
    return tuple(float(v) for v in np.percentile(values, [2.5, 97.5])) if values else (
        float("nan"), float("nan"))


def auroc(scores, bad) -> float:
    """AUROC of 'low score means bad' (ties count half); NaN without both classes."""
    scores, bad = np.asarray(scores, float), np.asarray(bad, bool)
    if bad.all() or not bad.any():
        return float("nan")
    low, high = scores[bad][:, None], scores[~bad][None, :]
    return float(((low < high) + 0.5 * (low == high)).mean())


def aurc(scores, dices) -> float:
    """Area under the risk-coverage curve: accept structures most confident first; risk is the
    mean (1 - Dice) of those accepted, averaged over every coverage (lower is better)."""
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    risk = 1.0 - np.asarray(dices, float)[order]
    return float(np.mean(np.cumsum(risk) / np.arange(1, len(risk) + 1)))


def bootstrap(stat, *columns) -> tuple:
    columns = [np.asarray(c) for c in columns]
    values = []
    for _ in range(BOOTSTRAP):
        idx = RNG.integers(0, len(columns[0]), len(columns[0]))
        v = stat(*(c[idx] for c in columns))
        if not math.isnan(v):
            values.append(v)
    if len(values) < BOOTSTRAP // 2:   # most resamples undefined: no honest interval
        return (float("nan"), float("nan"))
    return tuple(float(v) for v in np.percentile(values, [2.5, 97.5]))


def youden_threshold(scores, bad) -> float:
    """The flag threshold t (flag when score < t) maximising sensitivity + specificity - 1."""
    scores, bad = np.asarray(scores, float), np.asarray(bad, bool)
    best, best_t = -1.0, float("nan")
    for t in np.unique(scores):
        flagged = scores < t + 1e-9
        j = flagged[bad].mean() + (~flagged[~bad]).mean() - 1.0
        if j > best:
            best, best_t = j, float(t + 1e-4)
    return best_t


def structure_figures(pairs: list) -> dict:
    """The reported figures from held-out pairs the model found."""
    found = [p for p in pairs if p["score"] is not None]
    x = np.array([p["score"] for p in found], float)
    y = np.array([p["dice"] for p in found], float)
    bad = y < BAD_DICE
    out = {"n": len(found), "n_bad": int(bad.sum()),
           "spearman": spearman(x, y), "spearman_95": bootstrap(spearman, x, y),
           "auroc_bad": auroc(x, bad),
           "auroc_bad_95": bootstrap(lambda a, b: auroc(a, b < BAD_DICE), x, y),
           "aurc": aurc(x, y) if len(x) else float("nan"),
           "aurc_95": bootstrap(aurc, x, y) if len(x) else (float("nan"),) * 2,
           "aurc_oracle": aurc(y, y) if len(y) else float("nan"),
           "aurc_random": float(np.mean(1.0 - y)) if len(y) else float("nan")}
    if bad.all() or not bad.any():
        out["threshold"] = None
        out["threshold_why"] = (f"all {len(found)} held-out structures found have Dice "
                                f"{'<' if bad.all() else '>='} {BAD_DICE}: nothing to separate")
    else:
        out["threshold"] = youden_threshold(x, bad)
    absent = [p for p in pairs if p["score"] is None]
    out["absent"] = len(absent)
    out["absent_really_missed"] = sum(p["dice"] < 0.1 for p in absent)
    return out


def measure_model(bundle_path, case_list, threads: int) -> dict:
    bundle = load_bundle(bundle_path)
    predictor = Predictor(bundle, device="cpu", threads=threads, confidence_map=True)
    pairs, hists = [], {"inside predicted": {}, "missed included": {}}
    for name, image_path, references in case_list:
        result = predictor.predict_file(image_path)
        structures = result.confidence["structures"]
        by_value = {lab.value: lab for lab in bundle.labels}
        for lab in bundle.labels:
            key = _key(lab.name)
            if key not in references or lab.name not in structures:
                continue
            ref_img, ref_value = references[key]
            pred = sitk.Resample(result.labels, ref_img, sitk.Transform(),
                                 sitk.sitkNearestNeighbor, 0, result.labels.GetPixelID())
            d = dice(sitk.GetArrayViewFromImage(pred) == lab.value,
                     sitk.GetArrayViewFromImage(ref_img) == ref_value)
            if not math.isnan(d):
                pairs.append({"case": name, "structure": lab.name, "dice": round(d, 4),
                              "score": structures[lab.name]["score"],
                              "in_sample": name in IN_SAMPLE})
        # voxel level, on the reference's grid (of the first reference: one grid per case)
        ref_img = next(iter(references.values()))[0]
        pred = sitk.GetArrayFromImage(sitk.Resample(result.labels, ref_img, sitk.Transform(),
                                                    sitk.sitkNearestNeighbor, 0,
                                                    result.labels.GetPixelID()))
        conf = sitk.GetArrayFromImage(sitk.Resample(result.confidence_map, ref_img,
                                                    sitk.Transform(), sitk.sitkNearestNeighbor,
                                                    100, sitk.sitkUInt8))
        ref = sitk.GetArrayViewFromImage(ref_img)
        truth = np.zeros(ref.shape, np.int32)   # the reference in the model's label values
        for key, (img, value) in references.items():
            lab = next((lab for lab in by_value.values() if _key(lab.name) == key), None)
            if lab is not None and img is ref_img:
                truth[ref == value] = lab.value
        known = {lab.value for lab in by_value.values() if _key(lab.name) in references}
        pred_known = np.where(np.isin(pred, list(known)), pred, 0)
        wrong = pred_known != truth
        hists["inside predicted"][name] = voxel_histograms(conf, wrong, pred_known > 0)
        hists["missed included"][name] = voxel_histograms(conf, wrong,
                                                          (truth > 0) | (pred_known > 0))
    held_out = [p for p in pairs if not p["in_sample"]]
    report = {"model": f"{bundle.name} {bundle.version}", "pairs": pairs,
              "held_out": structure_figures(held_out), "voxel": {}}
    for region, per_case in hists.items():
        rows = [h for case, hs in per_case.items() if case not in IN_SAMPLE for h in hs]
        if not rows:
            continue
        wrong = np.stack([h[0] for h in rows]).sum(0)
        right = np.stack([h[1] for h in rows]).sum(0)
        report["voxel"][region] = {"auroc": auroc_from_histograms(wrong, right),
                                   "auroc_95": bootstrap_auroc(rows),
                                   "voxels": int(wrong.sum() + right.sum()),
                                   "wrong_voxels": int(wrong.sum())}
    return report


def _interval(pair) -> str:
    lo, hi = pair
    return "no interval" if math.isnan(lo) else f"95 % [{lo:.3f}, {hi:.3f}]"


def print_model(r: dict) -> None:
    print(f"\n{r['model']}: {len(r['pairs'])} (case, structure) pairs")
    for pair in r["pairs"]:
        score = "absent" if pair["score"] is None else f"{pair['score']:.3f}"
        where = "IN-SAMPLE" if pair["in_sample"] else "held-out"
        print(f"  {where:<9} {pair['case']:<14} {pair['structure']:<20} score {score:>6}"
              f"  Dice {pair['dice']:.3f}")
    h = r["held_out"]
    print(f"  held-out only (in-sample pairs left out): {h['n']} structures found, "
          f"{h['n_bad']} with Dice < {BAD_DICE}; {h['absent']} absent, of which "
          f"{h['absent_really_missed']} have Dice < 0.1 (the organ was there: a miss)")
    print(f"  Spearman(score, Dice) = {h['spearman']:.3f}  {_interval(h['spearman_95'])}")
    print(f"  AUROC(score flags Dice < {BAD_DICE}) = {h['auroc_bad']:.3f}  "
          f"{_interval(h['auroc_bad_95'])}")
    print(f"  AURC = {h['aurc']:.3f}  {_interval(h['aurc_95'])}  (oracle {h['aurc_oracle']:.3f},"
          f" random order {h['aurc_random']:.3f}; lower is better)")
    if h["threshold"] is None:
        print(f"  flag threshold: not calibrated: {h['threshold_why']}")
    else:
        print(f"  flag threshold (Youden, held-out): {h['threshold']:.3f}")
    for region, v in r["voxel"].items():
        print(f"  voxel AUROC (low confidence -> wrong voxel), {region}: {v['auroc']:.3f}  "
              f"{_interval(v['auroc_95'])}  ({v['wrong_voxels']} wrong of {v['voxels']})")


OVERHEAD_CHILD = """
import json, resource, sys, time
from lkm_core.bundle import load_bundle
from lkm_core.inference.predictor import Predictor
bundle, image, mode, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
p = Predictor(load_bundle(bundle), device="cpu", threads=threads,
              confidence=mode != "plain", confidence_map=mode == "map")
t0 = time.perf_counter()
r = p.predict_file(image)
print(json.dumps({"seconds": time.perf_counter() - t0, "postprocess": r.timings["postprocess"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def overhead(bundle_path, image, threads: int, rounds: int = 2) -> dict:
    """Wall time and peak RSS per mode, each run in a fresh process, modes interleaved."""
    runs = {"plain": [], "scores": [], "map": []}
    for _ in range(rounds):
        for mode in runs:
            out = subprocess.run([sys.executable, "-c", OVERHEAD_CHILD, str(bundle_path),
                                  str(image), mode, str(threads)], capture_output=True,
                                 text=True, cwd=REPO, check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {m: {k: min(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    for mode in ("scores", "map"):
        best[mode]["wall_ratio"] = best[mode]["seconds"] / best["plain"]["seconds"]
        best[mode]["rss_ratio"] = best[mode]["peak_rss_mb"] / best["plain"]["peak_rss_mb"]
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", default=None, help="bundle (repeatable; "
                   "default: the installed default model)")
    p.add_argument("--smoke-model", action="store_true",
                   help="also train and measure the nnU-Net smoke model (a few minutes)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--overhead", action="store_true", help="also measure the cost")
    p.add_argument("--overhead-only", action="store_true", help="only measure the cost")
    p.add_argument("--rounds", type=int, default=2, help="repeats of each cost run (best kept)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    folder = fetch_reference_files()
    case_list = cases(folder)
    models = list(args.model or [default_bundle_path()])
    if args.smoke_model:
        work = Path(tempfile.mkdtemp(prefix="lkm_smoke_"))
        subprocess.run([sys.executable, "-m", "lkm_core.training.smoke", str(work)], check=True,
                       cwd=REPO)
        models += sorted(str(m.parent) for m in work.rglob("model.json"))[:1]
    report = {"cases": [c[0] for c in case_list], "models": []}
    for model in ([] if args.overhead_only else models):
        t0 = time.perf_counter()
        r = measure_model(model, case_list, args.threads)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        report["models"].append(r)
        print_model(r)
    if args.overhead or args.overhead_only:
        cost = overhead(models[0], case_list[0][1], args.threads, args.rounds)
        report["overhead"] = cost
        print(f"\ncost on {case_list[0][0]} ({Path(models[0]).name}), best of {args.rounds}, "
              "fresh processes:")
        for mode, v in cost.items():
            ratios = (f"  x{v['wall_ratio']:.3f} wall, x{v['rss_ratio']:.3f} peak RSS"
                      if "wall_ratio" in v else "")
            print(f"  {mode:<7} {v['seconds']:.1f} s (postprocess {v['postprocess']:.2f} s), "
                  f"peak RSS {v['peak_rss_mb']:.0f} MB{ratios}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
