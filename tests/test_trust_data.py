"""Damaged prepared data (issue 16 item 5): every shard, index and .beton has a sha256 in the
manifest; `inspect --full` verifies every byte and names each damaged file; `inspect` reports a
truncated tar / .beton or a corrupt manifest as problems (rc 1, no traceback); the loaders name the
file and the sample they cannot read; manifests without checksums still load."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from fastdisco.cli.main import main as cli_main
from fastdisco.config import DataConfig
from fastdisco.errors import FastdiscoError

sys.path.insert(0, str(Path(__file__).parent))
from train_utils import have_backend  # noqa: E402

FORMATS = "ffcv,dali" if have_backend("ffcv") else "dali"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from fastdisco.dataset.prepare import prepare_dataset
    from fastdisco.dataset.recipes.synthetic import write_synthetic_folder

    root = tmp_path_factory.mktemp("trustdata")
    write_synthetic_folder(root / "src", num_classes=2, per_class=6, size=24, ext="jpg")
    prepare_dataset(root / "src", root / "out", formats=FORMATS, workers=1, shard_size=5)
    return root / "out"


@pytest.fixture
def copy(prepared, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(prepared, out)
    return out


def inspect(capsys, out, *args):
    rc = cli_main(["inspect", str(out), "--samples", "2", "--grid", str(out.parent / "g.png"), *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return rc, captured.out + captured.err


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


def test_manifest_records_a_checksum_per_file_and_full_inspect_passes(prepared, capsys):
    from fastdisco.dataset.webdataset import file_sha256

    m = manifest(prepared)
    assert m["checksum"] == "sha256" and len(m["shards"]) == 3
    for s in m["shards"]:
        assert s["sha256"] == file_sha256(prepared / s["tar"]) and s["bytes"] == (prepared / s["tar"]).stat().st_size
        assert s["index_sha256"] == file_sha256(prepared / s["index"])
    if m["ffcv"]:
        assert m["ffcv"]["sha256"] == file_sha256(prepared / "data.beton")
    rc, text = inspect(capsys, prepared, "--full")
    assert rc == 0 and "verified (every byte)" in text and text.strip().endswith("OK"), text


def test_bit_flip_found_by_full_inspect_naming_the_file(copy, capsys):
    m = manifest(copy)
    last = m["shards"][-1]
    tar = copy / last["tar"]
    data = bytearray(tar.read_bytes())
    data[1024 + 100] ^= 0x10  # inside the last shard's first JPEG: not one of the 2 sampled images
    tar.write_bytes(bytes(data))
    rc, text = inspect(capsys, copy, "--full")
    assert rc == 1 and f"{tar}: checksum mismatch" in text, text
    assert sum("checksum mismatch" in line for line in text.splitlines()) == 1  # only the damaged file


def test_truncated_tar_is_reported_and_the_loader_names_file_and_sample(copy, capsys):
    from fastdisco.dataset.webdataset import ShardIndex, load_manifest

    s = manifest(copy)["shards"][1]
    tar = copy / s["tar"]
    tar.write_bytes(tar.read_bytes()[:3000])
    rc, text = inspect(capsys, copy)  # sizes are checked without --full
    assert rc == 1 and f"{tar}: 3000 bytes, manifest says" in text, text
    with pytest.raises(FastdiscoError, match=rf"{tar}: truncated \(3000 bytes\): sample 00000000\d and later"):
        ShardIndex.build(copy, load_manifest(copy))
    # without the index too (a scan of the tar headers): still one line naming the shard
    (copy / s["index"]).unlink()
    with pytest.raises(FastdiscoError, match=rf"{tar}"):
        ShardIndex.build(copy, load_manifest(copy))


@pytest.mark.skipif(not have_backend("ffcv"), reason="ffcv not installed")
def test_truncated_beton_is_reported_and_the_ffcv_loader_names_it(copy, capsys):
    from fastdisco.loader import make_loader

    beton = copy / "data.beton"
    whole = beton.read_bytes()
    for keep in (len(whole) - 100, 200):  # allocation table (at the end) cut off; header cut off
        beton.write_bytes(whole[:keep])
        rc, text = inspect(capsys, copy)
        assert rc == 1 and f"{beton}: damaged .beton" in text, text
        with pytest.raises(FastdiscoError, match=rf"{beton}: damaged \.beton: .*truncated"):
            make_loader(DataConfig(path=str(copy), backend="ffcv", batch_size=4, resolution=16, num_workers=1))


def test_corrupt_manifest_is_a_problem_not_a_traceback(copy, capsys):
    from fastdisco.dataset.webdataset import load_manifest

    (copy / "manifest.json").write_text('{"format_version": 1, "num_samp')
    rc, text = inspect(capsys, copy)
    assert rc == 1 and "damaged manifest (not valid JSON" in text, text
    with pytest.raises(FastdiscoError, match="damaged manifest"):
        load_manifest(copy)
    (copy / "manifest.json").write_text('{"format_version": 1}')
    rc, text = inspect(capsys, copy)
    assert rc == 1 and "damaged manifest (lacks num_samples" in text, text


def test_manifest_without_checksums_still_loads_and_says_so(copy, capsys):
    from fastdisco.loader import make_loader

    m = manifest(copy)
    m.pop("checksum")
    for s in m["shards"]:
        for k in ("bytes", "sha256", "index_bytes", "index_sha256"):
            s.pop(k)
    if m["ffcv"]:
        m["ffcv"] = {"path": m["ffcv"]["path"]}
    (copy / "manifest.json").write_text(json.dumps(m))
    rc, text = inspect(capsys, copy, "--full")
    assert rc == 0 and "no checksums recorded" in text, text
    loader = make_loader(DataConfig(path=str(copy), backend="torch", batch_size=4, resolution=16, num_workers=0))
    assert next(iter(loader)).views[0].shape[0] == 4


@pytest.mark.parametrize("backend,workers", [("torch", 0), ("torch", 1)] + ([("dali", 1)] if have_backend("dali") else []))
def test_loader_names_shard_and_sample_of_an_undecodable_jpeg(copy, backend, workers):
    from fastdisco.dataset.webdataset import read_index
    from fastdisco.loader import make_loader

    s = manifest(copy)["shards"][0]
    e = read_index(copy / s["index"])[2]["jpg"]  # sample 000000002
    tar = copy / s["tar"]
    data = bytearray(tar.read_bytes())
    data[e.offset:e.offset + e.size] = b"\0" * e.size  # same size: only decoding can tell
    tar.write_bytes(bytes(data))
    cfg = DataConfig(path=str(copy), backend=backend, batch_size=12, resolution=16, num_workers=workers,
                     recipe="eval", drop_last=False)
    with pytest.raises(FastdiscoError) as err, make_loader(cfg, device=torch.device("cpu")) as loader:
        next(iter(loader))
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and f"{tar} sample 000000002: damaged JPEG" in msg, msg


def test_damaged_label_names_shard_and_sample(copy):
    from fastdisco.dataset.webdataset import SampleReader, ShardIndex, load_manifest, read_index

    s = manifest(copy)["shards"][0]
    c = read_index(copy / s["index"])[1]["cls"]
    tar = copy / s["tar"]
    data = bytearray(tar.read_bytes())
    data[c.offset] = ord("x")
    tar.write_bytes(bytes(data))
    reader = SampleReader(ShardIndex.build(copy, load_manifest(copy)))
    assert reader.label(0) in (0, 1)
    with pytest.raises(FastdiscoError, match=rf"{tar} sample 000000001: damaged label"):
        reader.label(1)


def test_train_on_a_damaged_sample_is_one_line_and_exits(copy, tmp_path):
    """Through the CLI with a DataLoader worker: the worker's error arrives as one line naming the
    sample, and the process exits (a worker kept alive by the error's traceback hung the exit)."""
    import subprocess

    from fastdisco.dataset.webdataset import read_index

    s = manifest(copy)["shards"][0]
    e = read_index(copy / s["index"])[3]["jpg"]
    tar = copy / s["tar"]
    data = bytearray(tar.read_bytes())
    data[e.offset:e.offset + e.size] = b"\0" * e.size
    tar.write_bytes(bytes(data))
    sets = [f"data.path={copy}", "data.batch_size=12", "data.resolution=16", "data.num_workers=1",
            "model.student=test_resnet", "model.proj_hidden=16", "model.proj_dim=8", "model.shuffle_bn_group=0",
            "method.name=mocov2", "method.queue_size=24", "train.max_steps=2", "train.device=cpu",
            "train.precision=fp32", "train.compile=false", "train.progress=false", "train.tensorboard=false",
            f"train.out_dir={tmp_path / 'run'}"]
    cmd = [sys.executable, "-m", "fastdisco", "train"] + [a for kv in sets for a in ("--set", kv)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(err) == 1, p.stderr[-2000:]
    assert f"{tar} sample 000000003: damaged JPEG" in err[0]
