"""Our Mamba layer against mamba_ssm's layout and against an independent implementation.

mamba_ssm itself cannot be imported without its CUDA kernels, so the independent peer is
transformers' MambaMixer, which loads mamba_ssm checkpoints by the same parameter names and
has a pure-PyTorch forward.
"""

import math

import pytest
import torch

from lkm_core.ssm import Mamba

from transformers import MambaConfig  # a dev dependency: always present in CI
from transformers.models.mamba.modeling_mamba import MambaMixer


def mamba_ssm_shapes(d_model, d_state=16, d_conv=4, expand=2):
    """Parameter shapes as mamba_ssm's Mamba.__init__ defines them."""
    d_inner, dt_rank = expand * d_model, math.ceil(d_model / 16)
    return {"A_log": (d_inner, d_state), "D": (d_inner,), "in_proj.weight": (2 * d_inner, d_model),
            "conv1d.weight": (d_inner, 1, d_conv), "conv1d.bias": (d_inner,),
            "x_proj.weight": (dt_rank + 2 * d_state, d_inner), "dt_proj.weight": (d_inner, dt_rank),
            "dt_proj.bias": (d_inner,), "out_proj.weight": (d_model, d_inner)}


def peer(d_model):
    config = MambaConfig(hidden_size=d_model, state_size=16, conv_kernel=4, expand=2,
                         time_step_rank="auto", use_bias=False, use_conv_bias=True)
    return MambaMixer(config, layer_idx=0)


@pytest.mark.parametrize("d_model", [8, 32, 48, 320])
def test_state_dict_keys_and_shapes_equal_mamba_ssm(d_model):
    ours = {k: tuple(v.shape) for k, v in Mamba(d_model).state_dict().items()}
    assert ours == mamba_ssm_shapes(d_model)
    assert ours == {k: tuple(v.shape) for k, v in peer(d_model).state_dict().items()}


def test_initialisation_follows_mamba_ssm():
    layer = Mamba(64)
    A = torch.exp(layer.A_log)
    assert torch.allclose(A, torch.arange(1, 17, dtype=torch.float32).repeat(128, 1))
    assert torch.equal(layer.D, torch.ones(128))
    dt = torch.nn.functional.softplus(layer.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert layer.dt_proj.weight.abs().max() <= layer.dt_rank ** -0.5


@pytest.mark.parametrize("d_model", [16, 40])
def test_forward_equals_the_peer_with_the_same_weights(d_model):
    torch.manual_seed(0)
    ours = Mamba(d_model)
    other = peer(d_model)
    other.load_state_dict(ours.state_dict())          # same names: loads unchanged
    x = torch.randn(2, 57, d_model)
    with torch.no_grad():
        expected = other.eval()(x)
        expected = expected[0] if isinstance(expected, tuple) else expected
        got = ours(x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    ours.load_state_dict(other.state_dict())          # and back


def test_runs_in_fp32_under_autocast():
    layer = Mamba(16)
    x = torch.randn(1, 20, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert y.dtype == torch.float32
    assert torch.allclose(y, layer(x.bfloat16().float()), atol=1e-6)


def test_without_out_proj_returns_the_inner_width_and_has_no_out_proj_keys():
    layer = Mamba(16, use_out_proj=False)
    assert layer(torch.randn(1, 5, 16)).shape == (1, 5, 32)
    assert not any(k.startswith("out_proj") for k in layer.state_dict())


def test_layer_trains_gradients_reach_every_parameter():
    layer = Mamba(8)
    layer(torch.randn(2, 30, 8)).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bidirectional_single_scan_equals_two_separate_directions():
    from lkm_core.ssm.mamba import bidirectional_time_major

    torch.manual_seed(0)
    fwd, bwd = Mamba(12, use_out_proj=False), Mamba(12, use_out_proj=False)
    x = torch.randn(40, 3, 12)                              # time-major (l, b, c)
    expected = fwd.forward_time_major(x) + bwd.forward_time_major(x.flip(0)).flip(0)
    got = bidirectional_time_major(fwd, bwd, x)
    assert torch.allclose(got, expected, atol=1e-5)
    got.square().sum().backward()                           # gradients reach both directions
    assert fwd.A_log.grad.abs().sum() > 0 and bwd.A_log.grad.abs().sum() > 0


def perturbed_bim(channels, seed=0):
    """A BiMamba whose weights are moved off their initial values (D=1, one A per channel...)."""
    from lkm_core.network.mamba_blocks import BiMamba

    torch.manual_seed(seed)
    bim = BiMamba(channels).eval()
    with torch.no_grad():
        for p in bim.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return bim


def test_fused_cpu_bidirectional_path_equals_the_torch_path(monkeypatch):
    """The inference path (one in_proj, reverse walk by index, numba conv + scan) vs the torch one."""
    from lkm_core.ssm import backend

    bim = perturbed_bim(12)
    x = torch.randn(5, 301, 12)
    with torch.no_grad():
        monkeypatch.setenv(backend.ENV_VAR, "torch")
        backend.reset_backends_used()
        expected = bim(x)
        assert backend.backends_used() == ("torch",)
        monkeypatch.setenv(backend.ENV_VAR, "auto")
        backend.reset_backends_used()
        got = bim(x)
        assert backend.backends_used() == ("numba",)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_fused_path_groups_sequences_without_changing_the_result(monkeypatch):
    import lkm_core.network.mamba_blocks as blocks

    bim = perturbed_bim(8, seed=1)
    x = torch.randn(7, 40, 8)
    with torch.no_grad():
        whole = bim(x)
        monkeypatch.setattr(blocks, "_GROUP_ELEMENTS", 40 * 16 * 2 * 3)   # 3 sequences a group
        assert bim._group(40) == 3
        grouped = bim(x)
    assert torch.allclose(whole, grouped, atol=1e-6)


def test_training_mode_still_uses_autograd_through_bim():
    bim = perturbed_bim(8).train()
    x = torch.randn(2, 30, 8, requires_grad=True)
    bim(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert bim.mamba_bwd.A_log.grad.abs().sum() > 0 and bim.mamba_fwd.dt_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(1, 6, 8, 12, 10), (2, 6, 7, 11, 10)])   # window divides / needs padding
@pytest.mark.parametrize("mode", ["window", "strided"])
def test_pim_inference_path_equals_the_torch_path(shape, mode, monkeypatch):
    """PiM on the CPU: channels-first out_proj, residual added through a view (or, padded, put back)."""
    from lkm_core.network.mamba_blocks import PixelMamba
    from lkm_core.ssm import backend

    torch.manual_seed(2)
    pim = PixelMamba(6, (4, 4, 5), mode).eval()
    with torch.no_grad():
        for p in pim.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        x = torch.randn(*shape)
        monkeypatch.setenv(backend.ENV_VAR, "torch")
        expected = pim(x)
        monkeypatch.setenv(backend.ENV_VAR, "auto")
        got = pim(x)
    assert got.shape == x.shape
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
