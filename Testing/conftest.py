"""Shared test setup: explicit thread counts (2 cores, easily oversubscribed), the fixtures
several test files use, and the Slicer stand-ins on the path (Testing/slicer_tests: some engine
tests check the panel side of a behaviour too)."""

import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent / "slicer_tests"))


@pytest.fixture(scope="session")
def sample_ct():
    """The real sample CT (fetched once into the user cache, sha256-checked)."""
    from lkm_core.inputs.sample_data import fetch_sample_ct

    return fetch_sample_ct()


@pytest.fixture(scope="session")
def trained_smoke(tmp_path_factory, sample_ct):
    """A tiny LKM-UNet trained by nnU-Net's stock trainer and exported to a bundle, once per
    session: shared by the training end-to-end test, the hard peer check and the orientation
    tests (lkm_core.training.smoke)."""
    from lkm_core.training import smoke

    return smoke.build(tmp_path_factory.mktemp("nnunet"), epochs=2, iterations=10, threads=1)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    """An untrained 3d_small bundle at 6 mm (a tiny network grid keeps runs short)."""
    folder = tmp_path_factory.mktemp("bundles") / "small"
    from lkm_core.cli import main

    assert main(["bundle", "init", "--preset", "3d_small", "--labels", "liver,spleen",
                 "-o", str(folder), "--spacing", "6,6,6"]) == 0
    return folder
