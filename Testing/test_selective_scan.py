"""The selective scan: every backend (fused numba, chunked torch, autograd) against a plain fp64 loop."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lkm_core.ssm.scan as scan_module
from lkm_core.ssm import backend, selective_scan, selective_scan_reference


def plain_fp64_scan(u, delta, A, B, C, D, z, delta_bias, softplus):
    """The recurrence written out step by step, in float64: the definition we test against."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if softplus:
        delta = torch.nn.functional.softplus(delta)
    b, d, l = u.shape
    h = torch.zeros(b, d, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(l):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.double()[:, None]
    if z is not None:
        y = y * torch.nn.functional.silu(z.double())
    return y


def make_inputs(b, d, n, l, dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=dtype) * scale).requires_grad_(requires_grad)
    return dict(u=r(b, d, l), delta=r(b, d, l, scale=0.5), A=(-torch.rand(d, n, generator=g, dtype=dtype) * 2)
                .requires_grad_(requires_grad), B=r(b, n, l), C=r(b, n, l), D=r(d), z=r(b, d, l),
                delta_bias=r(d, scale=0.5))


OPTIONS = [  # (use D, use z, use delta_bias, softplus)
    (True, True, True, True), (False, False, False, False), (True, False, True, False), (False, True, False, True)]


def within_tolerance(got, expected):
    """The accuracy every backend must reach: max |error| <= 1e-5 * max |y| against fp64."""
    return (got.double() - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def run_path(path, x, kwargs):
    """path: "numba" / "torch" (inference backends, no grad) or "autograd" (the training path)."""
    if path == "autograd":
        got = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], **kwargs)
        assert got.requires_grad
        return got
    with torch.no_grad():
        return selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], **kwargs, backend=path)


@pytest.mark.parametrize("use_D,use_z,use_bias,softplus", OPTIONS)
@pytest.mark.parametrize("path", ["numba", "torch", "autograd"])
def test_scan_matches_fp64_loop_within_1e_minus_5(path, use_D, use_z, use_bias, softplus, monkeypatch):
    # a small chunk length so that sequences span several chunks
    monkeypatch.setattr(scan_module, "_CHUNK_ELEMENTS", 2 * 3 * 8 * 5)
    x = make_inputs(2, 3, 8, 37, requires_grad=(path == "autograd"))
    if not softplus:  # Mamba's step sizes are positive; without softplus the caller ensures it
        x["delta"] = x["delta"].detach().abs().requires_grad_(path == "autograd")
        x["delta_bias"] = x["delta_bias"].detach().abs().requires_grad_(path == "autograd")
    kwargs = dict(D=x["D"] if use_D else None, z=x["z"] if use_z else None,
                  delta_bias=x["delta_bias"] if use_bias else None, delta_softplus=softplus)
    expected = plain_fp64_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], kwargs["D"], kwargs["z"],
                               kwargs["delta_bias"], softplus)
    got = run_path(path, x, kwargs)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 37)
    assert within_tolerance(got, expected)


@pytest.mark.parametrize("path", ["numba", "torch"])
def test_a_10000_step_sequence_stays_within_1e_minus_5(path):
    """Long sequences accumulate rounding: 12,000 steps (a stage-0 window is 13,440).

    The fp64 reference here is the chunked torch scan run in float64 (a Python loop of
    12,000 steps is too slow for a unit test); the short tests tie it to the plain loop.
    """
    x = make_inputs(1, 24, 16, 12000, seed=5)
    x["delta"] = x["delta"] - 2.0          # Mamba-like small steps: long memory, the hard case
    with torch.no_grad():
        expected = selective_scan(**{k: v.double() for k, v in x.items()}, delta_softplus=True, backend="torch")
    got = run_path(path, x, dict(D=x["D"], z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True))
    assert within_tolerance(got, expected)


def test_numba_handles_extreme_step_sizes_and_gates():
    """The polynomial exp, softplus and SiLU at the ends of fp32's range: finite and accurate."""
    x = make_inputs(2, 5, 4, 30, seed=7)
    x["delta"] = x["delta"] * 80           # softplus of -40 .. +40: tiny and huge steps
    x["z"] = x["z"] * 60                   # SiLU far into both tails
    expected = plain_fp64_scan(*x.values(), True)
    got = run_path("numba", x, dict(D=x["D"], z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True))
    assert torch.isfinite(got).all() and within_tolerance(got, expected)


def test_inference_picks_numba_automatically_and_the_switch_forces_torch(monkeypatch):
    x = make_inputs(2, 8, 4, 20)
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    backend.reset_backends_used()
    with torch.no_grad():
        auto = selective_scan(**x, delta_softplus=True)
    assert backend.backends_used() == ("numba",) and backend.backend_report() == "numba"
    monkeypatch.setenv(backend.ENV_VAR, "torch")
    backend.reset_backends_used()
    with torch.no_grad():
        forced = selective_scan(**x, delta_softplus=True)
    assert backend.backends_used() == ("torch",)
    assert torch.allclose(auto, forced, atol=1e-5)
    monkeypatch.setenv(backend.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="LKM_SCAN_BACKEND='fastest' is not one of auto, numba, torch"):
        selective_scan(**x, delta_softplus=True)


def test_autograd_never_takes_the_numba_kernel():
    x = make_inputs(1, 4, 4, 10, requires_grad=True)
    backend.reset_backends_used()
    selective_scan(**x, delta_softplus=True).sum().backward()
    assert backend.backends_used() == ("torch",) and x["A"].grad is not None
    with pytest.raises(ValueError, match="no backward"):
        selective_scan(**x, delta_softplus=True, backend="numba")


NUMBA_MISSING = """
import sys, logging, torch
sys.modules["numba"] = None          # what a Python without numba sees: ImportError on import
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from lkm_core.ssm import backend_report
from lkm_core.ssm.scan import selective_scan_time_major
from lkm_core.network import build_network, presets
net = build_network(presets.preset_config("3d_small", 1, 2)).eval()
with torch.no_grad():
    out = net(torch.randn(1, 1, 16, 32, 32))
    selective_scan_time_major(torch.randn(5, 1, 4), torch.randn(5, 1, 4), -torch.rand(4, 2),
                              torch.randn(5, 1, 2), torch.randn(5, 1, 2), delta_softplus=True)
assert torch.isfinite(out).all()
print("REPORT", backend_report())
"""


def test_without_numba_the_engine_falls_back_to_torch_and_says_so_once():
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop(backend.ENV_VAR, None)
    result = subprocess.run([sys.executable, "-c", NUMBA_MISSING], env=env, capture_output=True,
                            text=True, timeout=300, encoding="utf-8")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "REPORT torch (numba unavailable: ModuleNotFoundError" in result.stdout
    assert result.stderr.count("fused numba scan unavailable") == 1, result.stderr[-2000:]


def test_fp64_torch_scan_equals_the_plain_loop_over_2000_steps():
    """What makes the fp64 torch scan a valid reference for the 12,000-step test."""
    x = make_inputs(1, 6, 16, 2000, dtype=torch.float64, seed=5)
    with torch.no_grad():
        got = selective_scan(**x, delta_softplus=True, backend="torch")
    assert (got - plain_fp64_scan(*x.values(), True)).abs().max().item() < 1e-12


def test_autograd_gradients_pass_gradcheck_in_fp64(monkeypatch):
    monkeypatch.setattr(scan_module, "_CHUNK_ELEMENTS", 2 * 3 * 2 * 3)  # 3 steps per chunk
    x = make_inputs(2, 3, 2, 8, dtype=torch.float64, requires_grad=True)
    fn = lambda u, delta, A, B, C, D, z, bias: selective_scan(u, delta, A, B, C, D, z, bias, True)
    assert torch.autograd.gradcheck(fn, tuple(x.values()))


def test_autograd_gradients_equal_those_of_the_fp64_loop():
    x = make_inputs(2, 4, 3, 20, dtype=torch.float64, requires_grad=True)
    ours = selective_scan(**x, delta_softplus=True).square().sum()
    ours_grads = torch.autograd.grad(ours, tuple(x.values()))
    ref = plain_fp64_scan(*x.values(), True).square().sum()
    ref_grads = torch.autograd.grad(ref, tuple(x.values()))
    for name, a, b in zip(x, ours_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-7), name


def test_materialising_reference_agrees_with_the_fast_path():
    x = make_inputs(3, 5, 4, 50)
    with torch.no_grad():
        fast = selective_scan(**x, delta_softplus=True)
        ref = selective_scan_reference(**x, delta_softplus=True)
    assert (fast - ref).abs().max().item() < 1e-4


def test_no_grad_path_never_allocates_a_b_d_l_n_tensor(monkeypatch):
    """The inference path works in (T, b, d, n) chunks; check the buffer size it asks for."""
    sizes = []
    real_new_empty = torch.Tensor.new_empty

    def spy(self, *shape, **kw):
        sizes.append(int(torch.Size(shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape).numel()))
        return real_new_empty(self, *shape, **kw)

    monkeypatch.setattr(torch.Tensor, "new_empty", spy)
    b, d, n, l = 2, 16, 16, 40000
    x = make_inputs(b, d, n, l)
    with torch.no_grad():
        selective_scan(**x, delta_softplus=True, backend="torch")
    assert sizes and max(sizes) < b * d * n * l / 10


def test_bad_shapes_are_rejected_with_the_expected_layout_in_the_message():
    x = make_inputs(1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"\(b, n, l\)"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"].transpose(1, 2), x["C"])


TRITON_CHECK = """
import torch
from lkm_core.ssm.scan import selective_scan_time_major
torch.manual_seed(0)
b, d, n, l = 2, 40, 16, 23          # d not a multiple of the channel block: masked lanes
u, delta, z = torch.randn(b, d, l), torch.randn(b, d, l) * 0.5, torch.randn(b, d, l)
A, B, C = -torch.rand(d, n), torch.randn(b, n, l), torch.randn(b, n, l)
D, bias = torch.randn(d), torch.randn(d)
for kw in (dict(D=D, z=z.permute(2, 0, 1), delta_bias=bias, delta_softplus=True), dict(delta_softplus=False)):
    dl = delta if kw["delta_softplus"] else delta.abs()
    tm = lambda t: t.permute(2, 0, 1)   # strided views: the kernel takes strides as they come
    ref = selective_scan_time_major(tm(u), tm(dl), A, tm(B), tm(C), **kw, backend="torch")
    got = selective_scan_time_major(tm(u), tm(dl), A, tm(B), tm(C), **kw, backend="triton")
    err = (got - ref).abs().max() / ref.abs().max()
    assert err < 1e-6, err
# one A, D, delta_bias per sequence (how the two directions of BiM share a scan)
tm = lambda t: t.permute(2, 0, 1)
A2, D2, bias2 = -torch.rand(b, d, n), torch.randn(b, d), torch.randn(b, d)
ref = selective_scan_time_major(tm(u), tm(delta), A2, tm(B), tm(C), D2, tm(z), bias2, True, backend="torch")
got = selective_scan_time_major(tm(u), tm(delta), A2, tm(B), tm(C), D2, tm(z), bias2, True, backend="triton")
assert (got - ref).abs().max() / ref.abs().max() < 1e-6
print("ok")
"""


def test_triton_kernel_logic_matches_the_torch_path_in_the_interpreter():
    """The GPU kernel's arithmetic, run by Triton's CPU interpreter (no GPU needed)."""
    import os
    import subprocess
    import sys

    import triton  # noqa: F401  (comes with the torch build CI installs)
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize("path", ["numba", "torch"])
def test_per_sequence_parameters_equal_separate_scans(path):
    """Time-major callers may stack sequences with their own A, D, delta_bias (bidirectional)."""
    from lkm_core.ssm.scan import selective_scan_time_major

    x1, x2 = make_inputs(2, 3, 4, 15, seed=1), make_inputs(2, 3, 4, 15, seed=2)
    tm = lambda t: t.permute(2, 0, 1)
    stacked = selective_scan_time_major(
        torch.cat([tm(x1["u"]), tm(x2["u"])], 1), torch.cat([tm(x1["delta"]), tm(x2["delta"])], 1),
        torch.cat([x1["A"].expand(2, 3, 4), x2["A"].expand(2, 3, 4)]),
        torch.cat([tm(x1["B"]), tm(x2["B"])], 1), torch.cat([tm(x1["C"]), tm(x2["C"])], 1),
        torch.cat([x1["D"].expand(2, 3), x2["D"].expand(2, 3)]), torch.cat([tm(x1["z"]), tm(x2["z"])], 1),
        torch.cat([x1["delta_bias"].expand(2, 3), x2["delta_bias"].expand(2, 3)]), True, backend=path)
    for half, x in ((stacked[:, :2], x1), (stacked[:, 2:], x2)):
        alone = selective_scan(**x, delta_softplus=True, backend=path)
        assert torch.allclose(half.permute(1, 2, 0), alone, atol=1e-6)


def test_per_sequence_parameters_pass_gradcheck():
    from lkm_core.ssm.scan import selective_scan_time_major

    g = torch.Generator().manual_seed(3)
    l, b, d, n = 6, 2, 2, 3
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(True)
    args = (r(l, b, d), r(l, b, d), (-torch.rand(b, d, n, generator=g, dtype=torch.float64)).requires_grad_(True),
            r(l, b, n), r(l, b, n), r(b, d), r(l, b, d), r(b, d))
    assert torch.autograd.gradcheck(lambda *a: selective_scan_time_major(*a, delta_softplus=True), args)


CACHE_CHECK = """
import torch
from lkm_core.ssm import backend
kernels = backend.numba_scan_module()
assert kernels is not None
stats = [kernels.scan_kernel.stats, kernels.conv_kernel.stats]
print("HITS", sum(sum(s.cache_hits.values()) for s in stats), "MISSES", sum(sum(s.cache_misses.values()) for s in stats))
"""


@pytest.mark.slow
def test_numba_kernels_are_cached_in_the_per_user_folder_and_reloaded(tmp_path):
    """Each Segment click is a new process: the second one must load, not compile."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), LKM_CACHE_DIR=str(tmp_path))
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop(backend.ENV_VAR, None)
    run = lambda: subprocess.run([sys.executable, "-c", CACHE_CHECK], env=env, capture_output=True, text=True,
                                 timeout=600, encoding="utf-8")
    first = run()
    assert first.returncode == 0, first.stderr[-2000:]
    cached = sorted(p.suffix for p in (tmp_path / "numba").rglob("*") if p.is_file())
    assert ".nbi" in cached and ".nbc" in cached, cached
    assert "HITS 0 MISSES 2" in first.stdout, first.stdout
    second = run()
    assert second.returncode == 0, second.stderr[-2000:]
    assert "HITS 2 MISSES 0" in second.stdout, second.stdout
