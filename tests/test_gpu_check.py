"""tools/gpu_check.sh (`make bench-gpu`), the one GPU run: its plumbing, without a GPU.

The script's real (GPU) argument lists are recorded through a stand-in interpreter and then
parsed by the benchmarks' own argument parsers; the budget of its parts' timeouts stays under
8 minutes; $OUT receives at most 8 flat files. The end-to-end CPU rehearsal of the same script is
`GPU_CHECK_DRY=1 tools/gpu_check.sh` (about 2 minutes on 2 cores; tiny models, DALI and ffcv
made unimportable)."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.sh"


def _record(tmp_path, dry: str) -> tuple[list[list[str]], str, Path]:
    log = tmp_path / "argv.log"
    fake = tmp_path / "fakepython"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\x1f" "$@" >> {log}\nprintf "\\x1e" >> {log}\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(fake), "GPU_CHECK_DRY": dry, "OUT": str(out), "TMPDIR": str(tmp_path),
           "GPU_CHECK_RESULTS": str(tmp_path / "results")}
    res = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    calls = [c.split("\x1f")[:-1] for c in log.read_text().split("\x1e") if c]
    return calls, res.stdout, out


def test_gpu_run_commands_parse_and_fit_the_budget(tmp_path):
    calls, stdout, out = _record(tmp_path, "0")
    scripts = [c[0] if not c[0].startswith("-") else c[1] for c in calls[1:]]
    assert scripts == ["pytest", "benchmarks/bench_losses.py", "benchmarks/throughput.py", "benchmarks/report.py"]
    tests, losses, tput = calls[1], calls[2], calls[3]
    assert tests[:2] == ["-m", "pytest"] and "gpu" in tests and tests[-1] == "tests"
    for flag, value in [("--mode", "all"), ("--method", "disco"), ("--teacher", "resnet50"),
                        ("--student", "efficientnet_b0"), ("--resolution", "224"), ("--precision", "bf16"),
                        ("--device", "cuda"), ("--backend", "torch"), ("--backends", "torch")]:
        assert tput[tput.index(flag) + 1] == value, flag
    assert "--synthetic" in tput
    limits = [int(x) for x in re.findall(r"\(timeout (\d+)s\)", stdout)]
    assert len(limits) == 4 and sum(limits) <= 8 * 60 - 20, limits  # 20 s left for start-up and copies
    # the recorded argument lists are accepted by the scripts' own parsers
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, *tput, "--steps", "0"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert "--steps must be >= 1" in r.stderr and "unrecognized" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, *losses, "--only", "none", "--no-save"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in out.iterdir())
    assert "summary.txt" in files and len(files) <= 8 and all(p.is_file() for p in out.iterdir())
    assert "tests rc=0" in (out / "summary.txt").read_text()


def test_dry_mode_is_tiny_and_cpu_only(tmp_path):
    calls, _, _ = _record(tmp_path, "1")
    tput = calls[3]
    assert tput[tput.index("--device") + 1] == "cpu" and tput[tput.index("--teacher") + 1] == "test_resnet"
    assert int(tput[tput.index("--steps") + 1]) <= 2
    assert str(tmp_path / "results") in tput  # rows never land in the repository's results
