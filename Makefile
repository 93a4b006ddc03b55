# kim — the two commands that matter are `make demo` and `make test`.
SHELL := /bin/bash
export KIM_CACHE ?= $(HOME)/.cache/kim

.PHONY: demo test style build deps crds bench clean cluster cluster-down

demo: ## build everything and run the end-to-end demo on this machine
	bash scripts/demo.sh

test: ## every test tier that runs without Docker
	bash scripts/test.sh

style: ## rustfmt, clippy -D warnings, shellcheck, ruff (part of make test)
	bash scripts/style.sh

build:
	cargo build --release --workspace --bins

bench: ## kim vs hnswlib/faiss/usearch/ScaNN/VSAG + the Redis path (BENCH_ARGS="--quick", "--large"; docs/benchmarks.md)
	command -v redis-server >/dev/null || bash scripts/deps.sh
	cargo build --release -p kim-bench -p kim-worker
	VENV="$$(bash scripts/bench-env.sh)" && "$$VENV/bin/python" bench/run.py $(BENCH_ARGS)

crds: ## regenerate crds/, the chart's and deploy/base's copies and deploy/base/kim.yaml
	bash scripts/manifests.sh

cluster: ## a local Kubernetes cluster without Docker (Go-built control plane + kim-node); prints how to use it
	bash e2e/local.sh up

cluster-down: ## stop what `make cluster` started
	bash e2e/local.sh down

deps: ## install redis-server and the Python venv if missing
	bash scripts/deps.sh

clean:
	cargo clean
