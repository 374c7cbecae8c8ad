"""Shared test setup: explicit thread counts (2 cores, easily oversubscribed)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sample_ct():
    """The real sample CT (fetched once into the user cache, sha256-checked)."""
    from lkm_core.sample_data import fetch_sample_ct

    return fetch_sample_ct()
