"""`fastdisco inspect OUT`: verify a prepared dataset and write a PNG grid of samples.

Checks the manifest against the files (shard counts, contiguous sample keys, DALI indexes,
skipped.tsv), then decodes samples from each format: the webdataset shards (through the
index offsets, and through DALI's reader when DALI is installed) and the .beton (its raw
records, and through an ffcv Loader). Both formats must hold the same JPEG, label and index
for every sampled position. Every file manifest.json lists must have its recorded size; with
`full=True` its sha256 too (every byte read), so each damaged file is named. Damage is reported
as a problem, never raised: a truncated tar or .beton, a damaged index or manifest. Exits 1 when
anything is wrong.
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np

MAX_PER_FILE = 5  # problems listed per damaged file before "and N more"


def _sample_ids(n: int, k: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, num=min(k, n)).round().astype(int).tolist()))


def _check_shards(out: Path, m: dict, problems: list[str], keep: set[int],
                  damaged: set[str] = frozenset()) -> dict[int, tuple[bytes, int]]:
    """Check every shard's index and keys; return {sample: (jpeg, label)} for samples in keep.
    Shards in `damaged` (already reported by the file checks) are not read."""
    from fastdisco.dataset.webdataset import key, read_index
    from fastdisco.errors import FastdiscoError

    data: dict[int, tuple[bytes, int]] = {}
    expect_first = 0
    for s in m["shards"]:
        if s["first"] != expect_first:
            problems.append(f"{s['tar']}: first sample {s['first']}, expected {expect_first}")
        expect_first = s["first"] + s["count"]
        tar, idx = out / s["tar"], out / s["index"]
        if s["tar"] in damaged or s["index"] in damaged:
            continue
        if not tar.is_file() or not idx.is_file():
            problems.append(f"missing {tar if not tar.is_file() else idx}")
            continue
        try:
            entries = read_index(idx)
        except (FastdiscoError, ValueError, IndexError) as e:
            problems.append(f"{idx}: unreadable index ({e})")
            continue
        if len(entries) != s["count"]:
            problems.append(f"{idx}: {len(entries)} samples, manifest says {s['count']}")
        size, found = tar.stat().st_size, []
        with open(tar, "rb") as f:
            for j, e in enumerate(entries):
                i = s["first"] + j
                if set(e) != {"jpg", "cls"} or e["jpg"].name != f"{key(i)}.jpg":
                    found.append(f"{idx}: sample {j} is {sorted(e)} named {e.get('jpg')}, expected {key(i)}.jpg/.cls")
                    continue
                end = max(e["jpg"].offset + e["jpg"].size, e["cls"].offset + e["cls"].size)
                if end > size:
                    found.append(f"{tar}: truncated ({size} bytes): sample {key(i)} and later lie beyond its end")
                    break
                if i not in keep:
                    continue
                f.seek(e["jpg"].offset)
                jpeg = f.read(e["jpg"].size)
                f.seek(e["cls"].offset)
                raw = f.read(e["cls"].size)
                try:
                    data[i] = (jpeg, int(raw.decode("ascii")))
                except (UnicodeDecodeError, ValueError):
                    found.append(f"{tar}: sample {key(i)}: damaged label {raw[:20]!r}")
        problems += _capped(found)
    if expect_first != m["num_samples"]:
        problems.append(f"shards hold {expect_first} samples, manifest says {m['num_samples']}")
    return data


def _capped(found: list[str]) -> list[str]:
    if len(found) <= MAX_PER_FILE:
        return found
    return found[:MAX_PER_FILE] + [f"... and {len(found) - MAX_PER_FILE} more problems in the same file"]


def _listed_files(m: dict) -> list[tuple[str, int | None, str | None]]:
    """(path relative to OUT, recorded bytes, recorded sha256) of every file manifest.json lists."""
    files = []
    for s in m.get("shards") or []:
        files.append((s["tar"], s.get("bytes"), s.get("sha256")))
        if s.get("index"):
            files.append((s["index"], s.get("index_bytes"), s.get("index_sha256")))
    if m.get("ffcv"):
        files.append((m["ffcv"]["path"], m["ffcv"].get("bytes"), m["ffcv"].get("sha256")))
    return files


def _check_files(out: Path, m: dict, full: bool, problems: list[str], checked: dict) -> set[str]:
    """Sizes of the listed files (and with `full` their sha256: every byte); returns the damaged ones."""
    from fastdisco.dataset.webdataset import file_sha256

    files = _listed_files(m)
    damaged = set()
    if not any(sha for _, _, sha in files):
        checked["checksums"] = "no checksums recorded (prepared by an older fastdisco): sampled checks only"
    for rel, size, sha in files:
        p = out / rel
        if not p.is_file():
            problems.append(f"missing {p}")
            damaged.add(rel)
            continue
        if size is not None and p.stat().st_size != size:
            problems.append(f"{p}: {p.stat().st_size} bytes, manifest says {size} (truncated or changed)")
            damaged.add(rel)
        elif full and sha and file_sha256(p) != sha:
            problems.append(f"{p}: checksum mismatch: damaged or changed since prepare-data (sha256 differs)")
            damaged.add(rel)
    if any(sha for _, _, sha in files):
        n = sum(1 for _, _, sha in files if sha)
        checked["checksums"] = (f"sha256 of {n} files verified (every byte)" if full
                                else f"sizes of {len(files)} files checked (--full verifies every byte)")
        checked["damaged_files"] = len(damaged)
    return damaged


def _beton_records(path: Path, ids: list[int]) -> dict[int, tuple[bytes, int, int]]:
    """{sample: (jpeg bytes, label, index field)} read straight from the .beton's records."""
    from ffcv.reader import Reader

    r = Reader(str(path))
    names = list(r.handlers)
    img, lab, ind = (r.metadata[f"f{names.index(n)}"] for n in ("image", "label", "index"))
    sizes = {int(p): int(s) for p, s in zip(r.alloc_table["ptr"], r.alloc_table["size"])}
    out = {}
    with open(path, "rb") as f:
        for i in ids:
            ptr = int(img[i]["data_ptr"])
            f.seek(ptr)
            out[i] = (f.read(sizes[ptr]), int(lab[i]), int(ind[i]))
    return out


def _ffcv_loader_shapes(path: Path, ids: list[int], side: int = 64) -> tuple[int, ...]:
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    loader = Loader(str(path), batch_size=len(ids), num_workers=1, order=OrderOption.SEQUENTIAL,
                    indices=ids, pipelines={"image": [CenterCropRGBImageDecoder((side, side), 1.0)],
                                            "label": [IntDecoder()], "index": [IntDecoder()]})
    for images, labels, index in loader:
        return tuple(images.shape), labels.ravel().tolist(), index.ravel().tolist()
    return (), [], []


def _dali_first_batch(out: Path, m: dict, n: int):
    """Decode the first n samples through DALI's webdataset reader (CPU)."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=n, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        jpg, cls = fn.readers.webdataset(
            paths=[str(out / s["tar"]) for s in m["shards"]], index_paths=[str(out / s["index"]) for s in m["shards"]],
            ext=["jpg", "cls"], random_shuffle=False, pad_last_batch=True)
        return fn.decoders.image(jpg, device="cpu"), cls

    p = pipe()
    p.build()
    images, labels = p.run()
    return [np.array(images.at(j)) for j in range(n)], [int(bytes(np.array(labels.at(j))).decode()) for j in range(n)]


def _shape(jpeg: bytes):
    from fastdisco.dataset.images import decode_rgb

    try:
        return decode_rgb(jpeg).shape
    except Exception:  # undecodable: reported with the sample grid below
        return None


def write_grid(path: Path, tiles: list[tuple[np.ndarray, str]], tile: int = 96, cols: int = 8) -> None:
    from PIL import Image, ImageDraw

    rows = -(-len(tiles) // cols)
    grid = Image.new("RGB", (cols * tile, rows * (tile + 12)), (40, 40, 40))
    draw = ImageDraw.Draw(grid)
    for t, (arr, caption) in enumerate(tiles):
        im = Image.fromarray(arr)
        scale = tile / max(im.size)  # up-scale small images (Fashion-MNIST) too, pixelated
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC)
        x, y = (t % cols) * tile, (t // cols) * (tile + 12)
        grid.paste(im, (x + (tile - im.width) // 2, y + (tile - im.height) // 2))
        draw.text((x + 2, y + tile), caption[:16], fill=(230, 230, 230))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


REQUIRED = ("num_samples", "num_classes", "classes", "skipped", "formats", "shards", "ffcv", "settings")


def inspect_dataset(out: str | Path, samples: int = 16, grid: str | Path | None = None, full: bool = False) -> dict:
    """Verify OUT; return {"problems": [...], "checked": {...}, "grid": path}. `full`: verify the
    sha256 of every listed file (reads every byte)."""
    from fastdisco.dataset.webdataset import load_manifest
    from fastdisco.errors import FastdiscoError

    out = Path(out)
    mpath = out / "manifest.json"
    if not mpath.is_file():
        raise FastdiscoError(f"{out} is not a complete prepared dataset (no manifest.json)")
    try:
        m = load_manifest(out)
    except FastdiscoError as e:  # a damaged manifest is a finding, not a crash
        return {"problems": [str(e)], "checked": {}, "grid": None}
    lacking = [k for k in REQUIRED if k not in m]
    if lacking:
        return {"problems": [f"{mpath}: damaged manifest (lacks {', '.join(lacking)})"], "checked": {}, "grid": None}
    problems: list[str] = []
    checked: dict = {"num_samples": m["num_samples"], "num_classes": m["num_classes"], "skipped": m["skipped"]}
    try:
        damaged = _check_files(out, m, full, problems, checked)
        grid_path = _inspect_samples(out, m, samples, grid, problems, checked, damaged)
    except (KeyError, TypeError, ValueError) as e:  # fields of an unexpected type in a damaged manifest
        problems.append(f"{mpath}: damaged manifest ({e.__class__.__name__}: {str(e)[:100]})")
        grid_path = None
    return {"problems": problems, "checked": checked, "grid": grid_path}


def _inspect_samples(out: Path, m: dict, samples: int, grid, problems: list[str], checked: dict,
                     damaged: set[str]) -> str | None:
    """Decode sampled records from each format and compare them; the PNG grid path (or None)."""
    from fastdisco.dataset.images import decode_rgb

    n = m["num_samples"]
    ids = _sample_ids(n, samples) if n else []

    skipped_lines = (out / "skipped.tsv").read_text().splitlines() if (out / "skipped.tsv").is_file() else None
    if skipped_lines is None:
        problems.append("skipped.tsv missing")
    elif len(skipped_lines) != m["skipped"]:
        problems.append(f"skipped.tsv has {len(skipped_lines)} lines, manifest says {m['skipped']}")

    ref: dict[int, tuple[bytes, int]] = {}
    if "dali" in m["formats"]:
        ref = _check_shards(out, m, problems, set(ids) | set(range(min(4, n))), damaged)
        checked["dali_shards"] = len(m["shards"])
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            checked["dali_reader"] = "not installed: checked through the index offsets only"
        else:
            if problems:  # DALI would only fail on the same damage, less clearly
                checked["dali_reader"] = "not run (shard problems above)"
            else:
                k = min(4, n)
                try:
                    imgs, labels = _dali_first_batch(out, m, k)
                except Exception as e:  # report DALI's own complaint as a problem, not a crash
                    problems.append(f"DALI reader failed: {str(e).strip().splitlines()[-1][:200]}")
                else:
                    for j in range(k):
                        want = _shape(ref[j][0]) if j in ref else None
                        if imgs[j].shape != want or labels[j] != ref[j][1]:
                            problems.append(f"DALI sample {j}: shape {imgs[j].shape} label {labels[j]} "
                                            f"disagree with the shard")
                    checked["dali_reader"] = f"decoded {k} samples"
    if m.get("ffcv"):
        beton = out / m["ffcv"]["path"]
        why = _beton_damage(beton, n) if beton.is_file() else None
        if not beton.is_file():
            if m["ffcv"]["path"] not in damaged:
                problems.append(f"missing {beton}")
        elif why:
            problems.append(f"{beton}: damaged .beton: {why}")
        else:
            try:
                _check_beton_samples(beton, ids, ref, problems, checked)
            except Exception as e:  # ffcv's own failure on damage the header check cannot see
                problems.append(f"{beton}: ffcv cannot read it ({e.__class__.__name__}: {str(e)[:120]})")

    tiles = []
    for i in ids:
        if i not in ref:
            continue
        try:
            arr = decode_rgb(ref[i][0])
        except Exception as e:  # a stored sample that does not decode is exactly what we look for
            problems.append(f"sample {i}: JPEG does not decode ({e.__class__.__name__})")
            continue
        side = m["settings"]["max_side"]
        if max(arr.shape[:2]) > side:
            problems.append(f"sample {i}: {arr.shape[1]}x{arr.shape[0]} exceeds max_side {side}")
        label = ref[i][1]
        name = m["classes"][label] if 0 <= label < len(m["classes"]) else str(label)
        tiles.append((arr, f"{i}:{name}"))
    grid_path = Path(grid) if grid else out / "inspect.png"
    if tiles:
        write_grid(grid_path, tiles)
    return str(grid_path) if tiles else None


def _beton_damage(path: Path, n: int) -> str | None:
    from fastdisco.dataset.beton import beton_damage

    return beton_damage(path, n)


def _check_beton_samples(beton: Path, ids: list[int], ref: dict, problems: list[str], checked: dict) -> None:
    recs = _beton_records(beton, ids)
    for i, (jpeg, label, index) in recs.items():
        if index != i:
            problems.append(f"beton sample {i}: index field {index}")
        if i in ref and (jpeg != ref[i][0] or label != ref[i][1]):
            problems.append(f"beton sample {i}: JPEG or label differs from the shard")
        if i not in ref:
            ref[i] = (jpeg, label)
    shape, labels, index = _ffcv_loader_shapes(beton, ids)
    if index != ids or labels != [ref[i][1] for i in ids]:
        problems.append("ffcv Loader: labels/indices differ from the records")
    checked["ffcv_loader"] = f"decoded a batch of shape {list(shape)}"
