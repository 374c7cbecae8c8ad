"""LKM-UNet: window partitions, bidirectionality, shapes, deep supervision, ablation switches."""

import pytest
import torch
import torch.nn as nn

from lkm_core.network import build_network, count_parameters, presets
from lkm_core.network.mamba_blocks import BiMamba, PatchMamba, PixelMamba, partition, unpartition


@pytest.mark.parametrize("mode", ["window", "strided"])
@pytest.mark.parametrize("shape,window", [((2, 3, 8, 12), (4, 6)), ((2, 3, 7, 11), (4, 6)),
                                          ((1, 2, 6, 8, 10), (3, 4, 5)), ((1, 2, 5, 9, 7), (2, 4, 3))])
def test_partition_then_unpartition_is_exact(shape, window, mode):
    x = torch.randn(shape)
    seqs, layout = partition(x, window, mode)
    assert seqs.shape[-1] == shape[1]
    assert torch.equal(unpartition(seqs, shape[0], layout), x)


@pytest.mark.parametrize("spatial,window", [((8, 12), (4, 6)), ((6, 8, 10), (3, 4, 5)), ((7, 9, 5), (4, 4, 4))])
def test_tokens_of_one_window_are_contiguous_and_in_raster_order(spatial, window):
    dims = len(spatial)
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in spatial], indexing="ij")
    coords = torch.stack(grids)[None] + 1                 # (1, dims, *spatial): position + 1
    seqs, _ = partition(coords, window, "window")         # (n_windows, window volume, dims)
    for seq in seqs:
        real = seq[(seq > 0).all(-1)]                     # padding tokens are all zero
        extent = real.amax(0) - real.amin(0)
        assert (extent <= torch.tensor(window) - 1).all() # a window spans at most its size
    first = seqs[0]                                       # raster order: last axis fastest
    assert torch.equal(first[1] - first[0], torch.eye(dims)[-1])
    assert seqs.shape[1] == torch.tensor(window).prod()


def test_strided_partition_reproduces_the_official_code_layout():
    x = torch.randn(1, 2, 10, 14, 12)
    p = (5, 7, 6)
    # the official code: (B, C, Z/p1, p1, ...) -> sequences over offsets, tokens over the grid
    off = x.reshape(1, 2, 2, 5, 2, 7, 2, 6).permute(0, 3, 5, 7, 1, 2, 4, 6).reshape(5 * 7 * 6, 2, 8)
    official = off.transpose(1, 2)
    ours, _ = partition(x, p, "strided")
    assert torch.equal(ours, official)


def test_odd_sizes_are_padded_not_turned_into_one_global_sequence():
    pim = PixelMamba(4, (4, 4, 4))
    x = torch.randn(1, 4, 5, 9, 6)
    seqs, _ = partition(x, (4, 4, 4), "window")
    assert seqs.shape[1] == 64                            # window-sized sequences
    assert pim(x).shape == x.shape


def test_patch_mamba_pools_each_window_to_one_token_and_keeps_the_shape():
    pam = PatchMamba(4, (2, 4, 3))
    calls = []
    pam.bim.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    x = torch.randn(2, 4, 5, 8, 7)                          # not divisible: padded, averaged on real voxels
    assert pam(x).shape == x.shape
    assert calls[0] == (2, 3 * 2 * 3, 4)


def test_patch_mamba_unpools_by_copying_each_token_over_its_window():
    pam = PatchMamba(2, (2, 2))
    torch.manual_seed(0)
    x = torch.zeros(1, 2, 4, 4)
    delta = pam(x) - x
    assert torch.equal(delta[..., :2, :2], delta[..., :1, :1].expand(-1, -1, 2, 2))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_first_output_token_depends_on_last_input_token_only_when_bidirectional(bidirectional):
    torch.manual_seed(0)
    bim = BiMamba(8, bidirectional=bidirectional)
    x = torch.randn(1, 30, 8)
    y = bim(x)
    x2 = x.clone()
    x2[0, -1] = torch.randn(8)   # (a constant shift would vanish in the LayerNorm)
    changed = (bim(x2)[0, 0] - y[0, 0]).abs().max().item()
    assert (changed > 1e-6) == bidirectional


@pytest.mark.parametrize("name", ["3d_small", "2d_small"])
def test_forward_shapes_and_deep_supervision(name):
    torch.manual_seed(0)
    net = build_network(presets.preset_config(name, input_channels=2, num_classes=4)).eval()
    patch = presets.preset_patch_size(name)
    x = torch.randn(1, 2, *patch)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (1, 4, *patch)
        net.decoder.deep_supervision = True                 # nnU-Net's trainer sets this attribute
        outs = net(x)
    n_stages = len(net.encoder.stages)
    assert len(outs) == n_stages - 1
    assert outs[0].shape == y.shape and torch.allclose(outs[0], y, atol=1e-5)
    for lower, higher in zip(outs[1:], outs[:-1]):
        assert all(h >= l for h, l in zip(higher.shape[2:], lower.shape[2:]))


def test_training_step_updates_mamba_parameters():
    torch.manual_seed(0)
    net = build_network(presets.preset_config("2d_small", 1, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = net.encoder.pim[0].bim.mamba_fwd.A_log.detach().clone()
    loss = nn.functional.cross_entropy(net(torch.randn(2, 1, 64, 64)), torch.randint(0, 3, (2, 64, 64)))
    loss.backward()
    opt.step()
    assert not torch.equal(before, net.encoder.pim[0].bim.mamba_fwd.A_log)


def _names(net):
    return set(net.state_dict())


def test_ablation_switches_change_the_parameter_set_as_expected():
    cfg = lambda **kw: presets.preset_config("2d_small", 1, 2, **kw)
    full = build_network(cfg())
    no_pim = build_network(cfg(use_pim=False))
    no_pam = build_network(cfg(use_pam=False))
    neither = build_network(cfg(use_pim=False, use_pam=False))
    uni = build_network(cfg(bidirectional=False))
    assert not any(".pim." in k for k in _names(no_pim)) and any(".pam." in k for k in _names(no_pim))
    assert not any(".pam." in k for k in _names(no_pam)) and any(".pim." in k for k in _names(no_pam))
    assert not any(".pim." in k or ".pam." in k for k in _names(neither))
    assert _names(full) - _names(uni) == {k for k in _names(full) if ".mamba_bwd." in k}
    assert not any(".mamba_bwd." in k for k in _names(uni))
    assert count_parameters(neither) < count_parameters(no_pim) < count_parameters(full)
    # the convolutional part is the same in all of them
    assert {k for k in _names(full) if ".pim." not in k and ".pam." not in k} == _names(neither)


def test_window_sizes_per_stage_are_used():
    net = build_network(presets.preset_config("3d_small", 1, 2, window_sizes=[[2, 2, 2], [4, 4, 4], [2, 4, 4], [1, 2, 2]]))
    assert [p.window for p in net.encoder.pim] == [(2, 2, 2), (4, 4, 4), (2, 4, 4), (1, 2, 2)]
    assert [p.pool for p in net.encoder.pam] == [(2, 2, 2), (4, 4, 4), (2, 4, 4), (1, 2, 2)]


def test_initialize_leaves_mamba_layers_with_their_own_init():
    net = build_network(presets.preset_config("2d_small", 1, 2))
    mamba_before = {k: v.clone() for k, v in net.state_dict().items() if ".bim." in k}
    conv_before = net.encoder.stem.convs[0].conv.weight.clone()
    net.apply(net.initialize)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in mamba_before.items())
    assert not torch.equal(conv_before, net.encoder.stem.convs[0].conv.weight)


def test_paper_presets_match_the_paper_settings():
    kw3 = presets.preset_config("3d_paper")["kwargs"]
    assert presets.preset_patch_size("3d_paper") == (40, 224, 192)
    assert kw3["n_stages"] == 6
    assert kw3["window_sizes"] == [[20, 28, 24], [20, 28, 24], [10, 14, 12], [10, 14, 12], [5, 7, 6], [5, 7, 6]]
    kw2 = presets.preset_config("2d_paper")["kwargs"]
    assert presets.preset_patch_size("2d_paper") == (320, 320) and kw2["n_stages"] == 7
    assert [w[0] for w in kw2["window_sizes"]] == [40, 20, 20, 10, 10, 5, 5]
    # every stage's feature map is divided by its window: no padding at the paper's patch
    for name, kw in (("3d_paper", kw3), ("2d_paper", kw2)):
        size = list(presets.preset_patch_size(name))
        for stride, window in zip(kw["strides"], kw["window_sizes"]):
            size = [s // st for s, st in zip(size, stride)]
            assert all(s % w == 0 for s, w in zip(size, window)), (name, size, window)


def test_unknown_classes_and_ops_are_refused():
    with pytest.raises(ValueError, match="unknown network class"):
        build_network({"class": "os.system", "kwargs": {}})
    with pytest.raises(ValueError, match="torch.nn module"):
        build_network(presets.preset_config("2d_small", conv_op="subprocess.Popen"))


def test_inference_in_groups_of_sequences_gives_the_same_result(monkeypatch):
    import lkm_core.network.mamba_blocks as blocks

    torch.manual_seed(0)
    bim = BiMamba(8)
    seqs = torch.randn(7, 20, 8)
    with torch.no_grad():
        whole = bim(seqs)
        monkeypatch.setattr(blocks, "_GROUP_ELEMENTS", 2 * 20 * 16)   # two sequences per group
        grouped = bim(seqs)
    assert torch.allclose(whole, grouped, atol=1e-6)


def test_under_bf16_autocast_only_the_stem_last_decoder_stage_and_heads_stay_fp32():
    """The stem (raw intensities), the full-resolution decoder stage and the heads (what picks
    each voxel's class) run in fp32; every other convolution in bf16, where the speed is."""
    from lkm_core.network.blocks import ConvNormAct

    net = build_network(presets.preset_config("3d_small", 1, 3)).eval()
    produced = {}
    for name, module in net.named_modules():
        if isinstance(module, (ConvNormAct, nn.Conv3d)) and not name.endswith(".conv"):
            module.register_forward_hook(
                lambda m, i, o, name=name: produced.__setitem__(name, o.dtype))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(torch.randn(1, 1, 32, 64, 64))
    assert logits.dtype == torch.float32
    assert produced["encoder.stem.convs.0"] == torch.float32
    last_head = f"decoder.seg_layers.{len(net.decoder.seg_layers) - 1}"
    assert produced[last_head] == torch.float32
    last_stage = f"decoder.stages.{len(net.decoder.stages) - 1}."
    assert {d for n, d in produced.items() if n.startswith(last_stage)} == {torch.float32}
    rest = {n: d for n, d in produced.items()
            if "stem" not in n and "seg_layers" not in n and not n.startswith(last_stage)}
    assert rest and set(rest.values()) == {torch.bfloat16}


@pytest.mark.parametrize("shape", [(1, 8, 32, 64, 64), (1, 8, 8, 16, 16), (2, 8, 16, 16, 16)])
def test_fp32_cpu_inference_convolves_through_onednn_with_torchs_results(shape, monkeypatch):
    """Small 3D inputs that torch would give its slow native kernel go to oneDNN directly, with
    the same result up to float rounding; with gradients on (training) torch's path is kept."""
    from lkm_core.network.blocks import ConvNormAct

    torch.manual_seed(0)
    block = ConvNormAct(nn.Conv3d, shape[1], 16, 3, 1, True, nn.InstanceNorm3d, {"affine": True},
                        nonlin=nn.LeakyReLU).eval()
    x = torch.randn(shape)
    calls = []
    onednn = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution",
                        lambda *a: calls.append(a[0].shape) or onednn(*a))
    with torch.inference_mode():
        fast = block(x)
    assert calls == [x.shape]
    with torch.no_grad():
        reference = block.nonlin(block.norm(block.conv(x)))
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
    block.train()
    block(x).sum().backward()                       # training: torch's own (differentiable) path
    assert len(calls) == 1 and block.conv.weight.grad is not None


@pytest.mark.parametrize("dtype, kept_fp32", [(torch.bfloat16, True), (torch.float16, False),
                                              (None, False)])
def test_only_bf16_autocast_sends_the_sensitive_layers_to_fp32(dtype, kept_fp32):
    """bf16 keeps 8 mantissa bits: the stem, last decoder stage and heads leave it. fp16 (11
    bits, the GPU's default as in nnU-Net) and plain fp32 run as they are."""
    from lkm_core.network.blocks import active_autocast_dtype, run_in_fp32_under_bf16

    seen = []
    probe = lambda x: seen.append((active_autocast_dtype("cpu"), x.dtype)) or x  # noqa: E731
    x = torch.ones(2, dtype=torch.bfloat16 if dtype else torch.float32)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        assert active_autocast_dtype("cpu") == dtype
        run_in_fp32_under_bf16(probe, x)
    assert seen == ([(None, torch.float32)] if kept_fp32 else [(dtype, x.dtype)])
