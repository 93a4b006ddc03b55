# kim — the two commands that matter are `make demo` and `make test`.
SHELL := /bin/bash
export KIM_CACHE ?= $(HOME)/.cache/kim

.PHONY: demo test build deps crds bench clean

demo: ## build everything and run the end-to-end demo on this machine
	bash scripts/demo.sh

test: ## every test tier that runs without Docker
	bash scripts/test.sh

build:
	cargo build --release --workspace --bins

deps: ## install redis-server and the Python venv if missing
	bash scripts/deps.sh

clean:
	cargo clean
