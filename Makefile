# Quick start:  make demo   (install into .venv, build the data, train, evaluate, explain;
#                            without data: the shipped model on the bundled samples, one page)
#               make test   (install into .venv, lint, run the test suite)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Data: $BONEFRAC_DATA (a folder with fracatlas/ and optionally bone_fracture_yolo/),
# else ../shared/data when it exists; empty (make demo BONEFRAC_DATA=): the demo without data.
BONEFRAC_DATA ?= $(shell [ -d ../shared/data/fracatlas ] && echo ../shared/data)
DEMO ?= demo
# The demo trains the default config (configs/lite0.yaml: localising Lite0, 224 px, 6 epochs)
# to completion on at most this many images per split, so that it ends within 20 minutes on a
# 2-core machine; the deploy fits (threshold, temperature, refer rule, out-of-scope detector)
# run as at the end of any 'bonefrac train'.
DEMO_LIMIT ?= 1000
DEMO_SET ?= --set data.limit_per_split=$(DEMO_LIMIT)

.PHONY: install demo demo-samples demo-train test lint format clean shipped-model

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch/torchvision first, pinned: on these machines pip takes them from local disk.
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	@if [ -z "$(BONEFRAC_DATA)" ]; then $(MAKE) --no-print-directory demo-samples; \
	  else $(MAKE) --no-print-directory demo-train; fi

# Without data: the shipped model on the sample radiographs that ship with the package.
demo-samples: install
	@echo "No data: the shipped model on the bundled sample radiographs (bonefrac demo)."
	$(BIN)/bonefrac demo --out $(DEMO)/samples --force
	@echo "To train as well: download FracAtlas (figshare, doi:10.6084/m9.figshare.22363012)"
	@echo "so that DATA/fracatlas/dataset.csv and DATA/fracatlas/images/ exist (optionally the"
	@echo "Roboflow 'Bone Fracture Detection' v4 YOLO export as DATA/bone_fracture_yolo/), then"
	@echo "run: make demo BONEFRAC_DATA=DATA"

demo-train: install
	@if [ ! -d "$(BONEFRAC_DATA)/fracatlas" ]; then \
	  echo "$(BONEFRAC_DATA)/fracatlas: not found. Unpack FracAtlas (figshare,"; \
	  echo "doi:10.6084/m9.figshare.22363012) so that it holds dataset.csv and images/;"; \
	  echo "or run 'make demo BONEFRAC_DATA=' for the demo without data."; exit 1; fi
	$(BIN)/bonefrac data build --fracatlas $(BONEFRAC_DATA)/fracatlas \
	  $$( [ -d $(BONEFRAC_DATA)/bone_fracture_yolo ] && echo --yolo $(BONEFRAC_DATA)/bone_fracture_yolo ) \
	  --out $(DEMO)/data --force
	$(BIN)/bonefrac data report $(DEMO)/data
	$(BIN)/bonefrac train --config configs/lite0.yaml --manifest $(DEMO)/data/manifest.csv \
	  --out $(DEMO)/run --force $(DEMO_SET)
	$(BIN)/bonefrac evaluate $(DEMO)/run --split test
	$(BIN)/bonefrac explain $(DEMO)/run --split test --n 8 --score
	$(BIN)/bonefrac report $(DEMO)/run
	@echo "Report: open $(DEMO)/run/report.html in a browser."
	@echo "Page:   $(BIN)/bonefrac serve $(DEMO)/run, then open http://127.0.0.1:8000"

# Rebuild the shipped default model (src/bonefrac/shipped/; bench/shipped_model.sh): trains
# configs/lite0_loc.yaml on both sources (SEEDS, default 42) and packages the one best on val.
shipped-model: install
	DATA=$(BONEFRAC_DATA) bash bench/shipped_model.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
