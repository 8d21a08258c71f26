"""GPU decoding without DALI (loader.gpu_decode) and the batched crop + resize it uses
(ops.resized_crop_matmul). Everything but nvJPEG itself runs here on the CPU: the batched crop
against the per-sample interpolate, and the torch backend's `raw` path (workers send bytes, the
main process decodes the batch with torchvision and crops every view in one op) with
torchvision's CPU decoder in nvJPEG's place."""
from __future__ import annotations

import pytest
import torch

import fastdisco._compat  # noqa: F401
from fastdisco import augment as A
from fastdisco.augment import ops
from fastdisco.config import DataConfig
from fastdisco.errors import FastdiscoError
from fastdisco.loader import make_loader
from fastdisco.loader import gpu_decode

RES, B = 24, 8


@pytest.mark.parametrize("recipe,res", [("mocov2", 24), ("mocov2", 56), ("eval", 24), ("eval", 56)])
def test_batched_crop_equals_the_per_sample_antialiased_interpolate(recipe, res):
    """Down- and upscaling crops, rrc and eval geometry, ragged images in a padded batch."""
    g = torch.Generator().manual_seed(1)
    u8 = (torch.rand(12, 3, 60, 80, generator=g) * 255).round().to(torch.uint8)
    h, w = torch.randint(20, 61, (12,), generator=g), torch.randint(20, 81, (12,), generator=g)
    for p in A.sample_params(g, A.RECIPES[recipe], h, w, res):
        want = torch.cat([A.crop_view(u8[n : n + 1], {k: v[n : n + 1] for k, v in p.items()}, res) for n in range(12)])
        got = ops.resized_crop_matmul(u8, p, res)
        assert got.shape == want.shape and (got - want).abs().max() < 2e-3  # levels of 255


def test_batched_crop_reads_nothing_outside_its_box():
    g = torch.Generator().manual_seed(2)
    img = (torch.rand(4, 3, 50, 50, generator=g) * 255).round()
    box = torch.tensor([[5.0, 7.0, 30.0, 20.0], [0.0, 0.0, 50.0, 50.0], [10.0, 30.0, 8.0, 20.0], [49.0, 49.0, 1.0, 1.0]])
    p = {"crop": box}
    loud = img.clone()
    for n, (t, l, hh, ww) in enumerate(box.long().tolist()):  # everything outside the box changed
        mask = torch.ones(50, 50, dtype=torch.bool)
        mask[t : t + hh, l : l + ww] = False
        loud[n][:, mask] = 1e6
    assert torch.equal(ops.resized_crop_matmul(img, p, 16), ops.resized_crop_matmul(loud, p, 16))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from fastdisco.dataset.prepare import prepare_dataset
    from fastdisco.dataset.recipes.synthetic import write_synthetic_folder

    root = tmp_path_factory.mktemp("gpudec")
    write_synthetic_folder(root / "src", num_classes=2, per_class=8, size=(48, 64), ext="jpg")
    prepare_dataset(root / "src", root / "out", formats="dali", workers=1, shard_size=16)
    return str(root / "out")


def _cfg(path, **kw):
    return DataConfig(**{**dict(path=path, backend="torch", batch_size=B, resolution=RES, num_workers=1, seed=4,
                                reduced_decode=False), **kw})


def test_raw_bytes_path_decodes_the_batch_in_the_main_process(prepared):
    """The raw path (GPU decode's), run on the CPU: same samples and params as the PIL path, views
    within a level or two (torchvision's decoder, float resize vs the workers' uint8 resize)."""
    ref = make_loader(_cfg(prepared))
    raw = make_loader(_cfg(prepared))
    raw.worker_does = "raw"
    for a, b in zip(ref, raw):
        assert torch.equal(a.indices, b.indices)
        for pa, pb in zip(a.params, b.params):
            assert all(torch.equal(pa[k], pb[k]) for k in pa)
        for va, vb in zip(a.views, b.views):
            d = (va - vb).abs()
            assert d.mean() < 0.02 and d.max() < 0.2  # 1 level = 0.017 in normalised units


def test_worker_sends_bytes_not_pixels(prepared):
    from fastdisco.loader.view_pool import NO_SLOT

    ld = make_loader(_cfg(prepared))
    ld.worker_does = "raw"
    ds = ld._dataloader().dataset
    ds.worker_does = "raw"
    data, params, *_ = ds[(0, 0, NO_SLOT)]
    assert all(d.dtype == torch.uint8 and d.dim() == 1 for d in data)
    assert sum(d.numel() for d in data) < B * 3 * 48 * 64 / 4  # JPEG bytes, a fraction of the pixels
    imgs = gpu_decode.pad_batch(gpu_decode.decode_batch(data, torch.device("cpu")))
    assert imgs.shape == (B, 3, 48, 64)


def test_gpu_decode_on_a_cpu_device_is_a_one_line_error(prepared):
    with pytest.raises(FastdiscoError, match="data.decode_device"):
        make_loader(_cfg(prepared, decode_device="mixed"))
    assert make_loader(_cfg(prepared)).decode_device == "cpu"  # auto on a CPU machine


def test_a_corrupt_jpeg_is_named(prepared):
    bad = [torch.frombuffer(bytearray(b"\xff\xd8\xff\xe0 not a jpeg"), dtype=torch.uint8)]
    with pytest.raises(FastdiscoError, match="shard-x.tar, sample 7: cannot decode"):
        gpu_decode.decode_batch(bad, torch.device("cpu"), lambda n: "shard-x.tar, sample 7")


@pytest.mark.gpu
def test_nvjpeg_path_is_the_default_on_cuda_and_matches_the_cpu_path(prepared):
    assert gpu_decode.available()
    g = make_loader(_cfg(prepared), device="cuda")
    assert g.decode_device == "mixed" and g.worker_does == "raw"
    c = make_loader(_cfg(prepared), device="cpu")
    for a, b in zip(g, c):
        assert torch.equal(a.indices.cpu(), b.indices)
        for va, vb in zip(a.views, b.views):
            assert (va.float().cpu() - vb).abs().mean() < 0.05  # nvJPEG vs libjpeg: a few levels
