# Two commands on a fresh machine with Python 3.11:  make demo  |  make test
# make demo: install, then the main job (s2e run safety) -> runs/demo/report.html
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
S2E    := $(VENV)/bin/s2e
TORCH  := torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
# public evaluation files (not shipped): default to the folder beside the checkout
S2E_DATA ?= $(abspath ../shared/data)
export S2E_DATA

.PHONY: demo test install models clean-cache

$(VENV)/.created:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch can pull a multi-GB CUDA build
	$(PY) -m pip install -q $(TORCH)
	touch $@

$(VENV)/.installed: $(VENV)/.created pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

models: install
	$(S2E) models pull smollm2-135m-instruct
	$(S2E) models pull gemma-3-270m

demo: models
	$(S2E) chat --card "What is the capital of France?"
	$(S2E) run safety --model smollm2-135m-instruct --out runs/demo

test: models
	$(PY) -m pytest -q -ra

clean-cache:
	rm -rf $${S2E_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/s2e_lens}
