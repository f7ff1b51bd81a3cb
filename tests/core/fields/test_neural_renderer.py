"""The 2D neural renderer: structure, shapes, skip connections, gradients, tiling; guided depth upsampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.fields.neural_renderer import (
    NeuralRenderer,
    NeuralRendererConfig,
    joint_bilateral_upsample,
    logit,
    over_background,
    render_tiled,
)


def giraffe(in_channels: int, upsample: int, width: int = 16, **kw) -> NeuralRenderer:
    """The plain GIRAFFE renderer (no RGBA skip input), randomly initialised."""
    return NeuralRenderer(NeuralRendererConfig(in_channels=in_channels, upsample=upsample, width=width,
                                               rgba_skip=False, **kw))


@pytest.mark.parametrize("upsample", [1, 2, 4, 8])
def test_output_sizes_and_block_count(upsample):
    torch.manual_seed(0)
    net = giraffe(9, upsample, width=32)
    n = {1: 0, 2: 1, 4: 2, 8: 3}[upsample]
    assert len(net.blocks) == n and len(net.to_rgb) == n + 1
    assert all(b.kernel_size == (3, 3) for b in net.blocks)
    assert all(c.kernel_size == (3, 3) and c.out_channels == 4 for c in net.to_rgb)
    out = net(torch.randn(2, 9, 5, 7))
    assert out.image.shape == (2, 4, 5 * upsample, 7 * upsample)
    assert out.low_res.shape == (2, 4, 5, 7)
    assert (out.image >= 0).all() and (out.image <= 1).all()


def test_upsample_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        NeuralRenderer(NeuralRendererConfig(upsample=3))


def test_first_skip_is_the_feature_maps_own_rgb_and_skips_add_up():
    torch.manual_seed(0)
    net = giraffe(6, 4)
    x = torch.randn(1, 6, 6, 6)
    out = net(x)
    assert torch.allclose(out.low_res, torch.sigmoid(net.to_rgb[0](x)))
    # With the higher-resolution to-RGB convs silenced, the image is the low-res logits bilinearly
    # upsampled twice: the skip path alone.
    with torch.no_grad():
        for conv in net.to_rgb[1:]:
            conv.weight.zero_()
            conv.bias.zero_()
    logits = net.to_rgb[0](x)
    up = F.interpolate(F.interpolate(logits, scale_factor=2, mode="bilinear"), scale_factor=2, mode="bilinear")
    assert torch.allclose(net(x).image, torch.sigmoid(up), atol=1e-6)


def test_blocks_use_nearest_upsampling_then_conv_then_leaky_relu():
    torch.manual_seed(0)
    net = giraffe(3, 2, width=8, leaky_slope=0.2)
    x = torch.randn(1, 3, 4, 4)
    hidden = F.leaky_relu(net.blocks[0](x.repeat_interleave(2, 2).repeat_interleave(2, 3)), 0.2)
    logits = F.interpolate(net.to_rgb[0](x), scale_factor=2, mode="bilinear") + net.to_rgb[1](hidden)
    assert torch.allclose(net(x).image, torch.sigmoid(logits), atol=1e-6)


def test_gradients_reach_the_features_and_every_parameter():
    torch.manual_seed(0)
    net = giraffe(5, 4)
    x = torch.randn(2, 5, 4, 4, requires_grad=True)
    out = net(x)
    (out.image.mean() + out.low_res.mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_tiled_render_equals_the_whole_map():
    torch.manual_seed(0)
    net = giraffe(5, 4)
    x = torch.randn(1, 5, 23, 37)
    with torch.no_grad():
        whole = net(x)
        tiled = render_tiled(net, x, tile=8)
        too_small_halo = render_tiled(net, x, tile=8, halo=0)
    assert torch.allclose(tiled.image, whole.image, atol=1e-5)
    assert torch.allclose(tiled.low_res, whole.low_res, atol=1e-6)
    assert not torch.allclose(too_small_halo.image, whole.image, atol=1e-3)   # the halo matters


def test_rgba_skip_starts_as_the_fields_own_render():
    """With rgba_skip the first skip is the volume-rendered RGBA (channels 0..3) plus a conv correction of
    the colour that starts at zero, so the field alone explains the low-res image at first, and keeps a
    direct path after; its alpha stays the field's opacity."""
    torch.manual_seed(0)
    net = NeuralRenderer(NeuralRendererConfig(in_channels=7, upsample=4, width=16))
    x = torch.rand(1, 7, 5, 6) * 0.98 + 0.01
    out = net(x)
    assert torch.allclose(out.low_res, x[:, :4], atol=1e-5)
    up = F.interpolate(F.interpolate(logit(x[:, :4]), scale_factor=2, mode="bilinear"), scale_factor=2,
                       mode="bilinear")
    assert torch.allclose(out.image, torch.sigmoid(up), atol=1e-5)
    # Gradients: to the field's colour directly, and to every conv once the to-RGB layers are non-zero.
    x.requires_grad_(True)
    net(x).low_res.sum().backward()
    assert x.grad[:, :4].abs().min() > 0
    with torch.no_grad():
        for conv in net.to_rgb:
            conv.weight.normal_(0, 0.1)
    x.grad = None
    out = net(x)
    (out.image.mean() + out.low_res.mean()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # The first skip's alpha is the field's opacity whatever the convs learned (no network-made opacity).
    assert torch.allclose(out.low_res[:, 3], x[:, 3], atol=1e-5)
    with pytest.raises(ValueError, match="input channels"):
        NeuralRenderer(NeuralRendererConfig(in_channels=3))


@pytest.mark.parametrize("kernel", [1, 3])
def test_first_skip_kernel_sets_whose_features_a_rays_colour_sees(kernel):
    """skip_kernel 1: a ray's first-skip colour depends on its own features only (a neighbour's change leaves
    it); 3: on its 3 x 3 neighbourhood. Anything else is refused."""
    torch.manual_seed(0)
    net = NeuralRenderer(NeuralRendererConfig(in_channels=7, upsample=2, width=16, skip_kernel=kernel))
    with torch.no_grad():
        net.to_rgb[0].weight.normal_(0, 0.5)
    x = torch.rand(1, 7, 5, 5) * 0.98 + 0.01
    y = x.clone()
    y[:, 4:, 2, 3] += 0.5                                   # the neighbour's extra features
    a, b = net(x).low_res[0, :3, 2, 2], net(y).low_res[0, :3, 2, 2]
    assert torch.equal(a, b) == (kernel == 1)
    with pytest.raises(ValueError, match="skip_kernel"):
        NeuralRenderer(NeuralRendererConfig(in_channels=7, skip_kernel=5))


def test_over_background_premultiplied():
    rgba = torch.tensor([0.2, 0.1, 0.0, 0.25]).view(1, 4, 1, 1)
    out = over_background(rgba, torch.tensor([1.0, 0.0, 0.4]))
    assert torch.allclose(out.view(3), torch.tensor([0.95, 0.1, 0.3]))


def test_joint_bilateral_upsampling_follows_the_guides_edges():
    s = 4
    # A depth step at low-res column 3.5 is unresolved at low res (the block straddling it averaged);
    # the full-res guide shows the edge exactly at output column 14.
    guide = torch.zeros(32, 32, 3)
    guide[:, 14:] = 1.0
    truth = torch.where(torch.arange(32) < 14, 2.0, 5.0).expand(32, 32)
    guide_low = F.avg_pool2d(guide.permute(2, 0, 1)[None], s)[0].permute(1, 2, 0)
    depth_low = F.avg_pool2d(truth[None, None], s)[0, 0]
    conf = torch.ones(8, 8)
    up = joint_bilateral_upsample(depth_low, conf, guide_low, guide)
    bilinear = F.interpolate(depth_low[None, None], scale_factor=s, mode="bilinear")[0, 0]
    err_jbu = (up - truth).abs().mean()
    err_bil = (bilinear - truth).abs().mean()
    assert up.shape == (32, 32)
    assert err_jbu < 0.5 * err_bil
    # Constant maps stay constant; zero-confidence neighbours are ignored.
    flat = joint_bilateral_upsample(torch.full((8, 8), 3.0), conf, guide_low, guide)
    assert torch.allclose(flat, torch.full((32, 32), 3.0))
    depth_bad = torch.full((8, 8), 3.0)
    depth_bad[:, 0] = 100.0
    conf_bad = torch.ones(8, 8)
    conf_bad[:, 0] = 0.0
    fixed = joint_bilateral_upsample(depth_bad, conf_bad, guide_low, guide)
    assert torch.allclose(fixed[:, 4:], torch.full((32, 28), 3.0))
