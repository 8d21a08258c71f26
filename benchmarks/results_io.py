"""Benchmark results are stored, not asserted: every row is appended as one JSON line to
benchmarks/results/<name>.jsonl, stamped with device, versions, commit and date."""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def stamp() -> dict:
    from fastdisco.provenance import collect

    return collect()


def append_rows(name: str, rows: list[dict], results_dir: Path | str | None = None) -> Path:
    """Append `rows` (each gets the same provenance stamp) to <results_dir>/<name>.jsonl."""
    out_dir = Path(results_dir) if results_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.jsonl"
    prov = stamp()
    with open(path, "a") as f:  # append-only log: a crash can at worst cut the last line
        for row in rows:
            f.write(json.dumps({**row, "provenance": prov}, default=str) + "\n")
    return path


def read_rows(name: str, results_dir: Path | str | None = None) -> list[dict]:
    path = (Path(results_dir) if results_dir else RESULTS_DIR) / f"{name}.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash
    return rows
