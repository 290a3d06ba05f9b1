# Two commands on a fresh machine: `make quickstart` (the main job) and `make test`.
# Both create or reuse the local virtual environment .venv.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned for the reference CPU environment. GPU users: `make test TORCH_SPEC=` keeps the torch
# already in the venv (install your CUDA build first with $(PY) -m pip install torch torchvision).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.irepa-installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: test quickstart install fashion-mnist lint bench clean

install: $(STAMP)

# --no-compile: byte-compiling every installed module (~15,000 files) costs more than compiling, on first
# import, the few hundred a run uses.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --no-compile $(TORCH_SPEC) -e ".[offline,dev]"
	touch $(STAMP)

# Fashion-MNIST from Debian when we can install packages; otherwise irepa downloads it on first use.
fashion-mnist:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) \
		|| echo "note: could not install dataset-fashion-mnist; irepa will download Fashion-MNIST instead"; \
	fi

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

quickstart: $(STAMP) fashion-mnist
	HF_HUB_OFFLINE=1 $(VENV)/bin/irepa quickstart --out runs/quickstart

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/spatial_metrics.py

clean:
	rm -rf runs/quickstart .pytest_cache
