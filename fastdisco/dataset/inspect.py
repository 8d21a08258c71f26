"""`fastdisco inspect OUT`: verify a prepared dataset and write a PNG grid of samples.

Checks the manifest against the files (shard counts, contiguous sample keys, DALI indexes,
skipped.tsv), then decodes samples from each format: the webdataset shards (through the
index offsets, and through DALI's reader when DALI is installed) and the .beton (its raw
records, and through an ffcv Loader). Both formats must hold the same JPEG, label and index
for every sampled position. Exits 1 when anything is wrong.
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
def _sample_ids(n: int, k: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, num=min(k, n)).round().astype(int).tolist()))


def _check_shards(out: Path, m: dict, problems: list[str], keep: set[int]) -> dict[int, tuple[bytes, int]]:
    """Check every shard's index and keys; return {sample: (jpeg, label)} for samples in keep."""
    from fastdisco.dataset.webdataset import key, read_index

    data: dict[int, tuple[bytes, int]] = {}
    expect_first = 0
    for s in m["shards"]:
        if s["first"] != expect_first:
            problems.append(f"{s['tar']}: first sample {s['first']}, expected {expect_first}")
        expect_first = s["first"] + s["count"]
        tar, idx = out / s["tar"], out / s["index"]
        if not tar.is_file() or not idx.is_file():
            problems.append(f"missing {tar if not tar.is_file() else idx}")
            continue
        try:
            entries = read_index(idx)
        except (ValueError, IndexError) as e:
            problems.append(f"{idx}: unreadable index ({e})")
            continue
        if len(entries) != s["count"]:
            problems.append(f"{idx}: {len(entries)} samples, manifest says {s['count']}")
        with open(tar, "rb") as f:
            for j, e in enumerate(entries):
                i = s["first"] + j
                if set(e) != {"jpg", "cls"} or e["jpg"].name != f"{key(i)}.jpg":
                    problems.append(f"{idx}: sample {j} is {sorted(e)} named {e.get('jpg')}, expected {key(i)}.jpg/.cls")
                    continue
                if i not in keep:
                    continue
                f.seek(e["jpg"].offset)
                jpeg = f.read(e["jpg"].size)
                f.seek(e["cls"].offset)
                data[i] = (jpeg, int(f.read(e["cls"].size)))
    if expect_first != m["num_samples"]:
        problems.append(f"shards hold {expect_first} samples, manifest says {m['num_samples']}")
    return data


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


def inspect_dataset(out: str | Path, samples: int = 16, grid: str | Path | None = None) -> dict:
    """Verify OUT; return {"problems": [...], "checked": {...}, "grid": path}."""
    from fastdisco.dataset.images import decode_rgb
    from fastdisco.errors import FastdiscoError

    out = Path(out)
    mpath = out / "manifest.json"
    if not mpath.is_file():
        raise FastdiscoError(f"{out} is not a complete prepared dataset (no manifest.json)")
    m = json.loads(mpath.read_text())
    problems: list[str] = []
    checked: dict = {"num_samples": m["num_samples"], "num_classes": m["num_classes"], "skipped": m["skipped"]}
    n = m["num_samples"]
    ids = _sample_ids(n, samples) if n else []

    skipped_lines = (out / "skipped.tsv").read_text().splitlines() if (out / "skipped.tsv").is_file() else None
    if skipped_lines is None:
        problems.append("skipped.tsv missing")
    elif len(skipped_lines) != m["skipped"]:
        problems.append(f"skipped.tsv has {len(skipped_lines)} lines, manifest says {m['skipped']}")

    ref: dict[int, tuple[bytes, int]] = {}
    if "dali" in m["formats"]:
        ref = _check_shards(out, m, problems, set(ids) | set(range(min(4, n))))
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
        if not beton.is_file():
            problems.append(f"missing {beton}")
        else:
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
    return {"problems": problems, "checked": checked, "grid": str(grid_path) if tiles else None}
