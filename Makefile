# Two commands set everything up on a fresh machine with Python >= 3.11 and pip:
#   make train   -> creates .venv, installs jaxdiff, trains the embedded default, writes samples
#   make test    -> creates .venv, installs jaxdiff with test extras, runs the test suite
#   make train-text2img -> trains text-to-image on the digit scenes, then samples two prompts
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/default
VAE_WORKDIR ?= workdirs/digits_vae
LATENT_WORKDIR ?= workdirs/digits_latent

T2I_WORKDIR ?= workdirs/text2img
CLF_WORKDIR ?= workdirs/digits_classifier
UNCOND_WORKDIR ?= workdirs/digits_uncond
SCENES_UNCOND_WORKDIR ?= workdirs/scenes_uncond
CLIP_WORKDIR ?= workdirs/scenes_clip
SR_WORKDIR ?= workdirs/scenes_sr
BASE8_WORKDIR ?= workdirs/scenes_base8

.PHONY: install train sample test lint format clean latent latent-benchmark train-text2img \
	classifier classifier-guidance clip-guidance super-resolution

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
	$(BIN)/python train.py --config=configs/text2img.py \
		--workdir=$(T2I_WORKDIR)
	$(BIN)/python sample.py --workdir=$(T2I_WORKDIR) --prompt "a 3 to the left of a seven" \
		--prompt "a small 5 in the top right" --guidance_scale 3 --num_samples 16

sample: install
	$(BIN)/python sample.py --workdir=$(WORKDIR)

# Latent diffusion on the digits at 32x32: the VAE, then a U-Net on its (cached) latents.
latent: install
	$(BIN)/python train.py --config=configs/digits_vae.py --workdir=$(VAE_WORKDIR)
	$(BIN)/python train.py --config=configs/digits_latent.py --workdir=$(LATENT_WORKDIR) \
		--config.latent.vae=$(VAE_WORKDIR)
	$(BIN)/python sample.py --workdir=$(LATENT_WORKDIR)

# PSNR / KL of the VAE, FD / accuracy of the latent and pixel models (trains what is missing).
latent-benchmark: install
	$(BIN)/python benchmarks/latent_digits.py --vae_workdir=$(VAE_WORKDIR) \
		--latent_workdir=$(LATENT_WORKDIR) --pixel_workdir=$(WORKDIR)

# The noisy classifier of classifier guidance (configs/digits_classifier.py), then the guidance
# benchmark: an unconditional digits model (trained if missing) steered by it.
classifier: install
	$(BIN)/python train.py --config=configs/digits_classifier.py --workdir=$(CLF_WORKDIR)

classifier-guidance: classifier
	$(BIN)/python benchmarks/classifier_guidance.py --workdir=$(UNCOND_WORKDIR) \
		--classifier_workdir=$(CLF_WORKDIR)

# CLIP guidance: the unconditional scene model and the noise-aware CLIP (trained if missing),
# then prompt accuracy vs CLIP scale.
clip-guidance: install
	$(BIN)/python benchmarks/clip_guidance.py --uncond_workdir=$(SCENES_UNCOND_WORKDIR) \
		--clip_workdir=$(CLIP_WORKDIR)

# The cascade: the 8x8 base model and the 8x8 -> 32x32 super-resolution stage (trained if
# missing), then PSNR / FD vs bicubic and the cascade's FD.
super-resolution: install
	$(BIN)/python benchmarks/super_resolution.py --sr_workdir=$(SR_WORKDIR) \
		--base_workdir=$(BASE8_WORKDIR)

# Two worker processes, each taking whole test files (--dist loadfile: a file's module-scoped
# fixtures, e.g. its smoke runs, are built once). TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
