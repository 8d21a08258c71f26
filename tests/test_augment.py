"""Each batched op against torchvision's functional definition on single images, and the
parameter sampler against torchvision's RandomResizedCrop.get_params."""
import math

import pytest
import numpy as np
import torch

import fastdisco._compat  # noqa: F401  (torchvision import fix on CPU torch)
import torchvision.transforms.functional as TF
from torchvision.transforms import RandomResizedCrop

from fastdisco import augment as A
from fastdisco.augment import ops

TOL = 1e-5  # float32 ops re-ordered only: differences are rounding


@pytest.fixture(scope="module")
def imgs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 19, 23, generator=g)
    x[1] = x[1].mean(0, keepdim=True)  # a gray image (hue undefined: max == min)
    x[2, :, :5] = 1.0                  # saturated region
    return x


def _per_image(ref, x, factors):
    return torch.stack([ref(x[i], float(factors[i])) for i in range(x.shape[0])])


@pytest.mark.parametrize("name,ref,lo,hi", [
    ("adjust_brightness", TF.adjust_brightness, 0.6, 1.4),
    ("adjust_contrast", TF.adjust_contrast, 0.6, 1.4),
    ("adjust_saturation", TF.adjust_saturation, 0.6, 1.4),
    ("adjust_hue", TF.adjust_hue, -0.5, 0.5),
])
def test_jitter_ops_match_torchvision(imgs, name, ref, lo, hi):
    f = torch.linspace(lo, hi, imgs.shape[0])
    got = getattr(ops, name)(imgs.clone(), f)
    want = _per_image(ref, imgs, f)
    assert (got - want).abs().max() < TOL


def test_grayscale_solarize_flip_match_torchvision(imgs):
    assert (ops.grayscale3(imgs) - TF.rgb_to_grayscale(imgs, 3)).abs().max() < TOL
    assert torch.equal(ops.solarize(imgs, 0.5), TF.solarize(imgs, 0.5))
    assert torch.equal(ops.hflip(imgs), TF.hflip(imgs))


def test_hue_on_ties_and_extremes_matches_torchvision():
    """Every colour of a 5-level palette (ties for the max between channels, grays, black, white)
    under shifts across the whole range: the closed form has no branch torchvision's lacks."""
    lv = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    rgb = torch.cartesian_prod(lv, lv, lv).T.reshape(1, 3, 5, 25)  # 125 colours
    for s in (-0.5, -0.31, -1 / 6, 0.0, 0.05, 1 / 3, 0.5):
        got = ops.adjust_hue(rgb, torch.tensor([s]))
        assert (got - TF.adjust_hue(rgb[0], s)).abs().max() < TOL, s
        assert torch.equal(got, ops.adjust_hue(rgb, s))  # a float parameter is the same op


def test_gaussian_blur_per_sample_sigma_matches_torchvision(imgs):
    sig = torch.tensor([0.1, 0.7, 1.3, 2.0])
    want = torch.stack([TF.gaussian_blur(imgs[i], [7, 7], [float(s), float(s)]) for i, s in enumerate(sig)])
    got = ops.gaussian_blur(imgs, sig, 7)  # CPU: shifted multiply-adds, negligible taps skipped
    assert (got - want).abs().max() < TOL
    got = ops.blur_grouped_conv(imgs, ops.gaussian_kernels(sig, 7))  # the accelerator path
    assert (got - want).abs().max() < TOL
    # 23 taps at sigma 0.1 .. 2 on a larger image (the recipes' kernel): skipping taps stays exact
    big = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(5))
    for s in (0.1, 1.0, 2.0):
        got = ops.gaussian_blur(big, torch.tensor([s, s]), 23)
        want = torch.stack([TF.gaussian_blur(big[i], [23, 23], [s, s]) for i in range(2)])
        assert (got - want).abs().max() < TOL, s


def test_resized_crop_matches_torchvision(imgs):
    u8 = (imgs * 255).round().to(torch.uint8)
    boxes = torch.tensor([[0, 0, 19, 23], [2, 3, 10, 7], [5, 1, 14, 20], [0, 11, 8, 12]], dtype=torch.float32)
    for aa in (True, False):
        got = ops.resized_crop(u8, boxes, 9, antialias=aa)
        want = torch.stack([TF.resized_crop(u8[i].float(), *[int(v) for v in boxes[i]], [9, 9], antialias=aa)
                            for i in range(4)])
        assert (got - want).abs().max() < 1e-3
    # batched grid_sample path == torchvision without antialias (to 1e-3 of 255)
    got = ops.resized_crop_grid(u8, boxes, 9)
    want = torch.stack([TF.resized_crop(u8[i].float(), *[int(v) for v in boxes[i]], [9, 9], antialias=False)
                        for i in range(4)])
    assert (got - want).abs().max() < 1e-3
    # and also when upsampling a tiny crop at the image edge (clamping inside the box)
    edge = torch.tensor([[15.0, 20.0, 4.0, 3.0]] * 4)
    got = ops.resized_crop_grid(u8, edge, 9)
    want = torch.stack([TF.resized_crop(u8[i].float(), 15, 20, 4, 3, [9, 9], antialias=False) for i in range(4)])
    assert (got - want).abs().max() < 1e-3


def test_eval_geometry_matches_torchvision_resize_center_crop():
    g = torch.Generator().manual_seed(1)
    for H, W in [(375, 500), (500, 333), (64, 64), (100, 37)]:
        img = (torch.rand(1, 3, H, W, generator=g) * 255).round().to(torch.uint8)
        p = A.sample_view_params(g, A.RECIPES["eval"][0], torch.tensor([H]), torch.tensor([W]), 32)
        got = A.crop_view(img, p, 32)
        want = TF.center_crop(TF.resize(img.float(), 36, antialias=True), 32)
        assert got.shape == (1, 3, 32, 32)
        assert (got - want).abs().max() < 1e-3, (H, W)


def test_eval_geometry_has_one_definition():
    """eval_resize (one image: mine, export's pretrained_cfg) and center_box (the loaders' batch)
    give the same resize and crop, and so does mine's eval transform on a real image."""
    from PIL import Image

    from fastdisco import mine

    sizes = [(375, 500), (500, 333), (64, 64), (100, 37), (28, 28), (37, 100), (33, 32)]
    for res, ratio in ((32, 0.875), (224, 0.875), (16, 0.5)):
        rs, box = A.center_box(torch.tensor([h for h, _ in sizes]), torch.tensor([w for _, w in sizes]), res, ratio)
        for n, (h, w) in enumerate(sizes):
            rh, rw, top, left = A.eval_resize(h, w, res, ratio)
            assert [rh, rw] == rs[n].long().tolist() and [top, left] == box[n, :2].long().tolist(), (h, w, res)
    g = torch.Generator().manual_seed(3)
    arr = (torch.rand(45, 70, 3, generator=g) * 255).to(torch.uint8).numpy()
    crop = mine.eval_transform(Image.fromarray(arr), 32, 0.875)
    rh, rw, top, left = A.eval_resize(45, 70, 32, 0.875)
    want = np.asarray(Image.fromarray(arr).resize((rw, rh), Image.Resampling.BILINEAR))[top:top + 32, left:left + 32]
    assert crop.shape == (32, 32, 3) and np.array_equal(crop, want)


def test_rrc_sampler_matches_torchvision_distribution():
    """Same algorithm as RandomResizedCrop.get_params: compare area / aspect / position
    histograms over many draws (two-sample, 4000 each), and the center fallback exactly."""
    n = 4000
    H, W = 375, 500
    g = torch.Generator().manual_seed(0)
    ours = A.sample_rrc(g, torch.full((n,), H), torch.full((n,), W), (0.2, 1.0), (3 / 4, 4 / 3))
    torch.manual_seed(0)
    img = torch.zeros(3, H, W)
    ref = torch.tensor([RandomResizedCrop.get_params(img, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(n)], dtype=torch.float32)
    for boxes in (ours, ref):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= H).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= W).all()

    def stats(b):
        area = b[:, 2] * b[:, 3] / (H * W)
        logr = torch.log(b[:, 3] / b[:, 2])
        cy = (b[:, 0] + b[:, 2] / 2) / H
        return [torch.histc(v, 10, lo, hi) / len(v) for v, lo, hi in
                ((area, 0.2, 1.0), (logr, math.log(3 / 4), math.log(4 / 3)), (cy, 0, 1))]

    for h_ours, h_ref in zip(stats(ours), stats(ref)):
        # 4000 draws: bin s.e. <= 0.008; a wrong scale range or missing rejection shifts >= 0.03
        assert (h_ours - h_ref).abs().max() < 0.03
    # fallback (no draw fits a 1000x10 image): whole-width / clamped aspect, centred
    fb = A.sample_rrc(g, torch.tensor([10]), torch.tensor([1000]), (0.9, 1.0), (3 / 4, 4 / 3))
    assert fb[0].tolist() == list(map(float, RandomResizedCrop.get_params(torch.zeros(3, 10, 1000), [0.9, 1.0], [3 / 4, 4 / 3])))


def test_param_rates_follow_recipe():
    n = 20000
    g = A.make_generator(0, 0, 0, 0)
    hw = torch.full((n,), 256)
    v1, v2 = A.sample_params(g, A.RECIPES["byol"], hw, hw, 224)
    se = 4 * math.sqrt(0.25 / n)
    for p, blur, sol in ((v1, 1.0, 0.0), (v2, 0.1, 0.2)):
        assert abs(p["jitter"].float().mean() - 0.8) < se
        assert abs(p["gray"].float().mean() - 0.2) < se
        assert abs(p["blur"].float().mean() - blur) < se
        assert abs(p["solarize"].float().mean() - sol) < se
        assert abs(p["flip"].float().mean() - 0.5) < se
        f = p["jitter_factors"]
        assert f[:, 2].min() >= 0.8 and f[:, 2].max() <= 1.2  # byol saturation 0.2
        assert f[:, 3].abs().max() <= 0.1
        assert (p["jitter_order"].sort(1).values == torch.arange(4)).all()  # permutations
    (m,) = A.sample_params(g, A.RECIPES["mocov2"][:1], hw, hw, 224)
    assert abs(m["blur"].float().mean() - 0.5) < se and m["solarize"].sum() == 0
    assert m["jitter_factors"][:, 2].min() < 0.62 and m["blur_sigma"].min() >= 0.1 and m["blur_sigma"].max() <= 2.0


def test_pipeline_equals_torchvision_composition_per_image():
    """A full MoCo v2 view (crop, jitter in drawn order, gray, blur, flip, normalise) equals
    the same torchvision functional calls applied image by image with the drawn params."""
    g = A.make_generator(3, 1, 0, 7)
    B, res = 6, 24
    u8 = (torch.rand(B, 3, 40, 50, generator=g) * 255).round().to(torch.uint8)
    aug = A.Augment("mocov2", res, torch.float32)
    hw_h, hw_w = torch.full((B,), 40), torch.full((B,), 50)
    params = aug.sample(g, hw_h, hw_w)
    for p in params:  # make every op fire on some sample
        p["jitter"][:4] = True
        p["gray"][0] = True
        p["blur"][1:3] = True
        p["flip"][2] = True
    views = aug(u8, params)
    ks = A.blur_kernel_size(res)
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for v, p in zip(views, params):
        assert v.shape == (B, 3, res, res) and v.is_contiguous(memory_format=torch.channels_last)
        for i in range(B):
            t, l, h, w = [int(x) for x in p["crop"][i]]
            x = TF.resized_crop(u8[i].float(), t, l, h, w, [res, res], antialias=True).clamp(0, 255) / 255
            if p["jitter"][i]:
                for k in p["jitter_order"][i].tolist():
                    x = fns[k](x, float(p["jitter_factors"][i, k]))
            if p["gray"][i]:
                x = TF.rgb_to_grayscale(x, 3)
            if p["blur"][i]:
                s = float(p["blur_sigma"][i])
                x = TF.gaussian_blur(x, [ks, ks], [s, s])
            if p["flip"][i]:
                x = TF.hflip(x)
            x = TF.normalize(x, A.IMAGENET_MEAN, A.IMAGENET_STD)
            assert (v[i] - x).abs().max() < 1e-4
        # replay from params alone gives the identical view
        assert torch.equal(A.apply_view(u8, p, res), v)


def test_generator_determinism():
    a = A.sample_params(A.make_generator(1, 2, 3, 4), A.RECIPES["mocov2"], torch.full((8,), 50), torch.full((8,), 60), 32)
    b = A.sample_params(A.make_generator(1, 2, 3, 4), A.RECIPES["mocov2"], torch.full((8,), 50), torch.full((8,), 60), 32)
    c = A.sample_params(A.make_generator(1, 2, 3, 5), A.RECIPES["mocov2"], torch.full((8,), 50), torch.full((8,), 60), 32)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    assert not torch.equal(a[0]["crop"], c[0]["crop"])


def test_unknown_recipe_is_one_line_error():
    from fastdisco.errors import FastdiscoError

    with pytest.raises(FastdiscoError, match="data.recipe"):
        A.recipe_views("simclr")


def test_cpu_image_path_equals_batched_path():
    """The CPU path (image by image, Python-float params, in a thread pool) and the batched
    accelerator path (crop_view + color_view + normalize, here run on CPU tensors) give the
    same views, for every recipe; the pool's result does not depend on its thread count."""
    g = A.make_generator(5, 0, 0, 1)
    B, res = 6, 24
    u8 = (torch.rand(B, 3, 40, 50, generator=g) * 255).round().to(torch.uint8)
    h, w = torch.tensor([40, 33, 40, 21, 40, 40]), torch.tensor([50, 50, 17, 50, 50, 29])  # ragged
    for recipe in ("mocov2", "byol", "eval"):
        params = A.sample_params(g, A.RECIPES[recipe], h, w, res)
        for p in params:  # every op fires on some sample
            p["jitter"][:4], p["gray"][0], p["blur"][1:3], p["solarize"][3:], p["flip"][2] = True, True, True, True, True
        for aa in (True, False):
            if not aa and recipe == "eval":
                continue  # eval always resizes with crop_view's interpolate
            cpu = A.augment_cpu(u8, params, res, torch.float32, antialias=aa, run=A.CpuPool(2))
            assert all(torch.equal(a, b) for a, b in zip(cpu, A.augment_cpu(u8, params, res, torch.float32, antialias=aa)))
            rounded = A.augment_cpu(u8, params, res, torch.float32, antialias=aa, crop_u8=True)
            for v, r, p in zip(cpu, rounded, params):
                x = A.crop_view(u8, p, res, aa).clamp(0, 255) / 255
                want = A.normalize(A.color_view(x, p, res), torch.float32)
                assert v.is_contiguous(memory_format=torch.channels_last)
                assert (v - want).abs().max() < 1e-4, (recipe, aa)
                # uint8 crop: 1 level (0.017 normalised), times at most ~2.7 through the jitter
                assert (r - want).abs().max() < 0.06 and (r - want).abs().mean() < 0.01, (recipe, aa)
    # finish (on already cropped uint8 views, as dali / ffcv deliver them) == the same from float crops
    crops = (torch.rand(B, 3, res, res, generator=g) * 255).round().to(torch.uint8)
    (p,) = A.sample_params(g, A.RECIPES["byol"][1:], torch.full((B,), res), torch.full((B,), res), res)
    aug = A.Augment("byol", res, torch.bfloat16, cpu_threads=2)
    got = aug.photometric(crops, p)
    want = A.normalize(A.color_view(crops.float() / 255, p, res), torch.bfloat16)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    assert (got.float() - want.float()).abs().max() < 0.02  # bf16: one rounding step of ~2.6
