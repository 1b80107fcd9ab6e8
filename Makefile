# Everything a fresh machine needs: `make demo` trains, `make test` tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data browser demo test test-slow test-soak lint bench clean

# The torch pin comes first: 2.13.0 is the local CPU wheel; any other spec pulls CUDA builds.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# Fashion-MNIST, the embedded default dataset, from Debian.
data:
	@[ -f $(FMNIST)/train-images-idx3-ubyte.gz ] || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist)

# Headless Chromium for the browser tests of the diagrams and reports.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver)

# Half the recipe's clock, at the batch 512 its published runs trained (the recipe's batch 256
# was measured at 15 minutes only); Muon's best lr is higher in shorter runs (docs/benchmarks.md).
demo: setup data
	$(VENV)/bin/resnetkit train --recipe speedrun --model fashion_resnet8_pool16 --time-limit 450 --batch-size 512 --lr 0.4 --muon-lr 0.045 --data fashion-mnist --out runs/demo
	$(VENV)/bin/resnetkit eval runs/demo/model.safetensors --data fashion-mnist

# Two pytest workers of one thread each: OpenMP threads beyond the core count spin and stall.
test: setup data browser
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup --durations=20

test-slow: setup data browser
	$(PY) -m pytest -q --runslow

# The crash-safety soak: 200 SIGKILLs instead of the default suite's 20 (tests/test_crash.py).
test-soak: setup data
	RESNETKIT_SOAK=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q tests/test_crash.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
