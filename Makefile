# The two quick-start commands are `make demo` and `make test`; both set up what they need first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test setup setup-test bench lint plugin real-build
demo: setup
	$(VENV)/bin/edgeproxy demo $(ARGS)

test: setup-test real-build
	$(PY) -m ruff check .
	$(PY) -m pytest $(ARGS)

bench: setup-test
	$(PY) -m benchmarks $(ARGS)

lint: setup-test
	$(PY) -m ruff check .

# The real cluster tier's binaries (kube-apiserver, kubemark, etcd, CoreDNS, YurtHub) from Go modules, cached in
# ~/.cache/edgeproxy/realk8s; a no-op once built (see tests/real/README.md).
real-build:
	bash tests/real/build.sh

# The CNI plugin as one executable file that needs only the host's python3.
plugin: setup
	$(PY) -m cni_plugin.build dist/edge-ipam-snapshot

setup: $(VENV)/.setup-done
setup-test: $(VENV)/.setup-test-done

$(VENV)/.setup-done: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.setup-test-done: $(VENV)/.setup-done tests/host-packages.sh
	bash tests/host-packages.sh
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@
