# Two set-up commands (see README): `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv server-extension demo test test-compat lab bench browser-deps binder-check clean

$(STAMP): pyproject.toml constraints.txt jupyter-config/jupyter_server_config.d/hf_notebook.json
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(MAKE) --no-print-directory server-extension
	touch $@

# An editable install leaves out the wheel's data files: the Jupyter server extension's config, put in by hand.
server-extension:
	install -D -m 644 jupyter-config/jupyter_server_config.d/hf_notebook.json \
	  $(VENV)/etc/jupyter/jupyter_server_config.d/hf_notebook.json

venv: $(STAMP)

# Debian's chromium for the real-browser tier (installed only where we are root and it is missing).
browser-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: browser tests will be skipped"; \
	  else echo "chromium missing and not root: browser tests will be skipped"; fi; \
	fi

# Two pytest runs side by side (the browser tier and notebooks alongside the rest; tests/run_tiers.py).
test: venv browser-deps
	$(PY) tests/run_tiers.py $(PYTEST_ARGS)

# The core suite on the oldest and the newest huggingface_hub and transformers that pyproject.toml allows,
# each in a venv of its own (.venv-compat-oldest, .venv-compat-newest); versions in compat/oldest.txt, newest.txt.
test-compat:
	bash compat/run.sh $(PYTHON)

demo: venv
	$(PY) -m hf_notebook.demo

lab: venv
	$(PY) -m hf_notebook.demo --lab

bench: venv
	$(PY) bench/load.py --size-gb 0.3 --only wall,rss && $(PY) bench/load.py --size-gb 1.2 --only wall,rss && $(PY) bench/load.py && $(PY) bench/editor.py && $(PY) bench/save.py && $(PY) bench/plan.py && $(PY) bench/first_load.py

# Binder's build steps in a fresh venv (requirements.txt, postBuild, start), then every notebook.
binder-check:
	bash binder/check.sh $(PYTHON)

clean:
	rm -rf $(VENV) build artifacts .pytest_cache
