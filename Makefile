# Two commands set everything up on a fresh machine with Python >= 3.11 and pip:
#   make train   -> creates .venv, installs jaxdiff, trains the embedded default, writes samples
#   make test    -> creates .venv, installs jaxdiff with test extras, runs the test suite
#   make train-text2img -> trains text-to-image on the digit scenes, then samples two prompts
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/default

T2I_WORKDIR ?= workdirs/text2img
# Eigen instead of YNNPACK convolutions: multi-threaded, faster for this U-Net on CPU (README).
CPU_XLA_FLAGS ?= --xla_cpu_experimental_ynn_fusion_type=-individual_convolution

.PHONY: install train sample test lint format clean train-text2img

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

install: $(VENV)/.installed

train: install
	$(BIN)/python train.py --workdir=$(WORKDIR)

train-text2img: install
	XLA_FLAGS="$(CPU_XLA_FLAGS)" $(BIN)/python train.py --config=configs/text2img.py \
		--workdir=$(T2I_WORKDIR)
	$(BIN)/python sample.py --workdir=$(T2I_WORKDIR) --prompt "a 3 to the left of a seven" \
		--prompt "a small 5 in the top right" --guidance_scale 3 --num_samples 16

sample: install
	$(BIN)/python sample.py --workdir=$(WORKDIR)

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
