#!/usr/bin/env bash
# Installs what the build and the tests need beyond the Rust toolchain:
# curl (the API tests drive the server with it, as the docs do), gcc, and
# cargo-nextest (the test runner). Safe to run again; does nothing when
# everything is there. Fails, saying what is missing, when it cannot
# install something.
set -euo pipefail

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
# The test-only emulator of the SNP guest's machine code (unicorn-engine)
# builds its C library with cmake and generates bindings with libclang.
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ${need_apt[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
    else
        echo "setup: please install: ${need_apt[*]}" >&2
        exit 1
    fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "setup: cargo-nextest not found; installing it from crates.io"
    cargo install --locked cargo-nextest
fi
