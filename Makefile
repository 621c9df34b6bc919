# make demo: set up .venv, compile the bundled example CNN, run it, time it next to onnxruntime
# make test: set up .venv, run the test suite
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out

.PHONY: install demo test bench clean

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

install: $(BIN)/.installed

demo: install
	@mkdir -p $(OUT)
	$(BIN)/reforge compile examples/smallcnn.onnx -o $(OUT)/smallcnn.tar --verify
	$(BIN)/reforge run $(OUT)/smallcnn.tar --print-time
	$(BIN)/reforge bench examples/smallcnn.onnx --against onnxruntime --threads 1

test: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python benchmarks/zoo.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache *.egg-info
