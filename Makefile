# make demo: set up .venv, compile the bundled example CNN, run it, time it next to onnxruntime
# make test: set up .venv and the aarch64 toolchain, run the test suite
# make zoo: real networks from torchvision / timm against onnxruntime and OpenVINO (benchmarks/model_zoo.py)
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out
JOBS ?= $(shell nproc)

.PHONY: install toolchains demo test fuzz bench zoo clean
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

# the exporting venv: torchvision and timm do not install beside the main venv's torch, so a second venv
# with its own torch (a CUDA build, run on the CPU; pip takes torch and torchvision from local wheels where
# its config has them, about 5.6 GB) exports the networks; neither the package, its tests nor CI depend on
# it. timm is pinned: its networks' definitions change between releases. make zoo [MODELS=a,b] [THREADS=1,2]
# [REPEAT=30] [TUNE=trials] [ZOO_VENV=path of an existing such venv]
ZOO_VENV ?= .venv-zoo
$(ZOO_VENV)/bin/.installed:
	python3 -m venv $(ZOO_VENV)
	$(ZOO_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 timm==1.0.31 \
	  onnx onnxscript
	touch $@

zoo: install $(ZOO_VENV)/bin/.installed
	$(BIN)/python benchmarks/model_zoo.py --zoo-python $(ZOO_VENV)/bin/python $(if $(MODELS),--models $(MODELS)) \
	  $(if $(THREADS),--threads $(THREADS)) $(if $(REPEAT),--repeat $(REPEAT)) $(if $(TUNE),--tune $(TUNE))

clean:
	rm -rf $(VENV) $(ZOO_VENV) $(OUT) .pytest_cache *.egg-info
