# make demo: set up .venv, compile the bundled example CNN, run it, time it next to onnxruntime
# make test: set up .venv and the aarch64 toolchain, run the test suite
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out
JOBS ?= $(shell nproc)

.PHONY: install toolchains demo test fuzz bench clean
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

install: $(BIN)/.installed

# the arm target's cross compiler, and qemu to run its modules here (Debian / Ubuntu)
toolchains:
	@command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null || \
	  ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	   g++-aarch64-linux-gnu qemu-user >/dev/null)

demo: install
	@mkdir -p $(OUT)
	$(BIN)/reforge compile examples/smallcnn.onnx -o $(OUT)/smallcnn.tar --verify
	$(BIN)/reforge run $(OUT)/smallcnn.tar --print-time
	$(BIN)/reforge bench examples/smallcnn.onnx --against onnxruntime --threads 1

# one pytest worker per core; a test file stays on one worker (its module fixtures are built once)
test: install toolchains
	$(BIN)/pytest -q -n $(JOBS) --dist loadfile

# make fuzz N=1000: differential fuzzing with fresh random graphs in JOBS parallel streams; prints at the
# end (with JOBS=1 also every 25 graphs) graphs, modules built, mismatches, CPU s/graph, rewrites/runs per
# pass, passes below 100 rewrites
N ?= 1000
fuzz: install
	REFORGE_FUZZ_FRESH=1 REFORGE_FUZZ_EXAMPLES=$(N) REFORGE_FUZZ_SHARDS=$(JOBS) $(BIN)/pytest -q -s -p no:cacheprovider \
	  $(if $(filter 1,$(JOBS)),,-n $(JOBS) tests/fuzz/test_differential_odd.py) tests/fuzz/test_differential.py

bench: install
	$(BIN)/python benchmarks/zoo.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache *.egg-info
