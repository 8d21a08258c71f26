"""`fastdisco inspect OUT`: passes on a good dataset, writes the grid, fails on damage."""
import json
import shutil

import pytest
from PIL import Image

from fastdisco.cli.main import main
from fastdisco.dataset.prepare import prepare_dataset
from fastdisco.dataset.recipes.synthetic import write_synthetic_folder


@pytest.fixture(scope="module")
def dali_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("insp")
    src = write_synthetic_folder(root / "src", num_classes=2, per_class=5, size=20)
    out = root / "out"
    prepare_dataset(src, out, formats="dali", max_side=16, workers=1, shard_size=3)
    return out


def inspect(capsys, out, *extra):
    rc = main(["inspect", str(out), *extra])
    c = capsys.readouterr()
    return rc, c.out, c.err


def test_good_dataset_passes_and_writes_grid(capsys, dali_out, tmp_path):
    grid = tmp_path / "g.png"
    rc, out, err = inspect(capsys, dali_out, "--grid", str(grid), "--samples", "10")
    assert rc == 0 and out.strip().endswith("OK"), out + err
    with Image.open(grid) as g:
        assert g.size == (8 * 96, 2 * (96 + 12))  # 10 tiles, 8 per row


def test_full_dataset_with_ffcv(capsys, tmp_path):
    pytest.importorskip("ffcv")
    src = write_synthetic_folder(tmp_path / "src", num_classes=2, per_class=3, size=(20, 30))
    prepare_dataset(src, tmp_path / "out", max_side=16, workers=1, shard_size=4)
    rc, out, err = inspect(capsys, tmp_path / "out")
    assert rc == 0, out + err
    assert "ffcv_loader" in out and "dali_reader" in out and (tmp_path / "out" / "inspect.png").is_file()


def damaged(dali_out, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(dali_out, out)
    return out


def test_missing_shard_is_a_problem(capsys, dali_out, tmp_path):
    out = damaged(dali_out, tmp_path)
    (out / "shards" / "shard-00001.tar").unlink()
    rc, text, _ = inspect(capsys, out)
    assert rc == 1 and "PROBLEM: missing" in text


def test_wrong_count_is_a_problem(capsys, dali_out, tmp_path):
    out = damaged(dali_out, tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    m["num_samples"] += 1
    (out / "manifest.json").write_text(json.dumps(m))
    rc, text, _ = inspect(capsys, out)
    assert rc == 1 and "manifest says 11" in text


def test_corrupt_jpeg_is_a_problem(capsys, dali_out, tmp_path):
    from fastdisco.dataset.webdataset import read_index

    out = damaged(dali_out, tmp_path)
    e = read_index(out / "shards" / "shard-00000.idx")[0]["jpg"]
    with open(out / "shards" / "shard-00000.tar", "r+b") as f:
        f.seek(e.offset)
        f.write(b"\0" * e.size)
    rc, text, _ = inspect(capsys, out)
    assert rc == 1 and "sample 0" in text


def test_not_a_prepared_dataset(capsys, tmp_path):
    rc, out, err = inspect(capsys, tmp_path)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "manifest.json" in err  # a runtime error
