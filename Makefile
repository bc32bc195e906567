# The README's two commands: `make demo` and `make test`. Each sets up everything on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel lies on this workplace's disk; a bare `torch` would pull a multi-GB CUDA build.
# On a GPU machine: make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: setup  # trains from scratch each time: the same output would otherwise resume or say "finished"
	rm -rf runs/demo
	$(VENV)/bin/sparse-ray train --preset configs/demo.yaml --language python --model-type splade \
		--workers 2 --zero 2 --base-model minilm --data sample --output runs/demo

lint: setup
	$(VENV)/bin/ruff check sparse_ray tests
	$(VENV)/bin/ruff format --check sparse_ray tests
	$(VENV)/bin/lint-imports  # the import rules of the process layout (pyproject.toml)

test: lint
	$(PY) -m pytest
