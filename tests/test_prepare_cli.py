"""`fastdisco prepare-data` CLI: one-line errors with a non-zero exit, and the named recipes."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastdisco.cli.main import main
from fastdisco.dataset.images import decode_rgb
from fastdisco.dataset.webdataset import read_index


def run(capsys, *argv):
    rc = main(["prepare-data", *map(str, argv)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line_error(err, words):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and words in lines[0], err


def test_missing_src(capsys, tmp_path):
    rc, out, err = run(capsys, tmp_path / "nope", tmp_path / "out")
    assert rc != 0
    one_line_error(err, "not found")


def test_empty_src(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    rc, out, err = run(capsys, tmp_path / "empty", tmp_path / "out", "--format", "dali")
    assert rc != 0
    one_line_error(err, "empty")
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("args, words", [
    (["--format", "tfrecord"], "unknown format"),
    (["--part", "3/2"], "--part"),
    (["--part", "x"], "--part"),
    (["--quality", "0"], "--quality"),
])
def test_bad_options(capsys, tmp_path, args, words):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (4, 4)).save(src / "a.png")
    rc, out, err = run(capsys, src, tmp_path / "out", *args)
    assert rc != 0
    one_line_error(err, words)


def test_missing_src_argument(capsys, tmp_path):
    rc, out, err = run(capsys, tmp_path / "out")
    assert rc != 0
    one_line_error(err, "SRC")


def test_file_list_with_class_names(capsys, tmp_path):
    for name, colour in [("red.png", (255, 0, 0)), ("blue.png", (0, 0, 255)), ("nolabel.png", (0, 255, 0))]:
        Image.new("RGB", (8, 6), colour).save(tmp_path / name)
    (tmp_path / "list.csv").write_text("path,label\nred.png,warm\nblue.png,cold\nnolabel.png\nmissing.png,cold\n")
    rc, out, err = run(capsys, tmp_path / "list.csv", tmp_path / "out", "--format", "dali", "--no-progress")
    assert rc == 0, err
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["classes"] == ["cold", "warm"] and m["num_samples"] == 3 and m["skipped"] == 1
    assert "prepared 3 images" in out
    s = m["shards"][0]
    entries = read_index(tmp_path / "out" / s["index"])
    data = (tmp_path / "out" / s["tar"]).read_bytes()
    labels = [int(data[e["cls"].offset:e["cls"].offset + e["cls"].size]) for e in entries]
    assert labels == [1, 0, -1]  # file order kept; warm=1, cold=0, none=-1
    red = decode_rgb(data[entries[0]["jpg"].offset:entries[0]["jpg"].offset + entries[0]["jpg"].size])
    assert red[..., 0].min() > 240 and red[..., 2].max() < 15
    assert "missing.png\tunreadable" in (tmp_path / "out" / "skipped.tsv").read_text()


FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FMNIST / "t10k-labels-idx1-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_recipe(capsys, tmp_path):
    from fastdisco.dataset.recipes.fashion_mnist import CLASSES, load_split

    rc, out, err = run(capsys, "--dataset", "fashion-mnist", "--split", "test", "--limit", "12",
                       tmp_path / "fm", "--format", "dali", "--shard-size", "5", "--no-progress")
    assert rc == 0, err
    m = json.loads((tmp_path / "fm" / "manifest.json").read_text())
    assert m["num_samples"] == 12 and m["classes"] == CLASSES and m["source"]["split"] == "test"
    images, labels = load_split("test")
    i = 0
    for s in m["shards"]:
        data = (tmp_path / "fm" / s["tar"]).read_bytes()
        for e in read_index(tmp_path / "fm" / s["index"]):
            x = decode_rgb(data[e["jpg"].offset:e["jpg"].offset + e["jpg"].size]).astype(int)
            assert int(data[e["cls"].offset:e["cls"].offset + e["cls"].size]) == labels[i]
            assert x.shape == (28, 28, 3) and np.abs(x[..., 0] - x[..., 2]).max() <= 3  # gray stored as RGB
            assert np.abs(x.mean(-1) - images[i]).mean() < 6
            i += 1
    assert i == 12


def test_synthetic_recipe(capsys, tmp_path):
    rc, out, err = run(capsys, "--dataset", "synthetic", "--num-classes", "3", "--per-class", "2",
                       "--image-size", "20", tmp_path / "syn", "--format", "dali", "--no-progress")
    assert rc == 0, err
    m = json.loads((tmp_path / "syn" / "manifest.json").read_text())
    assert m["num_samples"] == 6 and m["num_classes"] == 3


def test_imagenet_flat_val_with_labels(tmp_path):
    from fastdisco.dataset.prepare import resolve_source

    root = tmp_path / "imagenet"
    for w in ("n01440764", "n01443537"):
        (root / "train" / w).mkdir(parents=True)
    (root / "val").mkdir()
    for k in (1, 2, 3):
        Image.new("RGB", (4, 4)).save(root / "val" / f"ILSVRC2012_val_{k:08d}.JPEG")
    (root / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000002,n01440764 1 2 3 4\n"
        "ILSVRC2012_val_00000001,n01443537 1 2 3 4 n01443537 5 6 7 8\nILSVRC2012_val_00000003,n01440764 0 0 1 1\n")
    src = resolve_source(root, "imagenet", {"split": "val"})
    assert src.classes == ["n01440764", "n01443537"]
    assert list(zip(src.names, src.labels)) == [("ILSVRC2012_val_00000001.JPEG", 1),
                                                ("ILSVRC2012_val_00000002.JPEG", 0),
                                                ("ILSVRC2012_val_00000003.JPEG", 0)]


def test_imagenet100_list():
    from fastdisco.dataset.recipes.imagenet100 import wnids

    w = wnids()
    assert len(w) == 100 and w[0] == "n02869837" and w[-1] == "n02090622"
