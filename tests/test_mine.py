"""`fastdisco mine`: top-k per class, planted near-duplicates removed, resume after an
interruption gives the same result, and the end-to-end CLI with a real (tiny) teacher."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

import fastdisco  # noqa: F401
from fastdisco import mine
from fastdisco.errors import FastdiscoError
from fastdisco.models.teacher import IMAGENET_MEAN, IMAGENET_STD

SIZE = 48
STRENGTHS = (120, 140, 160, 180, 200)   # dominant-channel value: the stub's confidence order


def _texture(seed: int) -> np.ndarray:
    """Smooth zero-mean grayscale pattern (+-30), distinct per seed: gives distinct pHashes."""
    g = np.random.default_rng(seed).uniform(-30, 30, (10, 10)).astype(np.float32)
    return np.asarray(Image.fromarray(g, mode="F").resize((SIZE, SIZE), Image.Resampling.BICUBIC)).clip(-30, 30)


def _image(cls: int, strength: int, seed: int) -> Image.Image:
    rgb = np.full((SIZE, SIZE, 3), 60.0, np.float32)
    rgb[..., cls] = strength
    rgb += _texture(seed)[..., None]  # same on every channel: the channel differences stay
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_prepared(root: Path, jpegs: list[bytes], shard_size: int = 6) -> Path:
    """A prepared dataset as docs/design.md section 1 describes it (no DALI index: the reader
    scans the tar)."""
    (root / "shards").mkdir(parents=True)
    shards = []
    for k, first in enumerate(range(0, len(jpegs), shard_size)):
        rel = f"shards/shard-{k:05d}.tar"
        count = min(shard_size, len(jpegs) - first)
        with tarfile.open(root / rel, "w", format=tarfile.USTAR_FORMAT) as tf:
            for i in range(first, first + count):
                for name, data in ((f"{i:09d}.jpg", jpegs[i]), (f"{i:09d}.cls", b"-1")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        shards.append({"tar": rel, "index": None, "count": count, "first": first})
    manifest = {"format_version": 1, "num_samples": len(jpegs), "num_classes": 0, "classes": [],
                "labeled": False, "skipped": 0, "formats": ["dali"], "shards": shards, "ffcv": None,
                "settings": {}, "source": {}, "tool": {}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """15 images, 3 classes x 5 strengths, in a shuffled order; returns (dir, [(cls, strength, seed)])."""
    root = tmp_path_factory.mktemp("pool")
    specs = [(c, s, 10 * c + j) for c in range(3) for j, s in enumerate(STRENGTHS)]
    perm = np.random.default_rng(0).permutation(len(specs))
    specs = [specs[i] for i in perm]
    write_prepared(root / "prepared", [_jpeg(_image(*sp)) for sp in specs])
    return root / "prepared", specs


def stub_scorer(calls: list | None = None, fail_after: int | None = None):
    """Logits = 20 x the mean raw RGB of the crop: class = dominant channel, confidence grows
    with its strength."""
    def score(x: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            if fail_after is not None and len(calls) >= fail_after:
                raise KeyboardInterrupt("simulated interruption")
            calls.append(len(x))
        raw = x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        return raw.mean((2, 3)) * 20
    return score


KW = dict(resolution=32, crop_pct=0.875, chunk_size=4, batch_size=2, workers=1, progress=False)


def _expected(specs, k, exclude=()):
    keep = []
    for c in range(3):
        mine_ = sorted((-s, i) for i, (cc, s, _) in enumerate(specs) if cc == c and i not in exclude)
        keep += [i for _, i in mine_[:k]]
    return sorted(keep)


def _listed(out: Path) -> list[tuple[int, int]]:
    rows = [line.split(",") for line in (out / "filelist.txt").read_text().splitlines()]
    return [(int(Path(p).stem), int(lab)) for p, lab in rows]


# --------------------------------------------------------------------------- selection
def test_topk_per_class(pool, tmp_path):
    root, specs = pool
    summary = mine.run_mine(root, tmp_path / "out", stub_scorer(), top_k=2, **KW)
    listed = _listed(tmp_path / "out")
    assert [i for i, _ in listed] == _expected(specs, 2)
    assert all(lab == specs[i][0] for i, lab in listed)
    assert summary["selected_per_class"] == [2, 2, 2]
    for i, _ in listed:  # the images are the pool's JPEGs, byte for byte
        assert (tmp_path / "out" / "images" / f"{i:09d}.jpg").read_bytes() == mine.Pool(root).jpeg(i)
    # a re-run with another k re-uses the scores and drops images no longer chosen
    mine.run_mine(root, tmp_path / "out", stub_scorer(calls := []), top_k=1, **KW)
    assert calls == [] and [i for i, _ in _listed(tmp_path / "out")] == _expected(specs, 1)
    assert len(list((tmp_path / "out" / "images").glob("*.jpg"))) == 3


def test_select_topk_reference():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 7, 500)
    conf = rng.choice(np.linspace(0.1, 1, 40), 500).astype(np.float32)  # many ties
    keep = rng.random(500) > 0.2
    got = mine.select_topk(pred, conf, 5, keep, min_conf=0.3)
    ref = []
    for c in range(7):
        cand = [i for i in range(500) if pred[i] == c and keep[i] and conf[i] >= 0.3]
        ref += sorted(cand, key=lambda i: (-conf[i], i))[:5]
    assert got.tolist() == sorted(ref)


# --------------------------------------------------------------------------- near-duplicates
def test_dct_matches_definition():
    x = np.random.default_rng(0).random(32)
    ref = [2 * sum(x[i] * np.cos(np.pi * k * (2 * i + 1) / 64) for i in range(32)) for k in range(32)]
    np.testing.assert_allclose(mine._DCT @ x, ref, rtol=1e-10, atol=1e-10)


def _near_copy(img: Image.Image) -> Image.Image:
    """JPEG re-encode at low quality, slightly brighter, slightly rescaled."""
    img = ImageEnhance.Brightness(img).enhance(1.06).resize((SIZE + 8, SIZE + 8), Image.Resampling.BILINEAR)
    return Image.open(io.BytesIO(_jpeg(img, quality=60))).convert("RGB")


def test_phash_near_copies_close_others_far():
    imgs = [_image(c, s, 10 * c + j) for c in range(3) for j, s in enumerate(STRENGTHS)]
    h = np.array([mine.phash(im) for im in imgs], np.uint64)
    h2 = np.array([mine.phash(_near_copy(im)) for im in imgs], np.uint64)
    assert mine.hamming(h, h2).max() <= 4
    d = mine.hamming(h[:, None], h[None, :]) + 64 * np.eye(len(h), dtype=np.int64)
    assert d.min() > 8


@pytest.mark.parametrize("max_dist", [0, 1, 3, 6, 10, 13])
def test_near_duplicates_matches_brute_force(max_dist):
    rng = np.random.default_rng(max_dist)
    ref = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    query = rng.integers(0, 2**63, 400, dtype=np.int64).astype(np.uint64)
    for j in range(0, 400, 3):  # plant copies of ref hashes with 0..max_dist+2 flipped bits
        flips = rng.choice(64, size=rng.integers(0, max_dist + 3), replace=False)
        query[j] = ref[j % 300] ^ np.uint64(sum(1 << int(b) for b in flips))
    brute = (mine.hamming(query[:, None], ref[None, :]) <= max_dist).any(1)
    assert brute.sum() > 20
    np.testing.assert_array_equal(mine.near_duplicates(query, ref, max_dist, block=64), brute)


def test_planted_duplicates_removed(pool, tmp_path):
    root, specs = pool
    top = {c: max((s, i) for i, (cc, s, _) in enumerate(specs) if cc == c)[1] for c in range(3)}
    evald = tmp_path / "evalset"
    evald.mkdir()
    # near-copies of the best red and the best blue image, plus unrelated eval images
    for c in (0, 2):
        _near_copy(_image(*specs[top[c]])).save(evald / f"dup{c}.jpg", quality=60)
    for j in range(4):
        _image(1, 150, 1000 + j).save(evald / f"other{j}.png")
    s = mine.run_mine(root, tmp_path / "out", stub_scorer(), top_k=2, eval_sets=[str(evald)], **KW)
    assert s["num_near_duplicates"] == 2 and s["num_eval_images"] == 6
    assert [i for i, _ in _listed(tmp_path / "out")] == _expected(specs, 2, exclude={top[0], top[2]})
    # the same eval set as a prepared dataset
    write_prepared(tmp_path / "evalprep", [(evald / f).read_bytes() for f in sorted(p.name for p in evald.iterdir())])
    s2 = mine.run_mine(root, tmp_path / "out2", stub_scorer(), top_k=2, eval_sets=[str(tmp_path / "evalprep")], **KW)
    assert s2["num_near_duplicates"] == 2
    assert _listed(tmp_path / "out2") == _listed(tmp_path / "out")


# --------------------------------------------------------------------------- resume
def test_resume_after_interruption_same_result(pool, tmp_path):
    root, specs = pool
    mine.run_mine(root, tmp_path / "ref", stub_scorer(), top_k=2, **KW)

    calls: list[int] = []
    with pytest.raises(KeyboardInterrupt):  # dies in chunk 2 (chunks of 4 images, batches of 2)
        mine.run_mine(root, tmp_path / "out", stub_scorer(calls, fail_after=5), top_k=2, **KW)
    saved = sorted(p.name for p in (tmp_path / "out" / "scores").glob("chunk-*.npz"))
    assert saved == ["chunk-000000.npz", "chunk-000001.npz"]
    assert not (tmp_path / "out" / "filelist.txt").exists()

    calls = []
    mine.run_mine(root, tmp_path / "out", stub_scorer(calls), top_k=2, **KW)
    assert sum(calls) == len(specs) - 8  # only the chunks not yet saved were scored
    for name in ("filelist.txt", "selected.csv"):
        assert (tmp_path / "out" / name).read_text() == (tmp_path / "ref" / name).read_text()
    for c in range(4):
        a = np.load(tmp_path / "out" / "scores" / f"chunk-{c:06d}.npz")
        b = np.load(tmp_path / "ref" / "scores" / f"chunk-{c:06d}.npz")
        assert all(np.array_equal(a[k], b[k]) for k in ("pred", "conf", "hash"))


def test_scores_from_other_settings_refused(pool, tmp_path):
    root, _ = pool
    mine.run_mine(root, tmp_path / "out", stub_scorer(), top_k=1, **KW)
    other = dict(KW, resolution=40)
    with pytest.raises(FastdiscoError, match="resolution"):
        mine.run_mine(root, tmp_path / "out", stub_scorer(), top_k=1, **other)
    calls: list[int] = []
    mine.run_mine(root, tmp_path / "out", stub_scorer(calls), top_k=1, fresh=True, **other)
    assert sum(calls) == 15


# --------------------------------------------------------------------------- CLI, real teacher
def test_cli_with_tiny_teacher(pool, tmp_path):
    import timm

    from fastdisco.cli.main import main
    from fastdisco.config import ModelConfig
    from fastdisco.models.teacher import load_teacher

    root, specs = pool
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=3).state_dict(), tmp_path / "t.pth")
    out = tmp_path / "out"
    rc = main(["mine", str(root), str(out), "--teacher", "test_resnet", "--teacher-ckpt", str(tmp_path / "t.pth"),
               "--top-k", "2", "--resolution", "32", "--chunk-size", "8", "--batch-size", "4",
               "--workers", "1", "--no-progress"])
    assert rc == 0
    listed = _listed(out)
    # reference: the same teacher scoring the same crops directly, one image at a time
    t = load_teacher(ModelConfig(teacher="test_resnet", teacher_ckpt=str(tmp_path / "t.pth"), teacher_bn="eval"),
                     output="logits")
    p = mine.Pool(root)
    crops = [mine.eval_transform(Image.open(io.BytesIO(p.jpeg(i))).convert("RGB"), 32, 0.875) for i in range(len(specs))]
    probs = torch.cat([torch.softmax(t(mine.to_input([c])), 1) for c in crops])
    conf, pred = probs.max(1)
    ref = mine.select_topk(pred.numpy(), conf.numpy(), 2)
    assert [i for i, _ in listed] == ref.tolist()
    assert all(lab == int(pred[i]) for i, lab in listed)
    assert json.loads((out / "mine.json").read_text())["settings"]["teacher"] == "test_resnet"
    # the list is what `fastdisco prepare-data` reads (when that module is there)
    sources = pytest.importorskip("fastdisco.dataset.sources")
    src = sources.list_source(out / "filelist.txt")
    assert len(src) == len(listed)
    assert all(isinstance(src.load(i), (bytes, Image.Image)) for i in range(len(src)))


def test_cli_teacher_without_classifier_is_one_line_error(pool, tmp_path, capsys):
    import timm

    from fastdisco.cli.main import main

    root, _ = pool
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict(), tmp_path / "t.pth")
    rc = main(["mine", str(root), str(tmp_path / "o"), "--teacher", "test_resnet",
               "--teacher-ckpt", str(tmp_path / "t.pth"), "--top-k", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "no classifier" in err and "\n" not in err  # a runtime error
