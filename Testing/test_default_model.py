"""The default model shipped in lkm_core/models/default, and `lkm-segment demo`.

The bundle is checked statically (loads, checksums, size, labels, terminology, provenance,
normalisation = what the training recipe computes); the demo runs end to end in a child
process on the sample CT and must write its outputs and a meaningful liver Dice (the model was
trained on that CT, so this is a floor, not a measure of generalisation). The demo tests are
marked slow: the sliding window over the sample takes about a minute of CPU time (54 patches),
and several minutes of wall time on a busy 2-core machine; the static checks take seconds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lkm_core.bundle import default_bundle_path, verify_bundle
from lkm_core.training import default_model

REPO = Path(__file__).resolve().parents[1]
MAX_BUNDLE_BYTES = 15 * 1024 * 1024
LIVER_DICE_FLOOR = 0.5


@pytest.fixture(scope="module")
def bundle():
    return verify_bundle(default_bundle_path())


def test_default_bundle_path_is_the_packaged_folder_and_verifies(bundle):
    path = default_bundle_path()
    assert path == REPO / "lkm_core" / "models" / "default"
    assert bundle.trained
    assert bundle.name == default_model.BUNDLE_NAME
    assert [f["file"] for f in bundle.meta["folds"]] == ["fold_0.safetensors"]


def test_default_bundle_is_small(bundle):
    size = sum(p.stat().st_size for p in Path(bundle.path).iterdir() if p.is_file())
    assert size <= MAX_BUNDLE_BYTES, f"bundle is {size / 2**20:.1f} MB"


def test_network_is_lkm_unet_with_pim_pam_and_bim(bundle):
    from lkm_core.network import count_parameters
    from lkm_core.network.mamba_blocks import PatchMamba, PixelMamba

    kwargs = bundle.network_config["kwargs"]
    assert kwargs["use_pim"] and kwargs["use_pam"] and kwargs["bidirectional"]
    assert kwargs["pim_partition"] == "window"
    net = bundle.load_network()  # strict load of the weights
    assert count_parameters(net) <= 3_500_000
    pims = [m for m in net.modules() if isinstance(m, PixelMamba)]
    pams = [m for m in net.modules() if isinstance(m, PatchMamba)]
    assert len(pims) == len(pams) == kwargs["n_stages"]
    assert all(m.bim.mamba_bwd is not None for m in pims + pams)
    assert bundle.network_config == default_model.network_config()
    assert list(bundle.patch_size) == list(default_model.PATCH_SIZE)


def test_labels_names_colours_and_snomed_codes(bundle):
    assert [lab.name for lab in bundle.labels] == list(default_model.ORGANS)
    assert [lab.value for lab in bundle.labels] == list(range(1, 10))
    codes = {lab.name: lab.terminology["type"]["code"] for lab in bundle.labels}
    assert codes["liver"] == "10200004" and codes["spleen"] == "78961009"
    assert codes["kidney_right"] == codes["kidney_left"] == "64033007"
    assert codes["inferior_vena_cava"] == "64131007" and codes["aorta"] == "15825003"
    sides = {lab.name: lab.terminology.get("modifier", {}).get("meaning") for lab in bundle.labels}
    assert sides["kidney_right"] == "Right" and sides["kidney_left"] == "Left"
    for lab in bundle.labels:
        assert lab.terminology["category"]["code"] == "123037004"
        assert len(lab.color) == 3 and all(0 <= c <= 1 for c in lab.color)


def test_provenance_is_honest_and_complete(bundle):
    prov = bundle.provenance
    assert prov["trained"] is True
    for key in ("data", "trainer", "command", "training", "date", "note"):
        assert prov.get(key), key
    assert "totalsegmentator==2.18.0" in prov["data"]["source"]
    assert prov["data"]["licence"] == "Apache-2.0" and prov["data"]["cases"] == 1
    assert "prediction" in prov["data"]["labels"] and "not manual" in prov["data"]["labels"]
    assert "not for clinical" in (bundle.description + prov["note"]).lower()
    assert prov["command"].startswith("python -m lkm_core.training.default_model")
    training = prov["training"]
    assert training["seed"] == default_model.DEFAULTS["seed"]
    assert training["iterations"] > 0 and training["parameters"] <= 3_500_000
    assert set(prov["dice_on_training_ct"]) == set(default_model.ORGANS)


def test_normalisation_is_the_training_recipe_on_the_sample(bundle, sample_ct):
    image, labels, itk = default_model.load_training_case(sample_ct)
    assert bundle.normalization == [default_model.ct_normalization(image, labels)]
    assert list(bundle.spacing) == [float(s) for s in itk.GetSpacing()[::-1]]


def test_package_data_ships_the_bundle():
    import tomllib  # Python >= 3.11 (CI and Slicer)
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["lkm_core"]
    shipped = {p.relative_to(REPO / "lkm_core").as_posix()
               for pattern in patterns for p in (REPO / "lkm_core").glob(pattern) if p.is_file()}
    assert {"models/default/model.json", "models/default/fold_0.safetensors"} <= shipped


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, sample_ct):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, "-m", "lkm_core", "demo", "-o", str(out),
                           "--threads", "2", "--device", "cpu", "--progress", "none"],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    return out, proc


@pytest.mark.slow
def test_demo_writes_segmentation_summary_and_picture(demo_run):
    import SimpleITK as sitk

    out, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("example_ct.seg.nrrd", "example_ct.json", "example_ct.png",
                 "example_ct.dice.json"):
        assert (out / name).is_file(), name
    picture = sitk.ReadImage(str(out / "example_ct.png"))
    assert picture.GetNumberOfComponentsPerPixel() == 3
    assert picture.GetSize()[0] > picture.GetSize()[1] > 50
    summary = json.loads((out / "example_ct.json").read_text(encoding="utf-8"))
    assert summary["model"]["trained"] is True
    assert [lab["name"] for lab in summary["labels"]] == list(default_model.ORGANS)


@pytest.mark.slow
def test_demo_prints_dice_per_organ_and_time(demo_run):
    out, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = dict(re.findall(r"Dice (\w+)\s+([0-9.]+)", proc.stdout))
    assert set(default_model.ORGANS) <= set(found), proc.stdout
    assert re.search(r"Time: [0-9.]+ s", proc.stdout)
    report = json.loads((out / "example_ct.dice.json").read_text(encoding="utf-8"))
    assert abs(report["dice"]["liver"] - float(found["liver"])) < 1e-3
    # trained on this very CT: a floor that catches a broken pipeline, not a quality claim
    assert float(found["liver"]) >= LIVER_DICE_FLOOR
