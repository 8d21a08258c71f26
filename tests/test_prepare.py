"""prepare-data round trip: both formats hold exactly what was written, in the same order,
readable by DALI's reader, the stock webdataset library and an ffcv Loader."""
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from fastdisco.dataset.images import convert, decode_rgb, target_size
from fastdisco.dataset.prepare import prepare_dataset
from fastdisco.dataset.webdataset import read_index
from fastdisco.dataset.recipes.synthetic import make_image, write_synthetic_folder

MAX_SIDE, QUALITY = 32, 85
H, W = 40, 56  # one size for all, larger than MAX_SIDE: every image is resized to 23x32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rt")
    src = write_synthetic_folder(tmp / "src", num_classes=3, per_class=5, size=(H, W), seed=3)
    out = tmp / "out"
    manifest = prepare_dataset(src, out, max_side=MAX_SIDE, quality=QUALITY, workers=1, shard_size=4)
    # Reference order, written independently of the code under test: sorted class folders,
    # sorted files inside; label = position of the folder.
    classes = sorted(p.name for p in src.iterdir())
    files = [(f, c) for c, d in enumerate(classes) for f in sorted((src / d).iterdir())]
    return src, out, manifest, classes, files


def shard_samples(out, manifest):
    """[(key, jpeg bytes, label)] read with tarfile, in shard order."""
    rows = []
    for s in manifest["shards"]:
        with tarfile.open(out / s["tar"]) as tar:
            members = tar.getmembers()
            assert [m.name.split(".")[1] for m in members] == ["jpg", "cls"] * s["count"]
            for mj, mc in zip(members[::2], members[1::2]):
                assert mj.name.split(".")[0] == mc.name.split(".")[0]
                rows.append((mj.name.split(".")[0], tar.extractfile(mj).read(), int(tar.extractfile(mc).read())))
    return rows


def test_manifest(prepared):
    src, out, m, classes, files = prepared
    assert m["format_version"] == 1 and m["num_samples"] == len(files) == 15
    assert m["classes"] == classes and m["num_classes"] == 3 and m["labeled"] is True
    assert m["skipped"] == 0 and (out / "skipped.tsv").read_text() == ""
    assert m["formats"] == ["ffcv", "dali"] and m["ffcv"]["path"] == "data.beton"
    assert set(m["ffcv"]) == {"path", "bytes", "sha256"} and m["checksum"] == "sha256"
    assert [(s["first"], s["count"]) for s in m["shards"]] == [(0, 4), (4, 4), (8, 4), (12, 3)]
    assert m["settings"]["max_side"] == MAX_SIDE and m["settings"]["quality"] == QUALITY
    assert json.loads((out / "manifest.json").read_text()) == m


def test_shards_hold_the_inputs_in_order(prepared):
    src, out, m, classes, files = prepared
    rows = shard_samples(out, m)
    assert [k for k, _, _ in rows] == ["%09d" % i for i in range(len(files))]
    assert [lab for _, _, lab in rows] == [c for _, c in files]
    for (path, _), (_, jpeg, _) in zip(files, rows):
        got = decode_rgb(jpeg)
        # Independent reference: the source pixels, resized with PIL to the capped size.
        ref_img = Image.open(path).convert("RGB")
        tw, th = target_size(W, H, MAX_SIDE)
        assert got.shape == (th, tw, 3) == (23, 32, 3)
        ref = np.asarray(ref_img.resize((tw, th), Image.Resampling.BICUBIC)).astype(float)
        # JPEG keeps luma finely and chroma at half resolution: compare luma pixel by pixel,
        # colour through the per-channel means.
        luma = np.array([0.299, 0.587, 0.114])
        assert np.abs(got @ luma - ref @ luma).mean() < 4
        assert np.abs(got.reshape(-1, 3).mean(0) - ref.reshape(-1, 3).mean(0)).max() < 3
        assert Image.open(io.BytesIO(jpeg)).mode == "RGB"


def test_dali_index_is_wds2idx_format(prepared, tmp_path):
    wds2idx = pytest.importorskip("wds2idx")  # DALI's bundled tool
    src, out, m, *_ = prepared
    for s in m["shards"]:
        ref = tmp_path / "ref.idx"
        with wds2idx.IndexCreator(str(out / s["tar"]), str(ref), verbose=False) as ic:
            ic.create_index()
        assert (out / s["index"]).read_text() == ref.read_text()
        assert len(read_index(out / s["index"])) == s["count"]


def test_stock_webdataset_reads_shards(prepared):
    wds = pytest.importorskip("webdataset")
    src, out, m, classes, files = prepared
    rows = shard_samples(out, m)
    ds = wds.WebDataset([str(out / s["tar"]) for s in m["shards"]], shardshuffle=False)
    got = [(s["__key__"], s["jpg"], int(s["cls"])) for s in ds]
    assert got == rows


def test_dali_reader_decodes_shards(prepared):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    src, out, m, classes, files = prepared
    rows = shard_samples(out, m)
    n = len(rows)

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def pipe():
        jpg, cls = fn.readers.webdataset(paths=[str(out / s["tar"]) for s in m["shards"]],
                                         index_paths=[str(out / s["index"]) for s in m["shards"]],
                                         ext=["jpg", "cls"], random_shuffle=False)
        return jpg, fn.decoders.image(jpg, device="cpu"), cls

    p = pipe()
    p.build()
    raw, imgs, cls = p.run()
    for j, (_, jpeg, label) in enumerate(rows):
        assert bytes(np.array(raw.at(j))) == jpeg
        assert int(bytes(np.array(cls.at(j)))) == label
        assert np.abs(np.array(imgs.at(j)).astype(int) - decode_rgb(jpeg).astype(int)).max() <= 2


def test_ffcv_loader_reads_beton(prepared):
    pytest.importorskip("ffcv")
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RGBImageField, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader

    src, out, m, classes, files = prepared
    rows = shard_samples(out, m)
    reader = Reader(str(out / "data.beton"))
    assert list(reader.handlers) == ["image", "label", "index"]
    assert type(reader.handlers["image"]) is RGBImageField and reader.num_samples == len(rows)
    loader = Loader(str(out / "data.beton"), batch_size=len(rows), num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()], "index": [IntDecoder()]})
    (imgs, labels, index), = list(loader)
    assert index.ravel().tolist() == list(range(len(rows)))
    assert labels.ravel().tolist() == [lab for _, _, lab in rows]
    for j, (_, jpeg, _) in enumerate(rows):
        # Same JPEG bytes as the shard (see the next test); ffcv's turbojpeg call uses the
        # fast IDCT / upsampling, so pixels match PIL's decode only up to a few levels.
        diff = np.abs(imgs[j].astype(int) - decode_rgb(jpeg).astype(int))
        assert diff.max() <= 8 and diff.mean() < 1.5


def test_beton_stores_the_shard_jpegs(prepared):
    pytest.importorskip("ffcv")
    from fastdisco.dataset.inspect import _beton_records

    src, out, m, *_ = prepared
    rows = shard_samples(out, m)
    recs = _beton_records(out / "data.beton", list(range(len(rows))))
    assert [recs[i] for i in range(len(rows))] == [(jpeg, lab, i) for i, (_, jpeg, lab) in enumerate(rows)]


def test_rerun_of_complete_output_is_a_noop(prepared):
    src, out, m, *_ = prepared
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = prepare_dataset(src, out, max_side=MAX_SIDE, quality=QUALITY, workers=1, shard_size=4)
    assert again == m
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_other_settings_on_same_out_is_an_error(prepared):
    from fastdisco.errors import FastdiscoError

    src, out, *_ = prepared
    with pytest.raises(FastdiscoError, match="settings"):
        prepare_dataset(src, out, max_side=MAX_SIDE + 1, quality=QUALITY, workers=1, shard_size=4)


def test_parallel_workers_give_identical_shards(prepared, tmp_path):
    src, out, m, *_ = prepared
    m2 = prepare_dataset(src, tmp_path / "par", formats="dali", max_side=MAX_SIDE, quality=QUALITY,
                         workers=2, shard_size=4, min_per_worker=1)
    assert m2["shards"] == m["shards"]
    for s in m["shards"]:
        assert (tmp_path / "par" / s["tar"]).read_bytes() == (out / s["tar"]).read_bytes()


def test_synthetic_classes_differ_and_are_seeded():
    a, b = make_image(0, 0, 24, seed=1), make_image(0, 0, 24, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, make_image(0, 0, 24, seed=2))
    # Class colour is the separating signal: mean hue-bearing channels differ between classes.
    means = [np.mean([make_image(c, j, 24).reshape(-1, 3).mean(0) for j in range(4)], 0) for c in range(4)]
    assert min(np.abs(means[i] - means[j]).max() for i in range(4) for j in range(i)) > 10
    assert make_image(2, 0, (10, 30)).shape == (10, 30, 3)


def test_convert_is_deterministic():
    img = Image.fromarray(make_image(1, 1, (50, 20)))
    assert convert(img, 16, 90) == convert(img, 16, 90)
