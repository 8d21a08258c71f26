#!/usr/bin/env bash
# The one GPU check (`make bench-gpu`): on a machine with one CUDA GPU that has only torch (CUDA),
# triton, timm and torchvision (no DALI, no ffcv) and no network, in under 8 minutes:
#   1. the gpu-marked tests                                   (tests.log)
#   2. benchmarks/bench_losses.py: fused kernels vs reference (losses.log, losses.jsonl)
#   3. benchmarks/throughput.py --mode all: DisCo ResNet-50 -> EfficientNet-B0, 224 px, bf16, on
#      synthetic JPEGs through the torch loader, with the official-DisCo baseline beside it
#                                                             (throughput.log, throughput.jsonl)
# then regenerates benchmarks/README.md from the rows. Each part runs under its own timeout, so one
# failure or overrun keeps the others' results. Rows are appended under benchmarks/results/; when
# $OUT is set, at most 8 files are copied there (flat): the logs, the two .jsonl files, the
# regenerated README and summary.txt (each part's exit status and seconds).
#
# GPU_CHECK_DRY=1 runs the same plumbing on a CPU in about two minutes (tiny models, a step,
# DALI and ffcv made unimportable, rows into a temporary results folder): tests/test_gpu_check.py.
# PYTHON picks the interpreter (default: python3). Exit status: 0 when every part passed.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY:-0}
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # on a GPU the kernels compile for real
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
NPROC=$(nproc 2>/dev/null || echo 4)
WORKERS=$(( NPROC > 4 ? (NPROC - 2 < 12 ? NPROC - 2 : 12) : 2 ))

if [ "$DRY" = 1 ]; then
  RESULTS=${GPU_CHECK_RESULTS:-$LOGS/results}
  # the GPU machine has neither: prove that nothing here needs them
  mkdir -p "$LOGS/nodeps"
  printf 'import sys\nsys.modules["ffcv"] = None\nsys.modules["nvidia.dali"] = None\n' > "$LOGS/nodeps/sitecustomize.py"
  export PYTHONPATH="$LOGS/nodeps:$PYTHONPATH" TRITON_INTERPRET=1
  T_TESTS=240; T_LOSSES=120; T_TPUT=300
  TESTS=(-m gpu tests/test_host_syncs.py tests/test_benchmarks.py)
  LOSSES=(--quick --impls torch --iters 2)
  TPUT=(--device cpu --synthetic 16 --batch 8 --workers 1 --resolution 64 --teacher test_resnet
        --student test_efficientnet --precision fp32 --no-compile --steps 1 --warmup 1 --epochs 1
        --repeats 1 --flops --breakdown --set method.queue_size=64 --set model.shuffle_bn_group=4)
else
  RESULTS=${GPU_CHECK_RESULTS:-$ROOT/benchmarks/results}
  # budget, seconds (8 min in all): tests 100 + losses 40 + throughput 300 + report 15 = 455, the
  # rest for start-up and the copies. throughput gets the most: it compiles B0 (train), B0 (keys)
  # and R50 (teacher) twice (model and step set-ups; the second from inductor's cache), and its
  # rows are written only at its end
  T_TESTS=100; T_LOSSES=40; T_TPUT=300
  TESTS=(-m gpu tests)
  LOSSES=(--impls triton,torch --iters 10)
  TPUT=(--device cuda --synthetic 512 --batch 256 --workers "$WORKERS" --resolution 224
        --teacher resnet50 --student efficientnet_b0 --precision bf16 --steps 10 --warmup 3
        --epochs 1 --repeats 2)
fi
mkdir -p "$RESULTS"
START=$(date +%s)
SUMMARY=$LOGS/summary.txt
{
  echo "fastdisco gpu_check $(date -u +%FT%TZ) dry=$DRY commit=$(git rev-parse --short HEAD 2>/dev/null || echo none)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c 'import torch, triton, timm, torchvision; print("torch", torch.__version__, "cuda", torch.version.cuda,
"triton", triton.__version__, "timm", timm.__version__, "torchvision", torchvision.__version__,
"device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")' 2>&1 | tail -1
} > "$SUMMARY"

FAILED=0
part() {  # part NAME TIMEOUT_S CMD...: run with its own timeout, log, status line in the summary
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  echo "== $name (timeout ${limit}s): $*"
  timeout --kill-after=15 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  [ $rc = 0 ] || FAILED=1
  local note=""; [ $rc = 124 ] || [ $rc = 137 ] && note=" (timed out)"
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))$note" | tee -a "$SUMMARY"
  tail -n 5 "$LOGS/$name.log"
}

part tests "$T_TESTS" "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
part losses "$T_LOSSES" "$PY" benchmarks/bench_losses.py "${LOSSES[@]}" --results-dir "$RESULTS"
part throughput "$T_TPUT" "$PY" benchmarks/throughput.py --mode all --method disco --backends torch \
  --backend torch "${TPUT[@]}" --results-dir "$RESULTS"
if [ "$DRY" = 1 ]; then README=$LOGS/README.md; else README=$ROOT/benchmarks/README.md; fi
part report 15 "$PY" benchmarks/report.py --results-dir "$RESULTS" --out "$README"
echo "total seconds=$(( $(date +%s) - START ))" | tee -a "$SUMMARY"

if [ -n "${OUT:-}" ]; then  # at most 8 plain files, flat, each well under 16 MiB
  mkdir -p "$OUT"
  for f in "$LOGS"/tests.log "$LOGS"/losses.log "$LOGS"/throughput.log "$LOGS"/report.log; do
    [ -f "$f" ] && tail -c 4000000 "$f" > "$OUT/$(basename "$f")"
  done
  for f in "$RESULTS"/throughput.jsonl "$RESULTS"/losses.jsonl "$README"; do
    [ -f "$f" ] && cp "$f" "$OUT/"
  done
  cp "$SUMMARY" "$OUT/summary.txt"
  echo "copied $(ls "$OUT" | wc -l) files to $OUT"
fi
cat "$SUMMARY"
[ "$DRY" = 1 ] || rm -rf "$LOGS"
exit $FAILED
