"""Predictor options: devices and the out-of-memory fallback, subsets, DICOM folders, sharding,
progress events."""

import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from engine_helpers import ThresholdNet, make_bundle, same_geometry, sphere_image
from lkm_core.inference import predictor as inference
from lkm_core.cli.common import UsageError
from lkm_core.cli.predict import _shard
from lkm_core.cli.root import _parser
from lkm_core.bundle import load_bundle
from lkm_core.errors import InputError, ModelError, ResourceError
from lkm_core.inference.predictor import Predictor, resolve_device
from lkm_core.inputs.dicom_series import series_case_name
from lkm_core.inputs.images import expand_inputs, read_image
from lkm_core.inference.sliding_window import DeviceOutOfMemory


def test_cuda_out_of_memory_falls_back_to_results_on_cpu_then_to_the_cpu(tmp_path, monkeypatch,
                                                                          caplog):
    image, mask = sphere_image(size=(12, 12, 12), radius_mm=4)
    bundle = make_bundle(tmp_path / "b", patch=(8, 8, 8))
    real = inference.sliding_window_passes
    seen = []

    def fake(networks, array, patch, n, *, device, results_device, **kwargs):
        seen.append((device.type, results_device.type, kwargs["autocast_dtype"]))
        if device.type == "cuda" and results_device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (accumulator)")
        if device.type == "cuda":
            raise DeviceOutOfMemory("CUDA out of memory with one patch per batch")
        return real(networks, array, patch, n, device=device, results_device=results_device,
                    **kwargs)

    monkeypatch.setattr(inference, "sliding_window_passes", fake)
    predictor = Predictor(bundle, device="cpu", networks=[ThresholdNet()])
    predictor.device = torch.device("cuda")       # pretend a GPU was chosen
    monkeypatch.setattr(predictor, "networks", lambda device: [ThresholdNet()])
    with caplog.at_level(logging.WARNING, logger="lkm_core"):
        result = predictor.predict_image(image)
    assert seen == [("cuda", "cuda", torch.float16), ("cuda", "cpu", torch.float16),
                    ("cpu", "cpu", None)]
    assert result.device == "cpu"
    assert "continuing on CPU" in caplog.text
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), mask.astype(np.uint8))


def test_cuda_requested_without_a_gpu_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ResourceError, match="--device cpu"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(InputError):
        resolve_device("tpu")


def test_subset_keeps_only_the_requested_labels_with_the_full_model_boundaries(tmp_path):
    image, mask = sphere_image(size=(12, 12, 12), radius_mm=4)
    bundle = make_bundle(tmp_path / "b", patch=(8, 8, 8), labels=("liver", "spleen"))
    full = Predictor(bundle, device="cpu", networks=[ThresholdNet(3)]).predict_image(image)
    only_spleen = Predictor(bundle, device="cpu", networks=[ThresholdNet(3)],
                            subset=["Spleen"]).predict_image(image)
    assert [lab.name for lab in only_spleen.label_list] == ["spleen"]
    assert sitk.GetArrayFromImage(full.labels).max() == 1
    assert sitk.GetArrayFromImage(only_spleen.labels).max() == 0  # liver dropped
    with pytest.raises(InputError, match="liver, spleen"):
        Predictor(bundle, device="cpu", subset=["lung"])


def test_progress_events_follow_the_protocol(tmp_path):
    image, _ = sphere_image(size=(12, 12, 12), radius_mm=4)
    path = tmp_path / "s.nrrd"
    sitk.WriteImage(image, str(path))
    events = []
    Predictor(make_bundle(tmp_path / "b", patch=(8, 8, 8)), device="cpu",
              networks=[ThresholdNet()], progress=events.append).predict_file(path)
    assert {e["event"] for e in events} == {"progress"}
    assert all(e["case"] == "s" and 0 <= e["fraction"] <= 1 for e in events)
    assert [e["phase"] for e in events][0] == "read"
    assert [e["phase"] for e in events][-1] == "postprocess"


def write_dicom_series(image: sitk.Image, folder):
    """A CT-like int16 DICOM series (one file per slice) with the image's geometry."""
    folder.mkdir()
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    orientation = "\\".join(str(v) for v in (direction[0], direction[3], direction[6],
                                             direction[1], direction[4], direction[7]))
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        for tag, value in [("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|000e", "1.2.826.0.1.3680043.2.1125.2"),
                           ("0020|0037", orientation), ("0020|0013", str(k + 1)),
                           ("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint(
                               (0, 0, k))))), ("0028|1053", "1"), ("0028|1052", "0")]:
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(s)


def test_dicom_series_folder_is_one_case_with_the_series_geometry(tmp_path):
    image, _ = sphere_image(size=(16, 14, 6), spacing=(0.9, 0.9, 2.0), origin=(-5, 10, 20),
                            value=400, background=-100, radius_mm=5)
    write_dicom_series(image, tmp_path / "patient_ct")
    cases = expand_inputs([tmp_path / "patient_ct"])
    # named from the Series Instance UID, never from the folder (which may name the patient)
    assert [name for name, _ in cases] == [series_case_name("CT", None, "1.2.826.0.1.3680043.2.1125.2")]
    read = read_image(cases[0][1])
    assert same_geometry(read, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read),
                                  sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkInt16)))


def test_folder_of_images_expands_to_one_case_per_file(tmp_path):
    image, _ = sphere_image(size=(8, 8, 8))
    for name in ("b.nii.gz", "a.nrrd", "c.mha"):
        sitk.WriteImage(image, str(tmp_path / name))
    (tmp_path / "notes.txt").write_text("not an image", encoding="utf-8")
    assert [name for name, _ in expand_inputs([tmp_path])] == ["a", "b", "c"]
    with pytest.raises(InputError, match="same output name"):
        expand_inputs([tmp_path / "a.nrrd", tmp_path / "a.nrrd"])


def test_sharding_by_part_or_by_torchrun_rank(monkeypatch):
    cases = [(f"c{i}", None) for i in range(5)]
    parse = _parser().parse_args
    args = parse(["predict", "x", "-o", "o", "--num-parts", "2", "--part-id", "1"])
    assert [c for c, _ in _shard(cases, args)] == ["c1", "c3"]
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    assert [c for c, _ in _shard(cases, parse(["predict", "x", "-o", "o"]))] == ["c2"]
    with pytest.raises(UsageError):
        _shard(cases, parse(["predict", "x", "-o", "o", "--num-parts", "2", "--part-id", "2"]))


@pytest.mark.parametrize("tiling,windows,ran,calls", [
    ("auto", None, "nnunet", [(1, 1, 16, 32, 32)]),     # nnU-Net's tiling unless asked
    ("nnunet", None, "nnunet", [(1, 1, 16, 32, 32)]),
    ("fit", None, "fit", [(1, 1, 16, 8, 8)]),           # strides 4: 14 x 7 x 7 -> 16 x 8 x 8
    # the stage-2 windows (2 x 2 x 2 at stride 4): multiples of 8 -> 16 x 8 x 8 again; the
    # stage-1 ones (4 x 8 x 4 at stride 2): multiples of (8, 16, 8)
    ("fit", [[1, 1, 1], [4, 8, 4], [2, 2, 2]], "fit", [(1, 1, 16, 16, 8)]),
])
def test_tiling_is_nnunets_unless_fit_is_asked_and_the_summary_says_which_ran(
        tmp_path, tiling, windows, ran, calls):
    from lkm_core.outputs.labels import summarize

    image, mask = sphere_image(size=(7, 7, 14), spacing=(2.0, 2.0, 2.0), radius_mm=4,
                               background=-1.0)  # not cropped away as empty
    bundle = make_bundle(tmp_path / "b", spacing=(2, 2, 2), patch=(16, 32, 32))
    bundle.meta["network"]["kwargs"]["strides"] = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    if windows:
        bundle.meta["network"]["kwargs"]["window_sizes"] = windows
    net = ThresholdNet()
    result = Predictor(bundle, device="cpu", networks=[net], tiling=tiling,
                       precision="fp32").predict_image(image)
    assert net.calls == calls
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), mask.astype(np.uint8))
    recorded = summarize(result, bundle)["tiling"]
    assert recorded["mode"] == ran and recorded["patch"] == list(calls[0][2:])
    assert recorded["work_ratio"] == pytest.approx(np.prod(calls[0][2:]) / (14 * 7 * 7), abs=1e-3)


def test_unknown_tiling_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="tiling 'tiles'.*fit or nnunet"):
        Predictor(make_bundle(tmp_path / "b"), device="cpu", networks=[ThresholdNet()],
                  tiling="tiles")


class WrongInBf16(torch.nn.Module):
    """A real Conv3d whose bf16 results are wrong, as a broken low-precision kernel's would be."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)
        torch.nn.init.normal_(self.conv.weight)
        self.autocast_dtypes = []

    def forward(self, x):
        y = self.conv(x)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        self.autocast_dtypes.append(dtype)
        return -y if dtype == torch.bfloat16 else y


def test_bf16_that_disagrees_with_fp32_falls_back_to_fp32_with_one_warning(tmp_path, caplog):
    from lkm_core.outputs.labels import summarize

    image, _ = sphere_image(size=(12, 12, 12), radius_mm=4, background=-1.0)
    bundle = make_bundle(tmp_path / "b", patch=(8, 8, 8))
    net = WrongInBf16()
    predictor = Predictor(bundle, device="cpu", networks=[net], precision="bf16")
    with caplog.at_level(logging.WARNING, logger="lkm_core"):
        first = predictor.predict_image(image)
        second = predictor.predict_image(image)
    assert caplog.text.count("bf16 convolutions gave wrong results") == 1
    assert net.autocast_dtypes.count(torch.bfloat16) == 1       # the check only, once
    assert first.precision == second.precision == "fp32"
    assert summarize(first, bundle)["precision"] == "fp32"
    exact = Predictor(bundle, device="cpu", networks=[net], precision="fp32").predict_image(image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(first.labels),
                                  sitk.GetArrayFromImage(exact.labels))


def test_bf16_that_agrees_runs_in_bf16_and_says_so(tmp_path):
    image, _ = sphere_image(size=(12, 12, 12), radius_mm=4, background=-1.0)
    bundle = make_bundle(tmp_path / "b", patch=(8, 8, 8))
    net = WrongInBf16()
    net.forward = lambda x: net.conv(x)  # the same convolution, right in bf16
    result = Predictor(bundle, device="cpu", networks=[net], precision="bf16").predict_image(image)
    assert result.precision == "bf16"


@pytest.mark.parametrize("recorded, cpu_has_bf16, expected", [
    ("bf16", True, "bf16"), ("bf16", False, "fp32"), (None, True, "fp32"), ("fp32", True, "fp32")])
def test_auto_runs_bf16_only_where_the_model_records_it_and_the_cpu_has_it(
        tmp_path, monkeypatch, recorded, cpu_has_bf16, expected):
    image, _ = sphere_image(size=(12, 12, 12), radius_mm=4, background=-1.0)
    bundle = make_bundle(tmp_path / "b", patch=(8, 8, 8))
    if recorded is not None:
        bundle.meta.setdefault("inference", {})["cpu_precision"] = recorded
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: cpu_has_bf16)
    net = WrongInBf16()
    net.forward = lambda x: net.conv(x)  # right in bf16: the self-check passes
    result = Predictor(bundle, device="cpu", networks=[net]).predict_image(image)
    assert result.precision == expected
    forced = Predictor(bundle, device="cpu", networks=[net], precision="fp32").predict_image(image)
    assert forced.precision == "fp32"


def test_a_model_recording_an_unknown_cpu_precision_is_refused(tmp_path):
    bundle = make_bundle(tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "model.json").read_text())
    meta["inference"] = {"cpu_precision": "int8"}
    (tmp_path / "b" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="cpu_precision must be fp32 or bf16, not 'int8'"):
        load_bundle(tmp_path / "b")
    meta["inference"] = {"tiling": "tiles"}
    (tmp_path / "b" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="inference.tiling must be fit or nnunet, not 'tiles'"):
        load_bundle(tmp_path / "b")
    assert (bundle.cpu_precision, bundle.tiling, bundle.crop) == ("fp32", "nnunet", "nonzero")


def test_bf16_is_detected_from_the_cpu_flags(tmp_path):
    flags = tmp_path / "cpuinfo"
    flags.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n")
    assert inference.cpu_supports_bf16(str(flags))
    flags.write_text("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert not inference.cpu_supports_bf16(str(flags))
    assert not inference.cpu_supports_bf16(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="precision 'fp8'"):
        Predictor(make_bundle(tmp_path / "b"), device="cpu", networks=[ThresholdNet()],
                  precision="fp8")


def test_fit_rounds_to_what_every_stage_window_needs(tmp_path):
    """The paper's 3D windows at their stages' strides need multiples of 40 x 224 x 192: its
    own patch, so "fit" cannot shrink it; the strides alone would allow 8 x 32 x 32."""
    from lkm_core.network.presets import preset_config

    bundle = make_bundle(tmp_path / "b", patch=(40, 224, 192))
    bundle.meta["network"] = preset_config("3d_paper")
    predictor = Predictor(bundle, device="cpu", networks=[ThresholdNet()], tiling="fit")
    assert predictor._divisors(3) == (40, 224, 192)
    assert predictor._divisors(3, windows=False) == (8, 32, 32)
    bundle.meta["network"]["kwargs"]["use_pim"] = bundle.meta["network"]["kwargs"]["use_pam"] = False
    assert predictor._divisors(3) == (8, 32, 32)
