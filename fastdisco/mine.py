"""`fastdisco mine`: SSLD's unlabeled-data selection.

The teacher (its logits) scores every image of a prepared pool (docs/design.md section 1);
images that are near-duplicates of an evaluation set (64-bit DCT perceptual hash within a
Hamming distance) are dropped; the `top_k` most confident images per predicted class are kept.

Output directory:
  images/<index>.jpg  the selected JPEGs, byte for byte as stored in the pool's shards (the
                      prepared manifest does not keep source paths, so the images are written out)
  filelist.txt        `images/<index>.jpg,<predicted class>` per line (paths relative to the list,
                      as `fastdisco prepare-data` reads them); `--no-labels` writes the path only
  selected.csv        index,label,confidence,path for every selected image
  mine.json           settings, counts, provenance
  scores/             per-chunk scores (resume state): chunk-NNNNNN.npz + meta.json
  mine_written.json   every file mine wrote under OUT (path -> size and sha256); mine deletes a
                      file only if it is listed there and still holds what mine wrote

OUT must be new, empty, or an earlier mine output: anything else is refused (nothing of the
user's is ever overwritten or deleted).

Resumable: the pool is scored in chunks of `--chunk-size` images, each saved atomically; a
re-run skips the chunks already scored (with the same pool, teacher and settings).
Eval-mode BN by default (`--teacher-bn`): a score should not depend on its batch neighbours.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from fastdisco.errors import FastdiscoError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
HASH_SIZE = 32   # pHash: grayscale image resized to 32x32 ...
HASH_LOW = 8     # ... whose 8x8 lowest DCT frequencies, thresholded at their median, give 64 bits


# --------------------------------------------------------------------------- perceptual hash
def _dct_matrix(n: int) -> np.ndarray:
    """Unnormalised DCT-II (as scipy.fftpack.dct): y[k] = 2 sum_i x[i] cos(pi k (2i+1) / 2n)."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_DCT = _dct_matrix(HASH_SIZE)


def phash(img) -> int:
    """64-bit DCT perceptual hash of a PIL image (the `imagehash.phash` algorithm)."""
    from PIL import Image

    g = np.asarray(img.convert("L").resize((HASH_SIZE, HASH_SIZE), Image.Resampling.LANCZOS), np.float64)
    low = (_DCT @ g @ _DCT.T)[:HASH_LOW, :HASH_LOW]
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.asarray(a, np.uint64) ^ np.asarray(b, np.uint64))


def _flip_masks(width: int, radius: int) -> np.ndarray:
    """All masks of `width` bits with at most `radius` bits set."""
    from itertools import combinations

    masks = [sum(1 << b for b in bits) for r in range(radius + 1) for bits in combinations(range(width), r)]
    return np.array(masks, np.uint64)


def _index_plan(max_dist: int, n_ref: int) -> tuple[int, int]:
    """(bands, radius) for multi-index hashing: split 64 bits into `bands`; two hashes within
    max_dist bits are within `radius` = max_dist // bands bits on at least one band (pigeonhole).
    Pick the plan with the fewest expected candidates per query (bands * probes * n_ref / 2^width)."""
    from math import comb

    plans = {(max_dist + 1, 0)} | {(m, max_dist // m) for m in (2, 3, 4) if max_dist // m <= 3}
    def cost(plan):
        m, r = plan
        w = 64 // m
        return m * sum(comb(w, k) for k in range(r + 1)) * (1 + n_ref / 2.0 ** w)
    return min(plans, key=cost)


def near_duplicates(query: np.ndarray, ref: np.ndarray, max_dist: int, block: int = 1 << 16) -> np.ndarray:
    """bool[N]: query hash i is within `max_dist` bits of some ref hash.

    Multi-index hashing (Norouzi et al.): only ref hashes that agree with the query on some
    band up to a few flipped bits are compared exactly, so pools of millions against an eval set
    of 50k stay cheap (1M x 50k at distance 6: ~3 s on one core, not 5e10 brute-force pairs)."""
    query, ref = np.asarray(query, np.uint64), np.asarray(ref, np.uint64)
    hit = np.zeros(len(query), bool)
    if len(query) == 0 or len(ref) == 0 or max_dist < 0:
        return hit
    if max_dist > 12:  # bands too narrow to prune: compare everything, blockwise
        for s in range(0, len(query), 1024):
            d = hamming(query[s:s + 1024, None], ref[None, :])
            hit[s:s + 1024] = (d <= max_dist).any(1)
        return hit
    bands, radius = _index_plan(max_dist, len(ref))
    edges = np.linspace(0, 64, bands + 1).astype(int)
    for lo_bit, hi_bit in zip(edges[:-1], edges[1:]):
        width = int(hi_bit - lo_bit)
        shift, mask = np.uint64(lo_bit), np.uint64((1 << width) - 1)
        rk = (ref >> shift) & mask
        order = np.argsort(rk, kind="stable")
        rks = rk[order]
        dense = width <= 24  # a CSR table over all band values: O(1) lookups instead of bisection
        if dense:
            starts = np.searchsorted(rks, np.arange(1 << width, dtype=np.uint64), "left")
            starts = np.append(starts, len(rks))
        for flip in _flip_masks(width, radius):
            for s in range(0, len(query), block):
                todo = s + np.flatnonzero(~hit[s:s + block])
                q = query[todo]
                qk = ((q >> shift) & mask) ^ flip
                if dense:
                    lo, hi = starts[qk.astype(np.int64)], starts[qk.astype(np.int64) + 1]
                else:
                    lo, hi = np.searchsorted(rks, qk, "left"), np.searchsorted(rks, qk, "right")
                cnt = hi - lo
                total = int(cnt.sum())
                if total == 0:
                    continue
                qi = np.repeat(np.arange(len(todo)), cnt)
                rj = order[np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(lo, cnt)]
                close = qi[hamming(q[qi], ref[rj]) <= max_dist]
                hit[todo[close]] = True
    return hit


# --------------------------------------------------------------------------- selection
def select_topk(pred: np.ndarray, conf: np.ndarray, k: int, keep: np.ndarray | None = None,
                min_conf: float = 0.0) -> np.ndarray:
    """Indices (ascending) of the k most confident samples of every predicted class among
    `keep`; ties broken by the lower index, so the result is deterministic."""
    idx = np.arange(len(pred))
    ok = conf >= min_conf
    if keep is not None:
        ok &= keep
    idx, p, c = idx[ok], pred[ok], conf[ok]
    order = np.lexsort((idx, -c.astype(np.float64), p))  # by class, then confidence desc, then index
    p_sorted = p[order]
    starts = np.searchsorted(p_sorted, p_sorted, "left")  # first position of each row's class
    rank = np.arange(len(order)) - starts
    return np.sort(idx[order][rank < k])


# --------------------------------------------------------------------------- images
def eval_transform(img, resolution: int, crop_pct: float) -> np.ndarray:
    """The loaders' eval geometry (augment.params.eval_resize: resize the shorter side to
    int(resolution / crop_pct), centre crop) on a PIL image; uint8 HWC."""
    from PIL import Image

    from fastdisco.augment.params import eval_resize

    w, h = img.size
    rh, rw, top, left = eval_resize(h, w, resolution, crop_pct)
    img = img.resize((rw, rh), Image.Resampling.BILINEAR)
    return np.asarray(img.crop((left, top, left + resolution, top + resolution)), np.uint8)


def _decode(data: bytes, resolution: int, crop_pct: float) -> tuple[np.ndarray, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        return eval_transform(im, resolution, crop_pct), phash(im)


def to_input(arrs: list[np.ndarray]):
    """uint8 HWC images -> float [B,3,H,W] normalised with IMAGENET_MEAN/STD (the loader's)."""
    import torch

    from fastdisco.augment.recipes import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------- pool access
class Pool:
    """The JPEG bytes of sample i of a prepared dataset (random access via the shard index)."""

    def __init__(self, root: str | Path):
        from fastdisco.dataset.webdataset import SampleReader, ShardIndex, load_manifest

        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        self.reader = SampleReader(ShardIndex.build(self.root, self.manifest))
        self.num_samples = int(self.manifest["num_samples"])

    def jpeg(self, i: int) -> bytes:
        return self.reader.jpeg(i)


def hash_images(source: str | Path, workers: int = 2) -> np.ndarray:
    """pHashes of an evaluation set: a prepared dataset directory or a folder of image files."""
    from PIL import Image

    src = Path(source)
    if (src / "manifest.json").is_file():
        pool = Pool(src)
        blobs: Iterable[Callable[[], bytes]] = [lambda i=i: pool.jpeg(i) for i in range(pool.num_samples)]
    elif src.is_dir():
        from fastdisco.dataset.sources import walk_files

        rel, _ = walk_files(src)  # hidden entries and symlink loops left out, as prepare-data does
        files = [src / r for r in rel if Path(r).suffix.lower() in IMAGE_EXTS]
        blobs = [f.read_bytes for f in files]
    else:
        raise FastdiscoError(f"--eval-set {src}: neither a prepared dataset nor a folder of images")

    def one(get: Callable[[], bytes]) -> int:
        with Image.open(io.BytesIO(get())) as im:
            return phash(im.convert("RGB"))

    with ThreadPoolExecutor(max(1, workers)) as ex:
        return np.fromiter(ex.map(one, blobs), np.uint64)


# --------------------------------------------------------------------------- what mine wrote
WRITTEN = "mine_written.json"
WRITTEN_FORMAT = "fastdisco-mine-written-v1"
_MARKERS = (WRITTEN, "mine.json", "scores/meta.json")  # any of them: OUT is a mine output


def _digest(data: bytes) -> list:
    return [len(data), hashlib.sha256(data).hexdigest()]


def _file_digest(path: Path) -> list | None:
    try:
        return _digest(path.read_bytes())
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


class Written:
    """OUT/mine_written.json: every file mine wrote under OUT, as relative path -> [bytes, sha256]
    (None while a write is announced but not yet confirmed). Saved atomically *before* the files
    it announces are written, so a killed run never leaves a file of its own unlisted."""

    def __init__(self, out: Path):
        self.out, self.path = out, out / WRITTEN
        self.files: dict[str, list | None] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise FastdiscoError(f"{self.path} is damaged (not JSON); mine will not delete anything "
                                     f"it cannot account for: use a new OUT") from None
            if not isinstance(data, dict) or data.get("format") != WRITTEN_FORMAT:
                raise FastdiscoError(f"{self.path} is not a {WRITTEN_FORMAT} file; use a new OUT")
            self.files = dict(data.get("files") or {})

    def save(self) -> None:
        from fastdisco.io import write_json

        write_json(self.path, {"format": WRITTEN_FORMAT, "files": dict(sorted(self.files.items()))}, indent=None)

    def announce(self, rels: Iterable[str]) -> None:
        """About to write these files: list them (unconfirmed) and save, if any are new."""
        new = [r for r in rels if r not in self.files]
        for r in new:
            self.files[r] = None
        if new:
            self.save()

    def confirm(self, rel: str, data: bytes) -> None:
        self.files[rel] = _digest(data)

    def write(self, rel: str, data: bytes, save: bool = True) -> None:
        """Write OUT/rel atomically (announced first), replacing only a file mine wrote."""
        from fastdisco.io import atomic_write

        dst = self.out / rel
        # announced but unconfirmed: a run killed between writing it and saving the record
        if dst.exists() and not (self.files.get(rel, ()) is None or self.owns(rel)):
            raise FastdiscoError(f"{dst} exists and was not written by fastdisco mine (or was changed since); "
                                 f"mine does not overwrite it: move it away or use a new OUT")
        self.announce([rel])
        with atomic_write(dst) as f:
            f.write(data)
        self.confirm(rel, data)
        if save:
            self.save()

    def owns(self, rel: str, same_as: Callable[[], bytes] | None = None) -> bool:
        """OUT/rel is listed and holds what mine wrote there: the recorded size and sha256, or, for
        an unconfirmed entry, the bytes `same_as()` (what mine would have written)."""
        if rel not in self.files:
            return False
        have = _file_digest(self.out / rel)
        if have is None:
            return False
        want = self.files[rel]
        if want is None:
            return same_as is not None and have == _digest(same_as())
        return have == list(want)

    def remove(self, rel: str, same_as: Callable[[], bytes] | None = None) -> bool:
        """Delete OUT/rel if mine owns it (see owns); either way it is no longer listed as mine's
        unless it is still there unconfirmed. Returns whether the file was deleted."""
        if self.owns(rel, same_as):
            (self.out / rel).unlink()
            del self.files[rel]
            return True
        # Announced but never written, already gone, or changed since mine wrote it (then it is
        # the user's now, and left alone): no longer mine's either way.
        self.files.pop(rel, None)
        return False


def refuse_out(out: str | os.PathLike) -> None:
    """OUT must be new, empty or an earlier mine output: anything else is a one-line error."""
    from fastdisco.dataset.prepare import check_out_dir

    out = Path(out)
    check_out_dir(out)
    if out.is_dir() and any(out.iterdir()) and not any((out / m).is_file() for m in _MARKERS):
        raise FastdiscoError(f"OUT is a non-empty folder that is not a mine output: {out} "
                             f"(mine writes only into a new or empty folder, or an earlier mine output)")


def check_out(out: Path, pool: "Pool | None" = None) -> Written:
    """OUT is new, empty or an earlier mine output (refuse anything else); its Written record."""
    from fastdisco.io import remove_stale_temps

    refuse_out(out)
    out.mkdir(parents=True, exist_ok=True)
    for d in (out, out / "images", out / "scores"):  # temporary files of killed runs (SIGKILL)
        remove_stale_temps(d)
    w = Written(out)
    if not w.path.is_file():
        if any((out / m).is_file() for m in _MARKERS):
            _adopt_earlier_output(w, pool)
        w.save()  # first thing in a new OUT: an interrupted first run is still a mine output
    return w


def _adopt_earlier_output(w: Written, pool: "Pool | None") -> None:
    """An output of a mine version that kept no record: its fixed-name files are mine's (the scores
    chunks only when they are scores chunks, images/NNNNNNNNN.jpg only when they hold the pool's
    bytes of sample NNNNNNNNN)."""
    for rel in ("mine.json", "filelist.txt", "selected.csv", "scores/meta.json"):
        if (d := _file_digest(w.out / rel)) is not None:
            w.files[rel] = d
    for p in sorted((w.out / "scores").glob("chunk-*.npz")):
        if data := _is_scores(p):
            w.files[f"scores/{p.name}"] = _digest(data)
    for p in sorted((w.out / "images").glob("*.jpg")) if pool is not None else ():
        if p.stem.isdigit() and len(p.stem) == 9 and int(p.stem) < pool.num_samples and p.is_file():
            data = pool.jpeg(int(p.stem))
            if p.read_bytes() == data:
                w.files[f"images/{p.name}"] = _digest(data)


# --------------------------------------------------------------------------- scoring
Scorer = Callable[["object"], "object"]  # float tensor [B,3,H,W] -> logits [B,C]


def _chunk_path(scores: Path, c: int) -> Path:
    return scores / f"chunk-{c:06d}.npz"


def _is_scores(path: Path) -> bytes:
    """What mine would have written at an unconfirmed chunk path: the file itself when it is a
    scores chunk (an npz of exactly pred, conf, hash), else b'' (never equal)."""
    try:
        with np.load(path) as z:
            ok = sorted(z.files) == ["conf", "hash", "pred"]
    except Exception:
        ok = False
    return path.read_bytes() if ok else b""


def _check_meta(scores: Path, meta: dict, fresh: bool, written: Written | None = None) -> None:
    """Scores from other settings must never be mixed in: refuse, or discard with --fresh."""
    written = written or Written(scores.parent)
    path = scores / "meta.json"
    if path.is_file() and not fresh:
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        diff = [k for k in meta if old.get(k) != meta[k]]
        if diff:
            raise FastdiscoError(f"{scores} holds scores made with other settings ({', '.join(diff)} differ); "
                                 f"re-run with --fresh to discard them")
    if fresh and scores.is_dir():
        for p in sorted(scores.glob("chunk-*.npz")):
            rel = f"{scores.name}/{p.name}"
            if not written.remove(rel, lambda p=p: _is_scores(p)):
                raise FastdiscoError(f"--fresh: {p} was not written by fastdisco mine (or was changed since); "
                                     f"mine does not delete it: move it away or use a new OUT")
        written.save()
    written.write(f"{scores.name}/meta.json", (json.dumps(meta, indent=2, default=str) + "\n").encode())


def score_pool(pool: Pool, scores: Path, scorer: Scorer, meta: dict, chunk_size: int = 2048,
               batch_size: int = 64, resolution: int = 224, crop_pct: float = 0.875, workers: int = 2,
               fresh: bool = False, progress: bool = True, written: Written | None = None) -> dict[str, np.ndarray]:
    """Score every pool image (predicted class, confidence, pHash), chunk by chunk, skipping the
    chunks already saved. Returns the concatenated arrays."""
    import torch
    from tqdm import tqdm

    written = written or Written(scores.parent)
    scores.mkdir(parents=True, exist_ok=True)
    _check_meta(scores, {**meta, "num_samples": pool.num_samples, "chunk_size": chunk_size,
                         "resolution": resolution, "crop_pct": crop_pct}, fresh, written)
    n = pool.num_samples
    chunks = range((n + chunk_size - 1) // chunk_size)
    rel = {c: f"{scores.name}/{_chunk_path(scores, c).name}" for c in chunks}
    done = [c for c in chunks if _chunk_path(scores, c).is_file()]
    foreign = [c for c in done if rel[c] not in written.files]
    if foreign:
        raise FastdiscoError(f"{_chunk_path(scores, foreign[0])} was not written by fastdisco mine; "
                             f"move it away or use a new OUT")
    written.announce(rel[c] for c in chunks if c not in done)  # one save before any chunk is written
    n_done = sum(min(chunk_size, n - c * chunk_size) for c in done)
    bar = tqdm(total=n, initial=n_done, unit="img", desc="mine: scoring", disable=not progress)
    with ThreadPoolExecutor(max(1, workers)) as ex:
        for c in chunks:
            if c in done:
                continue
            ids = range(c * chunk_size, min(n, (c + 1) * chunk_size))
            pred, conf, hashes = [], [], []
            for b in range(0, len(ids), batch_size):
                batch = ids[b:b + batch_size]
                decoded = list(ex.map(lambda i: _decode(pool.jpeg(i), resolution, crop_pct), batch))
                with torch.no_grad():
                    logits = scorer(to_input([d[0] for d in decoded]))
                    p = torch.softmax(logits.float(), dim=1).max(dim=1)
                conf.append(p.values.cpu().numpy().astype(np.float32))
                pred.append(p.indices.cpu().numpy().astype(np.int32))
                hashes.append(np.array([d[1] for d in decoded], np.uint64))
                bar.update(len(batch))
            buf = io.BytesIO()
            np.savez(buf, pred=np.concatenate(pred), conf=np.concatenate(conf), hash=np.concatenate(hashes))
            written.write(rel[c], buf.getvalue(), save=False)  # confirmed in memory; saved at the end
    bar.close()
    written.save()
    parts = [np.load(_chunk_path(scores, c)) for c in chunks]
    return {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in ("pred", "conf", "hash")}


# --------------------------------------------------------------------------- whole command
def run_mine(pool_dir: str | Path, out: str | Path, scorer: Scorer, *, top_k: int, meta: dict | None = None,
             eval_sets: list[str] = (), hash_distance: int = 6, min_confidence: float = 0.0,
             labels: bool = True, chunk_size: int = 2048, batch_size: int = 64, resolution: int = 224,
             crop_pct: float = 0.875, workers: int = 2, fresh: bool = False, progress: bool = True) -> dict:
    """Score, de-duplicate, select and write (see the module docstring). Returns the summary."""
    from fastdisco import provenance

    check_settings(top_k=top_k, hash_distance=hash_distance, min_confidence=min_confidence,
                   chunk_size=chunk_size, batch_size=batch_size, resolution=resolution, crop_pct=crop_pct)
    out = Path(out)
    pool = Pool(pool_dir)
    written = check_out(out, pool)
    s = score_pool(pool, out / "scores", scorer, dict(meta or {}, pool=str(Path(pool_dir).resolve())),
                   chunk_size, batch_size, resolution, crop_pct, workers, fresh, progress, written)
    eval_hashes = np.concatenate([hash_images(e, workers) for e in eval_sets] or [np.zeros(0, np.uint64)])
    dup = near_duplicates(s["hash"], eval_hashes, hash_distance)
    chosen = select_topk(s["pred"], s["conf"], top_k, ~dup, min_confidence)

    names = {int(i): f"{int(i):09d}.jpg" for i in chosen}
    _write_images(out, written, pool, names)
    filelist = "".join(f"images/{name},{int(s['pred'][i])}\n" if labels else f"images/{name}\n"
                       for i, name in names.items())
    written.write("filelist.txt", filelist.encode(), save=False)
    csv = "index,label,confidence,path\n" + "".join(
        f"{i},{int(s['pred'][i])},{float(s['conf'][i]):.6f},images/{name}\n" for i, name in names.items())
    written.write("selected.csv", csv.encode(), save=False)
    per_class = np.bincount(s["pred"][chosen], minlength=0).tolist() if len(chosen) else []
    summary = {
        "pool": str(Path(pool_dir).resolve()), "num_pool": pool.num_samples, "num_selected": int(len(chosen)),
        "num_near_duplicates": int(dup.sum()), "eval_sets": [str(e) for e in eval_sets],
        "num_eval_images": int(len(eval_hashes)), "selected_per_class": per_class,
        "settings": {"top_k": top_k, "hash_distance": hash_distance, "min_confidence": min_confidence,
                     "resolution": resolution, "crop_pct": crop_pct, "chunk_size": chunk_size, **(meta or {})},
        "filelist": "filelist.txt", "tool": provenance.collect(),
    }
    written.write("mine.json", (json.dumps(summary, indent=2, default=str) + "\n").encode())
    return summary


def _write_images(out: Path, written: Written, pool: Pool, names: dict[int, str]) -> None:
    """OUT/images/ = the chosen images. Files of earlier runs that are no longer chosen are deleted
    only when mine_written.json lists them and they still hold the pool's bytes; nothing else in
    images/ is touched (an unlisted file where a chosen image goes is an error, not overwritten)."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    index_of = {f"images/{name}": i for i, name in names.items()}

    def pool_bytes(rel: str) -> Callable[[], bytes]:
        stem = Path(rel).stem
        return lambda: pool.jpeg(int(stem)) if stem.isdigit() and int(stem) < pool.num_samples else b""

    todo = []
    for rel, i in index_of.items():
        dst = out / rel
        if not dst.exists():
            todo.append(rel)
            continue
        data = pool.jpeg(i)
        want, have = _digest(data), _file_digest(dst)
        if have == want and (rel not in written.files or written.files[rel] in (None, want)):
            written.confirm(rel, data)  # already there (unlisted: written by a mine before the record)
        elif written.owns(rel):
            todo.append(rel)  # mine's, from another pool (--fresh): rewrite
        else:
            raise FastdiscoError(f"{dst} exists and was not written by fastdisco mine (or was changed since); "
                                 f"mine does not overwrite it: move it away or use a new OUT")
    written.announce(todo)  # listed before any is written: a kill leaves no unlisted file
    from fastdisco.io import atomic_write

    for rel in todo:  # (images/ is mine's: an unlisted file there was refused above)
        data = pool.jpeg(index_of[rel])
        with atomic_write(out / rel) as f:
            f.write(data)
        written.confirm(rel, data)
    # a re-run with other settings: drop what mine wrote and no longer chooses
    for rel in [r for r in written.files if r.startswith("images/") and r not in index_of]:
        written.remove(rel, pool_bytes(rel))
    written.save()


def check_settings(*, top_k: int, hash_distance: int, min_confidence: float, chunk_size: int, batch_size: int,
                   resolution: int, crop_pct: float) -> None:
    """Wrong values given on the command line: one-line UsageErrors."""
    from fastdisco.errors import UsageError

    for flag, value in (("--top-k", top_k), ("--chunk-size", chunk_size), ("--batch-size", batch_size),
                        ("--resolution", resolution)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if not 0 <= hash_distance <= 64:
        raise UsageError(f"--hash-distance must be in 0..64 (bits of the 64-bit pHash), got {hash_distance}")
    if not 0 <= min_confidence <= 1:
        raise UsageError(f"--min-confidence must be in [0, 1], got {min_confidence}")
    if not 0 < crop_pct <= 1:
        raise UsageError(f"--crop-pct must be in (0, 1], got {crop_pct}")
