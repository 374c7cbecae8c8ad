"""Shared test setup: explicit thread counts (2 cores, easily oversubscribed)."""

import pytest
import torch

torch.set_num_threads(1)


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
