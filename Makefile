# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# torch 2.13.0 is a CPU wheel on this machine's disk; a plain `torch` requirement would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup test test-fast lint demo demo-transformers bench gpu-carry clean

setup: $(STAMP)

# uv installs in a third of pip's time (44–54 s from a fresh clone here, against pip's 132 s); it does not read
# pip's config, so it is given pip's find-links: where this machine keeps its torch wheel.
FIND_LINKS ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode $(addprefix --find-links ,$(FIND_LINKS)) \
		"$(TORCH)" -e ".[dev]"
	touch $(STAMP)

# One pytest-xdist worker per core (TEST_WORKERS=0 runs in this process); the demo's tests share one worker.
TEST_WORKERS ?= auto
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

# Everything but the tests marked slow (whole pipelines, wheels, multi-process runs): a few minutes.
test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check hf_gpt recipes tests bench

# The main job on the embedded default (no download, no ../shared): see hf_gpt/demo.py. Offline, unless DATA
# names three sources PRETRAIN,SFT,PREFERENCES, which may be Hub datasets.
comma := ,
demo: setup
	HF_HUB_OFFLINE=$(if $(findstring $(comma),$(DATA)),0,1) $(BIN)/python -m hf_gpt.demo \
		$(if $(DATA),--data "$(DATA)",) $(DEMO_ARGS)

# The lecture's other two Transformers from the same blocks: BERT (masked LM) vs GPT, and an EN→KO encoder-decoder.
demo-transformers: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m hf_gpt.demo_transformers $(DEMO_ARGS)

bench: setup
	$(BIN)/python bench/model_bench.py

# For a lent GPU (bench/gpu_check.sh): the wheels its image lacks (Python 3.12, no network; it has torch, accelerate,
# tokenizers, peft, pytest) at the versions installed here, setuptools to build hf-gpt there, and tinyshakespeare
# from ../shared if present, into the git-ignored .gpu-carry/ (17 MB) that the device tool carries.
GPU_WHEELS := transformers trl datasets dill multiprocess fsspec setuptools
gpu-carry: setup
	rm -rf .gpu-carry && mkdir -p .gpu-carry/wheels
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .gpu-carry/wheels $$($(BIN)/python -c "from importlib.metadata import version; \
		print(*(f'{name}=={version(name)}' for name in '$(GPU_WHEELS)'.split()))")
	-cp ../shared/data/tinyshakespeare/input.txt .gpu-carry/

clean:
	rm -rf runs .pytest_cache
