"""Model bundles: round trip, checksums, safe zips, clear errors; the terminology table."""

import json
import os
import stat
import zipfile

import pytest
import torch

from engine_helpers import make_bundle
from lkm_core import terminology
from lkm_core.bundle import (FORMAT_VERSION, default_bundle_path, load_bundle, verify_bundle,
                             write_bundle, zip_bundle)
from lkm_core.errors import ModelError
from lkm_core.network.presets import preset_config


def small_meta(labels=("liver", "spleen")):
    return {
        "name": "m", "version": "2.0", "dimension": "3d", "input_channels": 1,
        "spacing": [3.0, 3.0, 3.0], "patch_size": [32, 64, 64], "transpose": [0, 1, 2],
        "normalization": [{"scheme": "CTNormalization", "clip": [-1000, 1000], "mean": 0,
                           "std": 100}],
        "network": preset_config("3d_small", 1, len(labels) + 1),
        "labels": [{"value": i + 1, "name": n} for i, n in enumerate(labels)],
    }


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory):
    from lkm_core.network import build_network
    meta = small_meta()
    torch.manual_seed(0)
    net = build_network(meta["network"])
    folder = write_bundle(tmp_path_factory.mktemp("bundle") / "b", meta,
                          {"fold_0": net.state_dict(), "fold_1": net.state_dict()})
    return folder, net


def test_write_then_load_round_trips_weights_labels_and_settings(real_bundle):
    folder, net = real_bundle
    bundle = load_bundle(folder)
    assert bundle.meta["format_version"] == FORMAT_VERSION
    assert bundle.folds == ["fold_0", "fold_1"]
    assert (bundle.name, bundle.version, bundle.dimension) == ("m", "2.0", "3d")
    assert bundle.patch_size == (32, 64, 64) and bundle.spacing == (3.0, 3.0, 3.0)
    assert bundle.normalization[0]["scheme"] == "ct"  # nnU-Net's name accepted
    liver = bundle.labels[0]
    assert liver.value == 1 and liver.name == "liver"
    assert liver.terminology["type"]["code"] == "10200004"
    assert liver.terminology["category"]["code"] == "123037004"
    assert all(0 <= c <= 1 for c in liver.color)
    loaded = bundle.load_network("fold_1")
    assert not loaded.training
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    assert all(len(f["sha256"]) == 64 for f in meta["folds"])


def test_weights_files_are_safetensors_not_pickles(real_bundle):
    folder, _ = real_bundle
    for f in folder.glob("*.safetensors"):
        head = f.read_bytes()[:16]
        assert not head.startswith(b"\x80") and not head.startswith(b"PK")  # pickle / torch zip


def test_tampered_weights_are_refused_with_a_checksum_message(real_bundle, tmp_path):
    import shutil
    folder = tmp_path / "copy"
    shutil.copytree(real_bundle[0], folder)
    weights = folder / "fold_0.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        load_bundle(folder)
    with pytest.raises(ModelError, match="fold_0.safetensors"):
        verify_bundle(folder)


def test_missing_weights_file_is_named(real_bundle, tmp_path):
    import shutil
    folder = tmp_path / "copy"
    shutil.copytree(real_bundle[0], folder)
    (folder / "fold_1.safetensors").unlink()
    with pytest.raises(ModelError, match="fold_1.safetensors.*missing"):
        load_bundle(folder)


@pytest.mark.parametrize("key", ["labels", "spacing", "network", "folds", "format_version"])
def test_model_json_missing_a_required_key_names_the_key(real_bundle, tmp_path, key):
    import shutil
    folder = tmp_path / "copy"
    shutil.copytree(real_bundle[0], folder)
    meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    del meta[key]
    (folder / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ModelError, match=key):
        load_bundle(folder)


def test_newer_format_version_asks_for_an_update(real_bundle, tmp_path):
    import shutil
    folder = tmp_path / "copy"
    shutil.copytree(real_bundle[0], folder)
    meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    meta["format_version"] = FORMAT_VERSION + 1
    (folder / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ModelError, match="Update"):
        load_bundle(folder)


def test_unknown_network_class_is_never_imported(tmp_path):
    meta = small_meta()
    meta["network"] = {"class": "os.system", "kwargs": {}}
    write_bundle(tmp_path / "b", meta, {"fold_0": {"x": torch.zeros(1)}})
    with pytest.raises(ModelError, match="cannot be built"):
        load_bundle(tmp_path / "b").load_network()


def test_zip_bundle_loads_like_the_folder(real_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("LKM_CACHE_DIR", str(tmp_path / "cache"))
    archive = zip_bundle(real_bundle[0], tmp_path / "model.zip")
    bundle = load_bundle(archive)
    assert bundle.folds == ["fold_0", "fold_1"]
    assert (tmp_path / "cache" / "bundles") in bundle.path.parents
    assert load_bundle(archive).path == bundle.path  # extracted once, reused


@pytest.mark.parametrize("bad_name", ["../evil.txt", "/abs/evil.txt", "sub/../../evil.txt"])
def test_zip_with_a_path_escape_is_refused_and_nothing_is_written(tmp_path, monkeypatch, bad_name):
    monkeypatch.setenv("LKM_CACHE_DIR", str(tmp_path / "cache"))
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("model.json", "{}")
        zf.writestr(bad_name, "gotcha")
    with pytest.raises(ModelError, match="outside the bundle"):
        load_bundle(archive)
    assert not (tmp_path / "evil.txt").exists()
    assert not any((tmp_path / "cache").rglob("evil.txt"))


def test_zip_with_a_symlink_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LKM_CACHE_DIR", str(tmp_path / "cache"))
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("weights.safetensors")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ModelError, match="link"):
        load_bundle(archive)


def test_not_a_bundle_gives_a_clear_message(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="model.json"):
        load_bundle(tmp_path / "empty")
    (tmp_path / "file.bin").write_bytes(b"junk")
    with pytest.raises(ModelError, match="neither a folder nor a .zip"):
        load_bundle(tmp_path / "file.bin")


def test_default_bundle_path_explains_when_no_model_is_installed():
    import lkm_core
    installed = os.path.exists(os.path.join(os.path.dirname(lkm_core.__file__), "models",
                                            "default", "model.json"))
    if installed:
        assert default_bundle_path().name == "default"
    else:
        with pytest.raises(ModelError, match="--model"):
            default_bundle_path()


def test_bundle_made_for_tests_reports_untrained(tmp_path):
    assert not make_bundle(tmp_path / "b").trained


def test_terminology_lookup_knows_organs_and_falls_back_neutrally():
    right = terminology.lookup("Right Kidney")
    assert right.type["code"] == "64033007" and right.modifier["code"] == "24028007"
    assert terminology.lookup("kidney-left").modifier["code"] == "7771000"
    assert terminology.lookup("IVC").type["code"] == "64131007"
    codes = {n: terminology.lookup(n).type["code"] for n in
             ("liver", "spleen", "gallbladder", "stomach", "pancreas", "aorta")}
    assert codes == {"liver": "10200004", "spleen": "78961009", "gallbladder": "28231008",
                     "stomach": "69695003", "pancreas": "15776009", "aorta": "15825003"}
    entry = terminology.label_entry(9, "tumour_thing")
    assert entry["color"] == list(terminology.NEUTRAL_COLOR)
    assert entry["terminology"]["type"]["meaning"] == "Tissue"
    text = terminology.slicer_terminology_string(right.terminology())
    assert text.split("~")[1:4] == ["SCT^123037004^Anatomical Structure", "SCT^64033007^Kidney",
                                    "SCT^24028007^Right"]
