"""Interrupted runs resume (done shards kept, nothing half-written looks complete), and
`--part i/n` + `--merge` gives exactly the output of one uninterrupted run."""
import json

import pytest

from fastdisco.dataset.prepare import prepare_dataset
from fastdisco.dataset.recipes.synthetic import write_synthetic_folder
from fastdisco.errors import FastdiscoError

KW = dict(formats="dali", max_side=24, quality=90, workers=1, shard_size=4)


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    src = write_synthetic_folder(root / "src", num_classes=3, per_class=7, size=30, seed=5)
    # Bad inputs early on (shard 0 and 2) so later keys shift: parts must renumber on merge.
    (src / "class_000" / "img_00000b.jpg").write_bytes(b"")
    (src / "class_000" / "img_00004b.jpg").write_bytes(b"not an image")
    (src / "class_001" / "img_00000b.jpg").write_bytes(b"")
    return src


@pytest.fixture(scope="module")
def reference(src, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    return out, prepare_dataset(src, out, **KW)


def files_of(out):
    """Every file a reader uses, by relative path (the work folder .prepare/ aside)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".prepare" not in p.parts and p.name != "manifest.json"}


def same_manifest(a, b):
    strip = lambda m: {k: v for k, v in m.items() if k not in ("tool",)}
    return strip(a) == strip(b)


def test_reference_has_skips_and_many_shards(reference):
    out, m = reference
    assert m["skipped"] == 3 and m["num_samples"] == 21 and len(m["shards"]) == 6
    assert [s["count"] for s in m["shards"]] == [3, 3, 3, 4, 4, 4]


def test_resume_after_interruption(src, reference, tmp_path):
    out = tmp_path / "out"
    seen = []

    def stop_after_two(k):
        seen.append(k)
        if len(seen) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        prepare_dataset(src, out, on_shard=stop_after_two, **KW)
    assert not (out / "manifest.json").exists()  # incomplete output never looks complete
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == ["shard-00000.tar", "shard-00001.tar"]
    # A kill in the middle of shard 2 leaves a temporary file and maybe a torn tar, but no record.
    (out / "shards" / ".shard-00002.tar.tmp").write_bytes(b"partial")
    (out / "shards" / "shard-00002.tar").write_bytes(b"torn")
    done0 = (out / "shards" / "shard-00000.tar").stat().st_mtime_ns

    again = []
    m = prepare_dataset(src, out, on_shard=again.append, **KW)
    assert again == [2, 3, 4, 5]  # completed shards are kept, not redone
    assert (out / "shards" / "shard-00000.tar").stat().st_mtime_ns == done0
    assert same_manifest(m, reference[1])
    ref_files = files_of(reference[0])
    got = files_of(out)
    got.pop("shards/.shard-00002.tar.tmp", None)
    assert got == ref_files


def test_record_without_matching_tar_is_redone(src, reference, tmp_path):
    out = tmp_path / "out"
    prepare_dataset(src, out, on_shard=lambda k: None, **KW)
    (out / "manifest.json").unlink()
    (out / "shards" / "shard-00003.tar").write_bytes(b"x")  # damaged after the fact
    redone = []
    m = prepare_dataset(src, out, on_shard=redone.append, **KW)
    assert redone == [3] and same_manifest(m, reference[1])
    assert files_of(out) == files_of(reference[0])


def test_parts_then_merge_equal_one_run(src, reference, tmp_path):
    out = tmp_path / "out"
    parts = [prepare_dataset(src, out, part=f"{i}/3", **KW) for i in (2, 0)]  # any order
    assert [p["part"] for p in parts] == [2, 0] and not (out / "manifest.json").exists()
    with pytest.raises(FastdiscoError, match="not done"):
        prepare_dataset(src, out, merge=True, **KW)
    p1 = prepare_dataset(src, out, part=(1, 3), **KW)
    assert json.loads((out / "parts" / "part-00001-of-00003.json").read_text()) == p1
    assert sum(p["num_samples"] for p in parts + [p1]) == 21
    m = prepare_dataset(src, out, merge=True, **KW)
    assert same_manifest(m, reference[1])
    assert files_of(out) == {**files_of(reference[0]), **{k: v for k, v in files_of(out).items() if k.startswith("parts/")}}
    # Merging again (e.g. a retried SLURM job) changes nothing.
    assert same_manifest(prepare_dataset(src, out, merge=True, **KW), m)


def test_parts_must_see_the_same_inputs(src, tmp_path):
    out = tmp_path / "out"
    prepare_dataset(src, out, part="0/2", **KW)
    with pytest.raises(FastdiscoError, match="digest|num_inputs"):
        prepare_dataset(src, out, part="1/2", limit=10, **KW)


def test_part_merge_with_ffcv(src, tmp_path):
    pytest.importorskip("ffcv")
    from fastdisco.dataset.inspect import _beton_records, _check_shards

    out = tmp_path / "out"
    kw = {**KW, "formats": "ffcv,dali"}
    for i in range(2):
        prepare_dataset(src, out, part=(i, 2), **kw)
    m = prepare_dataset(src, out, merge=True, **kw)
    problems = []
    shard = _check_shards(out, m, problems, keep=set(range(21)))  # keys renumbered, contiguous
    beton = _beton_records(out / "data.beton", list(range(21)))
    assert problems == [] and m["num_samples"] == 21
    assert {i: (j, lab, i) for i, (j, lab) in shard.items()} == beton
