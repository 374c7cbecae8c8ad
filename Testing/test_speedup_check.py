"""`lkm-segment bundle speedups`: whether bf16, the fitted tiling and the body crop keep a model's
labels and pay, and recording those that do so that `auto` runs them for that model."""

from __future__ import annotations

import functools
import json
import shutil

import numpy as np
import SimpleITK as sitk
import torch

from engine_helpers import make_bundle, sphere_image
from lkm_core.bundle import load_bundle, verify_bundle, zip_bundle
from lkm_core.cli import main
from lkm_core.inference import predictor as inference
from lkm_core.inference.predictor import Predictor
from lkm_core.outputs import speedup_check
from lkm_core.outputs.speedup_check import (CaseAgreement, StructureAgreement, compare_structures,
                                            keeps_labels, pays, time_ratio)


def test_structures_are_judged_by_dice_unless_too_small_in_both(tmp_path):
    bundle = make_bundle(tmp_path / "b", labels=("liver", "spleen", "pancreas"))
    fp32 = np.zeros((20, 20, 20), np.uint8)
    fp32[:10] = 1                              # 4000 voxels of liver
    fp32[15, 15, 15:18] = 3                    # 3 voxels of pancreas
    bf16 = fp32.copy()
    bf16[0, 0, :4] = 0                         # 4 liver voxels lost
    bf16[15, 15, 17] = 0                       # one pancreas voxel lost
    bf16[12:14] = 2                            # 800 voxels of spleen that fp32 did not label
    got = {s.name: s for s in compare_structures(fp32, bf16, bundle, voxel_ml=0.001,
                                                 min_volume_ml=0.5)}
    assert got["liver"].dice == round(2 * 3996 / 7996, 4) and got["liver"].judged
    assert got["liver"].voxels_differing == 4 and got["liver"].reference_ml == 4.0
    assert got["pancreas"].dice == 0.8 and not got["pancreas"].judged  # 3 voxels: 0.003 mL
    # found by bf16 only: judged on the larger of the two volumes, and it fails
    assert got["spleen"].dice == 0.0 and got["spleen"].judged


def _case(dice, judged=True, ran=True, reference_s=1.0, seconds=0.5):
    return CaseAgreement("c", reference_s, seconds, ran,
                         [StructureAgreement("liver", 5.0, dice, 3, judged)])


def test_labels_are_kept_only_where_every_judged_structure_keeps_its_dice_and_it_really_ran():
    assert keeps_labels([_case(0.995), _case(0.999)])
    assert not keeps_labels([_case(0.995), _case(0.98)])
    assert keeps_labels([_case(0.5, judged=False)])        # too small to say anything
    assert not keeps_labels([_case(1.0, ran=False)])       # bf16's self-check fell back to fp32
    assert not keeps_labels([])


def test_a_speedup_pays_only_where_it_also_saves_time():
    fast, slow = _case(0.995, seconds=0.5), _case(0.995, reference_s=10.0, seconds=9.5)
    assert time_ratio([fast, slow]) == 10.0 / 11.0
    assert pays([fast]) and not pays([slow]) and not pays([fast, slow])
    assert pays([fast, slow], max_time_ratio=0.95)
    assert not pays([_case(0.98)])


def _ct_file(tmp_path):
    image, _ = sphere_image(size=(36, 36, 36), spacing=(2.0, 2.0, 2.0), radius_mm=20,
                            value=300.0, background=-1000.0)
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def test_record_writes_what_auto_runs_into_model_json_and_leaves_the_weights(
        small_bundle, tmp_path, capsys, monkeypatch):
    # the CPU's bf16 units are the one stand-in: recording bf16 needs them, and CI's CPU may
    # lack them (bf16 then runs emulated, with the same labels)
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: True)
    folder = tmp_path / "model"
    shutil.copytree(small_bundle, folder)
    weights_before = {p.name: p.read_bytes() for p in folder.glob("*.safetensors")}
    ct = _ct_file(tmp_path)
    # an untrained network's labels are noise; with every structure below the size worth
    # judging and any time accepted, each speed-up holds by construction, which is what lets
    # this test see the recording and auto following it
    code = main(["bundle", "speedups", str(folder), str(ct), "--threads", "1",
                 "--min-volume-ml", "1e9", "--max-time-ratio", "1000", "--record"])
    out = capsys.readouterr().out
    assert code == 0, out
    for line in ("bf16 keeps the labels", "fit keeps the labels", "body keeps the labels"):
        assert line in out
    meta = json.loads((folder / "model.json").read_text())
    assert {k: meta["inference"][k] for k in ("cpu_precision", "tiling", "crop")} == {
        "cpu_precision": "bf16", "tiling": "fit", "crop": "body"}
    check = meta["provenance"]["speedup_check"]
    assert set(check) == {"cpu_precision", "tiling", "crop"}
    assert check["tiling"]["cases"] == 1 and check["tiling"]["max_time_ratio"] == 1000
    bundle = load_bundle(folder)
    predictor = Predictor(bundle, device="cpu", threads=1)
    assert (predictor.tiling, predictor.crop) == ("fit", "body")
    assert Predictor(bundle, device="cpu", tiling="nnunet", crop="nonzero").tiling == "nnunet"
    verify_bundle(folder)
    assert {p.name: p.read_bytes() for p in folder.glob("*.safetensors")} == weights_before


class NegatedInBf16(torch.nn.Module):
    """A real Conv3d whose bf16 results are wrong, as a broken low-precision kernel's would be."""

    def __init__(self, classes):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, classes, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return -y if torch.is_autocast_enabled("cpu") else y


def test_bf16_refused_by_its_self_check_records_fp32(small_bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: True)
    folder = tmp_path / "model"
    shutil.copytree(small_bundle, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["inference"]["cpu_precision"] = "bf16"
    (folder / "model.json").write_text(json.dumps(meta))
    net = NegatedInBf16(load_bundle(folder).num_classes)
    monkeypatch.setattr(speedup_check, "Predictor", functools.partial(Predictor, networks=[net]))
    code = main(["bundle", "speedups", str(folder), str(_ct_file(tmp_path)), "--threads", "1",
                 "--only", "precision", "--record"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(bf16 did not run)" in out and "bf16 does NOT keep the labels" in out
    assert load_bundle(folder).cpu_precision == "fp32"
    assert "tiling" not in json.loads((folder / "model.json").read_text())["inference"]


def test_refusals_change_nothing(small_bundle, tmp_path, capsys, monkeypatch):
    archive = zip_bundle(small_bundle, tmp_path / "model.zip")
    before = archive.read_bytes()
    ct = _ct_file(tmp_path)
    assert main(["bundle", "speedups", str(archive), str(ct), "--record"]) == 2
    assert "--record needs a bundle folder" in capsys.readouterr().err
    assert archive.read_bytes() == before
    assert main(["bundle", "speedups", str(small_bundle), str(ct), "--min-dice", "1.5"]) == 2
    assert "--min-dice must be in (0, 1]" in capsys.readouterr().err
    assert main(["bundle", "speedups", str(small_bundle), str(ct), "--only", "turbo"]) == 2
    assert "--only takes precision, tiling, crop" in capsys.readouterr().err
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)
    meta_before = (small_bundle / "model.json").read_bytes()
    assert main(["bundle", "speedups", str(small_bundle), str(ct), "--record"]) == 2
    assert "Recording bf16 needs a CPU with bf16 units" in capsys.readouterr().err
    assert (small_bundle / "model.json").read_bytes() == meta_before


def test_the_body_crop_is_not_checked_on_an_mr_model(tmp_path, capsys):
    folder = tmp_path / "mr"
    assert main(["bundle", "init", "--preset", "3d_small", "--labels", "liver", "--modality",
                 "MR", "-o", str(folder), "--spacing", "6,6,6"]) == 0
    capsys.readouterr()
    assert speedup_check.applicable(load_bundle(folder)) == ["precision", "tiling"]
    assert main(["bundle", "speedups", str(folder), str(_ct_file(tmp_path)), "--only",
                 "crop"]) == 2
    assert "leave crop out of --only" in capsys.readouterr().err
