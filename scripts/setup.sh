#!/usr/bin/env bash
# Installs what the build and the tests need beyond the Rust toolchain:
# curl (the API tests drive the server with it, as the docs do), gcc,
# cmake and libclang (the test guests' emulator), pkg-config and OpenSSL's
# headers (Cloud Hypervisor's test helpers link the system's OpenSSL rather
# than build their own: integrations/cloud-hypervisor/build-and-test.sh),
# cargo-nextest (the test runner) and cargo-mutants (scripts/mutants.sh).
# Safe to run again; does nothing when everything is there. Fails, saying what is missing, when it cannot
# install something.
set -euo pipefail

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
# The test-only emulator of the SNP guest's machine code (unicorn-engine)
# builds its C library with cmake and generates bindings with libclang.
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || need_apt+=(libssl-dev)
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

# Mutation testing (scripts/mutants.sh, docs/testing.md). Pinned: mutant
# names and counts, and so the table in docs/testing.md, change between
# releases.
CARGO_MUTANTS_VERSION=27.1.0
if ! cargo mutants --version 2>/dev/null | grep -qx "cargo-mutants $CARGO_MUTANTS_VERSION"; then
    echo "setup: cargo-mutants $CARGO_MUTANTS_VERSION not found; installing it from crates.io"
    cargo install --locked cargo-mutants --version "$CARGO_MUTANTS_VERSION"
fi
