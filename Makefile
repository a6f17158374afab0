# Quick start: `make demo` runs the main job on the bundled default, `make test` runs the tests.
# Both create .venv/ (pinned by requirements/constraints.txt) when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.speechnorm-installed

.PHONY: demo test test-all bench peers venv clean system-deps

venv: $(STAMP)

# The speaker encoder's weights come from the resemblyzer wheel (Apache-2.0), installed without its
# dependencies: speechnorm reads only its weights file (speechnorm/speaker.py).
$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps -c requirements/constraints.txt resemblyzer
	@touch $@

# espeak-ng speaks the built-in synthetic corpus; Festival with one voice tests the extra training
# voices (speechnorm/data/festival.py); chromium runs the demo page's end-to-end test
# (Debian/Ubuntu packages; needs root or sudo). Tests that need a missing one are skipped.
system-deps:
	@missing=""; command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	  command -v text2wave >/dev/null 2>&1 || missing="$$missing festival festvox-kallpc16k"; \
	  command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	  [ -z "$$missing" ] || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null) || \
	  echo "speechnorm: could not install$$missing (apt-get install -y$$missing); the tests that need it will be skipped" >&2; }

# The main job on the bundled default: the released model enhances the bundled noisy 4-mic
# recording (real speech in a simulated room), streamed hop by hop through onnxruntime.
demo: $(STAMP)
	$(VENV)/bin/speechnorm enhance speechnorm/assets/example_4mic.flac -o out/enhanced.wav \
	  --reference speechnorm/assets/example_clean.flac

test: system-deps $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: system-deps $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) scripts/bench_norm.py

# The peer comparison (README "Results"): noisereduce and RNNoise (the pyrnnoise wheel's library,
# used through ctypes, so its audiolab dependency is not installed).
peers: $(STAMP)
	$(PY) -m pip install --quiet -c requirements/constraints.txt noisereduce
	$(PY) -m pip install --quiet --no-deps pyrnnoise==0.4.5
	$(PY) scripts/evaluate_peers.py --ablation runs/norm_ablation

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
