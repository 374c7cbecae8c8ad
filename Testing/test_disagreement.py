"""Disagreement between passes (folds x mirrorings) as a review signal: the sliding window's
extra per-voxel array, the per-structure ``disagreement``, its flag, the batch CSV and review."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from engine_helpers import make_bundle, sphere_image
from lkm_core.batch import review
from lkm_core.batch.report import scores_from_summary
from lkm_core.contract import DISAGREEMENT_FLAG_ABOVE, FLAG_BELOW
from lkm_core.inference import sliding_window
from lkm_core.inference.predictor import Predictor
from lkm_core.inference.sliding_window import sliding_window_passes
import slicer_fixtures  # noqa: F401  (puts LKMSegment/ on sys.path)

from LKMSegmentLib.triage import structures_from_summary  # noqa: E402


class LookupNet(torch.nn.Module):
    """Logits per voxel looked up from its (rounded) input value: ``table[value]`` is the
    class-logit vector. Pointwise, so overlapping patches and mirrors all see the same."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)

    def forward(self, x):
        index = x[:, 0].round().long().clamp(0, len(self.table) - 1)
        return self.table[index].movedim(-1, 1)


# input 0 background, 1 liver, 2 spleen: both folds sure of background and liver
AGREEING = [[10, 0, 0], [0, 10, 0], [0, 0, 10]]
# the second fold calls the spleen liver (p 0.88), the first spleen (p 1.0): the average
# still says spleen (logits 0, 3, 7), sure of it
SPLEEN_DISPUTED = [[10, 0, 0], [0, 10, 0], [0, 6, 4]]


def two_organ_image():
    liver_image, liver = sphere_image(size=(24, 20, 20), centre_mm=(7, 10, 10), radius_mm=5)
    _, spleen = sphere_image(size=(24, 20, 20), centre_mm=(17, 10, 10), radius_mm=4)
    array = liver.astype(np.float32) + 2 * spleen.astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(liver_image)
    return image


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("b"), patch=(16, 16, 16),
                       labels=("liver", "spleen"), mirror_axes=(0, 1, 2))


def predict(bundle, networks, **kwargs):
    torch.set_num_threads(1)
    return Predictor(bundle, device="cpu", networks=networks, **kwargs).predict_image(
        two_organ_image())


def test_folds_that_agree_disagree_nowhere(bundle):
    result = predict(bundle, [LookupNet(AGREEING), LookupNet(AGREEING)])
    structures = result.confidence["structures"]
    for name in ("liver", "spleen"):
        assert structures[name]["disagreement"] == pytest.approx(0, abs=1e-3)
        assert not structures[name]["flagged"]
    assert result.confidence["case_disagreement"] == pytest.approx(0, abs=1e-3)


def test_mirrorings_of_one_fold_are_passes_too(bundle):
    result = predict(bundle, [LookupNet(AGREEING)], tta=True)  # 8 mirror sets, one fold
    assert result.confidence["case_disagreement"] == pytest.approx(0, abs=1e-3)


def test_folds_that_disagree_on_a_structure_flag_it_despite_a_good_score(bundle, tmp_path):
    result = predict(bundle, [LookupNet(AGREEING), LookupNet(SPLEEN_DISPUTED)])
    labels = sitk.GetArrayFromImage(result.labels)
    assert (labels == 2).sum() > 100 and (labels == 1).sum() > 100  # both still segmented
    liver, spleen = (result.confidence["structures"][n] for n in ("liver", "spleen"))
    assert liver["disagreement"] < 0.01 and not liver["flagged"]
    # the two passes' probabilities: Hellinger^2 of (~0, ~0, 1) and (0.002, 0.879, 0.119)
    assert spleen["disagreement"] > 0.5
    assert spleen["score"] >= FLAG_BELOW and spleen["flagged"]
    assert result.confidence["case_disagreement"] == spleen["disagreement"]

    columns = scores_from_summary({"confidence": result.confidence})
    assert float(columns["spleen_disagreement"]) > DISAGREEMENT_FLAG_ABOVE
    assert float(columns["liver_disagreement"]) < 0.01
    assert columns["case_disagreement"] == columns["spleen_disagreement"]

    summary = {"case": "c1", "labels": "c1.seg.nrrd", "model": {},
               "confidence": {**result.confidence, "map": None}}
    (tmp_path / "c1.json").write_text(json.dumps(summary), encoding="utf-8")
    cases, _ = review.collect(tmp_path)
    text = review.table(cases)
    assert "disagr" in text and f"{spleen['disagreement']:.2f}" in text
    rows = (tmp_path / "review.csv")
    review.write_csv(cases, rows)
    import csv
    by_name = {r["structure"]: r for r in csv.DictReader(rows.open(encoding="utf-8"))}
    assert float(by_name["spleen"]["disagreement"]) > 0.5
    assert by_name["spleen"]["flagged"] == "True"
    assert float(by_name["liver"]["case_disagreement"]) > 0.5

    # the panel reads the same flag, and says why
    panel = {s.name: s for s in structures_from_summary(summary)}
    assert panel["spleen"].flagged and "disagree" in panel["spleen"].text()
    del summary["confidence"]["structures"]["spleen"]["flagged"]  # an engine without the flag
    panel = {s.name: s for s in structures_from_summary(summary)}
    assert panel["spleen"].flagged


def test_one_pass_has_no_disagreement_and_the_same_outputs(bundle):
    result = predict(bundle, [LookupNet(SPLEEN_DISPUTED)])
    assert "case_disagreement" not in result.confidence
    assert all("disagreement" not in s for s in result.confidence["structures"].values())
    assert scores_from_summary({"confidence": result.confidence}).keys().isdisjoint(
        {"case_disagreement", "spleen_disagreement", "liver_disagreement"})


def test_the_extra_array_exists_only_with_several_passes(monkeypatch):
    array = np.random.default_rng(0).uniform(0, 2, (1, 20, 18, 17)).astype(np.float32)
    spatial = []
    real_zeros = torch.zeros

    def counting(*args, **kwargs):
        out = real_zeros(*args, **kwargs)
        spatial.append(tuple(out.shape))
        return out

    monkeypatch.setattr(sliding_window.torch, "zeros", counting)
    one = sliding_window_passes([LookupNet(SPLEEN_DISPUTED)], array, (16, 16, 16), 3)
    assert one.disagreement is None
    assert spatial.count((20, 18, 17)) == 1  # the summed weights only
    spatial.clear()
    two = sliding_window_passes([LookupNet(AGREEING), LookupNet(SPLEEN_DISPUTED)], array,
                                (16, 16, 16), 3)
    assert spatial.count((20, 18, 17)) == 2 and two.disagreement.shape == (20, 18, 17)
    assert two.disagreement.dtype == torch.float32
    assert float(two.disagreement.min()) >= 0 and float(two.disagreement.max()) < 1
    spatial.clear()
    off = sliding_window_passes([LookupNet(AGREEING), LookupNet(SPLEEN_DISPUTED)], array,
                                (16, 16, 16), 3, disagreement=False)
    assert off.disagreement is None and spatial.count((20, 18, 17)) == 1
    assert torch.equal(off.scores, two.scores)  # the signal leaves the scores as they were


def test_a_2d_network_with_mirrors_and_folds_gets_the_same_disagreement():
    class Slices(torch.nn.Module):  # a 2D network: (B, C, h, w)
        def __init__(self, table):
            super().__init__()
            self.net = LookupNet(table)

        def forward(self, x):
            return self.net(x[:, :, None])[:, :, 0]

    array = np.random.default_rng(1).integers(0, 3, (1, 5, 20, 18)).astype(np.float32)
    out = sliding_window_passes([Slices(AGREEING), Slices(SPLEEN_DISPUTED)], array, (1, 16, 16),
                                3, mirror_axes=(1, 2))  # 4 mirror sets x 2 folds
    assert tuple(out.disagreement.shape) == array.shape[1:]
    assert float(out.disagreement[array[0] < 2].max()) < 1e-4  # the folds agree there
    # half the passes each way: the two folds' squared Hellinger distance, as with 2 passes
    assert float(out.disagreement[array[0] == 2].mean()) == pytest.approx(0.6485, abs=1e-3)
