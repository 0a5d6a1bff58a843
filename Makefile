# Two commands for a newcomer: `make demo` and `make test`.  Everything lives in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TORCH := torch==2.13.0

.PHONY: install demo test bench soak clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Stamps so a second `make test` does not reinstall; they are redone when pyproject changes.
$(VENV)/.demo: pyproject.toml | $(PY)
	$(PIP) install -e ".[demo]"
	touch $@

$(VENV)/.all: pyproject.toml | $(PY)
	$(PIP) install $(TORCH)
	$(PIP) install -e ".[all]"
	touch $@ $(VENV)/.demo

install: $(VENV)/.all

demo: $(VENV)/.demo
	$(PY) tools/demo.py

test: $(VENV)/.all
	$(PY) -m pytest tests

bench: $(VENV)/.all
	$(VENV)/bin/crack-edge bench --all

soak: $(VENV)/.all
	$(PY) tools/soak.py

clean:
	rm -rf $(VENV) build *.egg-info
