"""`lkm-segment bundle precision`: whether bf16 keeps a model's labels, and recording it so that
`--precision auto` may use bf16 for that model."""

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
from lkm_core.inference.predictor import Predictor
from lkm_core.outputs import precision_proof
from lkm_core.outputs.precision_proof import (CaseAgreement, StructureAgreement, bf16_holds,
                                              compare_structures)


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
    assert got["liver"].voxels_differing == 4 and got["liver"].fp32_ml == 4.0
    assert got["pancreas"].dice == 0.8 and not got["pancreas"].judged  # 3 voxels: 0.003 mL
    # found by bf16 only: judged on the larger of the two volumes, and it fails
    assert got["spleen"].dice == 0.0 and got["spleen"].judged


def _case(dice, judged=True, ran="bf16"):
    return CaseAgreement("c", 1.0, 0.5, ran, [StructureAgreement("liver", 5.0, dice, 3, judged)])


def test_bf16_holds_only_where_every_judged_structure_keeps_its_dice_and_bf16_really_ran():
    assert bf16_holds([_case(0.995), _case(0.999)])
    assert not bf16_holds([_case(0.995), _case(0.98)])
    assert bf16_holds([_case(0.5, judged=False)])        # too small to say anything
    assert not bf16_holds([_case(1.0, ran="fp32")])      # its self-check fell back to fp32
    assert not bf16_holds([])


def _ct_file(tmp_path):
    image, _ = sphere_image(size=(36, 36, 36), spacing=(2.0, 2.0, 2.0), radius_mm=20,
                            value=300.0, background=-1000.0)
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def test_record_writes_the_outcome_into_model_json_and_leaves_the_weights(
        small_bundle, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(small_bundle, folder)
    weights_before = {p.name: p.read_bytes() for p in folder.glob("*.safetensors")}
    ct = _ct_file(tmp_path)
    # an untrained network's labels are noise; with every structure below the size worth
    # judging, the proof holds by construction, which is what lets this test see the recording
    code = main(["bundle", "precision", str(folder), str(ct), "--threads", "1",
                 "--min-volume-ml", "1e9", "--record"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "bf16 keeps the labels" in out and "ct: network fp32" in out
    meta = json.loads((folder / "model.json").read_text())
    assert meta["inference"]["cpu_precision"] == "bf16"
    check = meta["provenance"]["cpu_precision_check"]
    assert check["cases"] == 1 and check["required_dice"] == 0.99
    assert load_bundle(folder).cpu_precision == "bf16"
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


def test_a_failed_proof_records_fp32_and_exits_1(small_bundle, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(small_bundle, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["inference"]["cpu_precision"] = "bf16"
    (folder / "model.json").write_text(json.dumps(meta))
    net = NegatedInBf16(load_bundle(folder).num_classes)
    monkeypatch.setattr(precision_proof, "Predictor", functools.partial(Predictor, networks=[net]))
    code = main(["bundle", "precision", str(folder), str(_ct_file(tmp_path)), "--threads", "1",
                 "--record"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "(ran fp32)" in out and "does NOT keep the labels" in out  # the self-check caught it
    assert load_bundle(folder).cpu_precision == "fp32"


def test_record_refuses_a_zip_and_bad_thresholds_change_nothing(small_bundle, tmp_path, capsys):
    archive = zip_bundle(small_bundle, tmp_path / "model.zip")
    before = archive.read_bytes()
    ct = _ct_file(tmp_path)
    assert main(["bundle", "precision", str(archive), str(ct), "--record"]) == 2
    assert "--record needs a bundle folder" in capsys.readouterr().err
    assert archive.read_bytes() == before
    assert main(["bundle", "precision", str(small_bundle), str(ct), "--min-dice", "1.5"]) == 2
    assert "--min-dice must be in (0, 1]" in capsys.readouterr().err
