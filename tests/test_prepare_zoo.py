"""The bad-input zoo: every odd input is converted correctly or listed in skipped.tsv with a
reason; the run never crashes and never loses a good image."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from fastdisco.dataset.images import decode_rgb
from fastdisco.dataset.prepare import prepare_dataset
from fastdisco.dataset.webdataset import read_index

MAX_SIDE = 64


def jpeg_bytes(arr, **kw):
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "JPEG", quality=95, **kw)
    return b.getvalue()


def halves(h, w):
    """Left half red, right half blue: orientation is easy to check."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2:] = (0, 0, 255)
    return a


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    src = root / "src"
    a, b = src / "a", src / "b"
    (a / "nested").mkdir(parents=True)
    b.mkdir()
    good = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    expect = {}  # relative path -> check(decoded HxWx3) for inputs that must be kept
    bad = {}  # relative path -> words its skip reason must contain

    (a / "good.jpg").write_bytes(jpeg_bytes(good))
    expect["a/good.jpg"] = lambda x: x.shape == (30, 40, 3)
    whole = jpeg_bytes(good)
    (a / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    bad["a/truncated.jpg"] = "truncated"
    (a / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2)
    bad["a/garbage.jpg"] = "not an image"  # a JPEG marker, then no valid header
    (a / "zero.jpg").write_bytes(b"")
    bad["a/zero.jpg"] = "empty"
    (a / "notes.txt").write_text("not an image\n")
    bad["a/notes.txt"] = "not an image"
    os.symlink(a / "does-not-exist.jpg", a / "dangling.jpg")
    bad["a/dangling.jpg"] = "unreadable"

    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(a / "cmyk.jpg", quality=95)  # pure red in CMYK
    expect["a/cmyk.jpg"] = lambda x: x.shape == (10, 20, 3) and x[..., 0].mean() > 200 and x[..., 1:].mean() < 60
    Image.new("L", (12, 12), 77).save(a / "gray.png")
    expect["a/gray.png"] = lambda x: np.abs(x.astype(int) - 77).max() <= 2
    pal = Image.new("P", (16, 8), 0)
    pal.putpalette([0, 200, 0] + [0, 0, 0] * 255)
    pal.info["transparency"] = 1
    pal.putpixel((0, 0), 1)  # one transparent pixel
    pal.save(a / "palette.png", transparency=1)
    expect["a/palette.png"] = lambda x: x.shape == (8, 16, 3) and tuple(x[4, 8]) == pytest.approx((0, 200, 0), abs=8)
    g16 = (np.arange(32 * 8).reshape(8, 32) * 256).astype(np.uint16)  # 0 .. 65280
    Image.fromarray(g16).save(a / "gray16.png")
    # 16-bit scaled to 8-bit (value >> 8), not clipped at 255
    expect["a/gray16.png"] = lambda x: np.abs(x[..., 0].astype(int) - (g16 >> 8)).max() <= 3
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 2] = 255
    rgba[:, 5:, 3] = 255  # left half fully transparent
    Image.fromarray(rgba, "RGBA").save(a / "alpha.png")
    expect["a/alpha.png"] = lambda x: x[:, :4].min() >= 245 and x[:, 6:, 2].mean() > 240 and x[:, 6:, 0].mean() < 15

    # EXIF orientation 6 = "rotate 90 degrees clockwise to display": stored 40x20 -> shown 20x40.
    exif = Image.Exif()
    exif[0x0112] = 6
    (b / "rotated.jpg").write_bytes(jpeg_bytes(halves(20, 40), exif=exif.tobytes()))
    # After rotating clockwise, the left (red) half is on top.
    expect["b/rotated.jpg"] = lambda x: x.shape == (40, 20, 3) and x[:15, :, 0].mean() > 200 and x[25:, :, 2].mean() > 200
    Image.fromarray(np.full((3, 2000, 3), 128, np.uint8)).save(b / "wide.png")
    expect["b/wide.png"] = lambda x: x.shape == (1, MAX_SIDE, 3)
    Image.fromarray(np.full((600, 50, 3), 128, np.uint8)).save(b / "tall.png")
    expect["b/tall.png"] = lambda x: x.shape == (MAX_SIDE, 5, 3)
    Image.new("RGB", (1, 1), (10, 200, 30)).save(b / "one.png")
    expect["b/one.png"] = lambda x: x.shape == (1, 1, 3)
    Image.new("RGB", (9, 7), (200, 100, 0)).save(b / "ünïcode 日本.png")
    expect["b/ünïcode 日本.png"] = lambda x: x.shape == (7, 9, 3)
    Image.new("RGB", (5, 5), (0, 100, 0)).save(os.fsencode(b) + b"/raw-\xff-name.png")
    expect[os.fsdecode(b"b/raw-\xff-name.png")] = lambda x: x.shape == (5, 5, 3)
    Image.new("1", (8, 8), 1).save(b / "bilevel.png")
    expect["b/bilevel.png"] = lambda x: x.min() >= 250
    Image.new("RGB", (6, 6), (1, 2, 3)).save(a / "nested" / "deep.gif")
    expect["a/nested/deep.gif"] = lambda x: x.shape == (6, 6, 3)
    (src / "stray.jpg").write_bytes(jpeg_bytes(good))  # beside the class folders: no label
    bad["stray.jpg"] = "no label"

    out = root / "out"
    manifest = prepare_dataset(src, out, formats="dali", max_side=MAX_SIDE, quality=95, workers=1, shard_size=5)
    return src, out, manifest, expect, bad


def stored(out, manifest):
    samples = []
    for s in manifest["shards"]:
        with open(out / s["tar"], "rb") as f:
            for e in read_index(out / s["index"]):
                f.seek(e["jpg"].offset)
                jpeg = f.read(e["jpg"].size)
                f.seek(e["cls"].offset)
                samples.append((jpeg, int(f.read(e["cls"].size))))
    return samples


def test_every_good_image_is_kept_in_order_and_converted(zoo):
    src, out, m, expect, bad = zoo
    samples = stored(out, m)
    assert m["num_samples"] == len(samples) == len(expect)
    order = sorted(expect, key=lambda p: (p.split("/")[0], p.split("/", 1)[1]))
    for name, (jpeg, label) in zip(order, samples):
        assert label == (0 if name.startswith("a/") else 1), name
        x = decode_rgb(jpeg)
        assert Image.open(io.BytesIO(jpeg)).mode == "RGB"
        assert max(x.shape[:2]) <= MAX_SIDE
        assert expect[name](x), name


def test_bad_inputs_are_listed_with_reasons(zoo):
    src, out, m, expect, bad = zoo
    lines = (out / "skipped.tsv").read_bytes().decode("utf-8", "surrogateescape").splitlines()
    reasons = dict(line.split("\t") for line in lines)
    assert sorted(reasons) == sorted(bad) and m["skipped"] == len(bad)
    for name, words in bad.items():
        assert words in reasons[name], (name, reasons[name])


def test_undecodable_filename_in_skipped_tsv(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    Image.new("RGB", (4, 4)).save(src / "ok.png")
    (src / os.fsdecode(b"bad-\xfe.jpg")).write_bytes(b"nope")
    m = prepare_dataset(src, tmp_path / "out", formats="dali", workers=1)
    assert m["num_samples"] == 1 and m["labeled"] is False and m["classes"] == []
    assert (tmp_path / "out" / "skipped.tsv").read_bytes().startswith(b"bad-\xfe.jpg\tnot an image")
    assert stored(tmp_path / "out", m)[0][1] == -1  # unlabeled


def test_all_inputs_bad_is_an_error(tmp_path):
    from fastdisco.errors import FastdiscoError

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.jpg").write_bytes(b"")
    with pytest.raises(FastdiscoError, match="no input could be converted"):
        prepare_dataset(tmp_path / "src", tmp_path / "out", formats="dali", workers=1)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert "empty" in (tmp_path / "out" / "skipped.tsv").read_text()
