"""Issue 16, items 2, 3 and 8: `mine` never deletes or overwrites a file it did not write;
directory walks survive symlink loops and skip hidden entries (and say so); the smaller cases
(stale .beton temp files, OUT that is a file, negative --limit, --no-progress with ffcv,
checkpoint refusal messages, a directory as checkpoint, eval's --resolution default)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastdisco import mine
from fastdisco.cli.main import main as cli_main
from fastdisco.dataset.prepare import prepare_dataset
from fastdisco.dataset.sources import folder_source
from fastdisco.errors import FastdiscoError, UsageError
from test_mine import KW, _expected, _image, _jpeg, _listed, stub_scorer, write_prepared



def one_line(err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, err)
    return lines[0]


def png(path: Path, colour=(200, 30, 30), size=(6, 5)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# =========================================================================== item 2: mine
@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    specs = [(c, s, 10 * c + j) for c in range(3) for j, s in enumerate((120, 150, 180, 210))]
    perm = np.random.default_rng(1).permutation(len(specs))
    specs = [specs[i] for i in perm]
    write_prepared(root / "prepared", [_jpeg(_image(*sp)) for sp in specs])
    return root / "prepared", specs


def files_under(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}


def record(out: Path) -> dict:
    data = json.loads((out / mine.WRITTEN).read_text())
    assert data["format"] == mine.WRITTEN_FORMAT
    return data["files"]


def test_mine_refuses_a_folder_that_is_not_a_mine_output(pool, tmp_path, capsys):
    root, _ = pool
    out = tmp_path / "photos"
    png(out / "images" / "holiday.jpg")
    (out / "notes.txt").write_text("mine")
    before = {p: (out / p).read_bytes() for p in files_under(out)}
    with pytest.raises(FastdiscoError, match="not a mine output"):
        mine.run_mine(root, out, stub_scorer(), top_k=1, **KW)
    assert {p: (out / p).read_bytes() for p in files_under(out)} == before  # nothing touched
    # the CLI refuses before loading any teacher: one line, exit 1
    rc = cli_main(["mine", str(root), str(out), "--teacher", "test_resnet", "--teacher-ckpt", "nope.pth",
                   "--top-k", "1", "--no-progress"])
    assert rc == 1
    one_line(capsys.readouterr().err, "not a mine output")
    assert {p: (out / p).read_bytes() for p in files_under(out)} == before


def test_mine_lists_every_file_it_writes_and_deletes_only_those(pool, tmp_path):
    root, specs = pool
    out = tmp_path / "out"
    mine.run_mine(root, out, stub_scorer(), top_k=2, **KW)
    rec = record(out)
    assert files_under(out) - {mine.WRITTEN} == set(rec)  # every file it wrote, nothing else
    assert all(v is not None for v in rec.values())
    # the user adds files of their own, and edits one image mine wrote
    png(out / "images" / "mine_too.jpg")
    (out / "images" / "999999999.jpg").write_bytes(b"user bytes")
    chosen2 = _expected(specs, 2)
    kept1 = set(_expected(specs, 1))
    edited = next(i for i in chosen2 if i not in kept1)  # no longer chosen with top_k=1
    (out / "images" / f"{edited:09d}.jpg").write_bytes(b"edited by the user")
    mine.run_mine(root, out, stub_scorer(), top_k=1, **KW)
    assert [i for i, _ in _listed(out)] == sorted(kept1)
    left = {p.name for p in (out / "images").iterdir()}
    assert {"mine_too.jpg", "999999999.jpg", f"{edited:09d}.jpg"} <= left  # the user's: untouched
    assert (out / "images" / f"{edited:09d}.jpg").read_bytes() == b"edited by the user"
    dropped = set(chosen2) - kept1 - {edited}
    assert dropped and not any(f"{i:09d}.jpg" in left for i in dropped)  # mine's own: deleted
    rec = record(out)
    assert "images/mine_too.jpg" not in rec and f"images/{edited:09d}.jpg" not in rec
    assert files_under(out) - {mine.WRITTEN, "images/mine_too.jpg", "images/999999999.jpg",
                               f"images/{edited:09d}.jpg"} == set(rec)


def test_mine_never_overwrites_a_file_it_did_not_write(pool, tmp_path):
    root, specs = pool
    out = tmp_path / "out"
    mine.run_mine(root, out, stub_scorer(), top_k=1, **KW)
    extra = next(i for i in _expected(specs, 2) if i not in _expected(specs, 1))
    user = out / "images" / f"{extra:09d}.jpg"  # where a top_k=2 run puts one of its images
    user.write_bytes(b"a file of the user's")
    with pytest.raises(FastdiscoError, match="not written by fastdisco mine"):
        mine.run_mine(root, out, stub_scorer(), top_k=2, **KW)
    assert user.read_bytes() == b"a file of the user's"
    # an edited filelist.txt is not overwritten either
    user.unlink()
    (out / "filelist.txt").write_text("curated by hand\n")
    with pytest.raises(FastdiscoError, match="filelist.txt exists and was not written"):
        mine.run_mine(root, out, stub_scorer(), top_k=2, **KW)
    assert (out / "filelist.txt").read_text() == "curated by hand\n"


def test_mine_fresh_deletes_only_its_own_score_chunks(pool, tmp_path):
    root, _ = pool
    out = tmp_path / "out"
    mine.run_mine(root, out, stub_scorer(), top_k=1, **KW)
    np.savez(out / "scores" / "chunk-000099.npz", other=np.zeros(3))  # not mine's
    with pytest.raises(FastdiscoError, match="chunk-000099.npz was not written by fastdisco mine"):
        mine.run_mine(root, out, stub_scorer(), top_k=1, fresh=True, **KW)
    assert (out / "scores" / "chunk-000099.npz").is_file()
    (out / "scores" / "chunk-000099.npz").unlink()
    calls: list[int] = []
    mine.run_mine(root, out, stub_scorer(calls), top_k=1, fresh=True, **KW)
    assert sum(calls) == 12  # its own chunks were discarded and scored again


def test_mine_interrupted_while_writing_images_leaves_nothing_unlisted(pool, tmp_path, monkeypatch):
    import fastdisco.io

    root, specs = pool
    mine.run_mine(root, tmp_path / "ref", stub_scorer(), top_k=2, **KW)
    out = tmp_path / "out"
    real, n = fastdisco.io.atomic_write, []

    def dying(path, mode="wb"):
        if Path(path).parent.name == "images":
            n.append(path)
            if len(n) == 3:
                raise KeyboardInterrupt("killed")
        return real(path, mode)

    monkeypatch.setattr(fastdisco.io, "atomic_write", dying)
    with pytest.raises(KeyboardInterrupt):
        mine.run_mine(root, out, stub_scorer(), top_k=2, **KW)
    monkeypatch.setattr(fastdisco.io, "atomic_write", real)
    assert files_under(out) - {mine.WRITTEN} <= set(record(out))  # announced before written
    mine.run_mine(root, out, stub_scorer(), top_k=2, **KW)
    assert (out / "filelist.txt").read_text() == (tmp_path / "ref" / "filelist.txt").read_text()
    assert files_under(out) - {mine.WRITTEN} == set(record(out))


def test_mine_output_without_record_is_adopted(pool, tmp_path):
    """An output of a mine version that kept no record: re-runs work; images no longer chosen
    are deleted only because they hold the pool's bytes."""
    root, specs = pool
    out = tmp_path / "out"
    mine.run_mine(root, out, stub_scorer(), top_k=2, **KW)
    (out / mine.WRITTEN).unlink()
    png(out / "images" / "user.jpg")
    mine.run_mine(root, out, stub_scorer(calls := []), top_k=1, **KW)
    assert calls == []  # the scores were kept
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        [f"{i:09d}.jpg" for i in _expected(specs, 1)] + ["user.jpg"])


def test_mine_out_is_a_file_and_bad_values(pool, tmp_path, capsys):
    root, _ = pool
    (tmp_path / "file").write_text("x")
    with pytest.raises(FastdiscoError, match="is not a folder"):
        mine.run_mine(root, tmp_path / "file", stub_scorer(), top_k=1, **KW)
    assert (tmp_path / "file").read_text() == "x"
    base = ["mine", str(root), str(tmp_path / "o"), "--teacher", "test_resnet", "--teacher-ckpt", "x.pth",
            "--no-progress"]
    for extra, words in ((["--top-k", "0"], "--top-k"), (["--top-k", "1", "--chunk-size", "0"], "--chunk-size"),
                         (["--top-k", "1", "--batch-size", "-1"], "--batch-size"),
                         (["--top-k", "1", "--hash-distance", "65"], "--hash-distance")):
        assert cli_main(base + extra) == 2, extra
        one_line(capsys.readouterr().err, words)
    assert not (tmp_path / "o").exists()
    assert cli_main(["mine", str(root), str(tmp_path / "file"), "--teacher", "test_resnet", "--teacher-ckpt",
                     "x.pth", "--top-k", "1", "--no-progress"]) == 1
    one_line(capsys.readouterr().err, "is not a folder")
    (tmp_path / "ckdir").mkdir()
    assert cli_main(["mine", str(root), str(tmp_path / "o2"), "--teacher", "test_resnet", "--teacher-ckpt",
                     str(tmp_path / "ckdir"), "--top-k", "1", "--no-progress"]) == 1
    one_line(capsys.readouterr().err, "is a directory")


# =========================================================================== item 3: walks
@pytest.fixture
def deadline():
    """A walk that follows a loop can run for hours: fail after 30 s instead of hanging."""
    import signal

    def expired(*_):
        raise TimeoutError("the directory walk did not finish in 30 s (a symlink loop followed?)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def tree(tmp_path, deadline):
    """cat/ and dog/ with 3 images each, plus every trap: a loop back to SRC, a deeper loop, a
    link to the other class, hidden files and folders at several depths."""
    src = tmp_path / "src"
    for c, colour in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
        for j in range(3):
            png(src / c / f"{c}{j}.png", colour)
    png(src / "cat" / "sub" / "cat_deep.png", (200, 0, 0))
    os.symlink("..", src / "dog" / "loop")                # dog/loop -> SRC
    os.symlink("../..", src / "cat" / "sub" / "up")       # cat/sub/up -> SRC
    os.symlink("../dog", src / "cat" / "alias")           # cat/alias -> dog: another class's folder
    png(src / "cat" / ".ipynb_checkpoints" / "cat0-checkpoint.png", (200, 0, 0))
    png(src / "dog" / "sub" / ".ipynb_checkpoints" / "x-checkpoint.png", (0, 0, 200))
    png(src / "dog" / ".hidden.png", (0, 0, 200))
    (src / ".DS_Store").write_bytes(b"\0\1")
    png(src / ".trash" / "old.png")
    return src


EXPECTED_NAMES = ["cat/cat0.png", "cat/cat1.png", "cat/cat2.png", "cat/sub/cat_deep.png",
                  "dog/dog0.png", "dog/dog1.png", "dog/dog2.png"]


def test_folder_source_loops_links_and_hidden(tree):
    src = folder_source(tree)
    assert src.classes == ["cat", "dog"]
    assert list(zip(src.names, src.labels)) == [(n, 0 if n.startswith("cat/") else 1) for n in EXPECTED_NAMES]
    reasons = dict(map(tuple, src.skipped))
    assert reasons["dog/loop"].startswith("symlink loop") and reasons["cat/sub/up"].startswith("symlink loop")
    assert reasons["cat/alias"].startswith("duplicate folder")
    for hidden in ("cat/.ipynb_checkpoints", "dog/sub/.ipynb_checkpoints", "dog/.hidden.png", ".DS_Store", ".trash"):
        assert reasons[hidden].startswith("hidden"), hidden
    assert len(reasons) == 8


def test_prepare_lists_what_the_walk_skipped(tree, tmp_path):
    m = prepare_dataset(tree, tmp_path / "out", formats="dali", workers=1)
    assert m["num_samples"] == 7 and m["classes"] == ["cat", "dog"]
    lines = (tmp_path / "out" / "skipped.tsv").read_text().splitlines()
    reasons = dict(line.split("\t") for line in lines)
    assert reasons["dog/loop"].startswith("symlink loop") and reasons["cat/.ipynb_checkpoints"] == "hidden folder"
    assert m["skipped"] == len(lines) == 8
    # the same source again: resumes as complete (the plan, skipped entries included, is stable)
    assert prepare_dataset(tree, tmp_path / "out", formats="dali", workers=1) == m


def test_symlink_to_a_folder_outside_is_followed_and_real_folders_win(tmp_path, deadline):
    src, outside = tmp_path / "src", tmp_path / "elsewhere"
    png(outside / "far.png")
    png(src / "a" / "a0.png")
    png(src / "b" / "sub" / "b0.png")
    os.symlink(outside, src / "b" / "more")      # a folder outside SRC: followed
    os.symlink("../b/sub", src / "a" / "zz")     # b's real sub-folder, linked from a (walked first)
    s = folder_source(src)
    assert list(zip(s.names, s.labels)) == [("a/a0.png", 0), ("b/more/far.png", 1), ("b/sub/b0.png", 1)]
    assert [r[0] for r in s.skipped] == ["a/zz"]
    # a class folder that is a link back to SRC is no class
    os.symlink(".", src / "c")
    s = folder_source(src)
    assert s.classes == ["a", "b"] and ["c", "symlink loop (links back to the source folder)"] in s.skipped


def test_flat_folder_loop_and_hidden(tmp_path, deadline):
    src = tmp_path / "flat"
    png(src / "x.png")
    png(src / "y.png")
    os.symlink(".", src / "self")
    png(src / ".ipynb_checkpoints" / "x-checkpoint.png")
    s = folder_source(src)
    assert s.names == ["x.png", "y.png"] and not s.labeled
    assert sorted(r[0] for r in s.skipped) == [".ipynb_checkpoints", "self"]


def test_walk_files_and_mine_eval_folder(tmp_path, deadline):
    from fastdisco.dataset.sources import walk_files

    ev = tmp_path / "eval"
    png(ev / "a.png", (10, 200, 10))
    png(ev / "deep" / "b.png", (10, 10, 200))
    png(ev / ".ipynb_checkpoints" / "a-checkpoint.png", (10, 200, 10))
    os.symlink("..", ev / "deep" / "loop")
    files, skipped = walk_files(ev)
    assert files == ["a.png", "deep/b.png"]
    assert sorted(r[0] for r in skipped) == [".ipynb_checkpoints", "deep/loop"]
    assert len(mine.hash_images(ev, workers=1)) == 2


# =========================================================================== item 8: smaller
def test_remove_stale_temps(tmp_path):
    from fastdisco.io import _host, remove_stale_temps, temp_path

    dead = dead_pid()
    stale = [tmp_path / f".data.beton.{dead}.tmp", tmp_path / f".data.beton.{dead}@{_host()}.tmp",
             tmp_path / f".x.json.{dead}@{_host()}.ab12_cd.tmp"]
    live = [temp_path(tmp_path / "data.beton"), tmp_path / f".data.beton.{dead}@otherhost.tmp",
            tmp_path / ".data.beton.tmp", tmp_path / "notes.tmp"]
    for p in stale + live:
        p.write_bytes(b"x")
    assert sorted(remove_stale_temps(tmp_path, ["data.beton"])) == sorted(stale[:2])
    assert sorted(remove_stale_temps(tmp_path)) == [stale[2]]
    assert all(p.exists() for p in live)


def test_sigkill_while_writing_beton_then_rerun_cleans_up(tmp_path):
    pytest.importorskip("ffcv")
    import signal

    import ffcv.writer

    src = tmp_path / "src"
    for j in range(3):
        png(src / f"{j}.png", (40 * j, 90, 10))
    out = tmp_path / "out"
    pid = os.fork()  # a child that is SIGKILLed while it writes the .beton (no finally runs)
    if pid == 0:
        try:
            def die(self, *a, **k):
                with open(self.fname, "wb") as f:
                    f.write(b"half a beton")
                os.kill(os.getpid(), signal.SIGKILL)

            ffcv.writer.DatasetWriter.from_indexed_dataset = die
            prepare_dataset(src, out, formats="ffcv", workers=1)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    left = list(out.glob(".data.beton.*.tmp"))
    assert len(left) == 1 and not (out / "manifest.json").exists()
    m = prepare_dataset(src, out, formats="ffcv", workers=1)
    assert m["num_samples"] == 3 and (out / "data.beton").is_file()
    assert list(out.glob(".data.beton.*.tmp")) == []


def test_no_progress_silences_ffcv_bar(tmp_path, capsys):
    pytest.importorskip("ffcv")
    src = tmp_path / "src"
    for j in range(3):
        png(src / f"{j}.png", (40 * j, 90, 10))
    rc = cli_main(["prepare-data", str(src), str(tmp_path / "o1"), "--format", "ffcv", "--workers", "1",
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "%|" not in err and "it/s" not in err, err
    rc = cli_main(["prepare-data", str(src), str(tmp_path / "o2"), "--format", "ffcv", "--workers", "1"])
    assert rc == 0 and "data.beton" in capsys.readouterr().err  # with a bar: it is ours, labelled


def test_prepare_out_is_a_file_and_negative_limit(tmp_path, capsys):
    src = tmp_path / "src"
    for j in range(5):
        png(src / f"{j}.png")
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        rc = cli_main(["prepare-data", str(src), str(out), "--format", "dali", "--no-progress"])
        assert rc == 1
        one_line(capsys.readouterr().err, "not a folder")
    assert (tmp_path / "file").read_text() == "x"
    for limit in ("-3", "0"):
        rc = cli_main(["prepare-data", str(src), str(tmp_path / "o"), "--format", "dali", "--limit", limit])
        assert rc == 2, limit
        one_line(capsys.readouterr().err, "--limit must be at least 1", limit)
    assert not (tmp_path / "o").exists()
    with pytest.raises(UsageError):
        folder_source(src).limit(-3)
    assert prepare_dataset(src, tmp_path / "o", formats="dali", workers=1, limit=2)["num_samples"] == 2


def test_checkpoint_refusals_never_suggest_weights_only_false(tmp_path, capsys):
    import pickle

    from fastdisco.io import safe_torch_load

    rng = np.random.default_rng(0)
    (tmp_path / "random.pt").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp_path / "tiny.pt").write_bytes(b"hello")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps({"a": 1}))

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"w": Payload()}, tmp_path / "payload.pt")
    good = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, good)
    (tmp_path / "truncated.pt").write_bytes(good.getvalue()[:-64])
    for name in ("random.pt", "tiny.pt", "empty.pt", "pickle.pt", "payload.pt", "truncated.pt"):
        with pytest.raises(FastdiscoError) as e:
            safe_torch_load(tmp_path / name)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"refusing to load {tmp_path / name}"), msg
        low = msg.lower()
        assert "weights_only=false" not in low and "will likely succeed" not in low
        assert "set to `false`" not in low and "file an issue" not in low, msg
    rc = cli_main(["export", str(tmp_path / "random.pt"), str(tmp_path / "x.safetensors")])
    assert rc == 1
    line = one_line(capsys.readouterr().err, "refusing to load")
    assert "likely succeed" not in line and "weights_only=False" not in line


def test_directory_as_checkpoint(tmp_path):
    from fastdisco.engine.checkpoint import load_checkpoint, resolve_checkpoint
    from fastdisco.io import safe_torch_load

    d = tmp_path / "run"
    d.mkdir()
    for call in (resolve_checkpoint, load_checkpoint):
        with pytest.raises(FastdiscoError) as e:
            call(d)
        assert "directory without checkpoints/last.pt" in str(e.value) and "not found" not in str(e.value)
    (d / "checkpoints").mkdir()
    (d / "checkpoints" / "step_00000010.pt").write_bytes(b"x")
    with pytest.raises(FastdiscoError, match="step_00000010.pt: pass that file"):
        resolve_checkpoint(d)
    with pytest.raises(FastdiscoError, match="is a directory, not a checkpoint file"):
        safe_torch_load(d)


def test_eval_resolution_defaults_to_the_runs(tmp_path):
    from fastdisco.cli.eval import default_resolution
    from fastdisco.dataset.recipes.synthetic import write_synthetic_folder
    from fastdisco.evaluation.backbone import LoadedBackbone
    from test_export import make_run

    write_synthetic_folder(tmp_path / "src", num_classes=2, per_class=4, size=20, ext="jpg")
    data = tmp_path / "data"
    prepare_dataset(tmp_path / "src", data, formats="dali", workers=1)
    run, _ = make_run(tmp_path, name="test_resnet")  # data.resolution = 32
    assert cli_main(["eval", "knn", str(run), "--train", str(data), "--val", str(data), "--k", "1",
                     "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--no-progress"]) == 0
    rec = json.loads((run / "eval" / "knn.json").read_text())
    assert rec["data"]["resolution"] == 32
    assert cli_main(["eval", "knn", str(run), "--train", str(data), "--val", str(data), "--k", "1",
                     "--resolution", "24", "--batch-size", "8", "--num-workers", "0", "--device", "cpu",
                     "--no-progress"]) == 0
    assert json.loads((run / "eval" / "knn.json").read_text())["data"]["resolution"] == 24
    lb = lambda kind, meta: LoadedBackbone(None, "m", 0, "x", kind, None, meta)  # noqa: E731
    assert default_resolution(lb("safetensors", {"input_size": [3, 48, 48]})) == 48
    assert default_resolution(lb("timm", {})) == 224 and default_resolution(lb("teacher", {})) == 224
    assert default_resolution(lb("fastdisco", {"resolution": None})) == 224
