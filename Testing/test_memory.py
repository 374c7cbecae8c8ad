"""``--memory keep``: glibc malloc keeps freed memory in the process (lkm_core/inference/memory.py).

mallopt changes the whole process for good, so where it really runs it runs in a child process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from engine_helpers import run_cli, sphere_image
from lkm_core.cli import predict as predict_cli
from lkm_core.cli.root import _parser
from lkm_core.inference import memory


def _glibc_here() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def test_keep_applies_exactly_where_glibc_is_in_its_own_process():
    """Applied on Linux/glibc (CI and this machine); a no-op reporting False anywhere else."""
    code = ("from lkm_core.inference.memory import keep_freed_memory as k;"
            "print(k())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(_glibc_here())


def test_keep_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)  # no C library found
    assert memory.keep_freed_memory() is False


def test_keep_is_a_no_op_where_the_c_library_cannot_be_loaded(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no such library")
    monkeypatch.setattr(ctypes, "CDLL", refuse)
    assert memory.keep_freed_memory() is False


def test_keep_is_a_no_op_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory.keep_freed_memory() is False


def test_release_changes_nothing_and_unknown_modes_are_refused():
    assert memory.apply_memory_mode("release") is False
    with pytest.raises(ValueError, match="keep"):
        memory.apply_memory_mode("hoard")


def test_the_option_is_parsed_and_applied_before_the_model_loads(tmp_path, monkeypatch):
    args = _parser().parse_args(["predict", "in.nii.gz", "-o", str(tmp_path)])
    assert args.memory == memory.DEFAULT_MEMORY_MODE
    with pytest.raises(SystemExit):
        _parser().parse_args(["predict", "in.nii.gz", "-o", str(tmp_path), "--memory", "hoard"])
    applied = []
    monkeypatch.setattr(predict_cli, "apply_memory_mode", applied.append)
    args = _parser().parse_args(["predict", "in.nii.gz", "-o", str(tmp_path), "--memory",
                                 "release", "--model", str(tmp_path / "missing"),
                                 "--progress", "none"])
    assert predict_cli.cmd_predict(args) != 0  # the model is missing: fails after applying
    assert applied == ["release"]


def test_labels_are_identical_with_and_without_keeping_memory(tmp_path):
    bundle = tmp_path / "small"
    done = run_cli("bundle", "init", "--preset", "3d_small", "-o", bundle, "--spacing", "2,2,2",
                   "--labels", "liver,spleen")
    assert done.returncode == 0, done.stderr
    image, _ = sphere_image(size=(48, 40, 36), spacing=(2.0, 2.0, 2.0), value=300.0,
                            background=-100.0)
    sitk.WriteImage(image, str(tmp_path / "ball.nii.gz"))
    labels, probabilities = {}, {}
    for mode in memory.MEMORY_MODES:
        out = tmp_path / mode
        done = run_cli("predict", tmp_path / "ball.nii.gz", "-o", out, "--model", bundle,
                       "--device", "cpu", "--threads", "1", "--progress", "none",
                       "--memory", mode, "--save-probabilities", "--format", "nii.gz")
        assert done.returncode == 0, done.stderr
        labels[mode] = sitk.GetArrayFromImage(sitk.ReadImage(str(next(out.glob("*.nii.gz")))))
        probabilities[mode] = np.load(next(out.glob("*.npz")))["probabilities"]
    assert labels["keep"].shape == (36, 40, 48)
    assert np.array_equal(labels["keep"], labels["release"])
    assert probabilities["keep"].tobytes() == probabilities["release"].tobytes()  # bit for bit
