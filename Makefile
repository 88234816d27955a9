# The two documented commands are `make demo` and `make test`; both first run scripts/setup.sh,
# which installs whatever is missing (GStreamer, Rust, ONNX Runtime) and is quick when nothing is.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: all setup setup-openvino build demo test bench clean

all: build

setup:
	@bash scripts/setup.sh

# Opt-in: ONNX Runtime with the OpenVINO execution provider (Intel CPU/GPU/NPU), from the
# onnxruntime-openvino wheel, into .cache/onnxruntime-openvino/lib (execution-provider=openvino).
setup-openvino:
	@bash scripts/setup-openvino.sh

# Release build of the plugin (target/release/libgstcbo.so) and the cbo / cboserver binaries.
build: setup
	$(CARGO) build --release --lib --bins

# The main job: cboserver on loopback, and the bundled bottle clip through cbofilter with the
# default device model, its shipped calibration and policy=threshold (scripts/demo.sh).
demo: build
	bash scripts/demo.sh

# The whole test suite: unit tests, integration tests on real models and clips, doc tests.
# tests/openvino.rs runs the OpenVINO execution provider from .cache/onnxruntime-openvino.
# tests/triton.rs runs cboserver in front of a real Triton and a real MLServer, installed in
# .cache/triton-venv and .cache/mlserver-venv.
# `cargo test` builds examples only as (empty) test harnesses, so the runnable examples/embed
# that tests/embedding.rs drives is built first.
test: setup setup-openvino
	bash scripts/triton-venv.sh >/dev/null
	bash scripts/mlserver-venv.sh >/dev/null
	$(CARGO) build --examples
	$(CARGO) test --all-targets
	$(CARGO) test --doc

# cbofilter vs a bare ONNX Runtime loop on the same frames, then 8 streams sharing one session vs
# 8 sessions vs a bare batch-8 loop (numbers for docs/evaluation.md).
bench: build
	./target/release/cbo bench
	./target/release/cbo bench --streams 8

clean:
	$(CARGO) clean
