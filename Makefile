# The two commands: `make run` and `make test`. Both work on a fresh Debian machine with Python 3.11.

PYTHON ?= python3
VENV ?= .venv
LISTEN ?= 127.0.0.1:9948
BIN := $(VENV)/bin
# Real servers the integration tests talk to, what the fake libnvidia-ml.so.1 (tools/fakenvml) is
# compiled with (a C compiler and cJSON), and the browser the console's tests drive. From Debian's packages.
TEST_PACKAGES := prometheus prometheus-alertmanager mosquitto systemd gcc libc6-dev libcjson-dev chromium chromium-driver
TEST_COMMANDS := prometheus promtool prometheus-alertmanager amtool mosquitto systemd-analyze systemd-sysusers cc nm \
  chromium chromedriver
TEST_FILES := /usr/include/cjson/cJSON.h
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint docs system-deps clean bench bench-gpu

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

## run: start the daemon (real NVML when present, else the bundled H200 capture, labelled DEMO DATA)
run: $(BIN)/.installed
	$(BIN)/gpumon run --backend auto --listen $(LISTEN) --state-dir state

system-deps:
	@missing=""; for c in $(TEST_COMMANDS); do command -v $$c >/dev/null || missing=1; done; \
	for f in $(TEST_FILES); do [ -f $$f ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $(TEST_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(TEST_PACKAGES) >/dev/null; \
	fi

## test: install everything the tests need and run the whole suite (lint and types included)
test: $(BIN)/.installed system-deps
	$(BIN)/ruff check gpumon grafana tools tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q

## bench: the benchmark table (docs/performance.md) on the fake NVML library, with nvitop-exporter beside
## gpumon (installed from PyPI into its own virtualenv under build/bench); numbers in build/bench/results.json
bench: $(BIN)/.installed system-deps
	@[ -x build/bench/nvitop-venv/bin/nvitop-exporter ] || { $(PYTHON) -m venv build/bench/nvitop-venv && \
	  build/bench/nvitop-venv/bin/pip install --quiet --disable-pip-version-check 'nvitop-exporter==1.7.2'; }
	$(BIN)/python -m benchmarks

## bench-gpu: the same poll, overhead, footprint and scrape numbers against this machine's real NVML
bench-gpu: $(BIN)/.installed
	$(BIN)/python -m benchmarks --gpu --out build/bench/results-gpu.json

## docs: regenerate docs/metrics.md from the catalog
docs: $(BIN)/.installed
	$(BIN)/python -m gpumon.docgen > docs/metrics.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache state
