"""The torch backend decodes each JPEG only as large as its crops need and crops before it pads
(fastdisco.loader.reduced_decode), and decoded pixels are capped per image (dataset.images)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import fastdisco._compat  # noqa: F401
from fastdisco import augment as A
from fastdisco.config import DataConfig
from fastdisco.dataset import images
from fastdisco.errors import FastdiscoError
from fastdisco.loader import make_loader
from fastdisco.loader import reduced_decode as R
from fastdisco.loader.view_pool import NO_SLOT

RES, B = 16, 8
SRC_H, SRC_W = 384, 512


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """16 JPEGs of 512x384: every crop of a 16 px view can be decoded at a reduced size."""
    from fastdisco.dataset.prepare import prepare_dataset
    from fastdisco.dataset.recipes.synthetic import write_synthetic_folder

    root = tmp_path_factory.mktemp("big")
    write_synthetic_folder(root / "src", num_classes=2, per_class=8, size=(SRC_H, SRC_W), ext="jpg")
    prepare_dataset(root / "src", root / "out", formats="dali", workers=1, shard_size=16)
    return str(root / "out")


def cfg(path, **kw):
    return DataConfig(**{**dict(path=path, backend="torch", batch_size=B, resolution=RES, num_workers=0, seed=5), **kw})


def test_reduced_decode_draws_the_same_params_and_close_views(big):
    full = list(make_loader(cfg(big, reduced_decode=False)))
    red = list(make_loader(cfg(big)))
    scales = torch.cat([R.decode_scales(b.params, RES) for b in red])
    assert (scales > 1).float().mean() > 0.5 and (scales == 8).any()  # the test exercises reduced decodes
    for f, r in zip(full, red):
        assert torch.equal(f.indices, r.indices)
        for pf, pr in zip(f.params, r.params):  # the boxes come from the header sizes: the same draws
            assert pf.keys() == pr.keys() and all(torch.equal(pf[k], pr[k]) for k in pf)
        for vf, vr in zip(f.views, r.views):
            d = (vf - vr).abs()
            # libjpeg's DCT downscale vs a full decode + antialiased resize: ~1 level (0.017) on average
            assert d.mean() < 0.05 and d.mean((1, 2, 3)).max() < 0.1


def test_reduced_views_replay_exactly_from_the_reduced_decode(big):
    ld = make_loader(cfg(big))
    b = next(iter(ld))
    jpegs = [ld.reader.jpeg(int(i)) for i in b.indices]
    imgs, local, scales = R.decode_batch(jpegs, b.params, RES, True, str)
    assert (scales > 1).any()
    for v, p in zip(b.views, local):
        assert torch.equal(A.apply_view(R.pad_stack(imgs), p, RES, crop_u8=True), v)


def test_local_params_are_unchanged_at_scale_one_and_scaled_boxes_stay_inside():
    p = {"src_size": torch.tensor([[384.0, 512.0], [100.0, 90.0]]),
         "crop": torch.tensor([[10.0, 21.0, 300.0, 333.0], [3.0, 4.0, 97.0, 86.0]])}
    dec_h, dec_w = torch.tensor([48, 100]), torch.tensor([64, 90])
    q = R.local_params([p], torch.tensor([8, 1]), dec_h, dec_w)[0]
    assert torch.equal(q["crop"][1], p["crop"][1])
    t, l, h, w = q["crop"][0].tolist()
    assert (t, l) == (1.0, 3.0) and t + h <= 48 and l + w <= 64 and abs(h - 300 / 8) <= 1 and abs(w - 333 / 8) <= 1


def test_device_crop_sends_crop_regions_bounded_by_the_crop_not_the_source(big):
    """crop_on=device: a worker sends each view's crop regions (at the decode scale), padded to the
    view's largest region, never the batch's images padded to full size."""
    full_padded = B * 3 * SRC_H * SRC_W  # bytes per view of the old payload (all images are 512 x 384)
    sent = {}
    for reduced in (True, False):
        ld = make_loader(cfg(big, crop_on="device", reduced_decode=reduced))
        ds = ld._dataloader().dataset
        ds.worker_does = "decode"
        sent[reduced] = []
        for b in range(len(ld)):
            (regions, region_params), params, *_ = ds[(0, b, NO_SLOT)]
            jpegs = [ld.reader.jpeg(int(i)) for i in ds._plan(0)[0][b]]
            _, local, _ = R.decode_batch(jpegs, params, RES, reduced, str)
            for r, q, lp in zip(regions, region_params, local):
                # exactly the largest crop (in decoded pixels): nothing of the source beyond it
                assert r.dtype == torch.uint8 and r.shape[2:] == tuple(lp["crop"][:, 2:].max(0).values.long().tolist())
                assert torch.equal(q["crop"][:, :2], torch.zeros(B, 2)) and torch.equal(q["crop"][:, 2:], lp["crop"][:, 2:])
                sent[reduced].append(r.numel() / full_padded)
    red, full = np.mean(sent[True]), np.mean(sent[False])
    assert max(sent[False]) <= 1 and full > 0.2          # full decode: regions of up to the whole image
    assert red < full / 4 and max(sent[True]) < 0.3      # reduced: a few percent of the padded batch
    # and the device path's views equal the worker path's (on the CPU, both crop in uint8)
    a = next(iter(make_loader(cfg(big, crop_on="device"))))
    w = next(iter(make_loader(cfg(big, crop_on="worker"))))
    assert all(torch.equal(x, y) for x, y in zip(a.views, w.views))


def test_eval_recipe_decodes_reduced_down_to_its_resize():
    h, w = torch.tensor([384, 120]), torch.tensor([512, 160])
    params = A.sample_params(A.make_generator(0, 0, 0, 0), A.recipe_views("eval"), h, w, RES)
    # eval: resize the short side to int(16 / 0.875) = 18: 384 / 18 >= 8, 120 / 18 >= 4
    assert R.decode_scales(params, RES).tolist() == [8, 4]
    assert R.decode_scales(params, RES, enabled=False).tolist() == [1, 1]


# --------------------------------------------------------------------------- decoded pixels capped
def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_bomb_like_png_is_refused_before_decoding():
    data = _encode(Image.new("1", (6000, 6000)), "PNG")  # a few KB, 36 Mpx: over the 32 Mpx cap
    assert len(data) < 100_000
    with pytest.raises(images.BadImage, match=r"too many pixels to decode: 6000x6000 = 36 Mpx"):
        images.convert(data, max_side=65500, quality=90)


def test_huge_jpeg_is_decoded_at_a_reduced_scale_under_the_cap():
    data = _encode(Image.new("L", (6000, 6000), 128), "JPEG")
    enc = images.convert(data, max_side=65500, quality=90)  # no resize asked: the cap alone halves it
    assert (enc.width, enc.height) == (3000, 3000)
    small = images.convert(_encode(Image.new("L", (600, 600), 128), "JPEG"), max_side=65500, quality=90)
    assert (small.width, small.height) == (600, 600)


def test_loader_caps_decoded_pixels_and_names_the_file_and_sample(big, monkeypatch):
    ld = make_loader(cfg(big, reduced_decode=False))
    b = next(iter(ld))
    jpegs = [ld.reader.jpeg(int(i)) for i in b.indices]
    monkeypatch.setattr(images, "MAX_DECODED_PIXELS", 128 * 96)  # 512 x 384 fits at 1/4 scale: 128 x 96
    imgs, _, scales = R.decode_batch(jpegs, b.params, RES, False, str)
    assert scales.tolist() == [4] * B and all(im.shape[1:] == (96, 128) for im in imgs)
    monkeypatch.setattr(images, "MAX_DECODED_PIXELS", 10)
    ld2 = make_loader(cfg(big))
    with pytest.raises(FastdiscoError, match=r"shard-\d+\.tar sample \d+: too many pixels to decode: 512x384"):
        next(iter(ld2))


def test_a_corrupt_jpeg_is_named_by_file_and_sample():
    good = _encode(Image.new("RGB", (64, 48), (10, 200, 30)), "JPEG")
    with pytest.raises(FastdiscoError, match=r"^shard-000003.tar, sample 17: cannot decode the JPEG"):
        R.decode_one(good[: len(good) // 2], 1, 48, 64, "shard-000003.tar, sample 17")  # truncated
