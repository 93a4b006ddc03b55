#!/usr/bin/env bash
# Installs what kim's demo and tests need beyond Rust: redis-server and the Python venv.
. "$(dirname "$0")/lib.sh"
command -v redis-server >/dev/null || apt_install redis-server
command -v curl >/dev/null || apt_install curl
# The Redis TLS tests make their certificates with the openssl CLI.
command -v openssl >/dev/null || apt_install openssl
# libFuzzer (fuzz/run.sh) is C++, built by the libfuzzer-sys crate.
command -v c++ >/dev/null || apt_install g++
# The style tier of `make test` lints every shell script.
command -v shellcheck >/dev/null || apt_install shellcheck
bash "$KIM_ROOT/scripts/python-env.sh" >/dev/null
