# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fastdisco-installed

.PHONY: install demo test test-gpu bench bench-gpu clean

$(STAMP): pyproject.toml tools/constraints.txt tools/install.sh
	VENV=$(VENV) tools/install.sh

install: $(STAMP)

## The main job on the embedded default data (Fashion-MNIST): prepare, train teacher + student, evaluate.
demo: $(STAMP)
	$(PY) -m fastdisco demo

## The test suite (CPU; GPU tests are skipped without CUDA).
test: $(STAMP)
	$(PY) -m pytest -q -m "not gpu" tests

## On a GPU machine: the gpu-marked tests.
test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu tests

bench: $(STAMP)
	$(PY) benchmarks/throughput.py --mode all

## On a machine with one CUDA GPU (no network needed; DALI / ffcv not needed): gpu tests, loss
## kernels, DisCo R50 -> B0 throughput, < 8 min; rows in benchmarks/results/, copies in $$OUT if set.
bench-gpu:
	PYTHON=$(if $(wildcard $(PY)),$(PY),python3) tools/gpu_check.sh

clean:
	rm -rf $(VENV) runs/demo data/demo
