# mitoscope: `make demo` scores a sample slide end to end; `make test` runs the suite.
# Every target creates the virtual environments it needs from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
TRITON_VENV := .venv-triton
TRAIN_VENV := .venv-train
PY := $(VENV)/bin/python
SHARED ?= ../shared
DEMO_OUT ?= out/demo
export YOLO_OFFLINE := 1
export YOLO_CONFIG_DIR := $(CURDIR)/.cache/ultralytics

.DEFAULT_GOAL := help
.PHONY: help setup proto train-venv up down demo test test-unit check format models bench clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[1m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

# Protobuf bindings of the internal messages, generated (not committed) with the venv's protoc.
PROTO_OUT := services/common/proto
$(PROTO_OUT)/.generated: proto/mitoscope/v1/pipeline.proto $(VENV)/.installed
	rm -rf $(PROTO_OUT) && mkdir -p $(PROTO_OUT)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) $<
	touch $@

proto: $(PROTO_OUT)/.generated ## Generate the protobuf bindings of proto/ (setup does it too)

# Triton's own venv: the nvidia-pytriton wheel pins numpy<2; the Python backend runs ONNX Runtime.
$(TRITON_VENV)/.installed: requirements-triton.txt
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install -q --upgrade pip
	$(TRITON_VENV)/bin/pip install -q -r requirements-triton.txt
	touch $@

# Training venv: torch pinned first (local wheels), so ultralytics does not pull a CUDA build.
$(TRAIN_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/pip install -q --upgrade pip
	$(TRAIN_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(TRAIN_VENV)/bin/pip install -q -e '.[train]'
	touch $@

# Triton's Python backend wants model.py beside each model.onnx: one source, copied (not committed).
TRITON_MODEL_PY := $(patsubst %/model.onnx,%/model.py,$(wildcard model_repository/*/[0-9]*/model.onnx))
model_repository/%/model.py: services/detector/triton_python_model.py
	cp $< $@

setup: $(VENV)/.installed $(PROTO_OUT)/.generated $(TRITON_VENV)/.installed $(TRITON_MODEL_PY) ## Create the serving and Triton virtual environments

train-venv: $(TRAIN_VENV)/.installed ## Create the training venv (torch from local wheels, ultralytics)

up: setup ## Start the local stack (Triton, services, gateway) on 127.0.0.1; S3=1 adds SeaweedFS
	$(PY) -m mitoscope.cli up $(if $(S3),--s3)

down: $(VENV)/.installed ## Stop the local stack
	$(PY) -m mitoscope.cli down

demo: setup ## Synthesise a slide, score it through the local stack over REST, print the summary
	$(PY) -m mitoscope.cli demo --out $(DEMO_OUT) --shared $(SHARED)

test: setup train-venv ## Run the test suite (unit, API and integration tests with real servers, 1-epoch training)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-unit: $(VENV)/.installed $(PROTO_OUT)/.generated ## The fast loop: tests that need no server and no training venv
	$(PY) -m pytest -q -m "not integration and not slow" $(PYTEST_ARGS)

check: $(VENV)/.installed ## Lint, format check and type check
	$(VENV)/bin/ruff check mitoscope services training tests bench
	$(VENV)/bin/ruff format --check mitoscope services training tests bench
	$(VENV)/bin/mypy

format: $(VENV)/.installed ## Apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix mitoscope services training tests bench
	$(VENV)/bin/ruff format mitoscope services training tests bench

models: $(VENV)/.installed $(TRAIN_VENV)/.installed ## Retrain the detectors and the second stage from scratch (hours on 2 CPU cores) with their Triton configs
	$(TRAIN_VENV)/bin/python -m training.train_yolo --amibr $(SHARED)/data/amibr --out runs/yolo
	$(PY) -m services.detector.triton_repository model_repository/yolov5n_mitosis
	$(TRAIN_VENV)/bin/python -m training.train_classifier --shared $(SHARED)/data --out runs/classifier \
		--detector model_repository/yolov5n_mitosis/1/model.onnx --install model_repository/mitosis_classifier
	$(TRAIN_VENV)/bin/python -m training.train_frcnn --dataset runs/yolo/dataset --out runs/frcnn \
		--install model_repository/faster_rcnn_mitosis
	$(PY) -m services.detector.triton_repository model_repository/faster_rcnn_mitosis

bench: $(VENV)/.installed ## Run the benchmarks in bench/ (figures go to docs/benchmarks.md by hand)
	$(PY) -m bench.tiling
	$(PY) -m bench.reinhard
	$(PY) -m bench.services

clean: ## Remove virtual environments, caches and outputs
	rm -rf $(VENV) $(TRITON_VENV) $(TRAIN_VENV) .cache out runs .pytest_cache .mypy_cache .ruff_cache
