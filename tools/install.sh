#!/usr/bin/env bash
# One-shot set-up of fastdisco into a local venv (default .venv). Idempotent: `make` calls it
# whenever pyproject.toml or tools/constraints.txt is newer than the venv's stamp.
#   1. Debian packages: the small ffcv build deps and the embedded Fashion-MNIST dataset
#      (only when running as root and something is missing; otherwise a hint is printed).
#   2. Everything pip-installable in ONE command, so the resolver keeps torch at the pinned
#      version (on these machines its CPU build lies on disk; anything else pulls CUDA wheels).
#   3. ffcv 1.0.2 from source against OpenCV core+imgproc (tools/ffcv-build). Optional: if it
#      fails the ffcv backend reports itself missing and everything else works.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
APT_PKGS="pkg-config g++ libturbojpeg0-dev libopencv-core-dev libopencv-imgproc-dev dataset-fashion-mnist"

missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[install] apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends $missing >/dev/null \
      || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $missing >/dev/null; } \
      || echo "[install] WARNING: apt-get failed; ffcv and Fashion-MNIST may be unavailable"
  else
    echo "[install] missing Debian packages:$missing (run as root: apt-get install$missing)"
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade "pip>=24" "setuptools>=77" wheel
echo "[install] torch, timm, triton, DALI, numba, matplotlib, fastdisco (editable) ..."
# Every extra the test suite and the benchmarks use: dali (CUDA 13 build; see pyproject.toml for
# CUDA 12), cpu-augment (numba), bench (matplotlib), onnx, dev (pytest, webdataset).
$PIP install -q -c tools/constraints.txt "torch==2.13.0" -e ".[dali,cpu-augment,bench,onnx,dev]"

if ! "$VENV/bin/python" -c "import ffcv" 2>/dev/null; then
  echo "[install] building ffcv 1.0.2 from source ..."
  # numpy/torch must already be present: build without isolation against the venv.
  PKG_CONFIG_PATH="$PWD/tools/ffcv-build${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" \
    $PIP install -q --no-build-isolation -c tools/constraints.txt "ffcv==1.0.2" \
    || echo "[install] WARNING: ffcv did not build; the ffcv backend will be unavailable"
fi
# torchvision beside a CPU torch: a start-up .pth applies the import fix only where it is needed
"$VENV/bin/python" -m fastdisco._compat --install-pth
touch "$VENV/.fastdisco-installed"
echo "[install] done: $("$VENV/bin/python" -c 'import fastdisco, torch; print("fastdisco", fastdisco.__version__, "torch", torch.__version__)')"
