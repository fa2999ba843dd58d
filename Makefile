# Tiangong — two commands do everything from a fresh clone:
#   make demo   virtualenv, install, ship a sample release end to end, print where to look
#   make test   install what the suite needs (Python and Debian packages), run the whole suite
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=
# The suite runs in two pytest-xdist workers, one test file per worker at a time (most tests
# wait on real hub, agent, database and browser processes, so two workers halve the wall time
# on a 2-core machine); TEST_WORKERS=0 runs it in one process. Files start longest first
# (tests/conftest.py orders them by tests/file_costs.json; --no-loadscope-reorder keeps
# xdist from re-sorting them by their number of tests), so both workers finish together.
TEST_WORKERS ?= 2

.PHONY: demo demo-ui test lint bench soak clean system-deps venv kube helm offline-kit

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(STAMP)

system-deps:
	bash .ci/install-test-deps

demo: $(STAMP)
	bash examples/demo.sh

# The web UI to try in a browser: a hub left running on 127.0.0.1 with sample people who
# sign in with printed passwords (stop it with the command it prints).
demo-ui: $(STAMP)
	bash examples/demo-ui.sh

# The tests start many `tiangong` processes from this editable tree: byte-compile it
# first (an installed wheel is compiled at install time; with PYTHONDONTWRITEBYTECODE set,
# every process would compile each module it imports again).
test: $(STAMP) system-deps kube helm
	$(BIN)/python -m compileall -q agent bundle hub signing tiangong web
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The real kube-apiserver (+ etcd) and kubectl for the k8s tests, built once from Go modules
# into tests/kube/bin/ (see docs/kubernetes-tests.md).
kube:
	bash tests/kube/build.sh

# helm (helm.sh/helm/v4, pinned in tests/helm/cli/go.mod) for the chart tests, built once from
# Go modules into tests/helm/bin/ (see docs/kubernetes-tests.md).
helm:
	bash tests/helm/build.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy agent hub web tiangong bundle signing
	$(BIN)/mypy --strict bundle signing

bench: $(STAMP) system-deps
	$(BIN)/python bench/run_all.py

# Long runs kept out of `make test`: the fuzzers for minutes, then the benchmarks at size.
soak: $(STAMP) system-deps
	TIANGONG_FUZZ_EXAMPLES=$${TIANGONG_FUZZ_EXAMPLES:-5000} $(BIN)/python -m pytest -q \
	    tests/bundle/test_fuzz.py tests/bundle/test_properties.py tests/signing/test_envelope.py \
	    tests/bundle/test_sync.py -p no:cacheprovider
	$(BIN)/python bench/run_all.py --soak

# The offline install kit (docs/install.md): wheels of tiangong[agent] and tiangong[hub] and
# every dependency for this machine's Python and platform, install.sh, SHA256SUMS, the docs,
# the Dockerfiles, compose.yaml and the systemd units. KIT=DIR writes it elsewhere.
KIT ?= build/offline-kit
offline-kit: $(STAMP)
	PYTHON=$(BIN)/python bash docker/offline-kit.sh $(KIT)

clean:
	rm -rf $(VENV) build/offline-kit demo-out demo-ui-out bench-out test-artifacts .pytest_cache .mypy_cache .ruff_cache
