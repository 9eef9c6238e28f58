# yolokd: `make demo` and `make test` set everything up from requirements.lock, then run.
# The environment is built with uv, which installs the registry's torch build: pip would prefer a local CPU-only torch
# wheel (PIP_FIND_LINKS) with which torchvision's registry wheels fail to import (`torchvision::nms does not exist`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.yolokd-installed
UV_VERSION := 0.13.9
# Ultralytics settings, fonts and DDP temp files stay inside the checkout; every step stays offline.
export YOLO_CONFIG_DIR ?= $(CURDIR)/.yolo-config
export YOLO_OFFLINE ?= 1
export YOLO_AUTOINSTALL ?= 0

.PHONY: setup demo test lock bench clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip sync --quiet --python $(PY) requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	$(PY) -c "import torch, torchvision.ops; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5); print('torch', torch.__version__, 'torchvision', torchvision.__version__, ': nms OK')"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/yolokd demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) tools/bench_speed.py

# Regenerate the lock file after editing requirements.in (needs the registry).
lock: $(STAMP)
	$(UV) pip compile --quiet --python-version 3.11 --generate-hashes --no-header requirements.in -o requirements.lock

clean:
	rm -rf $(VENV) .yolo-config .pytest_cache
