# Quick start: `make demo` runs the main job on the bundled default, `make test` runs the tests.
# Both create .venv/ (pinned by requirements/constraints.txt) when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.speechnorm-installed

.PHONY: demo test test-all bench venv clean system-deps

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	@touch $@

# espeak-ng speaks the built-in synthetic corpus (Debian/Ubuntu package; needs root or sudo).
system-deps:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq espeak-ng >/dev/null) || \
	  echo "speechnorm: could not install espeak-ng (apt-get install -y espeak-ng); the synthetic corpus needs it, its tests will be skipped" >&2; }

demo: $(STAMP)
	$(VENV)/bin/speechnorm demo

test: system-deps $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: system-deps $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) scripts/bench_norm.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
