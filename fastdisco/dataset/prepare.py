"""`prepare-data` orchestration: inputs -> JPEG shards -> (merge) -> .beton + manifest.json.

Work is cut into shards of `shard_size` *inputs*: shard k converts inputs [k*S, (k+1)*S)
(skipped inputs leave it a little smaller). That fixed cut is what makes the rest simple:

- resume: a shard is done once its tar, index and `.prepare/shard-K.json` record exist (each
  written to a temporary name, then renamed; the record last), so a re-run skips done shards;
- `--part i/n`: part i converts shards [i*K/n, (i+1)*K/n) and writes `parts/part-i-of-n.json`;
  sample keys of a part are provisional because a part cannot know how many images earlier
  parts skipped; `--merge` renames them in place (fixed-width keys: header-only rewrite);
- merge (automatic after a plain run): skipped.tsv, data.beton, and manifest.json last, whose
  presence means "complete".

Every shard tar, its index and the .beton are recorded in manifest.json with their size and sha256
(`bytes`, `sha256`; a shard's index as `index_bytes`, `index_sha256`), so `fastdisco inspect --full`
can verify every byte. Hashes are taken when a file is written (a renumbered shard: again at merge).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from fastdisco.dataset import images, webdataset
from fastdisco.dataset.sources import Source, path_source
from fastdisco.errors import FastdiscoError, UsageError, require
from fastdisco.io import remove_stale_temps, write_json

FORMAT_VERSION = 1
FORMATS = ("ffcv", "dali")
WORK_DIR = ".prepare"


@dataclass(frozen=True)
class Settings:
    max_side: int = 512
    quality: int = 90
    shard_size: int = 1000
    formats: tuple[str, ...] = FORMATS

    def check(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise UsageError(f"unknown format {','.join(bad) or '(none)'}: choose from ffcv,dali")
        if not 1 <= self.quality <= 100:
            raise UsageError(f"--quality must be in 1..100, got {self.quality}")
        if not 1 <= self.max_side <= 65500:  # FFCV stores sizes as uint16; JPEG caps at 65535
            raise UsageError(f"--max-side must be in 1..65500, got {self.max_side}")
        if self.shard_size < 1:
            raise UsageError(f"--shard-size must be >= 1, got {self.shard_size}")


def parse_formats(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [f.strip().lower() for f in items if f.strip()]
    out = tuple(f for f in FORMATS if f in items)  # canonical order
    bad = [f for f in items if f not in FORMATS]
    if bad or not out:
        raise UsageError(f"unknown format '{','.join(bad) or text}': choose from ffcv,dali (comma-separated)")
    return out


def parse_part(text: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """'i/n' (0 <= i < n; e.g. `--part $SLURM_ARRAY_TASK_ID/8` with --array=0-7)."""
    if text is None or isinstance(text, tuple):
        part = text
    else:
        try:
            i, n = (int(x) for x in str(text).split("/"))
        except ValueError:
            raise UsageError(f"--part must look like i/n (e.g. 0/8), got '{text}'") from None
        part = (i, n)
    if part is not None and not (part[1] >= 1 and 0 <= part[0] < part[1]):
        raise UsageError(f"--part i/n needs 0 <= i < n, got {part[0]}/{part[1]}")
    return part


# ----------------------------------------------------------------------------- worker side

_WORKER: dict[str, Any] = {}


def _init_worker(source: Source, settings: Settings) -> None:
    _WORKER["source"], _WORKER["settings"] = source, settings


def _convert_one(i: int) -> tuple[int, images.Encoded | str]:
    """Input i -> Encoded, or the reason it is skipped. Never raises for a bad input."""
    source: Source = _WORKER["source"]
    s: Settings = _WORKER["settings"]
    try:
        data = source.load(i)
    except OSError as e:
        return i, f"unreadable: {e.__class__.__name__}: {e.strerror or e}"[:200]
    try:
        return i, images.convert(data, s.max_side, s.quality)
    except images.BadImage as e:
        return i, str(e)


def _results(source: Source, settings: Settings, todo: list[int], workers: int,
             min_per_worker: int) -> Iterator[tuple[int, Any]]:
    """Converted inputs in `todo` order; parallel when it pays (a pool costs ~0.1 s)."""
    workers = min(workers, max(1, len(todo) // max(1, min_per_worker)))
    if workers <= 1:
        _init_worker(source, settings)
        yield from map(_convert_one, todo)
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(source, settings))
    try:
        yield from pool.imap(_convert_one, todo, chunksize=8)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


# ----------------------------------------------------------------------------- layout


class Layout:
    """Paths inside OUT."""

    def __init__(self, out: Path):
        self.out = out
        self.work = out / WORK_DIR
        self.manifest = out / "manifest.json"
        self.plan = self.work / "plan.json"
        self.beton = out / "data.beton"
        self.skipped = out / "skipped.tsv"

    def tar(self, k: int) -> str:
        return f"shards/shard-{k:05d}.tar"

    def idx(self, k: int) -> str:
        return f"shards/shard-{k:05d}.idx"

    def record(self, k: int) -> Path:
        return self.work / f"shard-{k:05d}.json"

    def part(self, i: int, n: int) -> Path:
        return self.out / "parts" / f"part-{i:05d}-of-{n:05d}.json"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _shard_done(lay: Layout, k: int) -> dict | None:
    """The shard's record if the shard is complete on disk, else None."""
    rec = _read_json(lay.record(k))
    if rec is None:
        return None
    if rec["count"] and not ((lay.out / rec["tar"]).is_file() and (lay.out / rec["index"]).is_file()
                             and (lay.out / rec["tar"]).stat().st_size == rec["tar_bytes"]):
        return None
    return rec


# ----------------------------------------------------------------------------- conversion


def _write_shard(lay: Layout, k: int, first: int, results: list[tuple[int, Any]], source: Source) -> dict:
    """Write shard k (tar, index, then its record), each atomically."""
    kept = [(i, r) for i, r in results if isinstance(r, images.Encoded)]
    skipped = [[source.names[i], r] for i, r in results if not isinstance(r, images.Encoded)]
    tar_path, idx_path = lay.out / lay.tar(k), lay.out / lay.idx(k)
    tar_bytes = 0
    if kept:
        tmp = tar_path.with_name(f".{tar_path.name}.tmp")
        try:
            with open(tmp, "wb") as f:
                w = webdataset.ShardWriter(f)
                for j, (i, enc) in enumerate(kept):
                    w.add(first + j, enc.jpeg, source.labels[i])
                w.close()
                f.flush()
                os.fsync(f.fileno())
            tar_bytes = tmp.stat().st_size
            sums = _checksums(tmp, None)
            os.replace(tmp, tar_path)
        finally:
            if tmp.exists():
                tmp.unlink()
        webdataset.write_index(idx_path, w.members)
        sums = {**sums, **_checksums(None, idx_path)}
    rec = {
        "shard": k, "inputs": [results[0][0], results[-1][0] + 1], "first": first, "count": len(kept),
        "tar": lay.tar(k), "index": lay.idx(k), "tar_bytes": tar_bytes, **(sums if kept else {}),
        "samples": [[enc.width, enc.height, source.labels[i]] for i, enc in kept],
        "skipped": skipped,
    }
    write_json(lay.record(k), rec, indent=None)
    return rec


def _checksums(tar: Path | None, idx: Path | None) -> dict:
    """The manifest's checksum keys of a shard's tar and/or index (see the module doc)."""
    out = {}
    if tar is not None:
        out["sha256"] = webdataset.file_sha256(tar)
    if idx is not None:
        out["index_bytes"], out["index_sha256"] = os.path.getsize(idx), webdataset.file_sha256(idx)
    return out


def _convert(lay: Layout, source: Source, settings: Settings, chunk_ids: range, workers: int,
             progress: bool, on_shard: Callable[[int], None] | None, min_per_worker: int) -> None:
    S, N = settings.shard_size, len(source)
    done = {k: rec for k in chunk_ids if (rec := _shard_done(lay, k)) is not None}
    pending = [k for k in chunk_ids if k not in done]
    (lay.out / "shards").mkdir(parents=True, exist_ok=True)
    todo = [i for k in pending for i in range(k * S, min((k + 1) * S, N))]
    total = sum(min((k + 1) * S, N) - k * S for k in chunk_ids)
    from tqdm import tqdm

    bar = tqdm(total=total, initial=total - len(todo), unit="img", disable=not progress,
               desc="prepare", dynamic_ncols=True, smoothing=0.1)
    stream = _results(source, settings, todo, workers, min_per_worker)
    try:
        for k in pending:
            n_k = min((k + 1) * S, N) - k * S
            batch = []
            for _ in range(n_k):
                batch.append(next(stream))
                bar.update(1)
            prev = done.get(k - 1) if k > chunk_ids.start else None
            # Provisional first key: exact in a single run; renumbered at merge for parts > 0.
            first = prev["first"] + prev["count"] if prev else k * S
            done[k] = _write_shard(lay, k, first, batch, source)
            if on_shard is not None:
                on_shard(k)
    finally:
        stream.close()
        bar.close()


# ----------------------------------------------------------------------------- merge


def _finalize(lay: Layout, source_desc: dict, plan: dict, settings: Settings, num_chunks: int,
              ffcv_workers: int, progress: bool = False) -> dict:
    records = [_shard_done(lay, k) for k in range(num_chunks)]
    missing = [k for k, r in enumerate(records) if r is None]
    if missing:
        raise FastdiscoError(
            f"cannot merge {lay.out}: {len(missing)} of {num_chunks} shards are not done "
            f"(first missing: shard {missing[0]}); run the remaining --part jobs first")
    first = 0
    shard_list, sizes = [], []
    for rec in records:
        if rec["count"] and rec["first"] != first:
            members = webdataset.renumber(lay.out / rec["tar"], first)
            webdataset.write_index(lay.out / rec["index"], members)
            rec["first"] = first
            rec.update(_checksums(lay.out / rec["tar"], lay.out / rec["index"]))  # new headers: new bytes
            write_json(lay.record(rec["shard"]), rec, indent=None)
        elif rec["count"] and "sha256" not in rec:  # a shard written by an older fastdisco
            rec.update(_checksums(lay.out / rec["tar"], lay.out / rec["index"]))
            write_json(lay.record(rec["shard"]), rec, indent=None)
        if rec["count"]:
            shard_list.append({"tar": rec["tar"], "index": rec["index"], "count": rec["count"], "first": first,
                               "bytes": rec["tar_bytes"], "sha256": rec["sha256"],
                               "index_bytes": rec["index_bytes"], "index_sha256": rec["index_sha256"]})
            sizes.append(rec["samples"])
        first += rec["count"]
    num_samples = first
    skipped = [[p, "loose file beside class folders (no label)"] for p in plan.get("stray", [])]
    skipped += [list(s) for s in plan.get("walk_skipped", [])]  # hidden entries, symlink loops
    skipped += [s for rec in records for s in rec["skipped"]]
    from fastdisco.io import atomic_write

    with atomic_write(lay.skipped, "wb") as f:
        for p, reason in skipped:  # undecodable file names go back to their original bytes
            f.write(f"{_tsv(p)}\t{_tsv(reason)}\n".encode("utf-8", "surrogateescape"))
    if num_samples == 0:
        raise FastdiscoError(f"no input could be converted ({len(skipped)} skipped, reasons in {lay.skipped})")

    ffcv = None
    if "ffcv" in settings.formats:
        require("ffcv", "ffcv", "install the ffcv extra (see README), or use --format dali")
        from fastdisco.dataset import beton

        marker = lay.work / "ffcv.json"
        want = {"num_samples": num_samples, "shards": shard_list}
        done = _read_json(marker) or {}
        if not (lay.beton.is_file() and {k: v for k, v in done.items() if k != "beton"} == want):
            beton.write_beton(lay.beton, beton.ShardSamples(lay.out, shard_list, sizes),
                              settings.max_side, settings.quality, num_workers=ffcv_workers, progress=progress)
            done = {}
        if "beton" not in done:  # hashed once, right after writing (or for a .beton of an older version)
            write_json(marker, {**want, "beton": webdataset.file_record(lay.beton)})
            done = _read_json(marker)
        ffcv = {"path": lay.beton.name, **done["beton"]}

    manifest = {
        "format_version": FORMAT_VERSION,
        "checksum": "sha256",  # of every file listed (shards, indexes, .beton): `inspect --full` checks them
        "num_samples": num_samples,
        "num_classes": len(plan["classes"]),
        "classes": plan["classes"],
        "labeled": plan["labeled"],
        "skipped": len(skipped),
        "formats": list(settings.formats),
        "shards": shard_list if "dali" in settings.formats else [],
        "ffcv": ffcv,
        "skipped_path": lay.skipped.name,
        "settings": {**asdict(settings), "formats": list(settings.formats), "color": "RGB",
                     "alpha_background": list(images.BACKGROUND), "resample": "bicubic"},
        "source": {**source_desc, "num_inputs": plan["num_inputs"], "digest": plan["digest"]},
        "tool": _tool_stamp(),
    }
    write_json(lay.manifest, manifest)  # last: its presence means "complete"
    for p in (lay.manifest, lay.skipped):
        os.chmod(p, 0o644)  # mkstemp makes 0600; a prepared dataset is meant to be shared
    if "dali" not in settings.formats:  # the shards were only the staging area for the .beton
        for s in shard_list:
            for key in ("tar", "index"):
                (lay.out / s[key]).unlink(missing_ok=True)
    return manifest


def _tsv(s: str) -> str:
    return str(s).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def _tool_stamp() -> dict:
    import datetime

    from fastdisco import __version__
    from fastdisco.provenance import git_commit, package_versions

    return {"name": "fastdisco", "version": __version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "packages": package_versions(), "git": git_commit()}


# ----------------------------------------------------------------------------- entry point


def check_out_dir(out: Path) -> None:
    """OUT must be a folder or not exist yet (its parents then being folders): one-line errors."""
    if out.exists() and not out.is_dir():
        raise FastdiscoError(f"OUT {out} exists and is not a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FastdiscoError(f"OUT {out} cannot be created: {parent} is not a folder")
            break


def resolve_source(src: str | os.PathLike | Source | None, dataset: str | None = None,
                   options: dict | None = None) -> Source:
    if isinstance(src, Source):
        return src
    if dataset:
        from fastdisco.dataset.recipes import build_source

        return build_source(dataset, src, **(options or {}))
    if src is None:
        raise FastdiscoError("no SRC given (a folder, a .txt/.csv file list, or --dataset NAME)")
    return path_source(src)


def prepare_dataset(src: str | os.PathLike | Source | None, out: str | os.PathLike,
                    formats: str | tuple[str, ...] = FORMATS, max_side: int = 512, quality: int = 90,
                    workers: int | None = None, shard_size: int = 1000, part: str | tuple[int, int] | None = None,
                    merge: bool = False, dataset: str | None = None, dataset_options: dict | None = None,
                    limit: int | None = None, progress: bool = False, ffcv_workers: int | None = None,
                    on_shard: Callable[[int], None] | None = None, min_per_worker: int = 32) -> dict:
    """Convert `src` into OUT (docs/design.md section 1) and return manifest.json's content.

    With `part=(i, n)` only part i's shards are converted and the part manifest is returned;
    `merge=True` (after all parts) renumbers, writes the .beton and manifest.json. A re-run
    resumes: completed shards are kept. `on_shard(k)` is called after shard k is on disk.
    Fewer than `min_per_worker` inputs per worker use fewer workers (1 = in this process).
    """
    settings = Settings(max_side=int(max_side), quality=int(quality), shard_size=int(shard_size),
                        formats=parse_formats(formats))
    settings.check()
    part = parse_part(part)
    if part is not None and merge:
        raise UsageError("--part and --merge are separate steps: run all parts, then --merge once")
    if limit is not None and int(limit) < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    lay = Layout(Path(out))
    check_out_dir(lay.out)
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    source = resolve_source(src, dataset, dataset_options).limit(limit)
    if len(source) == 0:
        raise FastdiscoError(f"source is empty: no input files found in {source.description.get('path', src)}")
    if settings.formats != ("dali",):
        require("ffcv", "ffcv", "install the ffcv extra (see README), or use --format dali")

    plan = {
        "format_version": FORMAT_VERSION, "settings": {**asdict(settings), "formats": list(settings.formats)},
        "num_inputs": len(source), "digest": source.digest(), "classes": list(source.classes),
        "labeled": bool(source.labeled), "stray": list(getattr(source, "stray", [])),
    }
    if getattr(source, "skipped", None):  # only when there are any: plans of earlier versions stay equal
        plan["walk_skipped"] = [list(s) for s in source.skipped]
    old = _read_json(lay.plan)
    if old is not None and old != plan:
        diff = sorted(k for k in plan if old.get(k) != plan[k])
        raise FastdiscoError(f"{lay.out} holds a run with other {', '.join(diff)}; use a new OUT or delete it")
    if lay.out.exists() and old is None and any(lay.out.iterdir()) and not lay.work.exists():
        raise FastdiscoError(f"OUT is a non-empty folder that is not a prepared dataset: {lay.out}")
    for d in (lay.out, lay.out / "shards", lay.work):  # temporary files of killed runs (SIGKILL)
        remove_stale_temps(d)
    if lay.manifest.exists() and old == plan:
        return json.loads(lay.manifest.read_text())  # already complete
    write_json(lay.plan, plan)

    num_chunks = -(-len(source) // settings.shard_size)
    if not merge:
        i, n = part or (0, 1)
        chunk_ids = range(i * num_chunks // n, (i + 1) * num_chunks // n)
        t0 = time.time()
        _convert(lay, source, settings, chunk_ids, workers, progress, on_shard, min_per_worker)
        if part is not None:
            recs = [_shard_done(lay, k) for k in chunk_ids]
            pm = {"part": i, "num_parts": n, "shards": [chunk_ids.start, chunk_ids.stop],
                  "num_samples": sum(r["count"] for r in recs), "skipped": sum(len(r["skipped"]) for r in recs),
                  "seconds": round(time.time() - t0, 3), "complete": True}
            write_json(lay.part(i, n), pm)
            return pm
    return _finalize(lay, source.description, plan, settings, num_chunks,
                     ffcv_workers=ffcv_workers or min(workers, 4), progress=progress)
