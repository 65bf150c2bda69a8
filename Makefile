# Set-up and entry points. `make demo` and `make test` create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# torch and torchvision must be a matching pair; the registry's torchvision does not import beside every torch
# build. These pairs import together and run on the CPU (measured on x86_64 and aarch64 Linux, Python 3.11).
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_PAIR ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
endif

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export MPLBACKEND ?= Agg

.PHONY: install demo summary test test-fast clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_PAIR)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/phenodiff protocol --config recipes/configs/protocol_phantom.yaml --seeds 3 --output-dir outputs/demo

summary: install
	$(BIN)/phenodiff summary --dataset phantom --output-dir outputs/summary-phantom

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) outputs .pytest_cache
